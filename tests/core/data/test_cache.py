"""The tokenized-data cache: a hit gives exactly the rows and counts of a fresh run; any keyed change misses."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from jnreg.core.data import cache as datacache
from jnreg.core.data import rows as data
from jnreg.core.data.prepare import marked_example, prepare_data
from jnreg.core.host.spec import PromptTemplate
from jnreg.core.models.loading import load_tokenizer
from jnreg.core.training.config import build_config
from jnreg.schemas import errors as schema_errors

SNIPPET = "The Harwick council voted 5-2 to close the Elm Street library branch at the end of June."


def response(points: int) -> str:
    return json.dumps(
        {
            "summary": "Harwick council voted to close the branch.",
            "narrative_voice": "Neutral local news report.",
            "key_points": [f"point {i}" for i in range(points)],
            "cautions": [],
            "pull_quotes": [],
        }
    )


def write_rows(path, count: int = 24) -> None:
    lines = []
    for i in range(count):
        lines.append(json.dumps({"prompt": f"{SNIPPET} Snippet {i}. " * (1 + i % 7), "response": response(1 + i % 3)}))
        if i % 9 == 4:
            lines.append(json.dumps({"prompt": "Claim: x"}))  # a bad row, skipped and counted
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "data-cache"
    monkeypatch.setenv("JNREG_DATA_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("jnreg:tiny-mistral")


def config_for(agent, tmp_path, **values):
    settings = {
        "base_model": "jnreg:tiny-mistral",
        "output_dir": str(tmp_path / "out"),
        "train_files": [str(tmp_path / "rows.jsonl")],
        "on_bad_row": "skip",
        "max_seq_length": 300,
        "eval_fraction": 0.2,
        **values,
    }
    return build_config(agent.spec, {}, settings)


@dataclasses.dataclass
class Split:
    examples: list = dataclasses.field(default_factory=list)
    rows: list = dataclasses.field(default_factory=list)
    truncated: list = dataclasses.field(default_factory=list)
    prompt_tokens: int = 0
    supervised_tokens: int = 0

    @property
    def lengths(self) -> list[int]:
        return [len(row["input_ids"]) for row in self.rows]


def split_by_hand(examples, renderer, config) -> tuple[Split, Split]:
    """The rows and counts as one plain loop over lists makes them: what the streamed, cached pipeline must equal."""
    held = data.held_out(len(examples), config.eval_fraction, config.seed)
    train, evaluation = Split(), Split()
    for index, example in enumerate(examples):
        split = evaluation if index in held else train
        prompt, completion = renderer.render(example)
        kept = data.fit(prompt, completion, config.max_seq_length, config.overlong)
        assert kept is not None  # this data truncates, never drops
        if kept is not prompt:
            split.truncated.append(example.where)
        split.examples.append(example)
        split.rows.append({"input_ids": kept + completion, "completion_mask": [0] * len(kept) + [1] * len(completion)})
        split.prompt_tokens += len(kept)
        split.supervised_tokens += len(completion)
    return train, evaluation


def everything(prepared) -> dict:
    """What a run takes from its data: every row, every count, the report's lines."""
    return {
        "stats": prepared.stats(),
        "train": prepared.train.rows,
        "eval": prepared.eval.rows if prepared.eval else None,
        "truncated": [prepared.train.truncated, prepared.eval.truncated if prepared.eval else None],
        "dropped": [prepared.train.dropped, prepared.eval.dropped if prepared.eval else None],
        "skipped": prepared.checked.skipped,
        "example": marked_example(prepared),
    }


def test_fresh_run_and_cache_hit_equal_a_plain_loop(tmp_path, cache, builtin_agents, tokenizer):
    agent = builtin_agents.get("synthesizer")
    write_rows(tmp_path / "rows.jsonl")
    config = config_for(agent, tmp_path)

    # The rows and counts as a plain loop makes them.
    checked = data.check_records(
        data.load_records(agent.spec, config.data_options), config.data_options, agent.spec, on_bad_row="skip"
    )
    renderer = data.Renderer(tokenizer, agent.spec.template)
    train, evaluation = split_by_hand(checked.examples, renderer, config)
    train_rows, eval_rows = train.examples, evaluation.examples
    assert train.truncated and checked.skipped  # the data exercises truncation and skipping

    fresh = prepare_data(config, agent, tokenizer)
    assert not fresh.cache_hit
    assert fresh.train.rows == train.rows and fresh.eval.rows == evaluation.rows
    assert (fresh.train.truncated, fresh.eval.truncated) == (train.truncated, evaluation.truncated)
    assert fresh.checked.skipped == checked.skipped and fresh.checked.sha256 == checked.sha256
    assert fresh.first_example == train_rows[0]
    stats = fresh.stats()
    assert stats["rows"] == len(train.rows) and stats["eval_rows"] == len(evaluation.rows)
    assert stats["prompt_tokens"] == train.prompt_tokens and stats["supervised_tokens"] == train.supervised_tokens
    assert stats["length_max"] == max(train.lengths) and stats["length_p95"] == data.percentile(train.lengths, 95)
    assert stats["rows_truncated"] == len(train.truncated) + len(evaluation.truncated)

    # The held-out rows as checked, kept with the adapter for `jnreg eval`.
    held = "".join(data.row_line(example) for example in eval_rows)
    assert fresh.eval_rows.read_text(encoding="utf-8") == held

    again = prepare_data(config, agent, tokenizer)
    assert again.cache_hit
    assert everything(again) == everything(fresh)
    assert again.eval_rows.read_text(encoding="utf-8") == held
    assert again.train.dataset[0]["input_ids"] == train.rows[0]["input_ids"]
    entries = [p for p in cache.iterdir()]
    assert len(entries) == 1, "scratch directories were left behind"
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert schema_errors("data_cache", meta) == []

    # Held-out rows that training drops as too long are not kept for evaluation either.
    dropping = prepare_data(config_for(agent, tmp_path, overlong="drop", max_seq_length=300), agent, tokenizer)
    kept = dropping.eval_rows.read_text(encoding="utf-8").splitlines()
    assert dropping.eval.dropped and len(kept) == len(dropping.eval) < len(eval_rows)


def test_parallel_tokenizing_gives_the_serial_rows(tmp_path, cache, builtin_agents, tokenizer, monkeypatch):
    agent = builtin_agents.get("synthesizer")
    write_rows(tmp_path / "rows.jsonl", count=40)
    config = config_for(agent, tmp_path, overlong="drop")
    monkeypatch.setattr(datacache, "CHUNK", 3)  # many batches in flight over few rows
    monkeypatch.setenv("JNREG_DATA_WORKERS", "1")
    serial = everything(prepare_data(config, agent, tokenizer))
    for entry in cache.iterdir():
        datacache.discard(entry)
    monkeypatch.setenv("JNREG_DATA_WORKERS", "2")
    parallel = prepare_data(config, agent, tokenizer)
    assert not parallel.cache_hit
    assert everything(parallel) == serial
    assert parallel.train.dropped  # the data exercises dropping


def test_every_keyed_input_misses(tmp_path, cache, builtin_agents, tokenizer, monkeypatch):
    monkeypatch.setattr(datacache, "KEEP", 20)
    agent = builtin_agents.get("synthesizer")
    rows = tmp_path / "rows.jsonl"
    write_rows(rows)
    base = config_for(agent, tmp_path)
    first = everything(prepare_data(base, agent, tokenizer))
    assert prepare_data(base, agent, tokenizer).cache_hit

    other_system = dataclasses.replace(
        agent, spec=dataclasses.replace(agent.spec, template=PromptTemplate(system="Write one plain sentence."))
    )
    changed_template = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    changed_template.chat_template = tokenizer.chat_template.replace("[INST] ", "[INST]  ")
    variants = {
        "prompt template": (config_for(agent, tmp_path, prompt_template="{system} {prompt} => {response}"), agent),
        "agent system prompt": (base, other_system),
        "max_seq_length": (config_for(agent, tmp_path, max_seq_length=320), agent),
        "overlong": (config_for(agent, tmp_path, overlong="drop"), agent),
        "eval_fraction": (config_for(agent, tmp_path, eval_fraction=0.3), agent),
        "seed": (config_for(agent, tmp_path, seed=7), agent),
        "max_train_samples": (config_for(agent, tmp_path, max_train_samples=20), agent),
        "on_bad_row": (config_for(agent, tmp_path, on_bad_row="fail", max_train_samples=4), agent),
    }
    for name, (config, which) in variants.items():
        assert not prepare_data(config, which, tokenizer).cache_hit, name
    assert not prepare_data(base, agent, changed_template).cache_hit, "chat template"

    text = rows.read_bytes()
    rows.write_bytes(text.replace(b"Snippet 3.", b"Snippet 8.", 1))  # one byte of one row
    changed = prepare_data(base, agent, tokenizer)
    assert not changed.cache_hit and everything(changed)["train"] != first["train"]
    rows.write_bytes(text)
    assert prepare_data(base, agent, tokenizer).cache_hit


def test_a_damaged_entry_is_rebuilt(tmp_path, cache, builtin_agents, tokenizer):
    agent = builtin_agents.get("synthesizer")
    write_rows(tmp_path / "rows.jsonl")
    config = config_for(agent, tmp_path)
    first = everything(prepare_data(config, agent, tokenizer))
    (entry,) = cache.iterdir()
    (entry / "train.arrow").unlink()
    rebuilt = prepare_data(config, agent, tokenizer)
    assert not rebuilt.cache_hit and everything(rebuilt) == first
    (entry,) = cache.iterdir()
    (entry / "meta.json").write_text('{"schema_version": 1}')
    assert not prepare_data(config, agent, tokenizer).cache_hit
    assert prepare_data(config, agent, tokenizer).cache_hit


def test_old_entries_are_pruned(tmp_path, cache, builtin_agents, tokenizer, monkeypatch):
    monkeypatch.setattr(datacache, "KEEP", 2)
    agent = builtin_agents.get("synthesizer")
    write_rows(tmp_path / "rows.jsonl")
    for seed in (1, 2, 3):
        prepare_data(config_for(agent, tmp_path, seed=seed), agent, tokenizer)
    assert len(list(cache.iterdir())) == 2
    assert prepare_data(config_for(agent, tmp_path, seed=3), agent, tokenizer).cache_hit
    assert not prepare_data(config_for(agent, tmp_path, seed=1), agent, tokenizer).cache_hit


def test_an_entry_held_here_is_kept_until_it_is_dropped(tmp_path, cache, builtin_agents, tokenizer, monkeypatch):
    monkeypatch.setattr(datacache, "KEEP", 2)
    agent = builtin_agents.get("synthesizer")
    write_rows(tmp_path / "rows.jsonl")
    held = prepare_data(config_for(agent, tmp_path, seed=1), agent, tokenizer)
    key = held.train.path.parent.name
    for seed in (2, 3, 4):
        prepare_data(config_for(agent, tmp_path, seed=seed), agent, tokenizer)
    assert key in {p.name for p in cache.iterdir()} and held.eval_rows is not None and held.eval_rows.is_file()
    assert len(held.train.rows) == len(held.train)
    del held
    prepare_data(config_for(agent, tmp_path, seed=5), agent, tokenizer)
    assert key not in {p.name for p in cache.iterdir()} and len(list(cache.iterdir())) == 2


# One run's data step, in a process of its own: "hold" prepares seed N, prints the entry's key and
# what it read, waits for a line, reads its files again and prints that, then waits to be killed;
# "churn" prepares each seed given, as other runs sharing the cache would.
RUN = """
import hashlib, sys
import pyarrow as pa
from jnreg.core.data.prepare import prepare_data
from jnreg.core.host.plugins import Host
from jnreg.core.models.loading import load_tokenizer
from jnreg.core.training.config import build_config
from jnreg.plugins import synthesizer

rows, mode, seeds = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
host = Host(autoload=False)
host.register(synthesizer, name="synthesizer")
agent, tokenizer = host.get("synthesizer"), load_tokenizer("jnreg:tiny-mistral")

def prepared(seed):
    settings = {"base_model": "jnreg:tiny-mistral", "train_files": [rows], "on_bad_row": "skip",
                "max_seq_length": 300, "eval_fraction": 0.2, "seed": seed}
    return prepare_data(build_config(agent.spec, {}, settings), agent, tokenizer)

def read(held):
    text = held.eval_rows.read_bytes()
    with pa.OSFile(str(held.train.path)) as source:
        train = pa.ipc.open_stream(source).read_all().num_rows
    return f"{hashlib.sha256(text).hexdigest()} {len(text.splitlines())} {train}"

if mode == "churn":
    for seed in seeds:
        prepared(seed)
else:
    held = prepared(seeds[0])
    print(held.train.path.parent.name, read(held), flush=True)
    sys.stdin.readline()
    print(read(held), flush=True)
    sys.stdin.readline()
"""


def test_an_entry_in_use_outlives_other_runs_filling_the_cache(tmp_path, cache):
    """A run's entry stays while it runs, however many entries other processes add; its end frees it."""
    write_rows(tmp_path / "rows.jsonl")
    env = {**os.environ, "JNREG_DATA_CACHE": str(cache), "JNREG_DATA_WORKERS": "1"}

    def run(mode: str, seeds: str, **kwargs):
        argv = [sys.executable, "-c", RUN, str(tmp_path / "rows.jsonl"), mode, seeds]
        if mode == "hold":
            return subprocess.Popen(argv, env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **kwargs)
        done = subprocess.run(argv, env=env, text=True, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return {p.name for p in cache.iterdir()}

    holder = run("hold", "0")
    try:
        key, *before = holder.stdout.readline().split()
        assert before and int(before[1]) > 0, "the holding run did not start"
        names = run("churn", ",".join(str(seed) for seed in range(1, datacache.KEEP + 2)))
        assert key in names and len(names) == datacache.KEEP + 1  # the 8 newest, and the one in use
        holder.stdin.write("again\n")
        holder.stdin.flush()
        assert holder.stdout.readline().split() == before  # the same files, whole
        holder.kill()  # a run that dies holds nothing
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=60)
    names = run("churn", str(datacache.KEEP + 2))
    assert key not in names and len(names) == datacache.KEEP


def test_dataset_rows_and_eval_files_hit_and_miss_by_content(tmp_path, cache, builtin_agents, tokenizer):
    """Rows that do not come from files alone are keyed by the checked rows themselves."""
    from datasets import Dataset

    agent = builtin_agents.get("synthesizer")
    write_rows(tmp_path / "rows.jsonl", count=12)
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    good = [r for r in rows if "response" in r]
    Dataset.from_list(good).save_to_disk(str(tmp_path / "ds"))
    from_dataset = config_for(agent, tmp_path, train_files=[], dataset_name=str(tmp_path / "ds"))
    fresh = prepare_data(from_dataset, agent, tokenizer)
    again = prepare_data(from_dataset, agent, tokenizer)
    assert not fresh.cache_hit and again.cache_hit and everything(again) == everything(fresh)
    Dataset.from_list(good[:-1]).save_to_disk(str(tmp_path / "ds2"))
    assert not prepare_data(
        config_for(agent, tmp_path, train_files=[], dataset_name=str(tmp_path / "ds2")), agent, tokenizer
    ).cache_hit

    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in good[:3]) + "\n", encoding="utf-8")
    with_eval = config_for(agent, tmp_path, eval_files=[str(tmp_path / "eval.jsonl")])
    fresh = prepare_data(with_eval, agent, tokenizer)
    again = prepare_data(with_eval, agent, tokenizer)
    assert not fresh.cache_hit and again.cache_hit and everything(again) == everything(fresh)
    assert len(fresh.eval) == 3 and fresh.stats()["rows_skipped"] == 1
