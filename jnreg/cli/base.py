"""What every jnreg command shares: settings from the root group, error display, JSON output."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jnreg.errors import JnregError, first_line, internal_error

if TYPE_CHECKING:
    from jnreg.registry.store import ModelStore


@dataclass
class Settings:
    """Options every command shares, taken from the root group."""

    store_root: Path | str | None
    agent_map: Path | None
    agent_map_given: bool = False
    trusted_keys: tuple[str, ...] = ()  # --trusted-key, in place of $JNREG_TRUSTED_KEYS


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


class FiniteFloatRange(click.FloatRange):
    """A float range that also refuses nan and inf, which every comparison with a bound lets through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


# A temperature as serving takes it: 0 is greedy, above 0 samples.
TEMPERATURE = FiniteFloatRange(min=0)

# Options that take several values after one flag, as the guide writes them
# (``--train-files data/*.jsonl`` after the shell expands the glob).
MULTI_VALUE = ("--train-files", "--eval-files", "--report-to")


class MultiValueCommand(click.Command):
    """Lets ``--train-files a b c`` mean ``--train-files a --train-files b --train-files c``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        expanded: list[str] = []
        current, has_value = None, False
        for arg in args:
            if current is not None and not arg.startswith("-"):
                expanded.extend([current, arg] if has_value else [arg])
                has_value = True
                continue
            flag = arg.split("=", 1)[0]
            current = flag if flag in MULTI_VALUE else None
            has_value = "=" in arg
            expanded.append(arg)
        return super().parse_args(ctx, expanded)


class JnregGroup(click.Group):
    """A group that shows a jnreg error as one line and exits non-zero, never as a traceback.

    Any other exception is a failure inside jnreg or a library: one line too, naming the file
    that holds its traceback.

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
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            # Not the user's doing: one line, with the traceback in a file to report.
            raise click.ClickException(internal_error(exc)) from None


def progress_echo(as_json: bool) -> Callable[[str], None]:
    """Where progress lines go: stdout, or stderr when --json keeps stdout for the JSON document."""
    return (lambda line: click.echo(line, err=True)) if as_json else click.echo


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def settings(ctx: click.Context) -> Settings:
    return ctx.find_root().obj


def open_store(ctx: click.Context, root: Path | str | None = None) -> ModelStore:
    """The ModelStore at ``root``, else the global --store-root, else ./model_store (said on stderr)."""
    from jnreg.registry.store import DEFAULT_ROOT, ModelStore

    shared = settings(ctx)
    root = root or shared.store_root
    if root is None:
        click.echo(f"note: no --store-root or MODEL_STORE_ROOT; using ./{DEFAULT_ROOT}", err=True)
    agent_map = shared.agent_map
    if str(root).startswith("s3://") and not shared.agent_map_given:
        agent_map = None  # an AGENT_MODEL_MAP in the environment names a local map; an object store has its own
    return trusting(ctx, ModelStore(root, agent_map))


def trusting(ctx: click.Context, store: ModelStore) -> ModelStore:
    """``store`` under the trust policy of --trusted-key, when given (else $JNREG_TRUSTED_KEYS applies)."""
    keys = settings(ctx).trusted_keys
    if keys:
        store.trust_keys(keys)
    return store
