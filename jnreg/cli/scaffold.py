"""``jnreg agents new``: write a ready-to-install agent plugin package."""

from __future__ import annotations

from pathlib import Path

import click

from jnreg.cli.base import echo_json


@click.command("new")
@click.argument("name")
@click.option(
    "--dir", "directory", type=click.Path(path_type=Path, file_okay=False), help="Where to write it [./jnreg-NAME]."
)
@click.option("--description", help="One-line description of the agent.")
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def agents_new(name: str, directory: Path | None, description: str | None, as_json: bool) -> None:
    """Write a plugin package for agent NAME: pyproject, hook, sample data, schema, test."""
    from jnreg.core.host.plugins import get_host
    from jnreg.core.host.scaffold import write_plugin
    from jnreg.errors import ConfigError

    existing = get_host().agents().get(name)
    if existing is not None:
        # Two plugins claiming one name would make that agent unusable for everyone.
        raise ConfigError(f"agent {name!r} already exists (plugin {existing.plugin!r}); choose another name")
    directory = directory or Path(f"jnreg-{name.replace('_', '-')}")
    files = write_plugin(name, directory, description)
    if as_json:
        echo_json({"agent": name, "directory": str(directory), "files": [str(f) for f in files]})
        return
    for path in files:
        click.echo(f"wrote {path}")
    click.echo(f"next: pip install -e {directory} && jnreg agents show {name} && pytest {directory}")
