"""Storages the ModelStore's rules run on, and the one place that picks a storage from the root's scheme.

A scheme maps to a builder (as MLflow's store registry does); a root without a scheme is a local directory.
Builders import their storage when called, so a local store never imports the object-store client.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jnreg.registry.storage.base import Storage


def _local(root: Path | str, agent_map: Path | str | None, lock_timeout: float | None) -> Storage:
    from jnreg.registry.storage.local import LocalStorage

    return LocalStorage(root, agent_map, lock_timeout=lock_timeout)


def _objects(root: str, agent_map: Path | str | None, lock_timeout: float | None) -> Storage:
    from jnreg.registry.storage.objects import ObjectStorage

    return ObjectStorage(root, agent_map, lock_timeout=lock_timeout)


# Scheme -> builder of its storage: a new storage registers here and nowhere else.
SCHEMES: dict[str, Callable[[str, Path | str | None, float | None], Storage]] = {"s3": _objects}


def scheme_of(root: Path | str) -> str | None:
    """The URL scheme a root is given in (``s3`` of ``s3://bucket/prefix``); None for a local path."""
    if isinstance(root, str) and "://" in root:
        return root.split("://", 1)[0]
    return None


def open_storage(
    root: Path | str, agent_map: Path | str | None = None, *, lock_timeout: float | None = None
) -> Storage:
    """The storage at ``root``: a registered scheme's (``s3://…``), else a local directory.

    A local root that only looks like a URL of another scheme is refused by the local storage, so a mistyped
    URL never becomes a directory of that name.
    """
    scheme = scheme_of(root)
    if scheme in SCHEMES:
        return SCHEMES[scheme](str(root), agent_map, lock_timeout)
    return _local(root, agent_map, lock_timeout)
