"""The root ``jnreg`` group: shared options, and every command group added under it."""

from __future__ import annotations

from pathlib import Path

import click

from jnreg import __version__
from jnreg.cli.base import JnregGroup, Settings, StoreRoot

# Each command and where it lives; a command's module is imported only when that command runs
# (or when --help lists them all), so `jnreg store resolve` never pays for `train`'s options.
COMMANDS = {
    "agents": "jnreg.cli.agents:agents",
    "store": "jnreg.cli.store:store",
    "train": "jnreg.cli.train:train",
    "generate": "jnreg.cli.generate:generate",
    "eval": "jnreg.cli.evaluate:eval_",
    "export": "jnreg.cli.export:export",
    "serve": "jnreg.cli.serve:serve",
    "report": "jnreg.cli.report:report",
}


@click.group(cls=JnregGroup, commands_at=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A public key (PEM) whose signatures this host trusts; several allowed. With any, only versions signed "
    "by one of them are resolved, loaded or pulled [env JNREG_TRUSTED_KEYS, files separated by ':'].",
)
@click.pass_context
def cli(
    ctx: click.Context, store_root: Path | str | None, agent_map: Path | None, trusted_keys: tuple[Path, ...]
) -> None:
    """Train, store and find the JustNews agents' LoRA adapters."""
    given = ctx.get_parameter_source("agent_map") == click.core.ParameterSource.COMMANDLINE
    ctx.obj = Settings(
        store_root=store_root,
        agent_map=agent_map,
        agent_map_given=given,
        trusted_keys=tuple(str(k) for k in trusted_keys),
    )


def main() -> None:
    cli(prog_name="jnreg")
