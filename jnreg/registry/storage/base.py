"""What a storage must do for the ModelStore's rules, and the types the rules and a storage trade.

The rules (``registry/store.py``: labels, manifests, the journal's meaning, promote, rollback, gc,
verify) are written once against :class:`Storage`. Two storages implement it side by side: local files
(``storage/local.py``) and object storage (``storage/objects.py``); neither imports the other, and
``open_storage`` (``storage/__init__.py``) picks one from the root's scheme.
"""

from __future__ import annotations

import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from jnreg.registry import journal
from jnreg.registry.adapter_dir import AdapterSource
from jnreg.registry.agent_map import VERSIONS
from jnreg.registry.manifests import MANIFEST, Sealed

__all__ = ["MANIFEST", "VERSIONS"]

CURRENT = "current"
EVALUATIONS = "evaluations"  # <agent>/evaluations/<version>/<id>.json and <id>.rows.jsonl, beside the version
REPORTS = "reports"  # <agent>/reports/<version>.html: the version's page, rewritten whenever it is made again
REPAIR = " (`jnreg store promote AGENT VERSION` puts a sound version back in service)"

# Fault injection for the crash tests: a write SIGKILLs itself at the named point (each storage names its own).
CRASH_ENV = "JNREG_TEST_CRASH_AT"


def crash_point(name: str) -> None:
    """Test-only fault injection: die here, as a power cut or OOM kill would, when JNREG_TEST_CRASH_AT names it."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class History:
    """What an agent's journal says: the version it last put in service, and the undo stack rollback pops."""

    recorded: str | None
    undo: tuple[str | None, ...]


class ServiceState:
    """What a write decides on: the version `current` names, and (read only when asked) its damage and history."""

    def __init__(
        self, current: str | None, *, damage: Callable[[], str | None], history: Callable[[], History]
    ) -> None:
        # What the next journal entry records as ``previous``.
        self.current = current
        self._damage = damage
        self._history = history

    @cached_property
    def damage(self) -> str | None:
        """Why `current` cannot be trusted (it names no whole version, or is malformed); None when it can."""
        return self._damage()

    @cached_property
    def history(self) -> History:
        return self._history()

    @property
    def rollback_target(self) -> str | None:
        undo = self.history.undo
        return undo[-1] if undo else None


@dataclass(frozen=True)
class Change:
    """A write the rules decided on: its journal entry, and the manifest of the entry's version."""

    entry: dict[str, Any]
    manifest: dict[str, Any]


# Given the state it will change, the rules' decision; None for nothing to do. A storage may call it again
# when another writer got in first, so it always decides on the state it changes.
Decide = Callable[[ServiceState], Change | None]


@dataclass(frozen=True)
class Draft:
    """A publish the rules have checked, for a storage to carry out."""

    agent: str
    source: AdapterSource
    version: str | None  # the label asked for; None: the next free default label
    promote: bool
    free_label: Callable[[set[str] | None], str]  # the next free default label (given every used label, if known)
    refuse_used_label: Callable[[str], None]
    seal: Callable[[str, dict[str, tuple[int, str]]], Sealed]  # (label, {file: (size, sha256)}) -> manifest

    def entry(self, manifest: dict[str, Any], current: str | None) -> dict[str, Any]:
        """The journal entry of this publish of ``manifest``'s version, made while ``current`` is in service."""
        after = manifest["version"] if self.promote else current
        return journal.version_entry("publish", self.agent, manifest, previous=current, current=after)


@dataclass
class Snapshot:
    """One consistent read of what serves an agent, for verify to compare."""

    state: ServiceState
    records: list[dict[str, Any]]  # the agent's journal, oldest first
    document: dict[str, Any] | None  # the agent map
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what the storage's own invariants show is wrong
    # False while a write is in progress or a crashed one awaits recovery: `current`, the journal and the
    # map may rightly disagree until it ends, so they are not compared.
    settled: bool = True


class Storage(ABC):
    """Where versions, `current`, the journal, the agent map and evaluations are kept, and how writes are made safe.

    A storage knows its layout and its concurrency control; it decides nothing. Names it is given are checked.
    """

    #: The store's root: a local directory, or the URL of an object store.
    root: Path | str
    #: The agent map: a local file, or its URL in the object store.
    map_path: Path | str
    #: Whether loaders read a local copy of a version (object storage) rather than the stored version itself.
    copies_versions: bool = False
    #: How long a writer waits for a lock, in seconds (0 for a storage that takes none).
    lock_timeout: float = 0.0

    # Reading: never creates anything, takes no lock ---------------------------------------------------

    @abstractmethod
    def exists(self) -> bool:
        """Whether there is a store at the root at all."""

    @abstractmethod
    def agents(self) -> list[str]:
        """Agents with versions, sorted."""

    @abstractmethod
    def has_agent(self, agent: str) -> bool:
        """Whether ``agent`` has a place for versions (it may hold none yet)."""

    @abstractmethod
    def labels(self, agent: str) -> list[str]:
        """Every label under the agent's versions, sorted: versions, and what unfinished publishes left."""

    @abstractmethod
    def is_visible(self, agent: str, label: str) -> bool:
        """Whether ``label`` is a version readers may see: complete, with its manifest."""

    @abstractmethod
    def visible_labels(self, agent: str) -> list[str]:
        """The agent's versions, sorted by label."""

    @abstractmethod
    def unfinished(self, agent: str, label: str) -> tuple[bool, str | None]:
        """(skip, note): whether verify skips ``label`` as what an unfinished write left, and what it says of it."""

    @abstractmethod
    def read_manifest(self, agent: str, label: str) -> tuple[Any, str] | None:
        """(parsed manifest document, where it was read); None when there is no such version."""

    @abstractmethod
    def read_current(self, agent: str) -> str | None:
        """The label `current` names (None when nothing is in service); IntegrityError when it is malformed."""

    @abstractmethod
    def current_location(self, agent: str) -> str:
        """Where the agent's `current` is kept, for messages."""

    @abstractmethod
    def read_map(self) -> dict[str, Any] | None:
        """The agent map, validated; None when there is none yet."""

    @abstractmethod
    def journal(self, agent: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The agent's journal entries, oldest first (only the newest ``limit``, when given)."""

    @abstractmethod
    def service_state(self, agent: str) -> ServiceState:
        """What serves ``agent`` now, as a reader sees it (no lock; writers may move it right after)."""

    @abstractmethod
    def snapshot(self, agent: str) -> Snapshot:
        """`current`, the journal and the map of ``agent`` read consistently while writers may run."""

    @abstractmethod
    def stored_files(self, agent: str, label: str) -> dict[str, int | None]:
        """Each file stored under the version (its manifest too) and its size; None when not a regular file."""

    @abstractmethod
    def file_sha256(self, agent: str, label: str, name: str) -> str:
        """sha256 of one stored file of the version, as stored."""

    @abstractmethod
    def adapter_path(self, agent: str, label: str, manifest: dict[str, Any]) -> Path:
        """A local directory holding the version's files, as loaders need it."""

    @abstractmethod
    def label_state(self, agent: str, label: str) -> str | None:
        """ "version" when ``label`` is (or is becoming) a version, "used" when it was one before, else None."""

    def label_taken(self, agent: str, label: str) -> bool:
        """Whether ``agent`` has, or ever had, a version ``label``; asked one label at a time, so the cost of a
        publish does not grow with the history."""
        return self.label_state(agent, label) is not None

    @abstractmethod
    def read_signature(self, agent: str, label: str) -> bytes | None:
        """The version's ``model.sig`` as stored; None when it is unsigned."""

    @abstractmethod
    def write_signature(self, agent: str, label: str, data: bytes, *, replace: bool) -> None:
        """Put ``model.sig`` beside a published version's files (StoreConflict when one is there and not
        ``replace``), leaving its files and manifest as they are."""

    @abstractmethod
    def leftovers(self, agent: str) -> list[str]:
        """What killed writers left behind that the next write or ``recover`` removes (with sizes), for verify."""

    # Evaluations: beside a version, never inside it ----------------------------------------------------

    @abstractmethod
    def evaluation_location(self, agent: str, version: str, name: str) -> str:
        """Where the evaluation file ``name`` of the version is kept, for people to read."""

    @abstractmethod
    def write_evaluation(self, agent: str, version: str, document: dict[str, Any], rows: bytes) -> None:
        """Keep an evaluation: its rows first, then its record (which makes it count), each whole."""

    @abstractmethod
    def evaluation_documents(self, agent: str, version: str) -> list[tuple[str, str, bytes]]:
        """(where, record name without .json, bytes) of every evaluation record of the version."""

    @abstractmethod
    def read_evaluation_file(self, agent: str, version: str, name: str) -> bytes | None:
        """The bytes of the evaluation file ``name`` of the version (its rows), or None when there is none."""

    @abstractmethod
    def read_version_file(self, agent: str, label: str, name: str) -> bytes | None:
        """The stored bytes of the version's file ``name``, or None when it is missing."""

    # Reports: a version's page beside it, replaced whole each time it is made ---------------------------

    @abstractmethod
    def report_location(self, agent: str, version: str) -> str:
        """Where the version's page is kept, for people to open."""

    @abstractmethod
    def write_report(self, agent: str, version: str, page: bytes) -> None:
        """Keep ``page`` as the version's page, replacing the one before, whole."""

    @abstractmethod
    def read_report(self, agent: str, version: str) -> bytes | None:
        """The version's page, or None when none was written."""

    # Writing ---------------------------------------------------------------------------------------------

    @abstractmethod
    def prepare(self, agent: str) -> None:
        """Make a place for ``agent``'s versions; StoreError when the root cannot be written."""

    @abstractmethod
    def publish(self, draft: Draft) -> tuple[str, Path | str, dict[str, Any]]:
        """Store ``draft`` as a new version under a label never used before, then record it (and put it in service
        when ``draft.promote``), crash-safely; (label, where the version is, manifest)."""

    @abstractmethod
    def move(self, agent: str, decide: Decide) -> dict[str, Any] | None:
        """Record and carry out what ``decide`` says of ``agent``'s `current`; the entry, or None when it says
        nothing is to be done (the map is then made to serve `current`)."""

    @abstractmethod
    def remove(self, agent: str, version: str, decide: Decide) -> bool:
        """Remove ``version`` for good if ``decide`` (asked on the state it changes) still says so; whether it did."""

    @abstractmethod
    def recover(self, agent: str, choose: Callable[[ServiceState], dict[str, Any] | None]) -> list[str]:
        """Finish or undo what crashed writers left of ``agent`` and remove their leftovers; carry out every
        recorded write `current` has not caught up with; point `current` at the manifest ``choose`` picks on
        the state that leaves (None: leave it); make the map serve `current`. What was done, one line each."""
