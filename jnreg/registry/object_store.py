"""ModelStore in object storage (S3 and S3-compatible): the same rules as the local store, without locks.

Layout under ``s3://bucket/prefix``::

    AGENT_MODEL_MAP.json                    the map; rewritten by compare-and-swap on its ETag (If-Match)
    <agent>/journal/<seq>.json              one journal entry per write, created only (If-None-Match: *);
                                            claiming the next number orders every write of the agent
    <agent>/current                         {"version", "seq"}: moved by compare-and-swap after its record
    <agent>/versions/<label>/claim.json     created only; reserves the label forever, even after gc
    <agent>/versions/<label>/<file>         the version's files, uploaded after the claim
    <agent>/versions/<label>/manifest.json  created only, last: the version is visible from here on
    <agent>/pending/<owner>.json            a publish or gc in progress; the next writer finishes or undoes
                                            it once its owner is gone

A writer killed at any point leaves no visible half version: a version without its manifest is not a
version, and the next write on the agent (or ``recover``) removes what the dead writer uploaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jnreg.errors import IntegrityError, StoreConflict, StoreError, StoreNotFound
from jnreg.fsutil import (
    STALE_OTHER_HOST_S,
    STALE_SAME_HOST_S,
    dump_json,
    fsync_dir,
    host_tag,
    owned_name,
    pid_alive,
    remove_tree,
    sha256_file,
)
from jnreg.names import check_agent, check_version, is_agent, is_label
from jnreg.registry import agent_map, journal
from jnreg.registry.adapter_dir import BINARY_FILES
from jnreg.registry.agent_map import MAP_FILE
from jnreg.registry.no_secrets import refuse_secrets
from jnreg.registry.objects import Bucket, Conflict
from jnreg.registry.signing import SIGNATURE, load_signer
from jnreg.registry.store import (
    EVALUATIONS,
    MANIFEST,
    REPAIR,
    GcResult,
    ModelStore,
    PublishResult,
    Resolution,
    VerifyReport,
    checked_manifest,
    crash_point,
    file_problems,
)
from jnreg.schemas import validate

CLAIM = "claim.json"
CURRENT = "current"
JOURNAL = "journal"
PENDING = "pending"
VERSIONS = "versions"
# How often a writer retries after losing a conditional write before it reports a conflict.
MAX_ATTEMPTS = 200
# Fault injection points of this storage (see store.crash_point).
OBJECT_CRASH_POINTS = ("uploading", "uploaded", "visible", "journaled", "gc-journaled")
_OWNER = re.compile(r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})")


def cache_root() -> Path:
    """Where resolve and load keep downloaded versions, one directory per digest."""
    base = os.environ.get("JNREG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jnreg")
    return Path(base) / "store"


def _owner_gone(owner: str, age_s: float) -> bool:
    """Whether the writer named ``owner`` (host-pid-random) can no longer be writing."""
    match = _OWNER.fullmatch(owner)
    if match is None:
        return age_s > STALE_OTHER_HOST_S
    if match["host"] != host_tag():
        return age_s > STALE_OTHER_HOST_S
    if int(match["pid"]) == os.getpid():
        return False
    return not pid_alive(int(match["pid"])) or age_s > STALE_SAME_HOST_S


def _pause(attempt: int) -> None:
    """Back off a little after a lost conditional write, with jitter so racing writers spread out."""
    time.sleep(min(0.2, 0.002 * (attempt + 1)) * (0.5 + secrets.randbelow(1000) / 1000))


class ObjectModelStore(ModelStore):
    """The ModelStore rules on an object store: create-only puts and compare-and-swap instead of locks."""

    def __init__(
        self,
        root: Path | str | None = None,
        agent_map: Path | str | None = None,
        *,
        lock_timeout: float | None = None,
    ) -> None:
        url = str(root or os.environ.get("MODEL_STORE_ROOT"))
        self.bucket = Bucket(url)
        self.root = self.bucket.url  # type: ignore[assignment]  # a URL, not a local path
        if agent_map is not None:
            raise StoreError(
                f"an object store keeps its map at {self.bucket.where(MAP_FILE)}; "
                "--agent-map is for local stores and for the destination of `jnreg store pull`"
            )
        self.map_path = self.bucket.where(MAP_FILE)  # type: ignore[assignment]
        self.journal_path = None  # type: ignore[assignment]  # one journal per agent, under <agent>/journal/
        self.lock_timeout = 0.0
        self.owner = f"{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"

    def __repr__(self) -> str:
        return f"ModelStore({self.root!r})"

    # Keys ----------------------------------------------------------------------------------------

    @staticmethod
    def _version_key(agent: str, version: str, name: str = "") -> str:
        return f"{agent}/{VERSIONS}/{version}/{name}"

    @staticmethod
    def _record_key(agent: str, seq: int) -> str:
        return f"{agent}/{JOURNAL}/{seq:010d}.json"

    def _json(self, key: str, schema: str, what: str) -> tuple[dict[str, Any], str | None] | None:
        got = self.bucket.get(key)
        if got is None:
            return None
        data, etag = got
        try:
            document = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{what} {self.bucket.where(key)} is not valid JSON: {exc}") from None
        validate(schema, document, f"{what} {self.bucket.where(key)}")
        return document, etag

    # Evaluations: beside the version, as in the local store --------------------------------------

    def _evaluations_key(self, agent: str, version: str, name: str = "") -> str:
        return f"{check_agent(agent)}/{EVALUATIONS}/{check_version(version)}/{name}"

    def evaluation_location(self, agent: str, version: str, name: str) -> str:
        return self.bucket.where(self._evaluations_key(agent, version, name))

    def _write_evaluation(self, agent: str, version: str, document: dict[str, Any], rows: bytes) -> None:
        # Rows first: the record is what makes an evaluation count. Both names are new, so create-only.
        self.bucket.put_new(self._evaluations_key(agent, version, document["rows_file"]), rows)
        record_key = self._evaluations_key(agent, version, f"{document['id']}.json")
        self.bucket.put_new(record_key, dump_json(document).encode("utf-8"))

    def _evaluation_documents(self, agent: str, version: str) -> list[tuple[str, str, bytes]]:
        found = []
        for entry in self.bucket.list(self._evaluations_key(agent, version)):
            name = entry.key.rsplit("/", 1)[-1]
            if name.startswith("e") and name.endswith(".json"):
                got = self.bucket.get(entry.key)
                if got is not None:
                    found.append((self.bucket.where(entry.key), name[: -len(".json")], got[0]))
        return sorted(found)

    # Reading -------------------------------------------------------------------------------------

    def agents(self) -> list[str]:
        return [name for name in self.bucket.folders(None) if is_agent(name)]

    def _listing(self, agent: str) -> dict[str, dict[str, int]]:
        """label -> {file name: size} of everything under the agent's versions/, claimed or published."""
        base = f"{check_agent(agent)}/{VERSIONS}/"
        found: dict[str, dict[str, int]] = {}
        for entry in self.bucket.list(base):
            label, _, name = entry.key[len(base) :].partition("/")
            if is_label(label) and name:
                found.setdefault(label, {})[name] = entry.size
        return found

    def _version_dirs(self, agent: str) -> list[str]:
        return sorted(self._listing(agent))

    def _is_visible(self, agent: str, version: str) -> bool:
        return self.bucket.exists(self._version_key(agent, version, MANIFEST))

    def version_labels(self, agent: str) -> list[str]:
        return sorted(label for label, names in self._listing(agent).items() if MANIFEST in names)

    def require_agent(self, agent: str) -> str:
        agent = check_agent(agent)
        if not self.bucket.folders(f"{agent}/{VERSIONS}"):
            raise StoreNotFound(f"agent {agent!r} has no versions in the store at {self.root}")
        return agent

    def _current_state(self, agent: str) -> tuple[dict[str, Any], str | None]:
        found = self._json(f"{agent}/{CURRENT}", "object_current", "current pointer")
        if found is None:
            return {"schema_version": 1, "version": None, "seq": 0}, None
        return found

    def current(self, agent: str) -> str | None:
        label = self._current_state(check_agent(agent))[0]["version"]
        if label is not None and not self._is_visible(agent, label):
            raise IntegrityError(
                f"{self.bucket.where(f'{agent}/{CURRENT}')} points at version {label!r}, "
                f"which is missing or has no manifest{REPAIR}"
            )
        return label

    def manifest(self, agent: str, version: str) -> dict[str, Any]:
        key = self._version_key(check_agent(agent), check_version(version), MANIFEST)
        got = self.bucket.get(key)
        if got is None:
            raise StoreNotFound(f"agent {agent!r} has no version {version!r} in the store at {self.root}")
        try:
            document = json.loads(got[0])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"manifest {self.bucket.where(key)} is not valid JSON: {exc}") from None
        return checked_manifest(document, self.bucket.where(key), agent, version)

    def _map_state(self) -> tuple[dict[str, Any] | None, str | None]:
        got = self.bucket.get(MAP_FILE)
        if got is None:
            return None, None
        try:
            text = got[0].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IntegrityError(f"cannot read agent map {self.map_path}: {exc}") from None
        return agent_map.parse_map(text, str(self.map_path)), got[1]

    def read_map(self) -> dict[str, Any] | None:
        return self._map_state()[0]

    def _records(self, agent: str, upto: int | None = None) -> list[dict[str, Any]]:
        """The agent's journal, oldest first (records 1..``upto``, default all)."""
        base = f"{agent}/{JOURNAL}/"
        keys = sorted(e.key for e in self.bucket.list(base) if e.key[len(base) :].removesuffix(".json").isdigit())
        if upto is not None:
            keys = [k for k in keys if int(k[len(base) :].removesuffix(".json")) <= upto]

        def read(key: str) -> dict[str, Any]:
            found = self._json(key, "journal_entry", "journal record")
            if found is None:
                raise IntegrityError(f"journal record {self.bucket.where(key)} vanished while it was read")
            return found[0]

        if len(keys) <= 4:
            return [read(k) for k in keys]
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(read, keys))

    def history(self, agent: str) -> list[dict[str, Any]]:
        agent = check_agent(agent)
        found = self._records(agent)
        if not found and not self.bucket.folders(f"{agent}/{VERSIONS}"):
            raise StoreNotFound(f"agent {agent!r} has no history in the store at {self.root}")
        return found

    def _adapter_path(self, agent: str, version: str, manifest: dict[str, Any]) -> Path:
        """A local copy of the version in the cache, one directory per digest, every file's sha256 checked."""
        return self.fetch(agent, version, manifest, cache_root() / manifest["digest"])

    def fetch(self, agent: str, version: str, manifest: dict[str, Any], target: Path) -> Path:
        """Download a version into the new directory ``target`` (kept when it already holds that version)."""
        target = target.absolute()
        if (target / MANIFEST).is_file():
            try:
                held = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                held = None
            if isinstance(held, dict) and held.get("digest") == manifest["digest"]:
                return target
            raise IntegrityError(f"{target} holds another version than {agent} {version}; remove it")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / owned_name("staging", target.name)
        os.mkdir(staging)
        try:
            for item in manifest["files"]:
                name = item["path"]
                try:
                    size, sha = self.bucket.download(self._version_key(agent, version, name), staging / name)
                except FileNotFoundError:
                    raise IntegrityError(f"{agent} {version}: {name} is missing from {self.root}") from None
                if (size, sha) != (item["size"], item["sha256"]):
                    raise IntegrityError(
                        f"{agent} {version}: {name} in {self.root} is corrupt "
                        f"(sha256 {sha[:12]}…, manifest says {item['sha256'][:12]}…)"
                    )
            (staging / MANIFEST).write_text(dump_json(manifest), encoding="utf-8")
            signature = self._read_signature(agent, version)
            if signature is not None:
                (staging / SIGNATURE).write_bytes(signature)  # so the copy verifies as the stored version does
            for entry in os.scandir(staging):
                os.chmod(entry.path, 0o444)
            fsync_dir(staging)
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / MANIFEST).is_file():
                    raise
                return target  # another process fetched the same digest first; its copy is as good as ours
            os.chmod(target, 0o555)
            fsync_dir(target.parent)
        finally:
            if os.path.lexists(staging):
                remove_tree(staging)
        return target

    def check_copy(self, resolution: Resolution) -> list[str]:
        """The local copy a loader reads, checked file by file against the manifest."""
        path = resolution.adapter_path
        present: dict[str, int | None] = {}
        for entry in os.scandir(path):
            regular = entry.is_file(follow_symlinks=False)
            present[entry.name] = entry.stat(follow_symlinks=False).st_size if regular else None
        where = f"{resolution.agent} {resolution.version} (copy in {path})"
        return file_problems(where, resolution.manifest, present, lambda name: sha256_file(path / name))

    def check_files(self, agent: str, version: str) -> list[str]:
        where = f"{agent} {version}"
        try:
            manifest = self.manifest(agent, version)
        except StoreNotFound:
            raise
        except IntegrityError as exc:
            return [str(exc)]
        present: dict[str, int | None] = dict(self._listing(agent).get(version, {}))
        present.pop(CLAIM, None)

        def sha256_of(name: str) -> str:
            found = self.bucket.sha256(self._version_key(agent, version, name))
            return found[1] if found else "(missing)"

        return file_problems(where, manifest, present, sha256_of)

    def _read_signature(self, agent: str, version: str) -> bytes | None:
        got = self.bucket.get(self._version_key(check_agent(agent), check_version(version), SIGNATURE))
        return got[0] if got is not None else None

    def _write_signature(self, agent: str, version: str, data: bytes, *, replace: bool) -> None:
        key = self._version_key(agent, version, SIGNATURE)
        if replace:
            self.bucket.put(key, data)
            return
        try:
            self.bucket.put_new(key, data)
        except Conflict:
            raise StoreConflict(f"{agent} {version} already has a {SIGNATURE}") from None

    def verify(self, agent: str | None = None, version: str | None = None) -> VerifyReport:
        report = VerifyReport()
        if agent is None:
            names = self.agents()
            if not names and not self.bucket.exists(MAP_FILE):
                raise StoreNotFound(f"no store at {self.root}")
        else:
            names = [self.require_agent(agent)]
        try:
            document = self.read_map()
        except IntegrityError as exc:
            report.problems.append(str(exc))
            document = None
        for name in names:
            listing = self._listing(name)
            labels = [check_version(version)] if version is not None else sorted(listing)
            for label in labels:
                if MANIFEST not in listing.get(label, {}):
                    if version is not None:
                        raise StoreNotFound(f"agent {name!r} has no version {label!r} in the store at {self.root}")
                    if set(listing.get(label, {})) - {CLAIM}:
                        report.notes.append(f"{name} {label}: files of an unfinished publish or a gc (not a version)")
                    continue
                problems = self.check_files(name, label)
                report.problems.extend(problems or self.signature_problems(name, label))
                report.checked.append(f"{name} {label}")
            if version is None:
                self._verify_service(name, document, report)
        return report

    def _verify_service(self, agent: str, document: dict[str, Any] | None, report: VerifyReport) -> None:
        """The journal is whole and chained, `current` is its last word, and the map serves `current` first."""
        try:
            records = self._records(agent)
            state, _ = self._current_state(agent)
            current = self.current(agent)
        except StoreError as exc:
            report.problems.append(str(exc))
            return
        for before, after in zip([None, *records], records, strict=False):
            expected = before["current"] if before else None
            if after["previous"] != expected:
                report.problems.append(
                    f"{agent} journal: {after['action']} {after['version']} says current was "
                    f"{after['previous']!r}, the record before left {expected!r}"
                )
        pending = self.bucket.list(f"{agent}/{PENDING}/")
        if pending:
            report.notes.append(
                f"{agent}: {len(pending)} write(s) in progress or interrupted (the next write ends them)"
            )
        if state["seq"] != len(records):
            report.notes.append(
                f"{agent}: `current` is being moved (journal has {len(records)}, current {state['seq']})"
            )
            return
        if records and records[-1]["current"] != current:
            report.problems.append(f"{agent}: `current` is {current!r} but the journal says {records[-1]['current']!r}")
        if current is None:
            return
        entries = agent_map.entries(document, agent)
        first = entries[0].get("adapter_model_store_path") if entries else None
        if first != agent_map.store_path(agent, current):
            if self._map_state()[0] == document and self.current(agent) == current:
                report.problems.append(
                    f"agent map {self.map_path} does not serve {agent}'s current version {current} first"
                )
        elif "digest" in entries[0] and entries[0]["digest"] != self.manifest(agent, current)["digest"]:
            report.problems.append(f"agent map entry {agent}/{entries[0].get('adapter_name')} has the wrong digest")

    # Writing -------------------------------------------------------------------------------------

    def _prepare(self, agent: str) -> Path:
        check_agent(agent)
        return Path(self.root)  # nothing to create: keys need no directories

    def _used_labels(self, agent: str) -> set[str]:
        # Claims are never removed, not even by gc, so the claimed labels are every label ever used.
        return set(self._version_dirs(agent))

    def _label_taken(self, agent: str, label: str, used: set[str] | None = None) -> bool:
        return label in (used if used is not None else self._used_labels(agent))

    def _refuse_used_label(self, agent: str, version: str) -> None:
        listing = self._listing(agent)
        if version in listing:
            if MANIFEST in listing[version]:
                raise StoreConflict(f"agent {agent!r} already has a version {version!r}; versions are never replaced")
            raise StoreConflict(f"agent {agent!r} had a version {version!r} before; labels are never reused")

    def _intent(self, action: str, agent: str, version: str, op: str) -> bytes:
        document = {
            "schema_version": 1,
            "owner": self.owner,
            "action": action,
            "agent": agent,
            "version": version,
            "op": op,
            "who": journal.who(),
            "when": journal.now(),
        }
        validate("object_intent", document, f"intent of {action} {agent} {version}")
        text = dump_json(document)
        refuse_secrets(text, "pending write record")
        return text.encode("utf-8")

    def _pending_key(self, agent: str) -> str:
        return f"{agent}/{PENDING}/{self.owner}.json"

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
        signer = load_signer(sign_key)
        source, adapter_name, base_model = self._publishable(agent, source_dir, adapter_name, version, base_model)
        self._tidy(agent)
        op = journal.make_entry("publish", agent, "v", previous=None, current=None)["op"]
        pending = self._pending_key(agent)
        label = self._claim_label(agent, version, op, pending)
        try:
            copied: dict[str, tuple[int, str]] = {}
            for name, path in source.files.items():
                key = self._version_key(agent, label, name)
                if name in BINARY_FILES:
                    copied[name] = self.bucket.upload(key, path)
                else:
                    data = path.read_bytes()
                    refuse_secrets(data, name)
                    self.bucket.put(key, data)
                    copied[name] = (len(data), hashlib.sha256(data).hexdigest())
                crash_point("uploading")
            extra, manifest, text = self._seal(
                agent, label, source, copied, adapter_name=adapter_name, base_model=base_model
            )
            for name, data in extra.items():
                self.bucket.put(self._version_key(agent, label, name), data)
            if signer is not None:
                self.bucket.put(self._version_key(agent, label, SIGNATURE), signer.sign(manifest))
            crash_point("uploaded")
            if not self.bucket.exists(pending):
                # Another writer took this publish for dead (its record outlived the limit) and removed what
                # it had uploaded; a manifest now would make a version with missing files visible.
                raise StoreConflict(
                    f"publish of {agent} {label} was taken for abandoned and cleaned up by another writer; "
                    "publish again"
                )
            self.bucket.put_new(self._version_key(agent, label, MANIFEST), text.encode("utf-8"))
        except BaseException:
            with suppress(Exception):
                self._undo_upload(agent, label, self.owner)
                self.bucket.delete([pending])
            raise
        crash_point("visible")

        def decide(current: str | None, seq: int) -> dict[str, Any]:
            return journal.make_entry(
                "publish",
                agent,
                label,
                previous=current,
                current=label if promote else current,
                digest=manifest["digest"],
                adapter_name=adapter_name,
            )

        self._move(agent, decide)
        self.bucket.delete([pending])
        return PublishResult(
            version=label,
            path=self.bucket.where(self._version_key(agent, label).rstrip("/")),  # type: ignore[arg-type]
            digest=manifest["digest"],
            manifest=manifest,
            promoted=promote,
            signer=signer.fingerprint if signer else None,
        )

    def _claim_label(self, agent: str, version: str | None, op: str, pending: str) -> str:
        """Reserve a label with a create-only put: ``version``, or the first free default label."""
        used: set[str] | None = None
        for attempt in range(MAX_ATTEMPTS):
            if version is not None:
                label = version
            else:
                used = used if used is not None else self._used_labels(agent)
                label = self._free_label(agent, used)
            intent = self._intent("publish", agent, label, op)
            self.bucket.put(pending, intent)  # ours alone: the owner is in its name
            try:
                self.bucket.put_new(self._version_key(agent, label, CLAIM), intent)
                return label
            except Conflict:
                if version is not None:
                    self.bucket.delete([pending])
                    self._refuse_used_label(agent, version)
                    raise StoreConflict(f"agent {agent!r} already has a version {version!r}") from None
                used = (used or set()) | {label}
                if attempt % 8 == 7:
                    used = None  # others claimed several in a row: list again
                _pause(attempt)
        raise StoreConflict(f"could not claim a free label for {agent!r} after {MAX_ATTEMPTS} tries")

    def _undo_upload(self, agent: str, label: str, owner: str) -> None:
        """Remove the files a publish by ``owner`` uploaded under ``label`` (never someone else's, never the claim)."""
        claim = self._json(self._version_key(agent, label, CLAIM), "object_intent", "label claim")
        if claim is None or claim[0]["owner"] != owner or self._is_visible(agent, label):
            return
        names = [n for n in self._listing(agent).get(label, {}) if n != CLAIM]
        self.bucket.delete([self._version_key(agent, label, n) for n in names])

    def _move(self, agent: str, decide: Callable[[str | None, int], dict[str, Any] | None]) -> dict[str, Any] | None:
        """Record the next write of ``agent`` (create-only journal record) and move `current` to what it says.

        ``decide(current, seq)`` returns the entry to record, or None for nothing to do; it runs again after
        another writer got in first, so it always decides on the state it will change.
        """
        for attempt in range(MAX_ATTEMPTS):
            state, etag = self._current_state(agent)
            seq = state["seq"]
            claimed = self._json(self._record_key(agent, seq + 1), "journal_entry", "journal record")
            if claimed is not None:
                self._apply(agent, seq + 1, claimed[0], etag)  # another writer's, recorded but not applied yet
                continue
            entry = decide(state["version"], seq)
            if entry is None:
                return None
            text = json.dumps(entry, sort_keys=True, ensure_ascii=False)
            refuse_secrets(text, "journal entry")
            try:
                self.bucket.put_new(self._record_key(agent, seq + 1), text.encode("utf-8"))
            except Conflict:
                _pause(attempt)
                continue
            crash_point("gc-journaled" if entry["action"] == "gc" else "journaled")
            self._apply(agent, seq + 1, entry, etag)
            return entry
        raise StoreConflict(f"agent {agent!r}: other writers kept getting in first ({MAX_ATTEMPTS} tries)")

    def _apply(self, agent: str, seq: int, entry: dict[str, Any], etag: str | None) -> None:
        """Make journal record ``seq`` take effect: a gc hides its version, then `current` moves, then the map."""
        if entry["action"] == "gc":
            self.bucket.delete([self._version_key(agent, entry["version"], MANIFEST)])
        state = {"schema_version": 1, "version": entry["current"], "seq": seq}
        validate("object_current", state, f"current pointer of {agent}")
        with suppress(Conflict):  # lost only to a writer that applied this same record
            self.bucket.put_if(f"{agent}/{CURRENT}", json.dumps(state).encode(), etag)
        self._sync_map(agent)

    def _sync_map(self, agent: str) -> None:
        """Make the map serve the agent's `current` first (compare-and-swap; read the map before `current`)."""
        for attempt in range(MAX_ATTEMPTS):
            document, etag = self._map_state()
            label = self._current_state(agent)[0]["version"]
            if label is None:
                return
            manifest = self.manifest(agent, label)
            updated = agent_map.with_current(document, agent, manifest)
            if updated == document:
                return
            text = agent_map.map_text(updated, str(self.map_path))
            try:
                self.bucket.put_if(MAP_FILE, text.encode("utf-8"), etag)
                return
            except Conflict:
                _pause(attempt)
        raise StoreConflict(f"agent map {self.map_path} kept changing ({MAX_ATTEMPTS} tries)")

    def _tidy(self, agent: str) -> bool:
        """Before a write: end what dead writers left of ``agent``, apply a recorded move, fix the map."""
        self.read_map()  # never change `current` while the map cannot follow
        done = False
        now = datetime.now(timezone.utc)
        for entry in self.bucket.list(f"{agent}/{PENDING}/"):
            owner = entry.key.rsplit("/", 1)[-1].removesuffix(".json")
            if owner == self.owner or not _owner_gone(owner, (now - entry.last_modified).total_seconds()):
                continue
            found = self._json(entry.key, "object_intent", "pending write")
            if found is not None:
                self._finish(found[0])
            self.bucket.delete([entry.key])
            done = True
        state, etag = self._current_state(agent)
        claimed = self._json(self._record_key(agent, state["seq"] + 1), "journal_entry", "journal record")
        if claimed is not None:
            self._apply(agent, state["seq"] + 1, claimed[0], etag)
            done = True
        elif state["version"] is not None:
            self._sync_map(agent)
        return done

    def _finish(self, intent: dict[str, Any]) -> None:
        """Finish or undo a dead writer's publish or gc."""
        agent, label = intent["agent"], intent["version"]
        if intent["action"] == "publish":
            if not self._is_visible(agent, label):
                self._undo_upload(agent, label, intent["owner"])
                return
            if any(e["action"] == "publish" and e["version"] == label for e in self._records(agent)):
                return
            manifest = self.manifest(agent, label)

            def decide(current: str | None, seq: int) -> dict[str, Any] | None:
                # Two writers may finish the same dead writer's publish: only one records it.
                if any(e["action"] == "publish" and e["version"] == label for e in self._records(agent, seq)):
                    return None
                return journal.make_entry(
                    "publish",
                    agent,
                    label,
                    previous=current,
                    current=current,
                    digest=manifest["digest"],
                    adapter_name=manifest["adapter_name"],
                )

            self._move(agent, decide)
        elif intent["action"] == "gc":
            if any(e["action"] == "gc" and e["version"] == label for e in self._records(agent)):
                self._remove_files(agent, label)

    def _remove_files(self, agent: str, label: str) -> None:
        names = [n for n in self._listing(agent).get(label, {}) if n != CLAIM]
        # The manifest goes first: a version is never visible without all its files.
        names.sort(key=lambda n: n != MANIFEST)
        for name in names:
            self.bucket.delete([self._version_key(agent, label, name)])

    def recover(self, agent: str) -> bool:
        agent = self.require_agent(agent)
        return self._tidy(agent)

    def _change(
        self, agent: str, action: str, target: Callable[[str | None, int], str | None]
    ) -> dict[str, Any] | None:
        checked: dict[str, list[str]] = {}

        def decide(current: str | None, seq: int) -> dict[str, Any] | None:
            version = target(current, seq)
            if version is None:
                return None
            manifest = self.manifest(agent, version)
            if version not in checked:
                checked[version] = self.check_files(agent, version)
            if checked[version]:
                raise IntegrityError(f"refusing to {action} {agent} to {version}: {checked[version][0]}")
            return journal.make_entry(
                action,
                agent,
                version,
                previous=current,
                current=version,
                digest=manifest["digest"],
                adapter_name=manifest["adapter_name"],
            )

        return self._move(agent, decide)

    def promote(self, agent: str, version: str) -> dict[str, Any] | None:
        agent, version = self.require_agent(agent), check_version(version)
        self._tidy(agent)
        self.manifest(agent, version)
        return self._change(agent, "promote", lambda current, seq: None if current == version else version)

    def rollback(self, agent: str) -> dict[str, Any]:
        agent = self.require_agent(agent)
        self._tidy(agent)

        def target(current: str | None, seq: int) -> str:
            if current is None:
                raise StoreNotFound(f"agent {agent!r} has no version in service to roll back from")
            entries = self._records(agent, seq)
            back = journal.rollback_target(entries, agent)
            if back is None:
                raise StoreNotFound(f"nothing to roll back to: the journal has no earlier version of {agent!r}")
            if not self._is_visible(agent, back):
                raise StoreNotFound(f"cannot roll back {agent!r} to {back!r}: that version is no longer in the store")
            return back

        entry = self._change(agent, "rollback", target)
        assert entry is not None
        return entry

    def _protected_at(self, agent: str, current: str | None, seq: int) -> set[str]:
        protected = {current, journal.rollback_target(self._records(agent, seq), agent)}
        for entry in agent_map.entries(self.read_map(), agent):
            head, _, label = str(entry.get("adapter_model_store_path", "")).partition(f"{agent}/{VERSIONS}/")
            if not head:
                protected.add(label)
        return {v for v in protected if v}

    def _protected(self, agent: str) -> set[str]:
        state, _ = self._current_state(agent)
        return self._protected_at(agent, self.current(agent), state["seq"])

    def gc(self, agent: str, keep: int, *, dry_run: bool = False) -> GcResult:
        agent = self.require_agent(agent)
        if keep < 0:
            raise StoreError(f"--keep must be 0 or more, not {keep}")
        if dry_run:
            remove, kept = self._gc_plan(agent, keep)
            return GcResult(removed=remove, kept=kept, dry_run=True)
        self._tidy(agent)
        remove, kept = self._gc_plan(agent, keep)
        removed = []
        for version in remove:
            manifest = self.manifest(agent, version)
            pending = self._pending_key(agent)

            def decide(
                current: str | None, seq: int, version: str = version, manifest: dict[str, Any] = manifest
            ) -> dict[str, Any] | None:
                if not self._is_visible(agent, version) or version in self._protected_at(agent, current, seq):
                    return None  # removed, promoted or pinned by someone else meanwhile
                return journal.make_entry(
                    "gc",
                    agent,
                    version,
                    previous=current,
                    current=current,
                    digest=manifest["digest"],
                    adapter_name=manifest["adapter_name"],
                )

            self.bucket.put(pending, self._intent("gc", agent, version, "0" * 32))
            if self._move(agent, decide) is not None:
                self._remove_files(agent, version)
                removed.append(version)
            self.bucket.delete([pending])
        return GcResult(removed=removed, kept=[v for v in kept if v not in removed], dry_run=False)
