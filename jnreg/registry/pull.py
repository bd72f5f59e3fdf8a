"""Mirror versions from an object store into a local store, for serving hosts whose loaders read local files.

Each version is downloaded into a staging directory beside its place, every file's sha256 checked
against the manifest, then renamed into ``<agent>/versions/<label>``; `current` follows, and the local
AGENT_MODEL_MAP.json is written last and atomically, so a loader never sees a half-pulled version.
A version already there with the same digest is not fetched again.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from jnreg.errors import IntegrityError, StoreError, StoreNotFound
from jnreg.fsutil import fsync_dir, owned_name, read_json, remove_tree
from jnreg.names import check_agent
from jnreg.registry import agent_map
from jnreg.registry.storage.base import MANIFEST, VERSIONS
from jnreg.registry.storage.local import LocalStorage
from jnreg.registry.storage.objects import ObjectStorage
from jnreg.registry.store import ModelStore


@dataclass
class PullResult:
    """What a pull fetched, what it already had, and the version in service of each agent it mirrored."""

    fetched: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    current: dict[str, str | None] = field(default_factory=dict)


def pull(source: ModelStore, target: ModelStore, agents: list[str] | None = None, *, every: bool = False) -> PullResult:
    """Copy ``agents``' versions in service (all versions with ``every``) from ``source`` into the local ``target``."""
    if not isinstance(source.storage, ObjectStorage):
        raise StoreError(f"pull copies from an object store (s3://…), not from {source.root}")
    if not isinstance(target.storage, LocalStorage):
        raise StoreError(f"pull copies into a local directory, not into {target.root}")
    remote, local = source.storage, target.storage
    names = [source.require_agent(check_agent(a)) for a in agents] if agents else source.agents()
    if not names:
        raise StoreNotFound(f"no agents in the store at {source.root}")
    result = PullResult()
    served: dict[str, dict[str, Any]] = {}
    target.read_map()  # a local map jnreg cannot read stops the pull before anything is fetched
    for agent in names:
        current = source.current(agent)
        labels = source.version_labels(agent) if every else [current] if current else []
        for label in labels:
            manifest = source.manifest(agent, label)
            where = f"{agent} {label}"
            (result.fetched if _place(remote, local, agent, label, manifest) else result.kept).append(where)
            if label == current:
                served[agent] = manifest
        result.current[agent] = current
    for agent, manifest in served.items():
        with local.writing(agent):
            if _local_current(target, agent) != manifest["version"]:
                local.swap_current(agent, manifest["version"])
    _write_map(local, served)
    return result


def _local_current(target: ModelStore, agent: str) -> str | None:
    try:
        return target.current(agent)
    except IntegrityError:
        return None  # a dangling link is replaced like any other


def _place(source: ObjectStorage, target: LocalStorage, agent: str, label: str, manifest: dict[str, Any]) -> bool:
    """Put one version in the local store; False when it is there already with the same digest."""
    final = target.version_dir(agent, label)
    if os.path.lexists(final / MANIFEST):
        held = read_json(final / MANIFEST, "manifest", IntegrityError)
        if not isinstance(held, dict) or held.get("digest") != manifest["digest"]:
            raise IntegrityError(f"local {agent} {label} at {final} has another digest than {source.root}'s")
        return False
    target.prepare(agent)
    agent_dir = target.agent_dir(agent)
    staging = agent_dir / owned_name("staging")
    try:
        source.fetch(agent, label, manifest, staging)
        with target.writing(agent):
            if os.path.lexists(final):
                with suppress(OSError):
                    os.rmdir(final)  # an empty claim left by a crash
            os.chmod(staging, 0o755)  # a directory moved to another parent rewrites its ".."
            os.rename(staging, final)
            os.chmod(final, 0o555)
            fsync_dir(agent_dir / VERSIONS)
    finally:
        if os.path.lexists(staging):
            remove_tree(staging)
    return True


def _write_map(target: LocalStorage, served: dict[str, dict[str, Any]]) -> None:
    """Point the local map at every pulled agent's version in service, in one atomic write."""
    if not served:
        return
    with target.lock(agent_map.lock_path(target.map_path), f"agent map {target.map_path}"):
        document = target.read_map()
        updated = document
        for agent, manifest in served.items():
            updated = agent_map.with_current(updated, agent, manifest)
        if updated != document:
            agent_map.write_map(target.map_path, updated)
