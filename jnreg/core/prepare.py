"""Data for one run: the agent's rows checked, split into train and eval, and tokenized (or found tokenized)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jnreg.core import data as data_mod
from jnreg.core import datacache
from jnreg.core.config import TrainConfig
from jnreg.core.plugins import Agent


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
            "skipped": self.checked.skipped[:50],
        }


def describe_source(config: TrainConfig, agent: Agent) -> str:
    if config.train_files:
        return ", ".join(config.train_files)
    if config.dataset_name:
        return f"{config.dataset_name}[{config.dataset_split}]"
    return f"{agent.name} sample data ({agent.plugin})"


def prepare_data(config: TrainConfig, agent: Agent, tokenizer: Any) -> PreparedData:
    """Check every row as it streams by, then reuse the tokenized rows from the cache or make them."""
    spec = agent.spec
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
        inputs = cache_inputs(config, agent, tokenizer, train_in, eval_in)
        key = datacache.cache_key(inputs)
        found = datacache.lookup(key)
        hit = found is not None
        if found is None:
            counts = datacache.tokenize_to(
                work, renderer, train_in, eval_in, held, config.max_seq_length, config.overlong
            )
            found = datacache.store(key, work, counts, inputs)
            kept_work = work in found[0].path.parents
        first = next(i for i in range(train_in.count) if i not in held)
        first_example = train_in.example(first)
    finally:
        if not kept_work:
            datacache.discard(work)
    train, evaluation = found
    return PreparedData(describe_source(config, agent), train_in, train, evaluation, renderer, first_example, hit)


def cache_inputs(
    config: TrainConfig,
    agent: Agent,
    tokenizer: Any,
    train: datacache.CheckedStream,
    evaluation: datacache.CheckedStream | None,
) -> dict[str, Any]:
    """Everything the tokenized rows depend on: what the cache key digests."""
    return {
        "train": {"rows": train.count, "identity": train.identity},
        "eval": None if evaluation is None else {"rows": evaluation.count, "identity": evaluation.identity},
        "split": None if evaluation is not None else {"eval_fraction": config.eval_fraction, "seed": config.seed},
        "tokenizer": datacache.tokenizer_fingerprint(tokenizer),
        "base_model": [config.base_model, config.base_model_revision],
        "template": {"system": agent.spec.template.system, "user": agent.spec.template.user},
        "prompt_template": config.prompt_template,
        "max_seq_length": config.max_seq_length,
        "overlong": config.overlong,
        "on_bad_row": config.on_bad_row,
        "data_options": datacache.options_document(config.data_options),
        "eval_options": datacache.options_document(config.eval_options) if evaluation is not None else None,
    }


def marked_example(prepared: PreparedData) -> str:
    """The first row as the model sees it, trained tokens between ⟦ and ⟧."""
    prompt, completion = prepared.renderer.render(prepared.first_example)
    tok = prepared.renderer.tokenizer
    return tok.decode(prompt) + "⟦" + tok.decode(completion) + "⟧"
