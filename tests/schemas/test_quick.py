"""The quick schema checker gives jsonschema's verdicts on every jnreg schema, on real documents and broken ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from jnreg.registry import ModelStore
from jnreg.registry.journal import read_entries
from jnreg.schemas import SCHEMA_NAMES, load_schema, quick
from tests.registry_helpers import make_adapter, summary_for

ODD_VALUES = [None, True, 0, -1, 1.5, "", "x", "not..a..label", [], [1], {}, {"x": 1}]
# What the registry reads on every command: these must stay within the quick checker's keywords.
REGISTRY_SCHEMAS = (
    "manifest",
    "training_summary",
    "agent_model_map",
    "journal_entry",
    "train_config",
    "object_current",
    "object_intent",
)


def documents(tmp_path: Path) -> dict[str, list[Any]]:
    from jnreg.core.training.config import TrainConfig

    store = ModelStore(tmp_path / "store")
    published = store.publish("critic", make_adapter(tmp_path / "s", seed=1, summary=summary_for("critic")))
    return {
        "manifest": [published.manifest],
        "training_summary": [published.manifest["training_summary"]],
        "agent_model_map": [store.read_map()],
        "journal_entry": read_entries(store.journal_path),
        "train_config": [TrainConfig(agent="critic", adapter_name="critic_lora", output_dir="out").to_document()],
        "object_current": [
            {"schema_version": 1, "version": "v1", "seq": 3},
            {"schema_version": 1, "version": None, "seq": 0},
        ],
        "object_intent": [
            {"schema_version": 1, "owner": "host_1-12-0123abcd", "action": "publish", "agent": "critic",
             "version": "v1", "op": "0" * 32, "who": "a@b", "when": "2026-01-01T00:00:00.5Z"}
        ],
    }  # fmt: skip


def variants(document: Any) -> list[Any]:
    """The document, and copies with one field removed or replaced by an odd value, one level deep and two."""
    found = [document]
    if not isinstance(document, dict):
        return found
    for key, value in document.items():
        without = copy.deepcopy(document)
        del without[key]
        found.append(without)
        for odd in ODD_VALUES:
            changed = copy.deepcopy(document)
            changed[key] = odd
            found.append(changed)
        if isinstance(value, dict):
            for inner in list(value)[:6]:
                for odd in ODD_VALUES[:6]:
                    changed = copy.deepcopy(document)
                    changed[key][inner] = odd
                    found.append(changed)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for inner in value[0]:
                for odd in ODD_VALUES[:6]:
                    changed = copy.deepcopy(document)
                    changed[key][0][inner] = odd
                    found.append(changed)
    found.append({**document, "unexpected": 1})
    return found


def test_schemas_beyond_the_quick_checker_are_still_enforced() -> None:
    from jnreg.schemas import errors

    beyond = [name for name in SCHEMA_NAMES if not quick.supports(load_schema(name))]
    assert beyond and not set(beyond) & set(REGISTRY_SCHEMAS)
    for name in beyond:
        assert errors(name, {"schema_version": 1}), name  # jsonschema finds the missing fields


@pytest.mark.parametrize("name", REGISTRY_SCHEMAS)
def test_quick_checker_agrees_with_jsonschema(name: str, tmp_path: Path) -> None:
    schema = load_schema(name)
    assert quick.supports(schema)
    reference = Draft202012Validator(schema, format_checker=FormatChecker())
    checked = 0
    for document in documents(tmp_path)[name]:
        assert quick.errors(schema, document) == [], json.dumps(document)[:200]
        for variant in variants(document):
            expected = sorted({tuple(map(str, e.absolute_path)) for e in reference.iter_errors(variant)})
            got = sorted({tuple(map(str, path)) for path, _ in quick.errors(schema, variant)})
            assert got == expected, json.dumps(variant)[:300]
            checked += 1
    assert checked > 20


def test_unknown_keywords_are_left_to_jsonschema() -> None:
    assert not quick.supports({"type": "object", "patternProperties": {"^x": {"type": "string"}}})
    assert not quick.supports({"$ref": "other.json#/x"})
    assert quick.supports({"anyOf": [{"type": "string"}, {"$ref": "#/$defs/a"}], "$defs": {"a": {"type": "null"}}})
