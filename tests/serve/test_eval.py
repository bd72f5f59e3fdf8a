"""``jnreg eval --engine vllm``: the same evaluation document, answers as transformers + peft give, and the gate.

Both paths: asking the suite's running server (``--server``), and vLLM's offline engine, started for one
evaluation.
"""

from __future__ import annotations

import json
import os
import sys

from tests.helpers import run_jnreg
from tests.serve.conftest import make_lora
from tests.serve.vllm_env import vllm_python


def test_eval_through_vllm_records_the_same_document_and_the_gate_accepts_it(server, served_store, tmp_path):
    from jnreg.registry import ModelStore

    source = make_lora(tmp_path / "reasoning-eval", seed=21)
    # Four of the agent's sample rows are the version's recorded eval rows.
    sample = [line for line in _sample_file().read_text(encoding="utf-8").splitlines() if line.strip()][:4]
    (source / "eval_rows.jsonl").write_text("\n".join(sample) + "\n", encoding="utf-8")
    store = ModelStore(served_store)
    store.publish("reasoning", source, version="v-eval", promote=False)
    env = {"JNREG_VLLM_PYTHON": vllm_python(log=lambda line: print(line, file=sys.stderr))}
    env["JNREG_SERVE_CACHE"] = str(served_store.parent / "copies")  # the server's copies
    common = ["--store-root", str(served_store), "eval", "reasoning", "--version", "v-eval"]
    common += ["--max-new-tokens", "16", "--temperature", "0", "--json"]
    local = run_jnreg(*common, "--quantization", "none", env=env, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    reference = json.loads(local.stdout)["evaluation"]
    assert "engine" not in reference["settings"]  # transformers, as every evaluation before engines
    served = run_jnreg(*common, "--engine", "vllm", "--server", server.url, env=env, timeout=600)
    assert served.returncode == 0, served.stderr[-3000:]
    document = json.loads(served.stdout)["evaluation"]
    assert document["settings"]["engine"] == "vllm" and document["settings"]["quantization"] == "none"
    assert document["metrics"]["rows"] == 4 and document["details"]["answered_rows"] == 4
    assert abs(document["metrics"]["eval_loss"] - reference["metrics"]["eval_loss"]) < 1e-3
    assert document["details"]["new_tokens"] == reference["details"]["new_tokens"]
    served_rows = [json.loads(line) for line in open(_rows(store, document), encoding="utf-8")]
    local_rows = [json.loads(line) for line in open(_rows(store, reference), encoding="utf-8")]
    assert [r["answer"] for r in served_rows] == [r["answer"] for r in local_rows]
    # Without --server, vLLM's offline engine starts for this evaluation alone and gives the same document.
    offline = run_jnreg(*common, "--engine", "vllm", env=env, timeout=600)
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert "Traceback" not in offline.stderr and "WARNING" not in offline.stderr  # vLLM's log is in a file
    alone = json.loads(offline.stdout)["evaluation"]
    assert alone["settings"] == document["settings"]
    assert alone["details"]["new_tokens"] == reference["details"]["new_tokens"]
    assert abs(alone["metrics"]["eval_loss"] - reference["metrics"]["eval_loss"]) < 1e-3
    offline_rows = [json.loads(line) for line in open(_rows(store, alone), encoding="utf-8")]
    assert [r["answer"] for r in offline_rows] == [r["answer"] for r in local_rows]
    # The gate takes the vLLM evaluation (the latest whole one) as it takes any other.
    promote = ["--store-root", str(served_store), "store", "promote", "reasoning", "v-eval"]
    gate = run_jnreg(*promote, "--require", "json_rate>=0", env=env)
    assert gate.returncode == 0, gate.stderr
    assert alone["id"] in gate.stderr + gate.stdout  # the latest: the offline engine's
    assert store.current("reasoning") == "v-eval"
    store.promote("reasoning", "v1")


def _sample_file():
    from jnreg.plugins._builtin import sample_path

    return sample_path("reasoning")


def _rows(store, document):
    return store.evaluation_location("reasoning", "v-eval", document["rows_file"])


def test_a_vllm_that_cannot_start_is_one_line_naming_its_kept_log(served_store, tmp_path):
    # The suite's own interpreter has no vLLM: the offline engine fails at its first import.
    env = {"JNREG_VLLM_PYTHON": sys.executable, "JNREG_SERVE_CACHE": str(tmp_path / "copies")}
    from jnreg.plugins._builtin import sample_path

    rows = ["--eval-files", str(sample_path("critic")), "--limit", "1"]
    done = run_jnreg("--store-root", str(served_store), "eval", "critic", "--engine", "vllm", *rows, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "vLLM could not evaluate" in errors[0] and "No module named 'vllm'" in errors[0]
    log = errors[0].rsplit("(its log: ", 1)[1].rstrip(")")
    assert "ModuleNotFoundError" in open(log, encoding="utf-8").read()
    os.unlink(log)
