"""What every jnreg command shares: settings from the root group, error display, JSON output."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from jnreg.errors import JnregError


@dataclass
class Settings:
    """Options every command shares, taken from the root group."""

    store_root: Path | None
    agent_map: Path | None


class JnregGroup(click.Group):
    """A group that shows a jnreg error as one line and exits non-zero, never as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JnregError as exc:
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except KeyboardInterrupt:
            click.echo("jnreg: interrupted", err=True)
            sys.exit(130)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def settings(ctx: click.Context) -> Settings:
    return ctx.find_root().obj


def open_store(ctx: click.Context, root: Path | str | None = None) -> Any:
    """The ModelStore at ``root``, else the global --store-root, else ./model_store (said on stderr)."""
    from jnreg.registry.store import DEFAULT_ROOT, ModelStore

    shared = settings(ctx)
    root = root or shared.store_root
    if root is None:
        click.echo(f"note: no --store-root or MODEL_STORE_ROOT; using ./{DEFAULT_ROOT}", err=True)
    return ModelStore(root, shared.agent_map)
