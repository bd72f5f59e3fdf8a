"""The ``jnreg`` command line: the root group, shared options, and the ``agents`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from jnreg import __version__
from jnreg.core.cli_base import JnregGroup, Settings, echo_json


@click.group(cls=JnregGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jnreg")
@click.option(
    "--store-root",
    envvar="MODEL_STORE_ROOT",
    type=click.Path(path_type=Path, file_okay=False),
    help="ModelStore root [env MODEL_STORE_ROOT; default ./model_store].",
)
@click.option(
    "--agent-map",
    envvar="AGENT_MODEL_MAP",
    type=click.Path(path_type=Path, dir_okay=False),
    help="AGENT_MODEL_MAP.json to keep up to date [env AGENT_MODEL_MAP; default <store-root>/AGENT_MODEL_MAP.json].",
)
@click.pass_context
def cli(ctx: click.Context, store_root: Path | None, agent_map: Path | None) -> None:
    """Train, store and find the JustNews agents' LoRA adapters."""
    ctx.obj = Settings(store_root=store_root, agent_map=agent_map)


@cli.group()
def agents() -> None:
    """The agents that plugins provide."""


def _agent_summary(agent) -> dict[str, Any]:
    spec = agent.spec
    return {
        "name": spec.name,
        "description": spec.description,
        "plugin": agent.plugin,
        "package": agent.package,
        "base_model": spec.defaults.base_model,
        "adapter_name": spec.default_adapter_name,
    }


@agents.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def agents_list(as_json: bool) -> None:
    """List every agent with its plugin."""
    from jnreg.core.plugins import get_host

    host = get_host()
    rows = [_agent_summary(agent) for agent in host.agents().values()]
    if as_json:
        echo_json({"agents": rows, "problems": host.problems})
        return
    width = max((len(r["name"]) for r in rows), default=5)
    for row in rows:
        click.echo(f"{row['name']:<{width}}  {row['description']}  [{row['package'] or row['plugin']}]")
    for problem in host.problems:
        click.echo(f"warning: {problem}", err=True)


@agents.command("show")
@click.argument("agent")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def agents_show(agent: str, as_json: bool) -> None:
    """Show an agent's defaults, template, sample data and origin."""
    from dataclasses import asdict

    from jnreg.core.data import count_sample_rows
    from jnreg.core.plugins import get_host

    found = get_host().get(agent)
    spec = found.spec
    info = _agent_summary(found) | {
        "defaults": asdict(spec.defaults),
        "template": {"system": spec.template.system, "user": spec.template.user},
        "serving": asdict(spec.serving),
        "sample_rows": count_sample_rows(spec),
        "sample_data": str(spec.sample_data) if spec.sample_data else None,
        "response_schema": spec.response_schema is not None,
    }
    if as_json:
        info["response_schema"] = spec.response_schema
        echo_json(info)
        return
    click.echo(f"{spec.name}: {spec.description}")
    click.echo(f"  plugin:       {found.plugin} (package {found.package or 'not installed'})")
    click.echo(f"  adapter name: {spec.default_adapter_name}")
    click.echo(f"  sample rows:  {info['sample_rows']}")
    click.echo(f"  serving:      max_new_tokens={spec.serving.max_new_tokens} temperature={spec.serving.temperature}")
    click.echo(f"  response schema: {'yes' if spec.response_schema else 'no'}")
    click.echo("  defaults:")
    for key, value in info["defaults"].items():
        click.echo(f"    {key} = {value if not isinstance(value, (list, tuple)) else ','.join(value)}")
    click.echo("  system prompt:")
    click.echo("    " + spec.template.system)
    click.echo(f"  user message: {spec.template.user}")


def _register_subcommands() -> None:
    from jnreg.core import cli_generate, cli_scaffold, cli_store, cli_train

    cli.add_command(cli_store.store)
    cli.add_command(cli_train.train)
    cli.add_command(cli_generate.generate)
    agents.add_command(cli_scaffold.agents_new)


_register_subcommands()


def main() -> None:
    cli(prog_name="jnreg")
