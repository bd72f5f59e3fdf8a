"""Evaluating a version as vLLM serves it: the same rows, rendering, judging and document as ``jnreg eval``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jnreg.core.data import rows as data_mod
from jnreg.core.evaluation.evaluate import Evaluation, evaluation_of
from jnreg.core.evaluation.generation import generation_options
from jnreg.core.host.spec import AgentSpec
from jnreg.errors import ModelError
from jnreg.serve import names
from jnreg.serve.copies import served_copy
from jnreg.serve.launch import PYTHON_ENV, rank_limit


def evaluate_served(
    store: Any,
    agent: str,
    version: str,
    spec: AgentSpec,
    examples: Sequence[data_mod.Example],
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Evaluation:
    """Answer and score ``examples`` with vLLM's engine on the unquantized base and the version's verified copy.

    The eval loss comes from vLLM's log-probabilities of each reference answer after its prompt; the answers
    from vLLM's generation of the prompt as ``generate_answer`` renders it (greedy at temperature 0, else
    sampled with a seed per row).
    """
    from jnreg.core.models.loading import is_builtin, load_tokenizer, model_path

    served = served_copy(store, agent, version)
    has_tokenizer = any((served.path / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))
    base_path = model_path(served.base_model)
    tokenizer = load_tokenizer(str(served.path) if has_tokenizer else served.base_model)
    renderer = data_mod.Renderer(tokenizer, spec.template)
    options = generation_options(spec, tokenizer, max_new_tokens, temperature)
    score, generate = [], []
    for index, example in enumerate(examples):
        prompt, completion = renderer.render(example)
        score.append({"ids": prompt + completion, "from": len(prompt)})
        if example.prompt is not None:
            text = tokenizer.apply_chat_template(
                spec.template.messages(example.prompt), tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            generate.append(
                {
                    "ids": ids,
                    "max_tokens": options["max_new_tokens"],
                    "temperature": options.get("temperature", 0.0),
                    "seed": seed + index,
                }
            )
    longest = max([len(s["ids"]) + 1 for s in score] + [len(g["ids"]) + g["max_tokens"] for g in generate] + [16])
    job = {
        "base_path": base_path,
        "tokenizer_path": str(served.path) if has_tokenizer else base_path,
        "dtype": "float32" if is_builtin(served.base_model) else "auto",
        "enforce_eager": is_builtin(served.base_model),
        "max_lora_rank": rank_limit([served.rank]),
        "max_model_len": longest,
        "seed": seed,
        "eos_token_id": tokenizer.eos_token_id,
        "lora": {
            "name": names.pinned(agent, version),
            "id": names.adapter_id(served.digest),
            "path": str(served.path),
        },
        "generate": generate,
        "score": score,
    }
    result = _run(job, progress)
    answers: list[dict[str, Any] | None] = []
    made = iter(result["answers"])
    for example in examples:
        if example.prompt is None:
            answers.append(None)
            continue
        ids = next(made)["ids"]
        answers.append(
            {
                "text": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                "prompt_tokens": 0,
                "new_tokens": len(ids),
                "stopped_at_eos": bool(ids) and ids[-1] == tokenizer.eos_token_id,
            }
        )
    losses = [(s["nll"], s["tokens"]) for s in result["scores"]]
    return evaluation_of(spec, examples, losses, answers, result["generation_s"])


def _run(job: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Run the job in vLLM's interpreter ($JNREG_VLLM_PYTHON, else this one), its log to stderr when shown."""
    python = os.environ.get(PYTHON_ENV) or sys.executable
    with tempfile.TemporaryDirectory(prefix="jnreg-vllm-eval-") as work:
        job_file, result_file = Path(work, "job.json"), Path(work, "result.json")
        job_file.write_text(json.dumps(job), encoding="utf-8")
        done = subprocess.run(
            [python, "-m", "jnreg.serve.offline", str(job_file), str(result_file)],
            stdout=None if progress else subprocess.DEVNULL,
            stderr=None if progress else subprocess.PIPE,
            text=True,
        )
        if done.returncode != 0 or not result_file.is_file():
            tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            raise ModelError(f"vLLM could not evaluate with {python}: {tail[0]}")
        return json.loads(result_file.read_text(encoding="utf-8"))
