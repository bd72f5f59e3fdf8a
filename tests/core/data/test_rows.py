from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from jnreg.core.data import rows as data
from jnreg.core.host.spec import DataOptions
from jnreg.core.models.loading import load_tokenizer
from jnreg.errors import DataError

GOOD = {
    "prompt": "Claim: The bridge reopened on Monday.\nContext: The transport office confirmed the reopening.",
    "response": json.dumps(
        {"verdict": "verified", "confidence": 0.9, "score": 0.9, "rationale": "Confirmed.", "evidence_needed": "no"}
    ),
}


def line(row) -> str:
    return row if isinstance(row, str) else json.dumps(row)


BAD_ROWS = {
    "invalid-json": ('{"prompt": "x", "response": ', "invalid JSON"),
    "not-an-object": ('["prompt", "response"]', "must be a JSON object"),
    "missing-response": ({"prompt": "Claim: x"}, "missing field 'response'"),
    "missing-prompt": ({"response": GOOD["response"]}, "missing field 'prompt'"),
    "prompt-not-string": ({"prompt": 42, "response": GOOD["response"]}, "field 'prompt' must be a string, got int"),
    "response-not-string": ({"prompt": "Claim: x", "response": {"verdict": "x"}}, "must be a string, got dict"),
    "empty-response": ({"prompt": "Claim: x", "response": "   "}, "field 'response' is empty"),
    "empty-prompt": ({"prompt": "", "response": GOOD["response"]}, "field 'prompt' is empty"),
    "response-not-json": ({"prompt": "Claim: x", "response": "verified, probably"}, "response is not JSON"),
    "response-missing-key": (
        {"prompt": "Claim: x", "response": json.dumps({"verdict": "verified"})},
        "fails the agent's schema",
    ),
    "response-bad-enum": (
        {"prompt": "Claim: x", "response": GOOD["response"].replace("verified", "probably")},
        "is not one of",
    ),
    "response-out-of-range": (
        {"prompt": "Claim: x", "response": GOOD["response"].replace("0.9,", "1.7,", 1)},
        "greater than the maximum",
    ),
    "empty-text": ({"text": ""}, "field 'text' is empty"),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_row_names_file_line_and_reason(tmp_path, builtin_agents, kind):
    bad, reason = BAD_ROWS[kind]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join([line(GOOD), "", line(bad), line(GOOD)]) + "\n", encoding="utf-8")
    spec = builtin_agents.get("fact_checker").spec
    options = DataOptions(train_files=(str(path),))
    with pytest.raises(DataError) as caught:
        data.check_records(data.load_records(spec, options), options, spec, on_bad_row="fail")
    message = str(caught.value)
    assert f"{path}:3:" in message and reason in message

    checked = data.check_records(data.load_records(spec, options), options, spec, on_bad_row="skip")
    assert len(checked.examples) == 2
    assert len(checked.skipped) == 1 and checked.skipped[0].startswith(f"{path}:3:")


def test_file_level_problems(tmp_path, builtin_agents):
    spec = builtin_agents.get("fact_checker").spec

    def read(*files: str):
        options = DataOptions(train_files=files)
        return data.check_records(data.load_records(spec, options), options, spec)

    broken_json = tmp_path / "rows.json"
    broken_json.write_text('[\n  {"prompt": "a",\n  "response" "b"}\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"rows\.json:3: invalid JSON"):
        read(str(broken_json))
    not_a_list = tmp_path / "object.json"
    not_a_list.write_text('{"prompt": "a"}', encoding="utf-8")
    with pytest.raises(DataError, match="must hold a list of rows"):
        read(str(not_a_list))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match="latin1.jsonl: not UTF-8"):
        read(str(latin1))
    with pytest.raises(DataError, match="no data file matches"):
        read(str(tmp_path / "missing-*.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no usable training rows"):
        read(str(empty))


def test_byte_order_mark_and_crlf_are_accepted_with_line_numbers_unchanged(tmp_path, builtin_agents):
    spec = builtin_agents.get("fact_checker").spec
    separator = dict(GOOD, prompt=GOOD["prompt"] + "\u2028Quoted as-is.\u2029")
    rows = [line(GOOD), "", json.dumps(separator, ensure_ascii=False), line(GOOD)]
    jsonl = tmp_path / "excel.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    as_json = tmp_path / "notepad.json"
    as_json.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD, GOOD], indent=1).replace("\n", "\r\n").encode())
    options = DataOptions(train_files=(str(jsonl), str(as_json)))
    checked = data.check_records(data.load_records(spec, options), options, spec)
    assert [e.where for e in checked.examples] == [
        f"{jsonl}:1",
        f"{jsonl}:3",
        f"{jsonl}:4",
        f"{as_json}:row 1",
        f"{as_json}:row 2",
    ]
    assert checked.examples[1].prompt == separator["prompt"] and checked.examples[0].prompt == GOOD["prompt"]

    jsonl.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([line(GOOD), line(GOOD), '{"prompt": ']).encode())
    with pytest.raises(DataError, match=rf"{jsonl.name}:3: invalid JSON"):
        data.check_records(data.load_records(spec, options), options, spec)


def test_globs_json_files_and_max_samples(tmp_path, builtin_agents):
    spec = builtin_agents.get("fact_checker").spec
    (tmp_path / "a.jsonl").write_text("\n".join([line(GOOD)] * 3), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps([GOOD, GOOD]), encoding="utf-8")
    options = DataOptions(train_files=(str(tmp_path / "*.json*"),))
    checked = data.check_records(data.load_records(spec, options), options, spec)
    assert [e.where for e in checked.examples][-1] == f"{tmp_path / 'b.json'}:row 2"
    assert len(checked.examples) == 5
    limited = data.check_records(data.load_records(spec, options), options, spec, limit=4)
    assert len(limited.examples) == 4


def test_local_dataset_directory(tmp_path, builtin_agents):
    from datasets import Dataset

    Dataset.from_list([GOOD, GOOD]).save_to_disk(str(tmp_path / "ds"))
    spec = builtin_agents.get("fact_checker").spec
    options = DataOptions(dataset_name=str(tmp_path / "ds"))
    checked = data.check_records(data.load_records(spec, options), options, spec)
    assert len(checked.examples) == 2 and checked.examples[0].where.endswith("[train]:row 1")


def test_unknown_hub_dataset_offline_is_a_clear_error(builtin_agents):
    spec = builtin_agents.get("fact_checker").spec
    options = DataOptions(dataset_name="justnews/does-not-exist")
    with pytest.raises(DataError, match="cannot load dataset 'justnews/does-not-exist'"):
        list(data.load_records(spec, options))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("jnreg:tiny-mistral")


def test_rendering_matches_serving_one_bos_eos_trained(tokenizer, builtin_agents):
    spec = builtin_agents.get("fact_checker").spec
    renderer = data.Renderer(tokenizer, spec.template)
    example = data.Example("x:1", prompt=GOOD["prompt"], response=GOOD["response"])
    prompt_ids, completion_ids = renderer.render(example)
    serving = tokenizer.apply_chat_template(spec.template.messages(GOOD["prompt"]), add_generation_prompt=True)
    serving_ids = serving["input_ids"] if isinstance(serving, dict) or hasattr(serving, "keys") else serving
    assert prompt_ids == list(serving_ids), "training prompt differs from what serving sends"
    ids = prompt_ids + completion_ids
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert completion_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.decode(completion_ids, skip_special_tokens=True).strip() == GOOD["response"]
    assert spec.template.system in tokenizer.decode(prompt_ids)


def test_prompt_template_with_literal_bos_still_gives_one_bos(tokenizer, builtin_agents):
    spec = builtin_agents.get("fact_checker").spec
    renderer = data.Renderer(tokenizer, spec.template, "<s>[INST] {system}\n{prompt} [/INST] {response}")
    prompt_ids, completion_ids = renderer.render(data.Example("x:1", prompt="Claim: y", response=GOOD["response"]))
    assert (prompt_ids + completion_ids).count(tokenizer.bos_token_id) == 1
    assert completion_ids[-1] == tokenizer.eos_token_id
    assert "Answer with" not in tokenizer.decode(completion_ids)
    with pytest.raises(DataError, match="exactly once"):
        data.Renderer(tokenizer, spec.template, "{prompt} only")
    with pytest.raises(DataError, match=r"unknown placeholder\(s\) \{foo\}"):
        data.Renderer(tokenizer, spec.template, "{prompt} {foo} {response}")


def test_template_that_drops_the_system_prompt_before_an_answer_still_trains_on_the_serving_prompt(
    tokenizer, builtin_agents
):
    """Mistral v0.3 (and the built-in model) put the system prompt only into a final user turn."""
    spec = builtin_agents.get("fact_checker").spec
    messages = spec.template.messages(GOOD["prompt"])
    with_answer = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": GOOD["response"]}], tokenize=False
    )
    assert spec.template.system not in with_answer  # the case the fallback exists for

    prompt_ids, completion_ids = data.Renderer(tokenizer, spec.template).render(
        data.Example("x:1", prompt=GOOD["prompt"], response=GOOD["response"])
    )
    serving = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(prompt_ids) == serving
    # The answer's framing comes from the template: " answer</s>", tokenized after the prompt.
    joint = tokenizer(serving + " " + GOOD["response"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert prompt_ids + completion_ids == joint


def prepared(tmp_path, monkeypatch, agent, tokenizer, rows: list[dict], **settings):
    """The rows as a training run gets them: written to a file, checked and tokenized by prepare_data."""
    from jnreg.core.data.prepare import prepare_data
    from jnreg.core.training.config import build_config

    monkeypatch.setenv("JNREG_DATA_CACHE", str(tmp_path / "data-cache"))
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    values = {"base_model": "jnreg:tiny-mistral", "output_dir": str(tmp_path / "out"), "train_files": [str(path)]}
    config = build_config(agent.spec, {}, {**values, "eval_fraction": 0.0, **settings})
    return prepare_data(config, agent, tokenizer), path


def test_overlong_rows_truncate_prompt_from_the_left_or_drop(tmp_path, monkeypatch, tokenizer, builtin_agents):
    agent = builtin_agents.get("fact_checker")
    renderer = data.Renderer(tokenizer, agent.spec.template)
    long_prompt = "Claim: the budget passed.\nContext: " + "council minutes record the vote. " * 60
    example = data.Example("f:1", prompt=long_prompt, response=GOOD["response"])
    prompt, completion = renderer.render(example)
    limit = len(prompt) + len(completion) - 50
    rows = [{"prompt": long_prompt, "response": GOOD["response"]}]
    kept, path = prepared(tmp_path, monkeypatch, agent, tokenizer, rows, max_seq_length=limit, overlong="truncate")
    row = kept.train.rows[0]
    assert len(row["input_ids"]) == limit and kept.train.truncated == [f"{path}:1"]
    assert row["input_ids"][0] == tokenizer.bos_token_id and row["input_ids"][-1] == tokenizer.eos_token_id
    assert row["input_ids"][-len(completion) :] == completion and sum(row["completion_mask"]) == len(completion)
    with pytest.raises(DataError, match="every row is longer"):
        prepared(tmp_path, monkeypatch, agent, tokenizer, rows, max_seq_length=limit, overlong="drop")


def test_text_rows_train_on_the_whole_text(tmp_path, monkeypatch, tokenizer, builtin_agents):
    kept, _ = prepared(
        tmp_path, monkeypatch, builtin_agents.get("fact_checker"), tokenizer, [{"text": "Plain news text."}]
    )
    row = kept.train.rows[0]
    assert row["input_ids"][0] == tokenizer.bos_token_id and row["input_ids"][-1] == tokenizer.eos_token_id
    assert all(row["completion_mask"])


def test_cli_dry_run_reports_bad_row_one_line(tmp_path, builtin_agents):
    path = tmp_path / "claims.jsonl"
    path.write_text(line(GOOD) + "\n" + line({"prompt": "Claim: x"}) + "\n", encoding="utf-8")
    args = ["train", "fact_checker", "--model_name_or_path", "jnreg:tiny-mistral", "--train-files", str(path)]
    done = CliRunner().invoke(cli, [*args, "--dry-run", "--output-dir", str(tmp_path / "out")])
    assert done.exit_code == 1
    last = done.output.strip().splitlines()[-1]
    assert last.startswith("Error:") and f"{path}:2: missing field 'response'" in last
