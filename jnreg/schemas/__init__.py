"""JSON Schemas for every JSON document jnreg writes, and the one call that validates against them.

Validation is jsonschema-rs (Draft 2020-12 compiled to Rust): importing it and compiling a schema take a few
milliseconds, so the registry commands check every manifest and map they read without paying the start-up
of a pure-Python validator. It is imported on first use, so commands that validate nothing never load it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from jnreg.errors import IntegrityError, first_line

if TYPE_CHECKING:
    import jsonschema_rs

SCHEMA_NAMES = (
    "manifest",
    "training_summary",
    "agent_model_map",
    "journal_entry",
    "train_config",
    "object_current",
    "object_intent",
    "object_service",
    "evaluation",
    "eval_row",
    "data_cache",
    "signature_bundle",
    "signature_statement",
    "training_log",
)


class SchemaProblem(ValueError):
    """A schema that is not a valid Draft 2020-12 JSON Schema, or that cannot be compiled."""


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema called ``name`` (one of SCHEMA_NAMES), parsed."""
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


class Checker:
    """A compiled schema; ``errors`` says every way a document fails it."""

    def __init__(self, validator: jsonschema_rs.Draft202012Validator) -> None:
        self._validator = validator

    def errors(self, document: Any) -> list[str]:
        """Every way ``document`` fails the schema, as ``path: message`` lines sorted by path; empty when valid."""
        try:
            found = list(self._validator.iter_errors(document))
        except ValueError as exc:  # a value JSON has no spelling for: a bytes field, a non-string key
            return [f"<root>: not a JSON document: {exc}"]
        pairs = sorted(((e.instance_path, e.message) for e in found), key=lambda pair: [str(p) for p in pair[0]])
        return [f"{'/'.join(str(p) for p in path) or '<root>'}: {message}" for path, message in pairs]

    def first_error(self, document: Any) -> str | None:
        """The first of ``errors`` (by path), or None when the document is valid."""
        found = self.errors(document)
        return found[0] if found else None


def checker(schema: Mapping[str, Any] | bool, *, formats: bool = False) -> Checker:
    """The compiled ``schema``, once per distinct schema; SchemaProblem when it is not a valid one.

    ``formats`` enforces ``format`` (jnreg's own schemas do); otherwise it is an annotation, as 2020-12 says.
    """
    try:
        text = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise SchemaProblem(f"not JSON: {exc}") from None
    return _compiled(text, formats)


@cache
def _compiled(text: str, formats: bool) -> Checker:
    import jsonschema_rs

    try:
        # Compiling checks the schema against the meta-schema first. Offline: schemas are checked where
        # they run, often with no network, so a remote $ref is refused here rather than fetched.
        validator = jsonschema_rs.Draft202012Validator(json.loads(text), validate_formats=formats, offline=True)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError) as exc:
        where = "/".join(str(p) for p in getattr(exc, "instance_path", []))
        raise SchemaProblem(f"{where + ': ' if where else ''}{exc.message}") from None
    except ValueError as exc:
        raise SchemaProblem(first_line(exc)) from None
    return Checker(validator)


@cache
def _named(name: str) -> Checker:
    return checker(load_schema(name), formats=True)


def errors(name: str, document: Any) -> list[str]:
    """Every way ``document`` fails the schema, as ``path: message`` lines; empty when valid."""
    return _named(name).errors(document)


def validate(name: str, document: Any, what: str, error: type[Exception] = IntegrityError) -> None:
    """Raise ``error`` naming ``what`` and the first problem when ``document`` fails schema ``name``."""
    problems = errors(name, document)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise error(f"{what} does not match the {name} schema: {problems[0]}{more}")
