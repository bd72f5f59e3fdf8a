"""Evaluating an adapter like serving uses it: held-out loss, then an answer per row judged against its reference.

Given a model, its tokenizer, the agent's spec and eval rows, ``evaluate`` returns the metrics and one
verdict per row. It knows nothing of the store: the command line loads the version and records the result.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.core.data import rows as data_mod
from jnreg.core.evaluation.generation import generate_answer
from jnreg.core.host.spec import AgentSpec, DataOptions
from jnreg.errors import DataError
from jnreg.schemas import Checker

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The held-out rows of a training run, written beside the adapter and published with it.


def read_eval_rows(files: Sequence[str | Path], spec: AgentSpec, options: DataOptions | None = None) -> list:
    """Every row of ``files``, checked as for training; any bad row, a reference failing the schema too, fails."""
    options = options or DataOptions()
    records = data_mod.default_loader(DataOptions(train_files=tuple(str(f) for f in files)), None)
    validator = data_mod.response_checker(spec)
    examples = []
    for record in records:
        try:
            examples.append(data_mod.check_row(record, options, validator))
        except ValueError as exc:
            raise DataError(f"eval row {record.where}: {exc}") from None
    if not examples:
        raise DataError(f"no eval rows in {', '.join(str(f) for f in files)}")
    return examples


def rows_digest(examples: Iterable[data_mod.Example]) -> str:
    """The sha256 training records for its rows, so two evaluations can tell whether they saw the same rows."""
    return data_mod.CheckedData(list(examples)).sha256


def _exact_fields(reference: Any, schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """Top-level reference fields compared exactly: string enums (per the schema), booleans and numbers."""
    if not isinstance(reference, Mapping):
        return {}
    properties = (schema or {}).get("properties") or {}
    fields = {}
    for name, value in reference.items():
        if isinstance(value, (bool, int, float)):
            fields[name] = value
        elif isinstance(value, str):
            declared = properties.get(name) if isinstance(properties, Mapping) else None
            if isinstance(declared, Mapping) and ("enum" in declared or "const" in declared):
                fields[name] = value
    return fields


def _same(answer: Any, reference: Any) -> bool:
    """Equal and of the same kind: ``true`` never matches ``1``."""
    if isinstance(reference, bool) or isinstance(answer, bool):
        return isinstance(answer, bool) and isinstance(reference, bool) and answer == reference
    if isinstance(reference, (int, float)):
        return isinstance(answer, (int, float)) and answer == reference
    return isinstance(answer, str) and answer == reference


def judge(answer_text: str, reference_text: str, spec: AgentSpec, validator: Checker | None) -> dict[str, Any]:
    """The verdicts on one answer: is it JSON, does it satisfy the schema, which exact fields match."""
    try:
        answer = json.loads(answer_text)
        is_json = True
    except (json.JSONDecodeError, RecursionError):
        answer, is_json = None, False
    schema_valid: bool | None = None
    schema_error: str | None = None
    if validator is not None:
        if not is_json:
            schema_valid, schema_error = False, "not JSON"
        else:
            error = validator.first_error(answer)
            schema_valid = error is None
            if error is not None:
                schema_error = error[:300]
    try:
        reference = json.loads(reference_text)
    except json.JSONDecodeError:
        reference = None
    exact = {
        name: isinstance(answer, Mapping) and name in answer and _same(answer[name], value)
        for name, value in _exact_fields(reference, spec.response_schema).items()
    }
    return {"json": is_json, "schema_valid": schema_valid, "schema_error": schema_error, "exact_match": exact}


def _rate(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


@dataclass
class Evaluation:
    """The metrics over all rows, and each row's prompt, reference, answer and verdicts."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    details: dict[str, Any]


def _row_loss(
    model: PreTrainedModel | PeftModel, renderer: data_mod.Renderer, example: data_mod.Example
) -> tuple[float, int]:
    """(summed loss, supervised tokens) of the reference answer after its prompt, as training computes it."""
    import torch

    prompt, completion = renderer.render(example)
    ids = torch.tensor([prompt + completion], device=model.device)
    labels = torch.tensor([[-100] * len(prompt) + completion], device=model.device)
    count = int((labels[0, 1:] != -100).sum())  # the model predicts token i+1 from tokens up to i
    if count == 0:
        return 0.0, 0
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss
    return float(loss) * count, count


def evaluate(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: AgentSpec,
    examples: Sequence[data_mod.Example],
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
    progress: bool = True,
    prompt_template: str | None = None,
) -> Evaluation:
    """Metrics and per-row verdicts of ``model`` answering ``examples`` with the agent's serving settings.

    ``eval_loss`` is the mean loss per supervised token over all rows (the response tokens, EOS included).
    Rows with a prompt are answered (greedy when the temperature is 0, seeded sampling otherwise) and
    judged; whole-text rows count towards the loss only. ``prompt_template``, when the version was
    trained with one, renders the prompts instead of the chat template.
    """
    import torch
    from tqdm.auto import tqdm

    model.eval()
    renderer = data_mod.Renderer(tokenizer, spec.template, prompt_template)
    torch.manual_seed(seed)
    losses: list[tuple[float, int]] = []
    answers: list[dict[str, Any] | None] = []
    generation_s = 0.0
    bar = tqdm(examples, desc=f"eval {spec.name}", unit="row", file=sys.stderr, disable=not progress, leave=False)
    for example in bar:
        losses.append(_row_loss(model, renderer, example))
        answer = None
        if example.prompt is not None:
            clock = time.perf_counter()
            answer = generate_answer(
                model,
                tokenizer,
                spec,
                example.prompt,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                renderer=renderer,
            )
            generation_s += time.perf_counter() - clock
        answers.append(answer)
    bar.close()
    return evaluation_of(spec, examples, losses, answers, generation_s)


def evaluation_of(
    spec: AgentSpec,
    examples: Sequence[data_mod.Example],
    losses: Sequence[tuple[float, int]],
    answers: Sequence[dict[str, Any] | None],
    generation_s: float,
) -> Evaluation:
    """The metrics and rows for ``examples``, from each row's (summed loss, supervised tokens) and answer
    (``generate_answer``'s text, new_tokens and stopped_at_eos; None for a whole-text row), however made."""
    validator = data_mod.response_checker(spec)
    rows: list[dict[str, Any]] = []
    loss_sum, loss_tokens, new_tokens = 0.0, 0, 0
    for index, (example, (row_loss, row_tokens), answer) in enumerate(zip(examples, losses, answers, strict=True)):
        loss_sum += row_loss
        loss_tokens += row_tokens
        row: dict[str, Any] = {
            "index": index,
            "where": example.where,
            "prompt": example.prompt,
            "reference": example.response if example.text is None else example.text,
            "loss": round(row_loss / row_tokens, 6) if row_tokens else None,
            "answer": None,
            "new_tokens": 0,
            "stopped_at_eos": None,
            "json": None,
            "schema_valid": None,
            "schema_error": None,
            "exact_match": {},
        }
        if answer is not None:
            new_tokens += answer["new_tokens"]
            row.update(answer=answer["text"], new_tokens=answer["new_tokens"], stopped_at_eos=answer["stopped_at_eos"])
            row.update(judge(answer["text"], example.response or "", spec, validator))
        rows.append(row)
    answered = [r for r in rows if r["answer"] is not None]
    metrics: dict[str, Any] = {
        "rows": len(rows),
        "eval_loss": round(loss_sum / loss_tokens, 6) if loss_tokens else None,
        "json_rate": _rate([r["json"] for r in answered]),
        "schema_valid": _rate([r["schema_valid"] for r in answered]) if validator is not None else None,
        "tokens_per_second": round(new_tokens / generation_s, 2) if generation_s > 0 else None,
    }
    compared: dict[str, list[bool]] = {}
    for row in answered:
        for name, hit in row["exact_match"].items():
            compared.setdefault(name, []).append(hit)
    metrics["exact_match"] = _rate([hit for hits in compared.values() for hit in hits])
    for name, hits in sorted(compared.items()):
        metrics[f"exact_match.{name}"] = _rate(hits)
    details = {
        "answered_rows": len(answered),
        "new_tokens": new_tokens,
        "generation_s": round(generation_s, 3),
        "stopped_at_eos": _rate([bool(r["stopped_at_eos"]) for r in answered]),
    }
    return Evaluation(metrics=metrics, rows=rows, details=details)


def differing_rows(first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows (same index in both) whose answers or verdicts differ between two evaluations of the same rows."""
    keys = ("answer", "json", "schema_valid", "exact_match")
    found = []
    for a, b in zip(first, second, strict=True):
        if any(a[k] != b[k] for k in keys):
            found.append(
                {
                    "index": a["index"],
                    "where": a["where"],
                    "prompt": a["prompt"],
                    "reference": a["reference"],
                    "a": {k: a[k] for k in keys},
                    "b": {k: b[k] for k in keys},
                }
            )
    return found
