"""The root ``jnreg`` group: shared options, and every command group added under it."""

from __future__ import annotations

from pathlib import Path

import click

from jnreg import __version__
from jnreg.cli.agents import agents
from jnreg.cli.base import JnregGroup, Settings, StoreRoot
from jnreg.cli.evaluate import eval_
from jnreg.cli.export import export
from jnreg.cli.generate import generate
from jnreg.cli.serve import serve
from jnreg.cli.store import store
from jnreg.cli.train import train


@click.group(cls=JnregGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jnreg")
@click.option(
    "--store-root",
    envvar="MODEL_STORE_ROOT",
    type=StoreRoot(),
    help="ModelStore root: a directory or s3://bucket/prefix [env MODEL_STORE_ROOT; default ./model_store].",
)
@click.option(
    "--agent-map",
    envvar="AGENT_MODEL_MAP",
    type=click.Path(path_type=Path, dir_okay=False),
    help="AGENT_MODEL_MAP.json to keep up to date [env AGENT_MODEL_MAP; default <store-root>/AGENT_MODEL_MAP.json].",
)
@click.pass_context
def cli(ctx: click.Context, store_root: Path | str | None, agent_map: Path | None) -> None:
    """Train, store and find the JustNews agents' LoRA adapters."""
    given = ctx.get_parameter_source("agent_map") == click.core.ParameterSource.COMMANDLINE
    ctx.obj = Settings(store_root=store_root, agent_map=agent_map, agent_map_given=given)


cli.add_command(agents)
cli.add_command(store)
cli.add_command(train)
cli.add_command(generate)
cli.add_command(eval_)
cli.add_command(export)
cli.add_command(serve)


def main() -> None:
    cli(prog_name="jnreg")
