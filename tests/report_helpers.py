"""A published version with a training log and a recorded evaluation of any size, made without training."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

from tests.registry_helpers import make_adapter, summary_for


def training_log(agent: str, steps: int, *, logging_steps: int = 1, eval_every: int = 50) -> dict[str, Any]:
    """A training log as StepLog writes it: a falling loss, a cosine learning rate, evaluations now and then."""
    rng = random.Random(steps)
    entries: list[dict[str, Any]] = [{"step": 0, "epoch": 0.0, "eval_loss": 3.0}]
    tokens = 0
    for index in range(1, steps + 1):
        step = index * logging_steps
        tokens += 4000 + rng.randrange(500)
        entries.append(
            {
                "step": step,
                "epoch": round(step / (steps * logging_steps) * 2, 4),
                "loss": round(3.0 * math.exp(-3 * index / steps) + rng.random() * 0.1, 6),
                "learning_rate": 2e-4 * 0.5 * (1 + math.cos(math.pi * index / steps)),
                "grad_norm": round(0.5 + rng.random(), 4),
                "elapsed_s": round(index * 0.8, 3),
                "input_tokens": tokens,
                "tokens_per_second": round(5000 + rng.random() * 300, 2),
            }
        )
        if index % eval_every == 0:
            entries.append(
                {
                    "step": step,
                    "epoch": entries[-1]["epoch"],
                    "eval_loss": round(2.9 * math.exp(-2.5 * index / steps), 6),
                    "elapsed_s": round(index * 0.8 + 0.1, 3),
                    "input_tokens": tokens,
                }
            )
    return {"schema_version": 1, "agent": agent, "logging_steps": logging_steps, "steps": entries}


def eval_rows(count: int) -> list[dict[str, Any]]:
    """Rows as `jnreg eval` records them; every third fails the schema, every seventh is not JSON."""
    rows = []
    for index in range(count):
        not_json, bad_schema = index % 7 == 3, index % 3 == 1
        rows.append(
            {
                "index": index,
                "where": f"eval_rows.jsonl:{index + 1}",
                "prompt": f"Summarise article {index}.",
                "reference": json.dumps({"summary": f"article {index}", "key_points": ["a"]}),
                "loss": 1.0 + index % 5 / 10,
                "answer": "Sure! here is" if not_json else json.dumps({"summary": f"article {index}"}),
                "new_tokens": 40,
                "stopped_at_eos": True,
                "json": not not_json,
                "schema_valid": not (not_json or bad_schema),
                "schema_error": "not JSON"
                if not_json
                else ("<root>: 'key_points' is a required property" if bad_schema else None),
                "exact_match": {},
            }
        )
    return rows


def publish_version(
    store: Any,
    work: Path,
    agent: str = "synthesizer",
    *,
    steps: int = 40,
    rows: int = 12,
    seed: int = 0,
    evaluate: bool = True,
) -> str:
    """Publish a version with a summary, a training log and a config, and record one evaluation of it; its label."""
    summary = summary_for(agent)
    summary["dataset"]["length_histogram"] = {"edges": [100, 150, 200, 250], "counts": [1, 2, 1]}
    summary["dataset"]["files"] = [{"role": "train", "path": "data/train.jsonl", "sha256": "ab" * 32}]
    summary["dataset"]["rows_truncated"] = 1
    summary["dataset"]["skipped"] = ["data/train.jsonl:3: response is not JSON"]
    summary["metrics"].update(
        {
            "eval_loss": 1.25,
            "eval_loss_before": 3.0,
            "steps": steps,
            "tokens_per_second": 5123.4,
            "input_tokens": 123456,
        }
    )
    source = make_adapter(work / f"{agent}-{seed}", seed=seed, summary=summary, junk=False)
    (source / "training_log.json").write_text(json.dumps(training_log(agent, steps)))
    from jnreg.core.training.config import TrainConfig

    config = TrainConfig(agent=agent, adapter_name=f"{agent}_adapter", output_dir="out", adapter_r=8, seed=seed)
    (source / "jnreg_config.json").write_text(json.dumps(config.to_document()))
    result = store.publish(agent, source)
    if evaluate:
        record_evaluation(store, agent, result.version, rows)
    return result.version


def record_evaluation(store: Any, agent: str, version: str, count: int) -> dict[str, Any]:
    rows = eval_rows(count)
    passed = [r for r in rows if r["schema_valid"]]
    record = {
        "schema_version": 1,
        "digest": store.manifest(agent, version)["digest"],
        "rows_source": {
            "kind": "recorded",
            "files": ["eval_rows.jsonl"],
            "sha256": hashlib.sha256(str(count).encode()).hexdigest(),
            "rows": count,
        },
        "settings": {"max_new_tokens": 64, "temperature": 0.0, "seed": 0, "limit": None, "quantization": "nf4"},
        "metrics": {
            "rows": count,
            "eval_loss": 1.2,
            "json_rate": sum(bool(r["json"]) for r in rows) / count,
            "schema_valid": len(passed) / count,
            "exact_match": None,
            "tokens_per_second": 80.5,
        },
        "details": {"answered_rows": count, "new_tokens": 40 * count, "generation_s": 1.5, "stopped_at_eos": 1.0},
    }
    return store.record_evaluation(agent, version, record, rows)
