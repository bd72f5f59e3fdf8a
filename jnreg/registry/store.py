"""ModelStore: the store's rules, written once, over a storage that keeps them (local files or object storage).

The rules: a label names one set of weights forever (never replaced, never reused, even after gc); a version
is sealed by its manifest and digest; every write is one journal entry, and the journal is the history
(rollback pops its undo stack, recover rebuilds `current` from it); `current` names a whole, intact version
and the agent map serves it first; gc never removes the version in service, the rollback target, or a
version the map points at. How each storage keeps them safe is in ``registry/storage/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jnreg.errors import IntegrityError, StoreConflict, StoreError, StoreNotFound
from jnreg.fsutil import sha256_file
from jnreg.names import check_adapter_name, check_agent, check_version
from jnreg.registry import agent_map, journal
from jnreg.registry.adapter_dir import AdapterSource, inspect_source
from jnreg.registry.manifests import (
    MANIFEST,
    base_model_of,
    checked_manifest,
    compute_digest,
    dir_files,
    file_problems,
    seal,
    stored_summary,
)
from jnreg.registry.records import VersionRecords
from jnreg.registry.results import GcResult, PublishResult, Recovery, Resolution, VerifyReport
from jnreg.registry.signatures import SignedVersions, signed
from jnreg.registry.signing import load_signer
from jnreg.registry.storage import open_storage
from jnreg.registry.storage.base import REPAIR, VERSIONS, Change, Draft, ServiceState, Storage
from jnreg.registry.storage.local import LocalStorage

__all__ = [
    "MANIFEST",
    "VERSIONS",
    "GcResult",
    "ModelStore",
    "PublishResult",
    "Recovery",
    "Resolution",
    "VerifyReport",
    "compute_digest",
]

DEFAULT_ROOT = Path("model_store")


class ModelStore(VersionRecords, SignedVersions):
    """Published adapters per agent, the `current` pointer of each, the journal and the agent map.

    ``root`` is a local directory, or ``s3://bucket/prefix`` for object storage (default: $MODEL_STORE_ROOT,
    else ./model_store); ``storage.open_storage`` picks the storage from it.
    """

    def __init__(
        self,
        root: Path | str | None = None,
        agent_map: Path | str | None = None,
        *,
        lock_timeout: float | None = None,
    ) -> None:
        root = root or os.environ.get("MODEL_STORE_ROOT") or DEFAULT_ROOT
        self.storage: Storage = open_storage(root, agent_map, lock_timeout=lock_timeout)

    def __repr__(self) -> str:
        return repr(self.storage)

    @property
    def root(self) -> Path | str:
        """The local directory, or the object store's URL."""
        return self.storage.root

    @property
    def map_path(self) -> Path | str:
        return self.storage.map_path

    @property
    def lock_timeout(self) -> float:
        return self.storage.lock_timeout

    # The local layout, for callers that read a local store's files directly --------------------------

    def _local(self) -> LocalStorage:
        if not isinstance(self.storage, LocalStorage):
            raise StoreError(f"the store at {self.root} is an object store; this needs a local one")
        return self.storage

    @property
    def journal_path(self) -> Path:
        return self._local().journal_path

    def version_dir(self, agent: str, version: str) -> Path:
        return self._local().version_dir(agent, version)

    def evaluations_dir(self, agent: str, version: str) -> Path:
        return self._local().evaluations_dir(agent, version)

    # Reading -------------------------------------------------------------------------------------

    def agents(self) -> list[str]:
        """Agents with versions."""
        return self.storage.agents()

    def require_agent(self, agent: str) -> str:
        agent = check_agent(agent)
        if not self.storage.has_agent(agent):
            raise StoreNotFound(f"agent {agent!r} has no versions in the store at {self.root}")
        return agent

    def version_labels(self, agent: str) -> list[str]:
        """Published versions of ``agent``; staging, claims and junk are not versions."""
        return self.storage.visible_labels(check_agent(agent))

    def versions(self, agent: str) -> list[dict[str, Any]]:
        """Manifests of every published version of ``agent``, oldest first."""
        manifests = []
        for label in self.version_labels(agent):
            try:
                manifests.append(self.manifest(agent, label))
            except StoreNotFound:
                continue  # removed by a gc since it was listed
        return sorted(manifests, key=lambda m: (m["created_at"], m["version"]))

    def current(self, agent: str) -> str | None:
        """The version in service; IntegrityError when `current` names no whole version."""
        agent = check_agent(agent)
        label = self.storage.read_current(agent)
        if label is not None and not self.storage.is_visible(agent, label):
            where = self.storage.current_location(agent)
            raise IntegrityError(f"{where} points at version {label!r}, which is missing or has no manifest{REPAIR}")
        return label

    def manifest(self, agent: str, version: str) -> dict[str, Any]:
        """The validated manifest of a published version."""
        agent, version = check_agent(agent), check_version(version)
        found = self.storage.read_manifest(agent, version)
        if found is None:
            raise StoreNotFound(f"agent {agent!r} has no version {version!r} in the store at {self.root}")
        return checked_manifest(found[0], found[1], agent, version)

    def read_map(self) -> dict[str, Any] | None:
        """The agent map, validated; None when there is none yet."""
        return self.storage.read_map()

    def history(self, agent: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The journal entries of ``agent``, oldest first; only the newest ``limit`` when given."""
        agent = check_agent(agent)
        if limit is not None and limit < 1:
            raise StoreError(f"--limit must be 1 or more, not {limit}")
        found = self.storage.journal(agent, limit)
        if not found and not self.storage.has_agent(agent):
            raise StoreNotFound(f"agent {agent!r} has no history in the store at {self.root}")
        return found

    def resolve(self, agent: str, version: str | None = None) -> Resolution:
        """Where ``agent``'s adapter (``version``, default the one in service) is and which base it needs."""
        agent = self.require_agent(agent)
        if version is None:
            version = self.current(agent)
            if version is None:
                state = self.storage.service_state(agent)
                if state.damage is not None:
                    raise IntegrityError(state.damage)
                if state.history.recorded is not None:
                    raise IntegrityError(
                        f"{self.storage.current_location(agent)} is missing, but the journal says "
                        f"{state.history.recorded} is in service (`jnreg store recover {agent}` rebuilds it)"
                    )
                raise StoreNotFound(f"agent {agent!r} has no version in service; promote one first")
        manifest = self.manifest(agent, check_version(version))
        self.require_trusted(agent, version, manifest)
        document = self.read_map()
        entry = agent_map.entry_for(document, agent, manifest["adapter_name"])
        base_ref = entry.get("base_ref") if entry else None
        if base_ref is None or agent_map.hf_id_of(document, base_ref) != manifest["base_model"]:
            base_ref = agent_map.base_ref_for(document, manifest["base_model"])
        return Resolution(
            agent=agent,
            version=version,
            adapter_name=manifest["adapter_name"],
            base_model=manifest["base_model"],
            base_ref=base_ref,
            adapter_path=self.storage.adapter_path(agent, version, manifest),
            digest=manifest["digest"],
            manifest=manifest,
            base_model_revision=manifest["base_model_revision"],
        )

    def check_copy(self, resolution: Resolution) -> list[str]:
        """Every way the files at ``resolution.adapter_path`` (what a loader reads) differ from the manifest."""
        if not self.storage.copies_versions:
            return self.check_files(resolution.agent, resolution.version)
        path = resolution.adapter_path
        where = f"{resolution.agent} {resolution.version} (copy in {path})"
        return file_problems(where, resolution.manifest, dir_files(path), lambda name: sha256_file(path / name))

    def check_files(self, agent: str, version: str, manifest: dict[str, Any] | None = None) -> list[str]:
        """Every way a version's files differ from its manifest, one line per bad file; empty when intact.
        ``manifest``: the version's, when the caller has just read it."""
        if manifest is None:
            try:
                manifest = self.manifest(agent, version)
            except IntegrityError as exc:
                return [str(exc)]
        present = self.storage.stored_files(agent, version)
        return file_problems(
            f"{agent} {version}", manifest, present, lambda name: self.storage.file_sha256(agent, version, name)
        )

    def verify(self, agent: str | None = None, version: str | None = None) -> VerifyReport:
        """Recompute every checksum, and name every disagreement between `current`, the journal and the map."""
        report = VerifyReport()
        if agent is None:
            if not self.storage.exists():
                raise StoreNotFound(f"no store at {self.root}")
            names = self.agents()
        else:
            names = [self.require_agent(agent)]
        try:
            self.read_map()
        except IntegrityError as exc:
            report.problems.append(str(exc))
        for name in names:
            self._verify_versions(name, version, report)
            if version is None:
                self._verify_service(name, report)
                report.notes.extend(self.storage.leftovers(name))
        return report

    def _verify_versions(self, agent: str, version: str | None, report: VerifyReport) -> None:
        for label in [check_version(version)] if version is not None else self.storage.labels(agent):
            skip, note = self.storage.unfinished(agent, label)
            if skip and note is None and version is not None:
                raise StoreNotFound(f"agent {agent!r} has no version {label!r} in the store at {self.root}")
            if skip:
                report.notes.extend([note] if note else [])
                continue
            try:
                problems = self.check_files(agent, label)
                report.problems.extend(problems or self.signature_problems(agent, label))
            except (StoreNotFound, FileNotFoundError):
                if version is None:
                    continue  # removed by a gc while we looked
                raise
            report.checked.append(f"{agent} {label}")

    def _verify_service(self, agent: str, report: VerifyReport) -> None:
        """`current` names a whole version, the journal is chained and agrees, and the map serves `current` first."""
        try:
            snap = self.storage.snapshot(agent)
        except StoreError as exc:
            if str(exc) not in report.problems:
                report.problems.append(str(exc))  # a map or journal jnreg cannot read, said once
            return
        report.notes.extend(snap.notes)
        if not snap.settled:
            return
        state, records = snap.state, snap.records
        damage = state.damage
        problems = ([damage] if damage else []) + snap.problems
        current = state.current
        # A store with no journal for the agent (a pulled mirror) has nothing to compare `current` with.
        recorded = journal.in_service(records, agent) if records else current
        if damage is None and recorded != current:
            problems.append(
                f"{agent}: {self.storage.current_location(agent)} names {current or 'no version'}, but the journal "
                f"says {recorded or 'no version'} is in service (`jnreg store recover {agent}` restores the journal's)"
            )
        entries = agent_map.entries(snap.document, agent)
        for entry in entries:
            name = f"{agent}/{entry.get('adapter_name')}"
            label = agent_map.stored_version(entry, agent)
            if label is None:
                continue  # an entry jnreg did not write
            if not self.storage.is_visible(agent, label):
                problems.append(f"agent map entry {name} points at missing version {label}")
            elif "digest" in entry and entry["digest"] != self._digest_or_none(agent, label):
                problems.append(f"agent map entry {name} has the wrong digest for {label}")
        first = entries[0].get("adapter_model_store_path") if entries else None
        if current is not None and damage is None and first != agent_map.store_path(agent, current):
            problems.append(f"agent map {self.map_path} does not serve {agent}'s current version {current} first")
        elif current is None and damage is None and first and first.startswith(f"{agent}/{VERSIONS}/"):
            problems.append(f"agent map {self.map_path} serves {first}, but `current` of {agent} names no version")
        report.problems.extend(problems)

    def _digest_or_none(self, agent: str, version: str) -> str | None:
        try:
            return self.manifest(agent, version)["digest"]
        except IntegrityError:
            return None  # verify reports the damaged manifest with the version's files

    def recover(self, agent: str) -> Recovery:
        """Finish or undo what crashed writers left of ``agent``, remove their leftovers, and rebuild `current`
        and the map from the journal where they disagree with it."""
        agent = self.require_agent(agent)
        problems: list[str] = []

        def choose(state: ServiceState) -> dict[str, Any] | None:
            recorded = state.history.recorded
            if recorded is None or (state.damage is None and state.current == recorded):
                return None  # nothing the journal puts in service, or `current` already says it
            if not self.storage.is_visible(agent, recorded):
                others = ", ".join(self.version_labels(agent)) or "none"
                problems.append(
                    f"{agent}: the journal says {recorded} is in service, but that version is no longer in the "
                    f"store; promote one of the versions there ({others})"
                )
                return None
            bad = self.check_files(agent, recorded)
            if bad:
                problems.append(f"{agent}: the journal says {recorded} is in service, but {bad[0]}")
                return None
            return self.manifest(agent, recorded)

        done = self.storage.recover(agent, choose)
        return Recovery(done=done, problems=problems)

    # Writing -------------------------------------------------------------------------------------

    def _label_taken(self, agent: str, label: str, used: set[str] | None) -> bool:
        return label in used if used is not None else self.storage.label_taken(agent, label)

    def _free_label(self, agent: str, used: set[str] | None = None) -> str:
        """vYYYYMMDD-HHMM (UTC), with -2, -3, ... when that minute is taken (``used``: every used label, if known)."""
        base = datetime.now(timezone.utc).strftime("v%Y%m%d-%H%M")
        label, n = base, 1
        while self._label_taken(agent, label, used):
            n += 1
            label = f"{base}-{n}"
        return label

    def _refuse_used_label(self, agent: str, version: str) -> None:
        state = self.storage.label_state(agent, version)
        if state == "version":
            raise StoreConflict(f"agent {agent!r} already has a version {version!r}; versions are never replaced")
        if state == "used":
            # A rollback or an orchestrator pinned to this label must never get other weights.
            raise StoreConflict(f"agent {agent!r} had a version {version!r} before; labels are never reused")

    def check_can_publish(
        self, agent: str, *, adapter_name: str | None = None, version: str | None = None, create: bool = True
    ) -> None:
        """Everything a publish checks before it has the adapter: names, the map, the version, a writable root.

        The trainer calls it before training, so a run that cannot be published fails in seconds, not hours.
        """
        check_agent(agent)
        if version is not None:
            check_version(version)
        if adapter_name is not None:
            check_adapter_name(adapter_name)
        self.read_map()  # a map jnreg cannot read stops the publish before anything is written
        if version is not None:
            self._refuse_used_label(agent, version)
        if create:
            self.storage.prepare(agent)  # proves the root is writable

    def _publishable(
        self,
        agent: str,
        source_dir: Path | str,
        adapter_name: str | None,
        version: str | None,
        base_model: str | None,
    ) -> tuple[AdapterSource, str, str]:
        """Check everything about a publish that needs no write: (the adapter's files, adapter name, base model)."""
        self.check_can_publish(agent, adapter_name=adapter_name, version=version, create=False)
        source = inspect_source(Path(source_dir))
        summary = source.summary
        if summary is not None and summary.get("agent", agent) != agent:
            raise StoreError(f"{source_dir} holds an adapter for agent {summary.get('agent')!r}, not {agent!r}")
        adapter_name = check_adapter_name(adapter_name or (summary or {}).get("adapter_name") or f"{agent}_adapter")
        if summary is not None:
            stored_summary(summary, adapter_name, version or "v00000000-0000", str(source_dir))
        return source, adapter_name, base_model_of(source, base_model, source_dir)

    def publish(
        self,
        agent: str,
        source_dir: Path | str,
        *,
        adapter_name: str | None = None,
        version: str | None = None,
        promote: bool = True,
        base_model: str | None = None,
        sign_key: Path | str | None = None,
    ) -> PublishResult:
        """Store the loadable files of the adapter in ``source_dir`` as a new immutable version of ``agent``.

        ``base_model`` names the base the adapter was trained on, for adapters that do not say; an adapter
        that names another base is refused. With ``sign_key`` (else $JNREG_SIGNING_KEY) the version is signed.
        """
        signer = load_signer(sign_key)
        source, name, base = self._publishable(agent, source_dir, adapter_name, version, base_model)
        draft = Draft(
            agent=agent,
            source=source,
            version=version,
            promote=promote,
            free_label=lambda used: self._free_label(agent, used),
            refuse_used_label=lambda label: self._refuse_used_label(agent, label),
            seal=lambda label, copied: signed(
                seal(agent, label, source, copied, adapter_name=name, base_model=base), signer
            ),
        )
        label, path, manifest = self.storage.publish(draft)
        fingerprint = signer.fingerprint if signer else None
        return PublishResult(label, path, manifest["digest"], manifest, promoted=promote, signer=fingerprint)

    def _put_in_service(
        self, action: str, agent: str, version: str, state: ServiceState, checked: dict[str, list[str]]
    ) -> Change:
        """The change that puts an intact ``version`` in service (``checked``: file problems found so far)."""
        manifest = self.manifest(agent, version)
        if version not in checked:
            checked[version] = self.check_files(agent, version, manifest)
        if checked[version]:
            raise IntegrityError(f"refusing to {action} {agent} to {version}: {checked[version][0]}")
        entry = journal.version_entry(action, agent, manifest, previous=state.current, current=version)
        return Change(entry, manifest)

    def promote(self, agent: str, version: str) -> dict[str, Any] | None:
        """Put ``version`` in service; None when it already is."""
        agent, version = self.require_agent(agent), check_version(version)
        self.manifest(agent, version)
        checked: dict[str, list[str]] = {}

        def decide(state: ServiceState) -> Change | None:
            if state.current == version and state.damage is None:
                return None
            return self._put_in_service("promote", agent, version, state, checked)

        return self.storage.move(agent, decide)

    def rollback(self, agent: str) -> dict[str, Any]:
        """Put back the version that was in service before the current one (an undo stack, from the journal)."""
        agent = self.require_agent(agent)
        checked: dict[str, list[str]] = {}

        def decide(state: ServiceState) -> Change:
            if state.damage is not None:
                raise IntegrityError(state.damage)
            current = state.current
            if current is None:
                raise StoreNotFound(f"agent {agent!r} has no version in service to roll back from")
            recorded = state.history.recorded
            if recorded != current:
                # The undo stack is only right if the journal saw every change of `current`.
                raise IntegrityError(
                    f"the journal says {recorded!r} is in service for {agent!r} but current is {current!r}; "
                    "refusing to guess what to roll back to (promote the version you want instead)"
                )
            target = state.rollback_target
            if target is None:
                raise StoreNotFound(f"nothing to roll back to: the journal has no earlier version of {agent!r}")
            if not self.storage.is_visible(agent, target):
                raise StoreNotFound(f"cannot roll back {agent!r} to {target!r}: that version is no longer in the store")
            return self._put_in_service("rollback", agent, target, state, checked)

        entry = self.storage.move(agent, decide)
        assert entry is not None  # decide never says "nothing to do"
        return entry

    def protected(self, agent: str, state: ServiceState, document: dict[str, Any] | None) -> set[str]:
        """Versions gc never removes: the one in service (by `current` and by the journal), the rollback target,
        and any the map points at."""
        found = {state.current, state.history.recorded, state.rollback_target}
        found.update(agent_map.stored_version(entry, agent) for entry in agent_map.entries(document, agent))
        return {v for v in found if v}

    def gc(self, agent: str, keep: int, *, dry_run: bool = False) -> GcResult:
        """Remove all but the ``keep`` newest versions, never a protected one (see ``protected``)."""
        agent = self.require_agent(agent)
        if keep < 0:
            raise StoreError(f"--keep must be 0 or more, not {keep}")
        if not dry_run:
            self.storage.recover(agent, lambda state: None)  # end what crashed writers left before planning
        state = self.storage.service_state(agent)
        newest_first = [m["version"] for m in reversed(self.versions(agent))]
        protected = self.protected(agent, state, self.read_map())
        kept = [v for i, v in enumerate(newest_first) if i < keep or v in protected]
        remove = [v for v in newest_first if v not in kept]
        if dry_run:
            return GcResult(removed=remove, kept=kept, dry_run=True)
        if state.damage is not None:
            raise IntegrityError(
                f"refusing to remove versions of {agent} while its `current` is damaged: {state.damage}"
            )
        removed = []
        for version in remove:
            try:
                manifest = self.manifest(agent, version)
            except StoreNotFound:
                continue  # another gc removed it since the plan was made
            if self.storage.remove(agent, version, self._removal(agent, manifest)):
                removed.append(version)
        return GcResult(removed=removed, kept=[v for v in newest_first if v not in removed], dry_run=False)

    def _removal(self, agent: str, manifest: dict[str, Any]) -> Callable[[ServiceState], Change | None]:
        """What gc decides of ``manifest``'s version on the state it changes: remove it, unless it is protected."""
        version = manifest["version"]

        def decide(state: ServiceState) -> Change | None:
            if not self.storage.is_visible(agent, version) or version in self.protected(agent, state, self.read_map()):
                return None  # removed, promoted or pinned by someone else meanwhile
            entry = journal.version_entry("gc", agent, manifest, previous=state.current, current=state.current)
            return Change(entry, manifest)

        return decide
