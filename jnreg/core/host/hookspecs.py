"""Hook specifications that agent plugins implement."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from jnreg.core.host.spec import AgentSpec

PROJECT = "jnreg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def jnreg_register_agents(register: Callable[[AgentSpec], None]) -> None:
    """Called once when the host first needs the agents; call ``register(spec)`` for each agent provided.

    The host validates every spec and refuses an agent name another plugin already registered.
    """
