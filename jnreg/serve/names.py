"""The names a server answers to: ``<agent>`` (the version in service) and ``<agent>@<version>`` (pinned)."""

from __future__ import annotations

from jnreg.names import is_agent, is_label

SEPARATOR = "@"
# Longest name worth parsing: an agent (63) + "@" + a label (128).
MAX_NAME = 192


def parse(name: object) -> tuple[str, str | None] | None:
    """(agent, version or None) for a served name; None for anything else (paths, NUL, junk, too long)."""
    if not isinstance(name, str) or len(name) > MAX_NAME:
        return None
    agent, sep, version = name.partition(SEPARATOR)
    if not is_agent(agent):
        return None
    if not sep:
        return agent, None
    return (agent, version) if is_label(version) else None


def pinned(agent: str, version: str) -> str:
    return f"{agent}{SEPARATOR}{version}"


def adapter_id(digest: str) -> int:
    """vLLM's integer adapter id for a version: from its digest, so every process gives the same version the
    same id and two versions never share one (56 bits: no clash among any realistic number of versions)."""
    return int(digest[:14], 16) + 1
