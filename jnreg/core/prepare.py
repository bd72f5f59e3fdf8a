"""Data for one run: the agent's rows checked, split into train and eval, and tokenized."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jnreg.core import data as data_mod
from jnreg.core.config import TrainConfig
from jnreg.core.plugins import Agent


@dataclass
class PreparedData:
    """Checked, split and tokenized rows, with what was skipped, truncated or dropped."""

    source: str
    checked: data_mod.CheckedData
    train: data_mod.Tokenized
    eval: data_mod.Tokenized | None
    renderer: data_mod.Renderer
    first_example: data_mod.Example
    eval_examples: list[data_mod.Example] = field(default_factory=list)  # the held-out rows, as checked

    def stats(self) -> dict[str, Any]:
        lengths = self.train.lengths
        both = [self.train] + ([self.eval] if self.eval else [])
        return {
            "source": self.source,
            "sha256": self.checked.sha256,
            "rows": len(self.train.rows),
            "eval_rows": len(self.eval.rows) if self.eval else 0,
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
    spec = agent.spec
    records = data_mod.load_records(spec, config.data_options, agent.plugin)
    checked = data_mod.check_records(
        records, config.data_options, spec, on_bad_row=config.on_bad_row, limit=config.max_train_samples
    )
    if config.eval_files:
        eval_checked = data_mod.check_records(
            data_mod.default_loader(config.eval_options, None), config.eval_options, spec, on_bad_row=config.on_bad_row
        )
        checked.skipped.extend(eval_checked.skipped)
        train_rows, eval_rows = checked.examples, eval_checked.examples
    else:
        train_rows, eval_rows = data_mod.split_eval(checked.examples, config.eval_fraction, config.seed)
    renderer = data_mod.Renderer(tokenizer, spec.template, config.prompt_template)
    train = data_mod.tokenize(train_rows, renderer, config.max_seq_length, config.overlong)
    evaluation = data_mod.tokenize(eval_rows, renderer, config.max_seq_length, config.overlong) if eval_rows else None
    return PreparedData(
        describe_source(config, agent), checked, train, evaluation, renderer, train_rows[0], eval_examples=eval_rows
    )


def marked_example(prepared: PreparedData) -> str:
    """The first row as the model sees it, trained tokens between ⟦ and ⟧."""
    prompt, completion = prepared.renderer.render(prepared.first_example)
    tok = prepared.renderer.tokenizer
    return tok.decode(prompt) + "⟦" + tok.decode(completion) + "⟧"
