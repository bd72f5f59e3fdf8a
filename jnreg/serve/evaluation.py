"""Evaluating a version as vLLM serves it: the same rows, rendering, judging and document as ``jnreg eval``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.core.data import rows as data_mod
from jnreg.core.evaluation.evaluate import Evaluation, evaluation_of
from jnreg.core.evaluation.generation import generation_options
from jnreg.core.host.spec import AgentSpec
from jnreg.errors import ModelError
from jnreg.serve import names
from jnreg.serve.copies import served_copy
from jnreg.serve.launch import PYTHON_ENV, rank_limit
from jnreg.serve.offline import summed_nll

if TYPE_CHECKING:
    from jnreg.registry.store import ModelStore


def evaluate_served(
    store: ModelStore,
    agent: str,
    version: str,
    spec: AgentSpec,
    examples: Sequence[data_mod.Example],
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
    progress: bool = True,
    server: str | None = None,
    prompt_template: str | None = None,
) -> Evaluation:
    """Answer and score ``examples`` with vLLM on the unquantized base and the version's verified copy.

    The eval loss comes from vLLM's log-probabilities of each reference answer after its prompt; the answers
    from vLLM's generation of the prompt as ``generate_answer`` renders it (greedy at temperature 0, else
    sampled with a seed per row). ``server`` is the URL of a running ``jnreg serve`` of the same store to
    ask; without it, vLLM's offline engine runs for this evaluation alone. ``prompt_template`` is the one the
    version was trained with, if any: scoring and generation then render prompts through it, as training did.
    """
    from jnreg.core.models.loading import is_builtin, load_tokenizer, model_path

    served = served_copy(store, agent, version)
    has_tokenizer = any((served.path / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))
    base_path = model_path(served.base_model)
    tokenizer = load_tokenizer(str(served.path) if has_tokenizer else served.base_model)
    renderer = data_mod.Renderer(tokenizer, spec.template, prompt_template)
    options = generation_options(spec, tokenizer, max_new_tokens, temperature)
    score, generate = [], []
    rendered = renderer.render_many(list(examples))
    for index, (example, (prompt, completion)) in enumerate(zip(examples, rendered, strict=True)):
        score.append({"ids": prompt + completion, "from": len(prompt)})
        if example.prompt is not None:
            generate.append(
                {
                    "ids": renderer.prompt_ids(example.prompt),  # as the transformers path answers it
                    "max_tokens": options["max_new_tokens"],
                    "temperature": options.get("temperature", 0.0),
                    "seed": seed + index,
                }
            )
    longest = max([len(s["ids"]) + 1 for s in score] + [len(g["ids"]) + g["max_tokens"] for g in generate] + [16])
    job = {
        "base_path": base_path,
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
            "digest": served.digest,
        },
        "generate": generate,
        "score": score,
    }
    result = _ask(server, job) if server else _run(job, progress)
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
    """Run the job in vLLM's interpreter ($JNREG_VLLM_PYTHON, else this one). vLLM's own log goes to a file,
    kept and named when the run fails; with ``progress``, a line says when vLLM starts and when it is done."""
    import time

    python = os.environ.get(PYTHON_ENV) or sys.executable
    with tempfile.TemporaryDirectory(prefix="jnreg-vllm-eval-") as work:
        job_file, result_file = Path(work, "job.json"), Path(work, "result.json")
        job_file.write_text(json.dumps(job), encoding="utf-8")
        log_file = Path(work, "vllm.log")
        if progress:
            rows = len(job["generate"]) + len(job["score"])
            print(f"vLLM: starting its offline engine for {rows} requests (log: {log_file})", file=sys.stderr)
        clock = time.perf_counter()
        with open(log_file, "w", encoding="utf-8") as log:
            done = subprocess.run(
                [python, "-m", "jnreg.serve.offline", str(job_file), str(result_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        # The result is written whole once every row is answered, so it stands even if vLLM crashed
        # afterwards, shutting down; without it the run failed.
        if not result_file.is_file():
            lines = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            kept = Path(tempfile.mkstemp(prefix="jnreg-vllm-eval-", suffix=".log")[1])
            kept.write_text("\n".join(lines) + "\n", encoding="utf-8")
            last = lines[-1].strip() if lines else f"exit status {done.returncode}"
            raise ModelError(f"vLLM could not evaluate with {python}: {last} (its log: {kept})")
        if progress:
            print(f"vLLM: done in {time.perf_counter() - clock:.1f} s", file=sys.stderr)
        return json.loads(result_file.read_text(encoding="utf-8"))


def _ask_server(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The server's JSON answer to a POST of ``body`` (a GET without one); its failures are ModelErrors."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ModelError(f"{url}: {exc.code} {exc.read().decode(errors='replace')[:200]}") from None
    except OSError as exc:
        raise ModelError(f"cannot reach the server at {url}: {exc}") from None


def _ask(server: str, job: dict[str, Any]) -> dict[str, Any]:
    """The job's answers and scores from a running server, asked many rows at a time as clients would."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    base = server.rstrip("/")
    url = base + "/v1/completions"
    model = job["lora"]["name"]

    def generate(item: dict[str, Any]) -> dict[str, Any]:
        body = {
            "model": model,
            "prompt": item["ids"],
            "max_tokens": item["max_tokens"],
            "temperature": item["temperature"],
            "seed": item["seed"],
            "stop_token_ids": [job["eos_token_id"]],
            "return_token_ids": True,
        }
        return {"ids": list(_ask_server(url, body)["choices"][0]["token_ids"])}

    def score(item: dict[str, Any]) -> dict[str, Any]:
        body = {"model": model, "prompt": item["ids"], "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}
        found = _ask_server(url, body)["choices"][0]["prompt_logprobs"]
        return summed_nll(item, lambda position, token: found[position][str(token)]["logprob"])

    with ThreadPoolExecutor(max_workers=16) as pool:
        clock = time.perf_counter()
        answers = list(pool.map(generate, job["generate"]))
        generation_s = time.perf_counter() - clock
        scores = list(pool.map(score, job["score"]))
    # The server must have answered from this version's verified copy, not from a version of another store.
    cards = {card["id"]: card for card in _ask_server(base + "/v1/models")["data"]}
    if Path(cards.get(model, {}).get("root", "")).name != job["lora"]["digest"]:
        raise ModelError(f"the server at {server} serves {model} from another copy; is it serving this store?")
    return {"answers": answers, "scores": scores, "generation_s": generation_s}
