"""What the store's operations return: a published version, a resolved adapter, and verify, gc and recover reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PublishResult:
    """What publish stored: the version label, where it is, its digest and manifest, and whether it is in service."""

    version: str
    path: Path | str  # a local directory, or the version's URL in an object store
    digest: str
    manifest: dict[str, Any]
    promoted: bool


@dataclass(frozen=True)
class Resolution:
    """Where an agent's adapter is and what it needs; found without importing torch."""

    agent: str
    version: str
    adapter_name: str
    base_model: str
    base_ref: str
    adapter_path: Path
    digest: str
    manifest: dict[str, Any]
    base_model_revision: str | None = None


@dataclass
class VerifyReport:
    """What verify looked at and every problem it found (empty when the store is sound)."""

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class GcResult:
    removed: list[str]
    kept: list[str]
    dry_run: bool


@dataclass(frozen=True)
class Recovery:
    """What recover did, and what it could not repair; true when it did something."""

    done: list[str]
    problems: list[str]

    def __bool__(self) -> bool:
        return bool(self.done)
