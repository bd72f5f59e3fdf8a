"""``jnreg agents new``: write a ready-to-install agent plugin package."""

from __future__ import annotations

import click


@click.command("new")
def agents_new() -> None:
    """Write a new agent plugin package (not available yet)."""
    raise click.ClickException("not available yet")
