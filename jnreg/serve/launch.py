"""What ``jnreg serve`` starts: vLLM's OpenAI-compatible server on the agents' base model, wired to the store."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jnreg.errors import StoreError
from jnreg.serve.environment import BASE_ENV, STORE_ENV

if TYPE_CHECKING:
    from jnreg.registry.store import ModelStore

# The LoRA ranks vLLM accepts for --max-lora-rank.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The interpreter with vLLM installed, when it is not the one running jnreg.
PYTHON_ENV = "JNREG_VLLM_PYTHON"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
MIDDLEWARE = "jnreg.serve.middleware.AgentNames"


@dataclass
class ServePlan:
    """The server to start: the base model, the versions in service, and the command and environment."""

    base_model: str
    in_service: dict[str, str]
    max_rank: int
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def rank_limit(ranks: list[int]) -> int:
    """The smallest rank limit vLLM accepts that fits every rank in ``ranks``."""
    top = max(ranks)
    for allowed in VLLM_RANKS:
        if allowed >= top:
            return allowed
    raise StoreError(f"an adapter has LoRA rank {top}; vLLM serves ranks up to {VLLM_RANKS[-1]}")


def plan(
    store: ModelStore,
    agents: list[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    vllm_args: list[str] | None = None,
    dtype: str | None = None,
) -> ServePlan:
    """The vLLM server for ``agents`` (default: every agent with a version in service) of ``store``."""
    from jnreg.core.models.loading import is_builtin, model_path

    wanted = agents or store.agents()
    in_service: dict[str, str] = {}
    bases: dict[str, list[str]] = {}
    for agent in wanted:
        current = store.current(agent) if agent in store.agents() else None
        if current is None:
            if agents:
                raise StoreError(f"agent {agent!r} has no version in service in the store at {store.root}")
            continue
        in_service[agent] = current
        bases.setdefault(store.manifest(agent, current)["base_model"], []).append(agent)
    if not in_service:
        raise StoreError(f"no agent has a version in service in the store at {store.root}")
    if len(bases) > 1:
        found = "; ".join(f"{base}: {', '.join(names)}" for base, names in sorted(bases.items()))
        raise StoreError(f"the agents are on different base models ({found}); start one server per base model")
    base_model = next(iter(bases))
    # Every version of these agents on this base must fit, so that a later promotion loads without a restart.
    ranks = [int(m["r"]) for agent in in_service for m in store.versions(agent) if m["base_model"] == base_model]
    max_rank = rank_limit(ranks)
    served_path = model_path(base_model)
    args = list(vllm_args or [])
    command = [
        os.environ.get(PYTHON_ENV) or sys.executable,
        "-m",
        SERVER_MODULE,
        "--model",
        served_path,
        "--served-model-name",
        base_model,
        "--host",
        host,
        "--port",
        str(port),
        "--enable-lora",
        "--max-lora-rank",
        str(max_rank),
        "--middleware",
        MIDDLEWARE,
    ]
    if is_builtin(base_model):
        # The built-in model is tiny and float32; CPU graphs are not worth compiling for it.
        command += ["--dtype", dtype or "float32", "--enforce-eager"]
    elif dtype:
        command += ["--dtype", dtype]
    command += args
    env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
        "VLLM_PLUGINS": _plugins_with_jnreg(os.environ.get("VLLM_PLUGINS")),
        STORE_ENV: str(store.root),
        BASE_ENV: base_model,
    }
    return ServePlan(base_model=base_model, in_service=in_service, max_rank=max_rank, command=command, env=env)


def _plugins_with_jnreg(given: str | None) -> str:
    if given is None or not given.strip():
        return "jnreg"
    names = [n.strip() for n in given.split(",") if n.strip()]
    return ",".join(names if "jnreg" in names else [*names, "jnreg"])
