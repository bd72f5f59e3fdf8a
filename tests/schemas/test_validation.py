"""Schema validation (jsonschema-rs) gives jsonschema's verdicts on every jnreg schema, and says where and why."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from jnreg.errors import IntegrityError
from jnreg.registry import ModelStore
from jnreg.registry.journal import read_entries
from jnreg.schemas import SCHEMA_NAMES, SchemaProblem, checker, errors, load_schema, validate
from tests.registry_helpers import make_adapter, summary_for
from tests.report_helpers import training_log

ODD_VALUES = [None, True, 0, -1, 1.5, "", "x", "not..a..label", [], [1], {}, {"x": 1}]


def evaluation_of(digest: str) -> tuple[dict[str, Any], dict[str, Any]]:
    record = {
        "schema_version": 1,
        "digest": digest,
        "rows_source": {"kind": "files", "files": ["eval.jsonl"], "sha256": "0" * 64, "rows": 1},
        "settings": {"max_new_tokens": 8, "temperature": 0.0, "seed": 0, "limit": None, "quantization": "nf4"},
        "metrics": {
            "rows": 1, "eval_loss": 1.5, "json_rate": 1.0, "schema_valid": 0.0, "exact_match": 0.0,
            "exact_match.verdict": 1.0, "tokens_per_second": 9.0,
        },
        "details": {"answered_rows": 1, "new_tokens": 8, "generation_s": 0.5, "stopped_at_eos": 1.0},
    }  # fmt: skip
    row = {
        "index": 0, "where": "eval.jsonl:1", "prompt": "Claim: x", "reference": "{}", "loss": 1.5, "answer": "{}",
        "new_tokens": 8, "stopped_at_eos": True, "json": True, "schema_valid": False,
        "schema_error": "<root>: \"verdict\" is a required property", "exact_match": {"verdict": False},
    }  # fmt: skip
    return record, row


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Real documents jnreg wrote, one list per schema."""
    from jnreg.core.training.config import TrainConfig

    tmp_path = tmp_path_factory.mktemp("documents")
    store = ModelStore(tmp_path / "store")
    published = store.publish("critic", make_adapter(tmp_path / "s", seed=1, summary=summary_for("critic")))
    record, row = evaluation_of(published.digest)
    evaluation = store.record_evaluation("critic", published.version, record, [row])
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
        "object_service": [
            {"schema_version": 1, "seq": 4, "in_service": "v2", "undo": [None, "v1"]},
            {"schema_version": 1, "seq": 1, "in_service": None, "undo": []},
        ],
        "evaluation": [evaluation],
        "eval_row": [row],
        "training_log": [training_log("critic", 6, eval_every=3)],
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


def test_every_schema_is_enforced() -> None:
    for name in SCHEMA_NAMES:
        assert errors(name, {"schema_version": 1}), name  # the missing fields are found


@pytest.mark.parametrize("name", [n for n in SCHEMA_NAMES if n != "data_cache"])  # data_cache: tests/core/data
def test_verdicts_agree_with_jsonschema(name: str, documents: dict[str, list[Any]]) -> None:
    schema = load_schema(name)
    reference = Draft202012Validator(schema, format_checker=FormatChecker())
    checked = 0
    for document in documents[name]:
        assert errors(name, document) == [], json.dumps(document)[:200]
        for variant in variants(document):
            expected = {"/".join(map(str, e.absolute_path)) or "<root>" for e in reference.iter_errors(variant)}
            got = {line.split(": ", 1)[0] for line in errors(name, variant)}
            assert got == expected, json.dumps(variant)[:300]
            checked += 1
    assert checked > 20


def test_a_problem_names_the_document_the_path_and_the_reason(documents: dict[str, list[Any]]) -> None:
    manifest = copy.deepcopy(documents["manifest"][0])
    manifest["version"] = "a..b"  # refused by the label pattern's look-ahead only
    manifest["files"][0]["size"] = -1
    manifest["created_at"] = "yesterday"
    lines = errors("manifest", manifest)
    assert lines == [
        'created_at: "yesterday" is not a "date-time"',
        "files/0/size: -1 is less than the minimum of 0",
        'version: "a..b" does not match "^(?!.*\\.\\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"',
    ]
    with pytest.raises(IntegrityError) as caught:
        validate("manifest", manifest, "manifest /store/critic/versions/v1/manifest.json")
    assert str(caught.value) == (
        "manifest /store/critic/versions/v1/manifest.json does not match the manifest schema: "
        'created_at: "yesterday" is not a "date-time" (and 2 more)'
    )
    # Keywords beyond the simple ones: patternProperties (an evaluation's per-field rates), if/then, $ref.
    evaluation = copy.deepcopy(documents["evaluation"][0])
    evaluation["metrics"]["exact_match.verdict"] = 2
    assert errors("evaluation", evaluation) == ["metrics/exact_match.verdict: 2 is greater than the maximum of 1"]
    del evaluation["metrics"]["exact_match.verdict"]
    evaluation["metrics"]["exact.match.verdict"] = 0.5
    assert errors("evaluation", evaluation) and "exact.match.verdict" in errors("evaluation", evaluation)[0]


def test_agent_schemas_compile_once_and_bad_ones_are_refused() -> None:
    schema = {"type": "object", "required": ["verdict"], "properties": {"verdict": {"enum": ["yes", "no"]}}}
    assert checker(schema) is checker(copy.deepcopy(schema))
    assert checker(schema).first_error({"verdict": "yes"}) is None
    assert checker(schema).first_error({"verdict": "maybe"}) == 'verdict: "maybe" is not one of "yes" or "no"'
    assert checker(schema).first_error({}) == '<root>: "verdict" is a required property'
    # format is an annotation in agents' schemas, as Draft 2020-12 has it; jnreg's own schemas enforce it.
    assert checker({"format": "date-time"}).first_error("yesterday") is None
    assert checker({"format": "date-time"}, formats=True).first_error("yesterday")
    # What JSON cannot hold is a problem with the document, not a crash.
    assert checker(schema).errors({"verdict": b"yes"})[0].startswith("<root>: not a JSON document")
    for bad, reason in [
        ({"type": "nope"}, "type: "),
        ({"minimum": "x"}, 'minimum: "x" is not of type "number"'),
        ({"pattern": "("}, 'pattern: "(" is not a "regex"'),
        ({"$ref": "#/$defs/missing"}, "/$defs/missing"),
        ({"$ref": "https://example.com/schema.json"}, "https://example.com/schema.json"),
    ]:
        with pytest.raises(SchemaProblem) as caught:
            checker(bad)
        assert reason in str(caught.value) and "\n" not in str(caught.value), bad
