"""What every jnreg command shares: settings from the root group, error display, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from jnreg.errors import JnregError, first_line


@dataclass
class Settings:
    """Options every command shares, taken from the root group."""

    store_root: Path | str | None
    agent_map: Path | None
    agent_map_given: bool = False


class StoreRoot(click.ParamType):
    """A local directory, or ``s3://bucket/prefix`` for a store in object storage (kept as a string)."""

    name = "directory|s3://bucket/prefix"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, Path):
            return value
        text = str(value)
        if text.startswith("s3://"):
            return text
        if "://" in text:
            self.fail(f"{text!r}: only local directories and s3:// roots are supported", param, ctx)
        return Path(text)


class JnregGroup(click.Group):
    """A group that shows a jnreg error as one line and exits non-zero, never as a traceback.

    ``commands_at`` names commands by ``module:attribute``; each is imported the first time it is needed.
    """

    def __init__(self, *args: Any, commands_at: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands_at = dict(commands_at or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands_at, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = self.commands_at.get(cmd_name)
        if where is not None and cmd_name not in self.commands:
            import importlib

            module, _, attribute = where.partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JnregError as exc:
            raise click.ClickException(first_line(exc)) from None
        except KeyboardInterrupt:
            click.echo("jnreg: interrupted", err=True)
            sys.exit(130)


def progress_echo(as_json: bool) -> Callable[[str], None]:
    """Where progress lines go: stdout, or stderr when --json keeps stdout for the JSON document."""
    return (lambda line: click.echo(line, err=True)) if as_json else click.echo


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
    agent_map = shared.agent_map
    if str(root).startswith("s3://") and not shared.agent_map_given:
        agent_map = None  # an AGENT_MODEL_MAP in the environment names a local map; an object store has its own
    return ModelStore(root, agent_map)
