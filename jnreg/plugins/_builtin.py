"""Shared shape of the built-in agent plugins: sample data and response schema ship beside the code."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from jnreg.plugin import AgentSpec, Hyperparameters, PromptTemplate, Serving, hookimpl

_HERE = Path(str(resources.files("jnreg.plugins")))


def sample_path(agent: str) -> Path:
    return _HERE / "data" / f"{agent}.jsonl"


def response_schema(agent: str) -> dict:
    return json.loads((_HERE / "schemas" / f"{agent}.schema.json").read_text(encoding="utf-8"))


def builtin_agent(
    *,
    name: str,
    description: str,
    system: str,
    serving: Serving,
    adapter_name: str,
    max_seq_length: int = 2048,
) -> Callable[..., None]:
    """Return the ``jnreg_register_agents`` hook implementation for one built-in agent."""

    @hookimpl
    def jnreg_register_agents(register: Callable[[AgentSpec], None]) -> None:
        register(
            AgentSpec(
                name=name,
                description=description,
                template=PromptTemplate(system=system),
                defaults=Hyperparameters(max_seq_length=max_seq_length),
                serving=serving,
                sample_data=sample_path(name),
                response_schema=response_schema(name),
                adapter_name=adapter_name,
            )
        )

    return jnreg_register_agents
