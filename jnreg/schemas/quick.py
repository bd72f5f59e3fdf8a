"""A small JSON Schema (2020-12) checker for the keywords jnreg's own schemas use, without importing jsonschema.

Importing jsonschema costs about as much as starting Python; `store resolve` and `store list` validate a
manifest and the map on every call, so they use this. A schema with any other keyword is left to jsonschema
(``supports`` says which), and a test checks both give the same verdicts on jnreg's schemas.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from typing import Any

ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "$defs", "$comment", "default", "examples"})
KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "contains",
        "enum",
        "const",
        "pattern",
        "minLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "format",
        "anyOf",
        "allOf",
        "if",
        "then",
        "$ref",
    }
)
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer(),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_SCHEMA_KEYS = ("properties", "$defs")
_ONE_SCHEMA = ("additionalProperties", "items", "contains", "if", "then")
_MANY_SCHEMAS = ("anyOf", "allOf")


def supports(schema: Any) -> bool:
    """Whether every keyword in ``schema`` (and the schemas inside it) is one this checker knows."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    for key, value in schema.items():
        if key in ANNOTATIONS - {"$defs"}:
            continue
        if key not in KEYWORDS and key != "$defs":
            return False
        if key in _SCHEMA_KEYS and not all(supports(s) for s in value.values()):
            return False
        if key in _ONE_SCHEMA and not supports(value):
            return False
        if key in _MANY_SCHEMAS and not all(supports(s) for s in value):
            return False
        if key == "$ref" and not value.startswith("#/$defs/"):
            return False
    return True


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def _is_datetime(value: str) -> bool:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", value):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return True


def _show(value: Any) -> str:
    return repr(value)


def errors(schema: dict[str, Any], document: Any) -> list[tuple[list[Any], str]]:
    """Every (path, message) where ``document`` fails ``schema``; messages read like jsonschema's."""
    found: list[tuple[list[Any], str]] = []
    _check(schema, document, [], schema, found)
    return found


def _check(schema: Any, value: Any, path: list[Any], root: dict[str, Any], out: list[tuple[list[Any], str]]) -> None:
    if schema is True:
        return
    if schema is False:
        out.append((path, f"False schema does not allow {_show(value)}"))
        return
    if "$ref" in schema:
        _check(root["$defs"][schema["$ref"].removeprefix("#/$defs/")], value, path, root, out)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            shown = ", ".join(repr(t) for t in types)
            out.append((path, f"{_show(value)} is not of type {shown}"))
            return
    if "const" in schema and not _equal(value, schema["const"]):
        out.append((path, f"{_show(schema['const'])} was expected"))
    if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
        out.append((path, f"{_show(value)} is not one of {schema['enum']!r}"))
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            out.append((path, f"{_show(value)} is too short"))
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            out.append((path, f"{_show(value)} does not match {schema['pattern']!r}"))
        if schema.get("format") == "date-time" and not _is_datetime(value):
            out.append((path, f"{_show(value)} is not a 'date-time'"))
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            out.append((path, f"{_show(value)} is less than the minimum of {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            out.append((path, f"{_show(value)} is greater than the maximum of {schema['maximum']}"))
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            out.append((path, f"{_show(value)} is less than or equal to the minimum of {schema['exclusiveMinimum']}"))
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            limit = schema["exclusiveMaximum"]
            out.append((path, f"{_show(value)} is greater than or equal to the maximum of {limit}"))
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                out.append((path, f"{name!r} is a required property"))
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                _check(properties[name], item, [*path, name], root, out)
        extra = schema.get("additionalProperties")
        if extra is False:
            unexpected = [name for name in value if name not in properties]
            if unexpected:
                listed = ", ".join(repr(n) for n in unexpected)
                verb = "was" if len(unexpected) == 1 else "were"
                out.append((path, f"Additional properties are not allowed ({listed} {verb} unexpected)"))
        elif isinstance(extra, dict):
            for name, item in value.items():
                if name not in properties:
                    _check(extra, item, [*path, name], root, out)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            out.append((path, f"{_show(value)} should be non-empty" if schema["minItems"] == 1 else "too short"))
        if "items" in schema:
            for index, item in enumerate(value):
                _check(schema["items"], item, [*path, index], root, out)
        if "contains" in schema and not any(_passes(schema["contains"], item, root) for item in value):
            out.append((path, f"{_show(value)} does not contain items matching the given schema"))
    if "anyOf" in schema and not any(_passes(option, value, root) for option in schema["anyOf"]):
        out.append((path, f"{_show(value)} is not valid under any of the given schemas"))
    for option in schema.get("allOf", []):
        _check(option, value, path, root, out)
    if "if" in schema and "then" in schema and _passes(schema["if"], value, root):
        _check(schema["then"], value, path, root, out)


def _passes(schema: Any, value: Any, root: dict[str, Any]) -> bool:
    found: list[tuple[list[Any], str]] = []
    _check(schema, value, [], root, found)
    return not found


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b
