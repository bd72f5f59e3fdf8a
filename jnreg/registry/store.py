"""ModelStore: the on-disk layout of published adapters, and publishing, promoting, rolling back and removing them.

Layout under the root::

    <root>/<agent>/versions/<version>/   one published adapter and its manifest.json (read-only)
    <root>/<agent>/current               relative symlink versions/<version>: the version in service
    <root>/<agent>/.lock                 writers of this agent's versions and `current`
    <root>/<agent>/.pending.json         the journal entry of a write in progress (redone or undone after a crash)
    <root>/journal.jsonl                 one line per publish, promote, rollback and gc removal
    <root>/AGENT_MODEL_MAP.json          the map JustNews loaders read (path overridable)

Writers take the agent lock, then the map lock, then the journal lock, always in that order.
Readers take no lock and create nothing: every file they read is replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jnreg import __version__
from jnreg.errors import IntegrityError, StoreConflict, StoreError, StoreNotFound
from jnreg.fsutil import (
    atomic_write,
    copy_new_file,
    dump_json,
    fsync_dir,
    is_stale,
    make_read_only,
    owned_name,
    parse_owned,
    read_json,
    remove_tree,
    sha256_file,
    write_new_file,
)
from jnreg.names import check_adapter_name, check_agent, check_version, is_agent, is_label
from jnreg.registry import agent_map, journal
from jnreg.registry.adapter_dir import MODEL_CARD, SUMMARY, AdapterSource, inspect_source
from jnreg.registry.agent_map import MAP_FILE
from jnreg.registry.no_secrets import refuse_secrets
from jnreg.registry.objects import is_object_url
from jnreg.schemas import validate

DEFAULT_ROOT = Path("model_store")
DEFAULT_LOCK_TIMEOUT = 30.0
VERSIONS = "versions"
CURRENT = "current"
AGENT_LOCK = ".lock"
JOURNAL_LOCK = ".journal.lock"
PENDING = ".pending.json"
MANIFEST = "manifest.json"
EVALUATIONS = "evaluations"  # <agent>/evaluations/<version>/<id>.json and <id>.rows.jsonl, beside the version
REPAIR = " (`jnreg store promote AGENT VERSION` puts a sound version back in service)"

# Fault injection for the crash tests: a publish, promote or gc SIGKILLs itself at the named point.
CRASH_ENV = "JNREG_TEST_CRASH_AT"
CRASH_POINTS = (
    "staged",
    "claimed",
    "renamed",
    "before-current-swap",
    "current-swap",
    "map-write",
    "before-journal",
    "gc-moved",
)


def crash_point(name: str) -> None:
    """Test-only fault injection: die here, as a power cut or OOM kill would, when JNREG_TEST_CRASH_AT names it."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def compute_digest(files: list[dict[str, Any]]) -> str:
    """A version's digest: sha256 of "\\n".join(f"{path}\\t{sha256}") over its files sorted by path."""
    text = "\n".join(f"{f['path']}\t{f['sha256']}" for f in sorted(files, key=lambda f: f["path"]))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PublishResult:
    """What publish stored: the version label, its directory, digest and manifest, and whether it is in service."""

    version: str
    path: Path
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


def checked_manifest(document: Any, where: str, agent: str, version: str) -> dict[str, Any]:
    """``document`` when it is a valid manifest of ``agent`` ``version``; IntegrityError naming ``where`` otherwise."""
    validate("manifest", document, f"manifest {where}")
    if document["agent"] != agent or document["version"] != version:
        found = f"{document['agent']} {document['version']}"
        raise IntegrityError(f"manifest {where} is for {found}, not {agent} {version}")
    if document["training_summary"] is not None:
        validate("training_summary", document["training_summary"], f"training summary in {where}")
    return document


def file_problems(
    where: str, manifest: dict[str, Any], present: dict[str, int | None], sha256_of: Callable[[str], str]
) -> list[str]:
    """Every way stored files differ from ``manifest``: ``present`` maps each stored name to its size (None: not a
    regular file); ``sha256_of`` hashes one stored file."""
    problems = []
    listed = {f["path"]: f for f in manifest["files"]}
    for name, info in sorted(listed.items()):
        if name not in present:
            problems.append(f"{where}: {name} is missing")
        elif present[name] is None:
            problems.append(f"{where}: {name} is not a regular file")
        elif present[name] != info["size"]:
            problems.append(f"{where}: {name} has {present[name]} bytes, manifest says {info['size']}")
        elif (actual := sha256_of(name)) != info["sha256"]:
            expected = info["sha256"]
            problems.append(f"{where}: {name} is corrupt (sha256 {actual[:12]}…, manifest says {expected[:12]}…)")
    for name in sorted(set(present) - set(listed) - {MANIFEST}):
        problems.append(f"{where}: {name} is not in the manifest")
    if compute_digest(manifest["files"]) != manifest["digest"]:
        problems.append(f"{where}: manifest digest does not match its file list")
    return problems


def _stored_summary(summary: dict[str, Any], adapter_name: str, version: str, where: str) -> dict[str, Any]:
    """The summary as stored in the version: carrying the final adapter name and version label."""
    stored = {**summary, "adapter_name": adapter_name, "adapter_version": version}
    validate("training_summary", stored, f"training summary in {where}")
    return stored


def _model_card(manifest: dict[str, Any]) -> str:
    targets = manifest["target_modules"]
    targets = ", ".join(targets) if isinstance(targets, list) else targets
    return (
        f"# {manifest['adapter_name']}\n\n"
        f"{manifest['peft_type']} adapter for the JustNews `{manifest['agent']}` agent, "
        f"published by jnreg as version `{manifest['version']}`.\n\n"
        f"- base model: `{manifest['base_model']}`\n"
        f"- r: {manifest['r']}, alpha: {manifest['alpha']}\n"
        f"- target modules: {targets}\n\n"
        f'Load it with `jnreg.registry.load("{manifest["agent"]}", "{manifest["version"]}")`.\n'
    )


def _base_model_of(source: AdapterSource, given: str | None, source_dir: Path | str) -> str:
    """The base model the adapter names, or ``given``; refused when both are there and differ."""
    named = (source.summary or {}).get("base_model") or source.config.get("base_model_name_or_path")
    named = named if isinstance(named, str) and named else None
    if given is not None and not given.strip():
        raise StoreError("--base-model is empty")
    if given and named and given != named:
        raise StoreError(f"{source_dir} was trained on {named!r}, not on the base model given, {given!r}")
    if not (given or named):
        raise StoreError(
            f"{source_dir} names no base model (training_summary.base_model or base_model_name_or_path); "
            "say which with --base-model"
        )
    return given or named  # type: ignore[return-value]


class ModelStore:
    """Published adapters per agent, the `current` pointer of each, the journal and the agent map.

    The rules (labels never reused, manifests and digests, the journal, the map, `current`, promote,
    rollback, gc, verify) live here once. This class keeps them on a local directory under file locks;
    ``ModelStore("s3://bucket/prefix")`` gives an ObjectModelStore, which keeps the same rules in object
    storage with conditional writes and overrides only the storage primitives.
    """

    def __new__(cls, root: Path | str | None = None, *args: Any, **kwargs: Any) -> ModelStore:
        if cls is ModelStore and is_object_url(str(root or os.environ.get("MODEL_STORE_ROOT") or "")):
            from jnreg.registry.object_store import ObjectModelStore

            return super().__new__(ObjectModelStore)
        return super().__new__(cls)

    def __init__(
        self,
        root: Path | str | None = None,
        agent_map: Path | str | None = None,
        *,
        lock_timeout: float | None = None,
    ) -> None:
        root = root or os.environ.get("MODEL_STORE_ROOT") or DEFAULT_ROOT
        if "://" in str(root) or str(root).split("/", 1)[0] in ("s3:", "gs:", "az:"):
            # Path("s3://b/x") is "s3:/b/x": without this, a mangled URL would become a local directory "s3:".
            raise StoreError(f"store root {str(root)!r}: object stores are given as a string s3://bucket/prefix")
        self.root = Path(root).expanduser().absolute()
        map_path = agent_map or os.environ.get("AGENT_MODEL_MAP") or self.root / MAP_FILE
        # An orchestrator may keep its map elsewhere behind a symlink: update the file, not the link.
        self.map_path = Path(os.path.realpath(Path(map_path).expanduser()))
        self.journal_path = self.root / journal.JOURNAL_FILE
        if lock_timeout is None:
            raw = os.environ.get("JNREG_LOCK_TIMEOUT", "")
            try:
                lock_timeout = float(raw) if raw else DEFAULT_LOCK_TIMEOUT
            except ValueError:
                raise StoreError(f"JNREG_LOCK_TIMEOUT={raw!r} is not a number of seconds") from None
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r}, agent_map={str(self.map_path)!r})"

    # Layout --------------------------------------------------------------------------------------

    def agent_dir(self, agent: str) -> Path:
        path = self.root / check_agent(agent)
        for part in (path, path / VERSIONS):
            if part.is_symlink():
                raise IntegrityError(f"{part} is a symlink; the store never follows links out of its root")
        return path

    def version_dir(self, agent: str, version: str) -> Path:
        return self.agent_dir(agent) / VERSIONS / check_version(version)

    def _is_visible(self, agent: str, version: str) -> bool:
        """A version exists for readers only once its directory, complete with manifest, is in versions/."""
        path = self.agent_dir(agent) / VERSIONS / version
        manifest = path / MANIFEST
        return not path.is_symlink() and path.is_dir() and manifest.is_file() and not manifest.is_symlink()

    def _version_dirs(self, agent: str) -> list[str]:
        """Every name under versions/ that is a valid label, visible or not."""
        try:
            return sorted(e.name for e in os.scandir(self.agent_dir(agent) / VERSIONS) if is_label(e.name))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def require_agent(self, agent: str) -> str:
        agent = check_agent(agent)
        if not (self.agent_dir(agent) / VERSIONS).is_dir():
            raise StoreNotFound(f"agent {agent!r} has no versions in the store at {self.root}")
        return agent

    # Reading -------------------------------------------------------------------------------------

    def agents(self) -> list[str]:
        """Agents with a versions directory."""
        if not self.root.exists():
            return []
        if not self.root.is_dir():
            raise StoreError(f"store root {self.root} is not a directory")
        return sorted(e.name for e in os.scandir(self.root) if is_agent(e.name) and (Path(e.path) / VERSIONS).is_dir())

    def version_labels(self, agent: str) -> list[str]:
        """Published versions of ``agent`` (unordered names); staging, claims and junk are not versions."""
        agent = check_agent(agent)
        return [v for v in self._version_dirs(agent) if self._is_visible(agent, v)]

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
        """The version in service, from the `current` symlink; never followed outside versions/."""
        link = self.agent_dir(agent) / CURRENT
        try:
            target = os.readlink(link)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            raise IntegrityError(f"{link} is not a symlink to versions/<version>{REPAIR}") from None
        head, _, label = target.partition("/")
        if head != VERSIONS or not is_label(label):
            raise IntegrityError(
                f"{link} points at {target!r}, outside {agent}/versions; refusing to follow it{REPAIR}"
            )
        if not self._is_visible(agent, label):
            raise IntegrityError(f"{link} points at version {label!r}, which is missing or has no manifest{REPAIR}")
        return label

    def manifest(self, agent: str, version: str) -> dict[str, Any]:
        """The validated manifest of a published version."""
        path = self.version_dir(agent, version)
        if path.is_symlink():
            raise IntegrityError(f"{path} is a symlink; refusing to follow it (versions are real directories)")
        manifest_path = path / MANIFEST
        if not path.is_dir() or (not os.path.lexists(manifest_path) and not os.listdir(path)):
            raise StoreNotFound(f"agent {agent!r} has no version {version!r} in the store at {self.root}")
        if manifest_path.is_symlink() or not manifest_path.is_file():
            raise IntegrityError(f"version {agent} {version} has no manifest.json ({manifest_path})")
        document = read_json(manifest_path, "manifest", IntegrityError)
        return checked_manifest(document, str(manifest_path), agent, version)

    def read_map(self) -> dict[str, Any] | None:
        """The agent map, validated; None when there is none yet."""
        return agent_map.read_map(self.map_path)

    def history(self, agent: str) -> list[dict[str, Any]]:
        """The journal entries of ``agent``, oldest first."""
        agent = check_agent(agent)
        found = journal.for_agent(journal.read_entries(self.journal_path), agent)
        if not found and not self.agent_dir(agent).is_dir():
            raise StoreNotFound(f"agent {agent!r} has no history in the store at {self.root}")
        return found

    def resolve(self, agent: str, version: str | None = None) -> Resolution:
        """Where ``agent``'s adapter (``version``, default the one in service) is and which base it needs."""
        agent = self.require_agent(agent)
        if version is None:
            version = self.current(agent)
            if version is None:
                raise StoreNotFound(f"agent {agent!r} has no version in service; promote one first")
        manifest = self.manifest(agent, check_version(version))
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
            adapter_path=self._adapter_path(agent, version, manifest),
            digest=manifest["digest"],
            manifest=manifest,
            base_model_revision=manifest["base_model_revision"],
        )

    def _adapter_path(self, agent: str, version: str, manifest: dict[str, Any]) -> Path:
        """A local directory holding the version's files, as loaders need it."""
        return self.version_dir(agent, version)

    def check_copy(self, resolution: Resolution) -> list[str]:
        """Every way the files at ``resolution.adapter_path`` (what a loader reads) differ from the manifest."""
        return self.check_files(resolution.agent, resolution.version)

    def check_files(self, agent: str, version: str) -> list[str]:
        """Every way a version's files differ from its manifest, one line per bad file; empty when intact."""
        where = f"{agent} {version}"
        path = self.version_dir(agent, version)
        try:
            manifest = self.manifest(agent, version)
        except StoreNotFound:
            raise
        except IntegrityError as exc:
            return [str(exc)]
        present: dict[str, int | None] = {}
        for entry in os.scandir(path):
            regular = entry.is_file(follow_symlinks=False)
            present[entry.name] = entry.stat(follow_symlinks=False).st_size if regular else None
        return file_problems(where, manifest, present, lambda name: sha256_file(path / name))

    def verify(self, agent: str | None = None, version: str | None = None) -> VerifyReport:
        """Recompute every checksum and check `current`, the agent map and the journal."""
        report = VerifyReport()
        if agent is None:
            if not self.root.is_dir():
                raise StoreNotFound(f"no store at {self.root}")
            names = self.agents()
        else:
            names = [self.require_agent(agent)]
        try:
            self.read_map()
        except IntegrityError as exc:
            report.problems.append(str(exc))
        try:
            journal.read_entries(self.journal_path)
        except StoreError as exc:
            report.problems.append(str(exc))
        for name in names:
            self._verify_agent(name, version, report)
        return report

    def _verify_agent(self, agent: str, version: str | None, report: VerifyReport) -> None:
        labels = [check_version(version)] if version is not None else self._version_dirs(agent)
        for label in labels:
            path = self.version_dir(agent, label)
            if path.is_symlink():
                report.problems.append(f"{agent} {label}: {path} is a symlink; versions must be real directories")
                continue
            try:
                if path.is_dir() and not os.listdir(path):
                    report.notes.append(f"{agent} {label}: empty directory left by an interrupted publish (ignored)")
                    continue
                problems = self.check_files(agent, label)
            except (StoreNotFound, FileNotFoundError):
                if version is None and not os.path.lexists(path):
                    continue  # removed by a gc while we looked
                raise
            report.problems.extend(problems)
            report.checked.append(f"{agent} {label}")
        if version is None:
            self._verify_service(agent, report)

    def _verify_service(self, agent: str, report: VerifyReport) -> None:
        """`current`, the map and the pending record agree (read consistently while writers run)."""
        pending_path = self.agent_dir(agent) / PENDING
        for _attempt in range(5):
            before = pending_path.exists()
            try:
                current = self.current(agent)
            except IntegrityError as exc:
                report.problems.append(str(exc))
                return
            try:
                document = self.read_map()
            except IntegrityError:
                return  # reported once by verify
            if before == pending_path.exists() and current == self.current(agent):
                break  # no write started or finished while we read
        else:
            report.notes.append(f"{agent}: writes kept changing `current` while it was checked; not compared")
            return
        if before:
            if self._writer_is_active(agent):
                report.notes.append(f"{agent}: a write is in progress")
            else:
                # Nothing is lost or half-written (versions are whole, `current` and the map each point
                # at a whole version), but until recovery they may name different versions.
                report.notes.append(
                    f"{agent}: a crashed write is pending, so `current` and the agent map may name different "
                    f"versions until `jnreg store recover {agent}` (or any store write) finishes or undoes it"
                )
            return
        entries = agent_map.entries(document, agent)
        for entry in entries:
            name = f"{agent}/{entry.get('adapter_name')}"
            head, _, label = str(entry.get("adapter_model_store_path", "")).partition(f"{agent}/{VERSIONS}/")
            if head or not is_label(label):
                continue  # an entry jnreg did not write
            if not self._is_visible(agent, label):
                report.problems.append(f"agent map entry {name} points at missing version {label}")
            elif "digest" in entry and entry["digest"] != self._digest_or_none(agent, label):
                report.problems.append(f"agent map entry {name} has the wrong digest for {label}")
        if current is not None:
            first = entries[0].get("adapter_model_store_path") if entries else None
            if first != agent_map.store_path(agent, current):
                report.problems.append(
                    f"agent map {self.map_path} does not serve {agent}'s current version {current} first"
                )

    def _writer_is_active(self, agent: str) -> bool:
        """True when another process holds the agent's write lock (so a pending record is not a crash's)."""
        lock_path = self.agent_dir(agent) / AGENT_LOCK
        if not lock_path.exists():
            return False
        from filelock import FileLock, Timeout  # writers only: readers stay fast to start

        lock = FileLock(lock_path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return True
        lock.release()
        return False

    def recover(self, agent: str) -> bool:
        """Finish or undo what a crashed writer left of ``agent``; True when there was something to do."""
        agent = self.require_agent(agent)
        pending = (self.agent_dir(agent) / PENDING).exists()
        with self._writing(agent):
            pass  # taking the write locks runs the recovery
        return pending

    def _digest_or_none(self, agent: str, version: str) -> str | None:
        try:
            return self.manifest(agent, version)["digest"]
        except IntegrityError:
            return None  # verify reports the damaged manifest with the version's files

    # Writing -------------------------------------------------------------------------------------

    def _prepare(self, agent: str) -> Path:
        """Create the root and the agent's directories (writers only)."""
        agent_dir = self.agent_dir(agent)
        try:
            for path in (self.root, agent_dir, agent_dir / VERSIONS):
                if not path.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    fsync_dir(path.parent)
        except (FileExistsError, NotADirectoryError):
            raise StoreError(f"cannot create the store at {self.root}: a path component is not a directory") from None
        except OSError as exc:
            raise StoreError(f"cannot create the store at {self.root}: {exc.strerror or exc}") from None
        if not self.map_path.parent.is_dir():
            raise StoreError(f"the directory of agent map {self.map_path} does not exist")
        return agent_dir

    @contextmanager
    def _lock(self, path: Path, what: str) -> Iterator[None]:
        from filelock import FileLock, Timeout  # writers only: readers stay fast to start

        lock = FileLock(path, timeout=self.lock_timeout)
        try:
            lock.acquire()
        except Timeout:
            raise StoreConflict(
                f"{what} is locked by another process for more than {self.lock_timeout:g} s (lock file {path})"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot lock {what} ({path}): {exc.strerror or exc}") from None
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def _writing(self, agent: str) -> Iterator[Path]:
        """Hold the agent, map and journal locks (in that order), after finishing what a crash left."""
        agent_dir = self._prepare(agent)
        with ExitStack() as stack:
            stack.enter_context(self._lock(agent_dir / AGENT_LOCK, f"agent {agent!r}"))
            stack.enter_context(self._lock(agent_map.lock_path(self.map_path), f"agent map {self.map_path}"))
            stack.enter_context(self._lock(self.root / JOURNAL_LOCK, "the store journal"))
            self.read_map()  # never change `current` while the map cannot follow
            journal.repair_tail(self.journal_path)
            self._recover_pending(agent)
            self._clean_leftovers(agent)
            try:
                yield agent_dir
            except BaseException:
                # Leave nothing half-done: finish the write if it passed its commit point, else undo it.
                with suppress(Exception):
                    self._recover_pending(agent)
                raise

    def _begin(self, action: str, manifest: dict[str, Any], *, previous: str | None, current: str | None) -> dict:
        """The journal entry of a write about to happen on ``manifest``'s version, recorded as pending first."""
        entry = journal.make_entry(
            action,
            manifest["agent"],
            manifest["version"],
            previous=previous,
            current=current,
            digest=manifest["digest"],
            adapter_name=manifest["adapter_name"],
        )
        self._write_pending(manifest["agent"], entry)
        return entry

    def _write_pending(self, agent: str, entry: dict[str, Any]) -> None:
        atomic_write(self.agent_dir(agent) / PENDING, dump_json(entry).encode("utf-8"))

    def _clear_pending(self, agent: str) -> None:
        (self.agent_dir(agent) / PENDING).unlink(missing_ok=True)
        fsync_dir(self.agent_dir(agent))

    def _recover_pending(self, agent: str) -> None:
        """Finish or undo the write a crash interrupted; its commit point decides which."""
        path = self.agent_dir(agent) / PENDING
        if not path.exists():
            return
        entry = read_json(path, "pending write record", IntegrityError)
        validate("journal_entry", entry, f"pending write record {path}")
        version, action = entry["version"], entry["action"]
        current = self.current(agent)
        if action == "publish":
            committed = self._is_visible(agent, version)  # the rename into versions/ commits a publish
            claim = self.agent_dir(agent) / VERSIONS / version
            if not committed and claim.is_dir() and not claim.is_symlink():
                with suppress(OSError):
                    os.rmdir(claim)  # only an empty claim; rmdir refuses anything else
        elif action == "gc":
            committed = not os.path.lexists(self.agent_dir(agent) / VERSIONS / version)
        else:
            committed = current == version  # the swap of `current` commits a promote or rollback
        if committed:
            if current == version and action != "gc":
                self._point_map_at(agent, self.manifest(agent, version))
            if not journal.has_op(journal.read_entries(self.journal_path), entry["op"]):
                journal.append(self.journal_path, {**entry, "current": current})
        self._clear_pending(agent)

    def _clean_leftovers(self, agent: str) -> None:
        """Remove what crashed writers left: their staging dirs, trash and temp files, and empty claims."""
        agent_dir = self.agent_dir(agent)
        for entry in os.scandir(agent_dir):
            if parse_owned(entry.name) and is_stale(Path(entry.path)):
                remove_tree(Path(entry.path))
        # An empty claim in versions/ is removed by _recover_pending: a publish records its pending entry
        # before it claims, so every claim a crash leaves is named by a pending record. No scan of every
        # version is needed, which keeps a write's cost independent of the store's history.
        for entry in os.scandir(self.map_path.parent):
            owned = parse_owned(entry.name)
            if owned and owned[0] == "tmp" and entry.name.endswith(f"-{self.map_path.name}"):
                if is_stale(Path(entry.path)):
                    Path(entry.path).unlink(missing_ok=True)

    def _swap_current(self, agent: str, version: str) -> None:
        """Point `current` at ``version``: a new relative symlink renamed over the old one."""
        agent_dir = self.agent_dir(agent)
        temp = agent_dir / owned_name("tmp", CURRENT)
        os.symlink(f"{VERSIONS}/{version}", temp)
        try:
            crash_point("current-swap")
            os.replace(temp, agent_dir / CURRENT)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(agent_dir)

    def _point_map_at(self, agent: str, manifest: dict[str, Any]) -> None:
        """Make the version in ``manifest`` the first entry of ``agent`` in the map (held: map lock)."""
        document = self.read_map()
        updated = agent_map.with_current(document, agent, manifest)
        if updated == document:
            return
        agent_map.write_map(self.map_path, updated, before_replace=lambda: crash_point("map-write"))

    def _append_journal(self, entry: dict[str, Any]) -> None:
        refuse_secrets(json.dumps(entry), "journal entry")
        journal.append(self.journal_path, entry)

    def _label_taken(self, agent: str, label: str, used: set[str] | None = None) -> bool:
        """Whether ``agent`` has, or ever had, a version ``label`` (``used``: the answer for every label, if known).

        Asked of the journal one label at a time, so the cost of a publish does not grow with the history.
        """
        if used is not None:
            return label in used
        return os.path.lexists(self.agent_dir(agent) / VERSIONS / label) or journal.was_published(
            self.journal_path, agent, label
        )

    def _free_label(self, agent: str, used: set[str] | None = None) -> str:
        """vYYYYMMDD-HHMM (UTC), with -2, -3, ... when that minute is taken (held: agent lock)."""
        base = datetime.now(timezone.utc).strftime("v%Y%m%d-%H%M")
        label, n = base, 1
        while self._label_taken(agent, label, used):
            n += 1
            label = f"{base}-{n}"
        return label

    def _refuse_used_label(self, agent: str, version: str) -> None:
        if os.path.lexists(self.agent_dir(agent) / VERSIONS / version):
            raise StoreConflict(f"agent {agent!r} already has a version {version!r}; versions are never replaced")
        if self._label_taken(agent, version):
            # A rollback or an orchestrator pinned to this label must never get other weights.
            raise StoreConflict(
                f"agent {agent!r} had a version {version!r} before (removed by gc); labels are never reused"
            )

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
            self._prepare(agent)  # proves the root is writable

    def publish(
        self,
        agent: str,
        source_dir: Path | str,
        *,
        adapter_name: str | None = None,
        version: str | None = None,
        promote: bool = True,
        base_model: str | None = None,
    ) -> PublishResult:
        """Store the loadable files of the adapter in ``source_dir`` as a new immutable version of ``agent``.

        ``base_model`` names the base the adapter was trained on, for adapters that do not say; an adapter
        that names another base is refused.
        """
        source, adapter_name, base_model = self._publishable(agent, source_dir, adapter_name, version, base_model)
        agent_dir = self._prepare(agent)
        staging = agent_dir / owned_name("staging")
        try:
            os.mkdir(staging)
            copied = {name: copy_new_file(path, staging / name) for name, path in source.files.items()}
            for name in copied:
                if not name.endswith(".safetensors"):
                    refuse_secrets((staging / name).read_bytes(), name)  # what was copied, not what was checked
            fsync_dir(staging)
            crash_point("staged")
            with self._writing(agent):
                return self._commit_publish(
                    agent,
                    staging,
                    source,
                    copied,
                    adapter_name=adapter_name,
                    base_model=base_model,
                    version=version,
                    promote=promote,
                )
        except OSError as exc:
            raise StoreError(f"publish of {agent} failed: {exc.strerror or exc}") from None
        finally:
            if os.path.lexists(staging):
                with suppress(OSError):
                    remove_tree(staging)

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
            _stored_summary(summary, adapter_name, version or "v00000000-0000", str(source_dir))
        return source, adapter_name, _base_model_of(source, base_model, source_dir)

    def _seal(
        self,
        agent: str,
        label: str,
        source: AdapterSource,
        copied: dict[str, tuple[int, str]],
        *,
        adapter_name: str,
        base_model: str,
    ) -> tuple[dict[str, bytes], dict[str, Any], str]:
        """The files a version gets under its label (summary, model card), its manifest and the manifest's text.

        ``copied`` holds (size, sha256) of the adapter's files as stored; the new files are added to it.
        """
        config, summary = source.config, source.summary
        extra: dict[str, bytes] = {}
        stored = None
        if summary is not None:
            stored = dump_json(_stored_summary(summary, adapter_name, label, f"{agent} {label}"))
            refuse_secrets(stored, SUMMARY)
            extra[SUMMARY] = stored.encode("utf-8")
        revision = (summary or {}).get("base_model_revision") or config.get("revision")
        manifest: dict[str, Any] = {
            "schema_version": 1,
            "agent": agent,
            "adapter_name": adapter_name,
            "version": label,
            "base_model": base_model,
            "base_model_revision": revision if isinstance(revision, str) else None,
            "peft_type": config["peft_type"],
            "r": config.get("r") if isinstance(config.get("r"), int) else None,
            "alpha": config.get("lora_alpha"),
            "target_modules": config.get("target_modules"),
            "files": [],
            "digest": "",
            "training_summary": json.loads(stored) if stored is not None else None,
            "created_at": journal.now(),
            "created_by": journal.who(),
            "jnreg_version": __version__,
        }
        if MODEL_CARD not in copied:
            extra[MODEL_CARD] = _model_card(manifest).encode("utf-8")
        for name, data in extra.items():
            copied[name] = (len(data), hashlib.sha256(data).hexdigest())
        manifest["files"] = [{"path": n, "size": s, "sha256": h} for n, (s, h) in sorted(copied.items())]
        manifest["digest"] = compute_digest(manifest["files"])
        validate("manifest", manifest, f"manifest of {agent} {label}")
        text = dump_json(manifest)
        refuse_secrets(text, MANIFEST)
        return extra, manifest, text

    def _commit_publish(
        self,
        agent: str,
        staging: Path,
        source: AdapterSource,
        copied: dict[str, tuple[int, str]],
        *,
        adapter_name: str,
        base_model: str,
        version: str | None,
        promote: bool,
    ) -> PublishResult:
        """Name, seal and rename a staged version into place, then put it in service (held: all locks)."""
        versions_dir = self.agent_dir(agent) / VERSIONS
        if version is not None:
            self._refuse_used_label(agent, version)
        label = version or self._free_label(agent)
        previous = self.current(agent)
        extra, manifest, text = self._seal(
            agent, label, source, copied, adapter_name=adapter_name, base_model=base_model
        )
        for name, data in extra.items():
            write_new_file(staging / name, data)
        write_new_file(staging / MANIFEST, text.encode("utf-8"))
        fsync_dir(staging)

        entry = self._begin("publish", manifest, previous=previous, current=label if promote else previous)
        target = versions_dir / label
        try:
            os.mkdir(target)  # the claim; only this lock holder renames onto it, so no version is ever replaced
        except FileExistsError:
            raise StoreConflict(f"agent {agent!r} already has a version {label!r}") from None
        crash_point("claimed")
        os.rename(staging, target)
        fsync_dir(versions_dir)
        fsync_dir(self.agent_dir(agent))
        # Sealed once in place: a read-only directory could not be renamed into versions/ (its ".." changes).
        make_read_only(target)
        crash_point("renamed")
        if promote:
            crash_point("before-current-swap")
            self._swap_current(agent, label)
            self._point_map_at(agent, manifest)
        crash_point("before-journal")
        self._append_journal(entry)
        self._clear_pending(agent)
        return PublishResult(version=label, path=target, digest=manifest["digest"], manifest=manifest, promoted=promote)

    def _change_current(self, agent: str, action: str, version: str, previous: str | None) -> dict[str, Any]:
        """Put a published, intact version in service and journal it (held: all locks)."""
        manifest = self.manifest(agent, version)
        problems = self.check_files(agent, version)
        if problems:
            raise IntegrityError(f"refusing to {action} {agent} to {version}: {problems[0]}")
        entry = self._begin(action, manifest, previous=previous, current=version)
        self._swap_current(agent, version)
        self._point_map_at(agent, manifest)
        crash_point("before-journal")
        self._append_journal(entry)
        self._clear_pending(agent)
        return entry

    def promote(self, agent: str, version: str) -> dict[str, Any] | None:
        """Put ``version`` in service; None when it already is."""
        agent, version = self.require_agent(agent), check_version(version)
        with self._writing(agent):
            self.manifest(agent, version)
            try:
                previous = self.current(agent)
            except IntegrityError:
                previous = None  # a broken `current` is exactly what promote repairs
            if previous == version:
                self._point_map_at(agent, self.manifest(agent, version))
                return None
            return self._change_current(agent, "promote", version, previous)

    def rollback(self, agent: str) -> dict[str, Any]:
        """Put back the version that was in service before the current one (an undo stack, from the journal)."""
        agent = self.require_agent(agent)
        with self._writing(agent):
            current = self.current(agent)
            if current is None:
                raise StoreNotFound(f"agent {agent!r} has no version in service to roll back from")
            entries = journal.read_entries(self.journal_path)
            recorded = journal.in_service(entries, agent)
            if recorded != current:
                # The undo stack is only right if the journal saw every change of `current`.
                raise IntegrityError(
                    f"the journal says {recorded!r} is in service for {agent!r} but current is {current!r}; "
                    "refusing to guess what to roll back to (promote the version you want instead)"
                )
            target = journal.rollback_target(entries, agent)
            if target is None:
                raise StoreNotFound(f"nothing to roll back to: the journal has no earlier version of {agent!r}")
            if not self._is_visible(agent, target):
                raise StoreNotFound(f"cannot roll back {agent!r} to {target!r}: that version is no longer in the store")
            return self._change_current(agent, "rollback", target, current)

    def _protected(self, agent: str) -> set[str]:
        """Versions gc never removes: the one in service, the rollback target, and any the map points at."""
        protected = {self.current(agent), journal.rollback_target(journal.read_entries(self.journal_path), agent)}
        for entry in agent_map.entries(self.read_map(), agent):
            head, _, label = str(entry.get("adapter_model_store_path", "")).partition(f"{agent}/{VERSIONS}/")
            if not head:
                protected.add(label)
        return {v for v in protected if v}

    def _gc_plan(self, agent: str, keep: int) -> tuple[list[str], list[str]]:
        newest_first = [m["version"] for m in reversed(self.versions(agent))]
        protected = self._protected(agent)
        kept = [v for i, v in enumerate(newest_first) if i < keep or v in protected]
        return [v for v in newest_first if v not in kept], kept

    def gc(self, agent: str, keep: int, *, dry_run: bool = False) -> GcResult:
        """Remove all but the ``keep`` newest versions, never the current one or the rollback target."""
        agent = self.require_agent(agent)
        if keep < 0:
            raise StoreError(f"--keep must be 0 or more, not {keep}")
        if dry_run:
            remove, kept = self._gc_plan(agent, keep)
            return GcResult(removed=remove, kept=kept, dry_run=True)
        with self._writing(agent) as agent_dir:
            remove, kept = self._gc_plan(agent, keep)
            current = self.current(agent)
            for version in remove:
                manifest = self.manifest(agent, version)
                entry = self._begin("gc", manifest, previous=current, current=current)
                trash = agent_dir / owned_name("trash")
                target = agent_dir / VERSIONS / version
                os.chmod(target, 0o755)  # moving a directory to another parent rewrites its ".."
                os.rename(target, trash)
                fsync_dir(agent_dir / VERSIONS)
                crash_point("gc-moved")
                self._append_journal(entry)
                self._clear_pending(agent)
                remove_tree(trash)
        return GcResult(removed=remove, kept=kept, dry_run=False)

    # Evaluations: kept beside a version, never inside it, so the version and its digest never change ---------

    def evaluations_dir(self, agent: str, version: str) -> Path:
        path = self.agent_dir(agent) / EVALUATIONS / check_version(version)
        for part in (path.parent, path):
            if part.is_symlink():
                raise IntegrityError(f"{part} is a symlink; the store never follows links out of its root")
        return path

    def record_evaluation(
        self, agent: str, version: str, record: dict[str, Any], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Keep an evaluation of a published version: its rows file, then its record (which makes it count).

        Each is written whole under a name of its own, so no lock is needed and an interrupted write
        leaves nothing that `evaluations` would read.
        """
        manifest = self.manifest(agent, version)
        if record.get("digest") != manifest["digest"]:
            raise IntegrityError(f"the evaluation is of digest {record.get('digest')}, not of {agent} {version}")
        eval_id = datetime.now(timezone.utc).strftime("e%Y%m%dT%H%M%SZ-") + os.urandom(4).hex()
        document = {
            **record,
            "id": eval_id,
            "agent": agent,
            "version": version,
            "created_at": journal.now(),
            "created_by": journal.who(),
            "rows_file": f"{eval_id}.rows.jsonl",
            "jnreg_version": __version__,
        }
        validate("evaluation", document, f"evaluation of {agent} {version}", error=StoreError)
        for row in rows:
            validate("eval_row", row, f"evaluation row {row.get('index')} of {agent} {version}", error=StoreError)
        text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
        self._write_evaluation(agent, version, document, text.encode("utf-8"))
        return document

    def evaluation_location(self, agent: str, version: str, name: str) -> str:
        """Where the evaluation file ``name`` of the version is kept, for people to read."""
        return str(self.evaluations_dir(agent, version) / name)

    def _write_evaluation(self, agent: str, version: str, document: dict[str, Any], rows: bytes) -> None:
        directory = self.evaluations_dir(agent, version)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / document["rows_file"], rows)
        atomic_write(directory / f"{document['id']}.json", dump_json(document).encode("utf-8"))

    def _evaluation_documents(self, agent: str, version: str) -> list[tuple[str, str, bytes]]:
        """(where, name without .json, bytes) of every evaluation record of the version."""
        directory = self.evaluations_dir(agent, version)
        if not directory.is_dir():
            return []
        return [(str(path), path.stem, path.read_bytes()) for path in sorted(directory.glob("e*.json"))]

    def evaluations(self, agent: str, version: str) -> list[dict[str, Any]]:
        """The validated evaluations recorded for ``agent`` ``version``, oldest first."""
        found = []
        for where, stem, data in self._evaluation_documents(agent, version):
            try:
                document = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise IntegrityError(f"evaluation {where} is not valid JSON: {exc}") from None
            validate("evaluation", document, f"evaluation {where}")
            if document["agent"] != agent or document["version"] != version or stem != document["id"]:
                raise IntegrityError(f"evaluation {where} is of {document['agent']} {document['version']}")
            found.append(document)
        return sorted(found, key=lambda d: (d["created_at"], d["id"]))
