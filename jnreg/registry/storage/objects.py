"""Object storage (S3 and S3-compatible): the store without locks, made safe by create-only puts and ETag swaps.

The keys it writes, and what each means, are in ``object_layout``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jnreg.errors import IntegrityError, StoreConflict, StoreError
from jnreg.fsutil import dump_json, host_tag
from jnreg.names import check_agent, check_version, is_agent, is_label
from jnreg.registry import agent_map, journal
from jnreg.registry.adapter_dir import BINARY_FILES
from jnreg.registry.agent_map import MAP_FILE
from jnreg.registry.no_secrets import refuse_secrets
from jnreg.registry.storage.base import (
    MANIFEST,
    REPAIR,
    VERSIONS,
    Decide,
    Draft,
    History,
    ServiceState,
    Snapshot,
    Storage,
    crash_point,
)
from jnreg.registry.storage.bucket import Bucket, Conflict
from jnreg.registry.storage.object_layout import (
    CLAIM,
    JOURNAL,
    MAX_ATTEMPTS,
    PENDING,
    cache_root,
    current_key,
    evaluation_key,
    fetch,
    intent,
    owner_gone,
    pause,
    pending_key,
    read_document,
    read_map_object,
    record_key,
    record_seq,
    report_key,
    service_key,
    version_key,
)
from jnreg.registry.storage.signature_files import ObjectSignatureFiles
from jnreg.schemas import validate

# Given the state it will change and the number of the record it follows, the entry to record (None: nothing).
Entry = Callable[[ServiceState, int], dict[str, Any] | None]


def _entry_of(decide: Decide) -> Entry:
    """The journal entry of what ``decide`` says."""
    return lambda state, seq: change.entry if (change := decide(state)) is not None else None


class ObjectStorage(ObjectSignatureFiles, Storage):
    """A store under ``s3://bucket/prefix``."""

    copies_versions = True

    def __init__(self, root: str, agent_map: Path | str | None, *, lock_timeout: float | None) -> None:
        self.bucket = Bucket(root)
        self.root: str = self.bucket.url
        if agent_map is not None:
            raise StoreError(
                f"an object store keeps its map at {self.bucket.where(MAP_FILE)}; "
                "--agent-map is for local stores and for the destination of `jnreg store pull`"
            )
        self.map_path: str = self.bucket.where(MAP_FILE)
        self.owner = f"{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"

    def __repr__(self) -> str:
        return f"ModelStore({self.root!r})"

    def _json(self, key: str, schema: str, what: str) -> tuple[dict[str, Any], str | None] | None:
        return read_document(self.bucket, key, schema, what)

    # Reading -------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return bool(self.agents()) or self.bucket.exists(MAP_FILE)

    def agents(self) -> list[str]:
        return [name for name in self.bucket.folders(None) if is_agent(name)]

    def has_agent(self, agent: str) -> bool:
        return bool(self.bucket.folders(f"{check_agent(agent)}/{VERSIONS}"))

    def _listing(self, agent: str, label: str = "") -> dict[str, dict[str, int]]:
        """label -> {file name: size} of everything under the agent's versions/ (or one label's), claimed or not."""
        base = f"{check_agent(agent)}/{VERSIONS}/"
        found: dict[str, dict[str, int]] = {}
        for entry in self.bucket.list(f"{base}{label}/" if label else base):
            name_label, _, name = entry.key[len(base) :].partition("/")
            if is_label(name_label) and name:
                found.setdefault(name_label, {})[name] = entry.size
        return found

    def labels(self, agent: str) -> list[str]:
        return sorted(self._listing(agent))

    def is_visible(self, agent: str, label: str) -> bool:
        return self.bucket.exists(version_key(agent, label, MANIFEST))

    def visible_labels(self, agent: str) -> list[str]:
        return sorted(label for label, names in self._listing(agent).items() if MANIFEST in names)

    def unfinished(self, agent: str, label: str) -> tuple[bool, str | None]:
        names = self._listing(agent, label).get(label, {})
        if MANIFEST in names:
            return False, None
        if set(names) - {CLAIM}:
            size = sum(size for name, size in names.items() if name != CLAIM)
            return True, f"{agent} {label}: files of an unfinished publish or a gc ({size} bytes; not a version)"
        return True, None

    def read_manifest(self, agent: str, label: str) -> tuple[Any, str] | None:
        key = version_key(check_agent(agent), check_version(label), MANIFEST)
        got = self.bucket.get(key)
        if got is None:
            return None
        try:
            return json.loads(got[0]), self.bucket.where(key)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"manifest {self.bucket.where(key)} is not valid JSON: {exc}") from None

    def _current_state(self, agent: str) -> tuple[dict[str, Any], str | None]:
        found = self._json(current_key(agent), "object_current", "current pointer")
        if found is None:
            return {"schema_version": 1, "version": None, "seq": 0}, None
        return found

    def current_location(self, agent: str) -> str:
        return self.bucket.where(current_key(agent))

    def read_current(self, agent: str) -> str | None:
        return self._current_state(check_agent(agent))[0]["version"]

    def _map_state(self) -> tuple[dict[str, Any] | None, str | None]:
        return read_map_object(self.bucket)

    def read_map(self) -> dict[str, Any] | None:
        return self._map_state()[0]

    def _record_keys(self, agent: str, upto: int | None = None) -> list[str]:
        """Keys of the agent's journal records 1..``upto`` (default all), oldest first."""
        keys = []
        for entry in self.bucket.list(f"{agent}/{JOURNAL}/"):
            seq = record_seq(agent, entry.key)
            if seq is not None and (upto is None or seq <= upto):
                keys.append(entry.key)
        return sorted(keys)

    def _records(self, agent: str, upto: int | None = None, keys: list[str] | None = None) -> list[dict[str, Any]]:
        """The agent's journal, oldest first: records 1..``upto`` (default all), or those at ``keys``."""
        keys = keys if keys is not None else self._record_keys(agent, upto)

        def read(key: str) -> dict[str, Any]:
            found = self._json(key, "journal_entry", "journal record")
            if found is None:
                raise IntegrityError(f"journal record {self.bucket.where(key)} vanished while it was read")
            return found[0]

        if len(keys) <= 4:
            return [read(k) for k in keys]
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(read, keys))

    def journal(self, agent: str, limit: int | None = None) -> list[dict[str, Any]]:
        agent = check_agent(agent)
        last = self._current_state(agent)[0]["seq"] if limit is not None else 0
        if last == 0:  # all of it, or `current` is lost: list the records
            keys = self._record_keys(agent)
            return self._records(agent, keys=keys[-limit:] if limit is not None else keys)
        # `current` names the newest record it follows; a writer may have recorded one more.
        while self.bucket.exists(record_key(agent, last + 1)):
            last += 1
        return self._records(agent, keys=[record_key(agent, n) for n in range(max(1, last - limit + 1), last + 1)])

    def _history_at(self, agent: str, seq: int) -> History:
        """What the journal says after record ``seq``: one service object, or (stores older than those) the records."""
        if seq == 0:
            return History(None, ())
        found = self._json(service_key(agent, seq), "object_service", "service record")
        if found is not None:
            return History(found[0]["in_service"], tuple(found[0]["undo"]))
        records = self._records(agent, seq)
        return History(journal.in_service(records, agent), journal.undo_stack(records, agent))

    def _service(self, agent: str, state: dict[str, Any], records: int | None = None) -> ServiceState:
        """The ServiceState of a `current` document (``records``: how many journal records there are, if known)."""
        label, seq = state["version"], state["seq"]

        def damage() -> str | None:
            where = self.current_location(agent)
            if label is not None and not self.is_visible(agent, label):
                return f"{where} points at version {label!r}, which is missing or has no manifest{REPAIR}"
            count = records
            if count is None and seq == 0 and self.bucket.exists(record_key(agent, 1)):
                count = len(self._record_keys(agent))
            # One record ahead of `current` is a write between its record and its move; more is damage.
            if count is not None and seq not in (count, count - 1):
                said = "is missing" if seq == 0 else f"follows journal record {seq}"
                served = self._history_at(agent, count).recorded or "no version"
                return (
                    f"{where} {said}, but the journal has {count} record(s) and says {served} is in service "
                    f"(`jnreg store recover {agent}` rebuilds it)"
                )
            return None

        return ServiceState(label, damage=damage, history=lambda: self._history_at(agent, seq))

    def service_state(self, agent: str) -> ServiceState:
        agent = check_agent(agent)
        return self._service(agent, self._current_state(agent)[0])

    def snapshot(self, agent: str) -> Snapshot:
        for _attempt in range(5):
            state, _ = self._current_state(agent)
            records = self._records(agent)
            document = self.read_map()
            if self._current_state(agent)[0] == state and self.read_map() == document:
                break  # no write moved `current` or the map while we read
        else:
            note = f"{agent}: writes kept changing `current` while it was checked; not compared"
            return Snapshot(self._service(agent, state), [], None, [note], settled=False)
        service = self._service(agent, state, len(records))
        snap = Snapshot(service, records, document)
        # Records are claimed in turn on what `current` was, so each starts where the one before left off.
        for before, after in zip([None, *records], records, strict=False):
            expected = before["current"] if before else None
            if after["previous"] != expected:
                snap.problems.append(
                    f"{agent} journal: {after['action']} {after['version']} says current was "
                    f"{after['previous']!r}, the record before left {expected!r}"
                )
        pending = self.bucket.list(f"{agent}/{PENDING}/")
        if pending:
            snap.notes.append(f"{agent}: {len(pending)} write(s) in progress or interrupted (the next write ends them)")
        if state["seq"] == len(records) - 1:
            snap.notes.append(f"{agent}: `current` is being moved (journal has {len(records)}, current {state['seq']})")
            snap.settled = False
        return snap

    def stored_files(self, agent: str, label: str) -> dict[str, int | None]:
        present: dict[str, int | None] = dict(self._listing(agent, label).get(label, {}))
        present.pop(CLAIM, None)
        return present

    def file_sha256(self, agent: str, label: str, name: str) -> str:
        found = self.bucket.sha256(version_key(agent, label, name))
        return found[1] if found else "(missing)"

    def adapter_path(self, agent: str, label: str, manifest: dict[str, Any]) -> Path:
        """A local copy of the version in the cache, one directory per digest, every file's sha256 checked."""
        return self.fetch(agent, label, manifest, cache_root() / manifest["digest"])

    def fetch(self, agent: str, version: str, manifest: dict[str, Any], target: Path) -> Path:
        """Download a version into the new directory ``target`` (kept when it already holds that version)."""
        return fetch(self.bucket, agent, version, manifest, target)

    def label_state(self, agent: str, label: str) -> str | None:
        names = self._listing(agent, label).get(label)
        if names is None:
            return None
        return "version" if MANIFEST in names else "used"

    def _used_labels(self, agent: str) -> set[str]:
        # Claims are never removed, not even by gc, so the claimed labels are every label ever used.
        return set(self.bucket.folders(f"{agent}/{VERSIONS}"))

    def leftovers(self, agent: str) -> list[str]:
        return []  # what unfinished publishes uploaded is noted label by label (see unfinished)

    # Evaluations: beside the version ------------------------------------------------------------------

    def evaluation_location(self, agent: str, version: str, name: str) -> str:
        return self.bucket.where(evaluation_key(agent, version, name))

    def write_evaluation(self, agent: str, version: str, document: dict[str, Any], rows: bytes) -> None:
        # Both names are new, so create-only puts need no lock.
        self.bucket.put_new(evaluation_key(agent, version, document["rows_file"]), rows)
        record_key = evaluation_key(agent, version, f"{document['id']}.json")
        self.bucket.put_new(record_key, dump_json(document).encode("utf-8"))

    def evaluation_documents(self, agent: str, version: str) -> list[tuple[str, str, bytes]]:
        found = []
        for entry in self.bucket.list(evaluation_key(agent, version)):
            name = entry.key.rsplit("/", 1)[-1]
            if name.startswith("e") and name.endswith(".json"):
                got = self.bucket.get(entry.key)
                if got is not None:
                    found.append((self.bucket.where(entry.key), name[: -len(".json")], got[0]))
        return sorted(found)

    def read_evaluation_file(self, agent: str, version: str, name: str) -> bytes | None:
        got = self.bucket.get(evaluation_key(agent, version, name))
        return got[0] if got is not None else None

    def read_version_file(self, agent: str, label: str, name: str) -> bytes | None:
        got = self.bucket.get(version_key(check_agent(agent), check_version(label), name))
        return got[0] if got is not None else None

    def report_location(self, agent: str, version: str) -> str:
        return self.bucket.where(report_key(agent, version))

    def write_report(self, agent: str, version: str, page: bytes) -> None:
        self.bucket.put(report_key(agent, version), page)  # a plain put: a page replaces the one before

    def read_report(self, agent: str, version: str) -> bytes | None:
        got = self.bucket.get(report_key(agent, version))
        return got[0] if got is not None else None

    # Writing -------------------------------------------------------------------------------------

    def prepare(self, agent: str) -> None:
        check_agent(agent)  # nothing to create: keys need no directories

    def publish(self, draft: Draft) -> tuple[str, str, dict[str, Any]]:
        agent, source = draft.agent, draft.source
        self._tidy(agent)
        op = journal.make_entry("publish", agent, "v", previous=None, current=None)["op"]
        pending = pending_key(agent, self.owner)
        label = self._claim_label(draft, op, pending)
        try:
            copied: dict[str, tuple[int, str]] = {}
            for name, path in source.files.items():
                key = version_key(agent, label, name)
                if name in BINARY_FILES:
                    copied[name] = self.bucket.upload(key, path)
                else:
                    data = path.read_bytes()
                    refuse_secrets(data, name)
                    self.bucket.put(key, data)
                    copied[name] = (len(data), hashlib.sha256(data).hexdigest())
                crash_point("uploading")
            sealed = draft.seal(label, copied)
            for name, data in sealed.extra.items():
                self.bucket.put(version_key(agent, label, name), data)
            crash_point("uploaded")
            if not self.bucket.exists(pending):
                # Another writer took this publish for dead (its record outlived the limit) and removed what
                # it had uploaded; a manifest now would make a version with missing files visible.
                raise StoreConflict(
                    f"publish of {agent} {label} was taken for abandoned and cleaned up by another writer; "
                    "publish again"
                )
            self.bucket.put_new(version_key(agent, label, MANIFEST), sealed.text.encode("utf-8"))
        except BaseException:
            with suppress(Exception):
                self._undo_upload(agent, label, self.owner)
                self.bucket.delete([pending])
            raise
        crash_point("visible")
        self._move(agent, lambda state, seq: draft.entry(sealed.manifest, state.current))
        self.bucket.delete([pending])
        return label, self.bucket.where(version_key(agent, label).rstrip("/")), sealed.manifest

    def _claim_label(self, draft: Draft, op: str, pending: str) -> str:
        """Reserve a label with a create-only put: the one asked for, or the first free default label."""
        agent, version = draft.agent, draft.version
        used: set[str] | None = None
        for attempt in range(MAX_ATTEMPTS):
            if version is not None:
                label = version
            else:
                used = used if used is not None else self._used_labels(agent)
                label = draft.free_label(used)
            claim = intent(self.owner, "publish", agent, label, op)
            self.bucket.put(pending, claim)  # ours alone: the owner is in its name
            try:
                self.bucket.put_new(version_key(agent, label, CLAIM), claim)
                return label
            except Conflict:
                if version is not None:
                    self.bucket.delete([pending])
                    draft.refuse_used_label(version)
                    raise StoreConflict(f"agent {agent!r} already has a version {version!r}") from None
                used = (used or set()) | {label}
                if attempt % 8 == 7:
                    used = None  # others claimed several in a row: list again
                pause(attempt)
        raise StoreConflict(f"could not claim a free label for {agent!r} after {MAX_ATTEMPTS} tries")

    def _undo_upload(self, agent: str, label: str, owner: str) -> int:
        """Remove the files a publish by ``owner`` uploaded under ``label`` (never someone else's, never the claim);
        how many bytes they held."""
        claim = self._json(version_key(agent, label, CLAIM), "object_intent", "label claim")
        if claim is None or claim[0]["owner"] != owner or self.is_visible(agent, label):
            return 0
        names = {n: size for n, size in self._listing(agent, label).get(label, {}).items() if n != CLAIM}
        self.bucket.delete([version_key(agent, label, n) for n in names])
        return sum(names.values())

    def _move(self, agent: str, decide: Entry) -> dict[str, Any] | None:
        """Record the next write of ``agent`` (create-only journal record) and move `current` to what it says.

        ``decide`` runs again after another writer got in first, so it always decides on the state it changes.
        """
        replayed = False
        for attempt in range(MAX_ATTEMPTS):
            document, etag = self._current_state(agent)
            state = self._service(agent, document)
            seq = document["seq"]
            claimed = self._json(record_key(agent, seq + 1), "journal_entry", "journal record")
            if claimed is not None:
                # Another writer's, recorded but not applied yet; the map follows this write's end.
                self._apply(agent, claimed[0], state, document, etag, sync_map=False)
                replayed = True
                continue
            entry = decide(state, seq)
            if entry is None:
                if replayed:
                    self._sync_map(agent)
                return None
            text = json.dumps(entry, sort_keys=True, ensure_ascii=False)
            refuse_secrets(text, "journal entry")
            try:
                self.bucket.put_new(record_key(agent, seq + 1), text.encode("utf-8"))
            except Conflict:
                pause(attempt)
                continue
            crash_point("gc-journaled" if entry["action"] == "gc" else "journaled")
            self._apply(agent, entry, state, document, etag)
            return entry
        raise StoreConflict(f"agent {agent!r}: other writers kept getting in first ({MAX_ATTEMPTS} tries)")

    def _apply(
        self,
        agent: str,
        entry: dict[str, Any],
        before: ServiceState,
        document: dict[str, Any],
        etag: str | None,
        *,
        sync_map: bool = True,
    ) -> None:
        """Make the record after ``document``'s take effect: a gc hides its version, the service record after it
        is written, then `current` moves, then the map."""
        seq = document["seq"] + 1
        if entry["action"] == "gc":
            self.bucket.delete([version_key(agent, entry["version"], MANIFEST)])
        history = before.history
        recorded = entry["current"] if entry["action"] != "gc" else history.recorded
        service = {
            "schema_version": 1,
            "seq": seq,
            "in_service": recorded,
            "undo": list(journal.undo_after(history.undo, entry)),
        }
        validate("object_service", service, f"service record {seq} of {agent}")
        with suppress(Conflict):  # every writer that applies this record writes the same service record
            self.bucket.put_new(service_key(agent, seq), json.dumps(service).encode())
        state = {"schema_version": 1, "version": entry["current"], "seq": seq}
        validate("object_current", state, f"current pointer of {agent}")
        with suppress(Conflict):  # lost only to a writer that applied this same record
            self.bucket.put_if(current_key(agent), json.dumps(state).encode(), etag)
        if sync_map:
            self._sync_map(agent)

    def _sync_map(self, agent: str) -> bool:
        """Make the map serve the agent's `current` first (compare-and-swap; read the map before `current`);
        whether it changed."""
        for attempt in range(MAX_ATTEMPTS):
            document, etag = self._map_state()
            label = self._current_state(agent)[0]["version"]
            found = None if label is None else self.read_manifest(agent, label)
            if found is None:  # nothing in service, or its version is gone
                return False
            updated = agent_map.with_current(document, agent, found[0])
            if updated == document:
                return False
            text = agent_map.map_text(updated, self.map_path)
            try:
                self.bucket.put_if(MAP_FILE, text.encode("utf-8"), etag)
                return True
            except Conflict:
                pause(attempt)
        raise StoreConflict(f"agent map {self.map_path} kept changing ({MAX_ATTEMPTS} tries)")

    def _tidy(self, agent: str) -> list[str]:
        """Before a write: end what dead writers left of ``agent``, apply a recorded move, fix the map."""
        self.read_map()  # never change `current` while the map cannot follow
        done: list[str] = []
        now = datetime.now(timezone.utc)
        for entry in self.bucket.list(f"{agent}/{PENDING}/"):
            owner = entry.key.rsplit("/", 1)[-1].removesuffix(".json")
            if owner == self.owner or not owner_gone(owner, (now - entry.last_modified).total_seconds()):
                continue
            found = self._json(entry.key, "object_intent", "pending write")
            if found is not None:
                done.append(self._finish(found[0]))
            self.bucket.delete([entry.key])
        document, etag = self._current_state(agent)
        start = document["seq"]
        # Normally at most one record is ahead of `current` (its writer died before moving it); after `current`
        # was lost, all of them. The map follows once, to the last, never to a version on the way.
        while claimed := self._json(record_key(agent, document["seq"] + 1), "journal_entry", "journal record"):
            self._apply(agent, claimed[0], self._service(agent, document), document, etag, sync_map=False)
            action = claimed[0]["action"]
            document, etag = self._current_state(agent)
        if document["seq"] == start + 1:
            done.append(f"carried out journal record {document['seq']} ({action})")
        elif document["seq"] > start + 1:
            done.append(
                f"rebuilt {self.current_location(agent)} from journal records {start + 1}-{document['seq']}: "
                f"{document['version'] or 'nothing'} in service"
            )
        if document["version"] is not None and self._sync_map(agent):
            done.append(f"pointed agent map {self.map_path} at {agent} {document['version']}")
        return done

    def _finish(self, intent: dict[str, Any]) -> str:
        """Finish or undo a dead writer's publish or gc; what was done."""
        agent, label, action = intent["agent"], intent["version"], intent["action"]
        if action == "publish":
            found = self.read_manifest(agent, label)
            if found is None:  # not visible: the writer died before its manifest went up
                size = self._undo_upload(agent, label, intent["owner"])
                return f"removed the {size} bytes a killed publish of {agent} {label} had uploaded"
            if any(e["action"] == "publish" and e["version"] == label for e in self._records(agent)):
                return f"ended the finished publish of {agent} {label}"
            manifest = found[0]

            def decide(state: ServiceState, seq: int) -> dict[str, Any] | None:
                # Two writers may finish the same dead writer's publish: only one records it.
                if any(e["action"] == "publish" and e["version"] == label for e in self._records(agent, seq)):
                    return None
                return journal.version_entry("publish", agent, manifest, previous=state.current, current=state.current)

            self._move(agent, decide)
            return f"recorded the publish of {agent} {label} a killed writer had made visible"
        if any(e["action"] == "gc" and e["version"] == label for e in self._records(agent)):
            self._remove_files(agent, label)
            return f"removed the files of {agent} {label}, whose gc a killed writer had recorded"
        return f"ended the unrecorded gc of {agent} {label}"

    def _remove_files(self, agent: str, label: str) -> None:
        names = [n for n in self._listing(agent, label).get(label, {}) if n != CLAIM]
        # The manifest goes first: a version is never visible without all its files.
        names.sort(key=lambda n: n != MANIFEST)
        for name in names:
            self.bucket.delete([version_key(agent, label, name)])

    def move(self, agent: str, decide: Decide) -> dict[str, Any] | None:
        self._tidy(agent)
        return self._move(agent, _entry_of(decide))

    def remove(self, agent: str, version: str, decide: Decide) -> bool:
        pending = pending_key(agent, self.owner)
        self.bucket.put(pending, intent(self.owner, "gc", agent, version, "0" * 32))
        try:
            if self._move(agent, _entry_of(decide)) is None:
                return False
            self._remove_files(agent, version)
            return True
        finally:
            self.bucket.delete([pending])

    def recover(self, agent: str, choose: Callable[[ServiceState], dict[str, Any] | None]) -> list[str]:
        done = self._tidy(check_agent(agent))
        document, etag = self._current_state(agent)
        manifest = choose(self._service(agent, document))
        if manifest is not None:
            moved = {"schema_version": 1, "version": manifest["version"], "seq": document["seq"]}
            self.bucket.put_if(current_key(agent), json.dumps(moved).encode(), etag)
            done.append(f"pointed {self.current_location(agent)} at {manifest['version']}, as the journal says")
            if self._sync_map(agent):
                done.append(f"pointed agent map {self.map_path} at {agent} {manifest['version']}")
        return done
