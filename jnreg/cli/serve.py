"""``jnreg serve``: vLLM's OpenAI-compatible server on the agents' base model, answering for the store."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from jnreg.cli.base import StoreRoot, echo_json, open_store


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="[AGENT...] [-- VLLM-ARGS...]")
@click.option("--store-root", "root", type=StoreRoot(), help="The store to serve [the global --store-root].")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--dtype", help="The base model's dtype in vLLM [float32 for the built-in model, else vLLM's].")
@click.option("--dry-run", is_flag=True, help="Print the server's command and environment as JSON; start nothing.")
@click.pass_context
def serve(
    ctx: click.Context,
    words: tuple[str, ...],
    root: Path | str | None,
    host: str,
    port: int,
    dtype: str | None,
    dry_run: bool,
) -> None:
    """Serve AGENTs (default: every agent in service) through vLLM, with promotions reaching the server.

    A request for model "<agent>" is answered by the version in service, "<agent>@<version>" by that
    version. Arguments after the agents (after --) go to vLLM unchanged.
    """
    from jnreg.serve.launch import plan

    agents, vllm_args = _split(words)
    store = open_store(ctx, root)
    server = plan(store, agents, host=host, port=port, vllm_args=vllm_args, dtype=dtype)
    if dry_run:
        echo_json(
            {
                "base_model": server.base_model,
                "in_service": server.in_service,
                "max_lora_rank": server.max_rank,
                "command": server.command,
                "env": server.env,
            }
        )
        return
    served = ", ".join(f"{agent} {version}" for agent, version in sorted(server.in_service.items()))
    click.echo(f"serving {served} on {server.base_model} at http://{host}:{port}/v1", err=True)
    click.echo(shlex.join(server.command), err=True)
    env = {**os.environ, **server.env}
    try:
        os.execve(server.command[0], server.command, env)
    except OSError as exc:
        raise click.ClickException(f"cannot start {server.command[0]}: {exc.strerror or exc}") from None


def _split(words: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(agents, vLLM's arguments): agents come first; the first word that is an option starts vLLM's."""
    for index, word in enumerate(words):
        if word.startswith("-"):
            return list(words[:index]), list(words[index:])
    return list(words), []
