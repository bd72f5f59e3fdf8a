"""What an agent plugin imports: ``from jnreg.plugin import hookimpl, AgentSpec, Hyperparameters, PromptTemplate``."""

from __future__ import annotations

from jnreg.core.data.rows import check_records, load_records
from jnreg.core.host.hookspecs import hookimpl
from jnreg.core.host.spec import AgentSpec, DataOptions, Hyperparameters, PromptTemplate, Record, Serving

__all__ = [
    "AgentSpec",
    "DataOptions",
    "Hyperparameters",
    "PromptTemplate",
    "Record",
    "Serving",
    "check_records",
    "hookimpl",
    "load_records",
]
