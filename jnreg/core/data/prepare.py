"""Data for one run: the agent's rows checked, split into train and eval, and tokenized (or found tokenized)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.core.data import cache as datacache
from jnreg.core.data import rows as data_mod
from jnreg.core.host.plugins import Agent
from jnreg.core.training.config import TrainConfig
from jnreg.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class PreparedData:
    """Checked, split and tokenized rows, with what was skipped, truncated or dropped."""

    source: str
    checked: datacache.CheckedStream
    train: datacache.TokenizedSet
    eval: datacache.TokenizedSet | None
    renderer: data_mod.Renderer
    first_example: data_mod.Example
    cache_hit: bool = False
    eval_rows: Path | None = None  # the held-out rows as checked, as JSONL
    # Keeps the cache entry these files are in from eviction for as long as the run holds this.
    lease: datacache.Lease | None = field(default=None, repr=False, compare=False)

    def stats(self) -> dict[str, Any]:
        lengths = self.train.lengths
        both = [self.train] + ([self.eval] if self.eval else [])
        return {
            "source": self.source,
            "sha256": self.checked.sha256,
            "rows": len(self.train),
            "eval_rows": len(self.eval) if self.eval else 0,
            "rows_skipped": len(self.checked.skipped),
            "rows_truncated": sum(len(t.truncated) for t in both),
            "rows_dropped_too_long": sum(len(t.dropped) for t in both),
            "prompt_tokens": self.train.prompt_tokens,
            "response_tokens": self.train.response_tokens,
            "supervised_tokens": self.train.supervised_tokens,
            "length_p50": data_mod.percentile(lengths, 50),
            "length_p95": data_mod.percentile(lengths, 95),
            "length_max": max(lengths),
            "length_histogram": histogram(lengths),
            "skipped": self.checked.skipped[:50],
            "prompt": self.prompt_format(),
        }

    def prompt_format(self) -> dict[str, Any]:
        """How the rows were rendered, kept with the version so evaluation and serving prompt it the same way."""
        template = self.renderer.template
        return {"prompt_template": self.renderer.prompt_template, "system": template.system, "user": template.user}


def _listed(items: list[str], shown: int = 3) -> str:
    return "; ".join(items[:shown]) + (f"; … {len(items) - shown} more" if len(items) > shown else "")


def row_notes(prepared: PreparedData, config: TrainConfig) -> list[str]:
    """What the run does not train on as given: rows truncated or dropped by --max-seq-length, bad rows skipped."""
    both = [prepared.train] + ([prepared.eval] if prepared.eval else [])
    truncated = [where for rows in both for where in rows.truncated]
    dropped = [why for rows in both for why in rows.dropped]
    notes = []
    if truncated:
        notes.append(
            f"note: {len(truncated)} row(s) over --max-seq-length {config.max_seq_length} keep only the end of "
            f"their prompt (--overlong truncate): {_listed(truncated)}"
        )
    if dropped:
        notes.append(
            f"note: {len(dropped)} row(s) over --max-seq-length {config.max_seq_length} were dropped "
            f"(--overlong drop): {_listed(dropped)}"
        )
    if prepared.checked.skipped:
        notes.append(f"note: {len(prepared.checked.skipped)} bad row(s) skipped: {_listed(prepared.checked.skipped)}")
    return notes


def histogram(lengths: list[int], bins: int = 20) -> dict[str, list[int]]:
    """Row lengths in tokens counted in equal-width bins: ``edges`` has one more entry than ``counts``."""
    low, high = min(lengths), max(lengths)
    width = max(1, -(-(high - low + 1) // bins))
    edges = list(range(low, high + width + 1, width))
    counts = [0] * (len(edges) - 1)
    for length in lengths:
        counts[(length - low) // width] += 1
    return {"edges": edges, "counts": counts}


def data_files(config: TrainConfig, agent: Agent) -> list[dict[str, str]]:
    """Each data file the rows came from, with its sha256; empty for a dataset or a plugin's loader."""
    from jnreg.fsutil import sha256_file

    groups = source_files(config, agent) or []
    return [
        {"role": role, "path": str(path), "sha256": sha256_file(path)}
        for role, group in zip(("train", "eval"), groups, strict=False)
        for path in group
    ]


def describe_source(config: TrainConfig, agent: Agent) -> str:
    if config.train_files:
        return ", ".join(config.train_files)
    if config.dataset_name:
        return f"{config.dataset_name}[{config.dataset_split}]"
    return f"{agent.name} sample data ({agent.plugin})"


def prepare_data(config: TrainConfig, agent: Agent, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """The run's rows checked, split and tokenized, or all of that found in the data cache.

    Rows from files are keyed by the files' bytes, so a rerun skips even the row checks; rows
    from a dataset or a plugin's loader are checked as they stream by and keyed by their content.
    """
    spec = agent.spec
    source = describe_source(config, agent)
    settings = cache_settings(config, agent, tokenizer)
    files = source_files(config, agent)
    key = None
    if files is not None:
        files_key = datacache.files_digest(files)
        key = datacache.cache_key({"files": files_key, **settings})
        entry = datacache.lookup(key)
        if entry is not None:
            renderer = data_mod.Renderer(tokenizer, spec.template, config.prompt_template)
            return PreparedData(
                source,
                entry.checked,
                entry.train,
                entry.eval,
                renderer,
                entry.first_example,
                True,
                entry.eval_rows,
                entry.lease,
            )
    work = datacache.scratch()
    kept_work = False
    try:
        skipped: list[str] = []
        records = data_mod.load_records(spec, config.data_options, agent.plugin)
        train_in = datacache.spill(
            data_mod.iter_checked(
                records,
                config.data_options,
                spec,
                skipped,
                on_bad_row=config.on_bad_row,
                limit=config.max_train_samples,
            ),
            work / "checked.arrow",
            skipped,
        )
        eval_in = None
        held: set[int] = set()
        if config.eval_files:
            eval_skipped: list[str] = []
            eval_in = datacache.spill(
                data_mod.iter_checked(
                    data_mod.default_loader(config.eval_options, None),
                    config.eval_options,
                    spec,
                    eval_skipped,
                    on_bad_row=config.on_bad_row,
                ),
                work / "eval-checked.arrow",
                eval_skipped,
            )
            skipped.extend(eval_skipped)
        else:
            held = data_mod.held_out(train_in.count, config.eval_fraction, config.seed)
        renderer = data_mod.Renderer(tokenizer, spec.template, config.prompt_template)
        rows = {
            "train": {"rows": train_in.count, "identity": train_in.identity},
            "eval": None if eval_in is None else {"rows": eval_in.count, "identity": eval_in.identity},
        }
        inputs = {"rows": rows, **settings} if files is None else {"files": files_key, "rows": rows, **settings}
        if key is None:
            key = datacache.cache_key(inputs)
            entry = datacache.lookup(key)
        hit = entry is not None
        if entry is None:
            first = next(i for i in range(train_in.count) if i not in held)
            checked = {
                "train": train_in.summary(),
                "eval": eval_in.summary() if eval_in else None,
                "first_example": dataclasses.asdict(train_in.example(first)),
            }
            counts = datacache.tokenize_to(
                work, renderer, train_in, eval_in, held, config.max_seq_length, config.overlong
            )
            entry = datacache.store(key, work, counts, checked, inputs)
            kept_work = work in entry.train.path.parents
    finally:
        if not kept_work:
            datacache.discard(work)
    return PreparedData(
        source, train_in, entry.train, entry.eval, renderer, entry.first_example, hit, entry.eval_rows, entry.lease
    )


def source_files(config: TrainConfig, agent: Agent) -> list[list[Path]] | None:
    """The training (and evaluation) files when the rows come from files alone, else None."""
    if agent.spec.load_dataset is not None or config.dataset_name:
        return None
    try:
        if config.train_files:
            train = data_mod.expand_files(config.train_files)
        elif agent.spec.sample_data is not None and agent.spec.sample_data.is_file():
            train = [agent.spec.sample_data]
        else:
            return None
        return [train, data_mod.expand_files(config.eval_files)] if config.eval_files else [train]
    except (DataError, OSError):
        return None  # reading the rows reports it, in its place among the other checks


def cache_settings(config: TrainConfig, agent: Agent, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Everything besides the rows that the checked and tokenized rows depend on."""
    return {
        "split": None if config.eval_files else {"eval_fraction": config.eval_fraction, "seed": config.seed},
        "tokenizer": datacache.tokenizer_fingerprint(tokenizer),
        "base_model": [config.base_model, config.base_model_revision],
        "template": {"system": agent.spec.template.system, "user": agent.spec.template.user},
        "response_schema": agent.spec.response_schema,
        "prompt_template": config.prompt_template,
        "max_seq_length": config.max_seq_length,
        "overlong": config.overlong,
        "on_bad_row": config.on_bad_row,
        "data_options": datacache.options_document(config.data_options),
        "eval_options": datacache.options_document(config.eval_options) if config.eval_files else None,
    }


def marked_example(prepared: PreparedData) -> str:
    """The first row as the model sees it, trained tokens between ⟦ and ⟧."""
    prompt, completion = prepared.renderer.render(prepared.first_example)
    tok = prepared.renderer.tokenizer
    return tok.decode(prompt) + "⟦" + tok.decode(completion) + "⟧"
