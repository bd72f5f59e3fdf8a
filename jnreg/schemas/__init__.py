"""JSON Schemas for every JSON document jnreg writes, and the one call that validates against them."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jnreg.errors import IntegrityError
from jnreg.schemas import quick

SCHEMA_NAMES = (
    "manifest",
    "training_summary",
    "agent_model_map",
    "journal_entry",
    "train_config",
    "object_current",
    "object_intent",
    "evaluation",
    "eval_row",
    "data_cache",
    "signature_bundle",
    "signature_statement",
)


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema called ``name`` (one of SCHEMA_NAMES), parsed."""
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def _validator(name: str):
    from jsonschema import Draft202012Validator, FormatChecker

    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


@cache
def _quick(name: str) -> bool:
    return quick.supports(load_schema(name))


def errors(name: str, document: Any) -> list[str]:
    """Every way ``document`` fails the schema, as ``path: message`` lines; empty when valid."""
    if _quick(name):
        pairs = quick.errors(load_schema(name), document)
    else:
        pairs = [(list(e.absolute_path), e.message) for e in _validator(name).iter_errors(document)]
    pairs.sort(key=lambda pair: [str(p) for p in pair[0]])
    return [f"{'/'.join(str(p) for p in path) or '<root>'}: {message}" for path, message in pairs]


def validate(name: str, document: Any, what: str, error: type[Exception] = IntegrityError) -> None:
    """Raise ``error`` naming ``what`` and the first problem when ``document`` fails schema ``name``."""
    problems = errors(name, document)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise error(f"{what} does not match the {name} schema: {problems[0]}{more}")
