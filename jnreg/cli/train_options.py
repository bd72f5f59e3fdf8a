"""``jnreg train``'s options, one per TrainConfig field, made from the field's type, help and schema.

As TRL's parser builds its flags from its dataclasses, a new TrainConfig field is a flag by
construction: ``--field-name``, typed from the annotation, its choices from the train_config
schema's ``enum``, its help from ``metadata["help"]``. The spellings users already type (the
guide's ``--model_name_or_path``) are a table of aliases.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from typing import Any

import click

from jnreg.cli.base import StoreRoot
from jnreg.core.host.spec import Hyperparameters
from jnreg.core.training.config import INTERNAL, TrainConfig
from jnreg.schemas import load_schema

# Other spellings of a field's flag: the guide's, and the ones earlier releases took.
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "base_model": ("--model_name_or_path", "--model-name-or-path"),
    "base_model_revision": ("--revision",),
    "output_dir": ("--output_dir",),
}
# Fields whose flag takes one comma-separated value rather than repeating.
COMMA_SEPARATED = ("target_modules",)
# Checked by the flag itself, before a config is built (a bad process count never reaches the launcher).
FLAG_TYPES: dict[str, click.ParamType] = {
    "processes": click.IntRange(min=1),
    "store_root": StoreRoot(),
    "report_to": click.Choice(("none", "tensorboard", "mlflow", "wandb", "trackio"), case_sensitive=False),
}
# Fields of one string that the flag gives as several values (TrainConfig joins them with commas).
SEVERAL = ("report_to",)
# Where the flag's value lands in the callback's keyword arguments, when not under the field's own name.
DESTINATIONS = {"agent": "agent_opt"}
# Defaults not worth a "[default: ...]" in the help: nothing set, or a field the agent plugin sets.
_UNSHOWN_DEFAULTS = (None, "", (), False)
_PLAIN_TYPES: dict[Any, click.ParamType] = {int: click.INT, float: click.FLOAT, str: click.STRING}


def flag_fields() -> list[Field]:
    """The TrainConfig fields a user sets, in the order the help lists them: the agent, then as declared."""
    found = [f for f in fields(TrainConfig) if f.name not in INTERNAL]
    return sorted(found, key=lambda f: f.name != "agent")


def flag_name(field: Field) -> str:
    return "--" + field.name.replace("_", "-")


def _plain(annotation: Any) -> tuple[Any, bool]:
    """(the type a value has, whether the field holds several), ``X | None`` read as X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _help(field: Field) -> str:
    text = field.metadata["help"]
    hyperparameter = field.name in {f.name for f in fields(Hyperparameters)}
    default = None if field.default is MISSING else field.default
    if not hyperparameter and "[" not in text and default not in _UNSHOWN_DEFAULTS:
        text = f"{text} [{default}]"
    return text


def _option(field: Field, hints: dict[str, Any]) -> Callable[[Any], Any]:
    kind, several = _plain(hints[field.name])
    schema = load_schema("train_config")["properties"].get(field.name, {})
    choices = schema.get("enum")
    declared = [flag_name(field), *FLAG_ALIASES.get(field.name, ())]
    options: dict[str, Any] = {"help": _help(field)}
    if kind is bool:
        options.update(is_flag=True, default=None)
    elif field.name in FLAG_TYPES:
        options["type"] = FLAG_TYPES[field.name]
    elif choices:
        options["type"] = click.Choice(choices, case_sensitive=False)
    else:
        options["type"] = _PLAIN_TYPES[kind]
    if (several and field.name not in COMMA_SEPARATED) or field.name in SEVERAL:
        options["multiple"] = True
    return click.option(*declared, DESTINATIONS.get(field.name, field.name), **options)


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``command`` with one option per TrainConfig field (click lists them in this order)."""
    hints = typing.get_type_hints(TrainConfig)
    for field in reversed(flag_fields()):
        command = _option(field, hints)(command)
    return command


def config_values(flags: dict[str, Any]) -> dict[str, Any]:
    """The fields' flag values as build_config takes them: None (unset) for an empty repeated option."""
    values = {k: (v or None) if isinstance(v, tuple) else v for k, v in flags.items()}
    if values.get("store_root") is not None:
        values["store_root"] = str(values["store_root"])
    return values
