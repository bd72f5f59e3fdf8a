"""Local files: the store as a directory tree, made safe by file locks, atomic renames and one journal file.

Layout under the root::

    <root>/<agent>/versions/<version>/   one published adapter and its manifest.json (read-only)
    <root>/<agent>/current               relative symlink versions/<version>: the version in service
    <root>/<agent>/.lock                 writers of this agent's versions and `current`
    <root>/<agent>/.pending.json         the journal entry of a write in progress (redone or undone after a crash)
    <root>/<agent>/evaluations/<version>/  its evaluations;  <root>/<agent>/reports/<version>.html  its page
    <root>/journal.jsonl                 one line per publish, promote, rollback and gc removal
    <root>/AGENT_MODEL_MAP.json          the map JustNews loaders read (path overridable)

Writers take the agent lock, then the map lock, then the journal lock, always in that order.
Readers take no lock and create nothing: every file they read is replaced atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from jnreg.errors import IntegrityError, StoreConflict, StoreError
from jnreg.fsutil import (
    atomic_write,
    copy_new_file,
    dump_json,
    fsync_dir,
    is_stale,
    make_read_only,
    megabytes,
    owned_name,
    parse_owned,
    read_json,
    remove_tree,
    sha256_file,
    tree_size,
    write_new_file,
)
from jnreg.names import check_agent, check_version, is_agent, is_label
from jnreg.registry import agent_map, journal
from jnreg.registry.adapter_dir import BINARY_FILES
from jnreg.registry.agent_map import MAP_FILE
from jnreg.registry.manifests import dir_files
from jnreg.registry.no_secrets import refuse_secrets
from jnreg.registry.storage.base import (
    CURRENT,
    EVALUATIONS,
    MANIFEST,
    REPAIR,
    REPORTS,
    VERSIONS,
    Decide,
    Draft,
    History,
    ServiceState,
    Snapshot,
    Storage,
    crash_point,
)
from jnreg.registry.storage.signature_files import LocalSignatureFiles
from jnreg.schemas import validate

DEFAULT_LOCK_TIMEOUT = 30.0
AGENT_LOCK = ".lock"
JOURNAL_LOCK = ".journal.lock"
PENDING = ".pending.json"
# Where this storage can be killed by the crash tests (see base.crash_point).
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


def _unlinked(*paths: Path) -> Path:
    """The last of ``paths``, once none of them is a symlink: the store never follows links out of its root."""
    for path in paths:
        if path.is_symlink():
            raise IntegrityError(f"{path} is a symlink; the store never follows links out of its root")
    return paths[-1]


def _read_or_none(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() and not path.is_symlink() else None


class LocalStorage(LocalSignatureFiles, Storage):
    """A store in a local directory."""

    def __init__(self, root: Path | str, agent_map: Path | str | None, *, lock_timeout: float | None) -> None:
        if "://" in str(root) or str(root).split("/", 1)[0] in ("s3:", "gs:", "az:"):
            # Path("s3://b/x") is "s3:/b/x": without this, a mangled URL would become a local directory "s3:".
            raise StoreError(f"store root {str(root)!r}: object stores are given as a string s3://bucket/prefix")
        self.root: Path = Path(root).expanduser().absolute()
        map_path = agent_map or os.environ.get("AGENT_MODEL_MAP") or self.root / MAP_FILE
        # An orchestrator may keep its map elsewhere behind a symlink: update the file, not the link.
        self.map_path: Path = Path(os.path.realpath(Path(map_path).expanduser()))
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
        _unlinked(path, path / VERSIONS)
        return path

    def version_dir(self, agent: str, version: str) -> Path:
        return self.agent_dir(agent) / VERSIONS / check_version(version)

    def evaluations_dir(self, agent: str, version: str) -> Path:
        path = self.agent_dir(agent) / EVALUATIONS / check_version(version)
        return _unlinked(path.parent, path)

    def _report_path(self, agent: str, version: str) -> Path:
        return _unlinked(self.agent_dir(agent) / REPORTS) / f"{check_version(version)}.html"

    # Reading -------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.root.is_dir()

    def agents(self) -> list[str]:
        if not self.root.exists():
            return []
        if not self.root.is_dir():
            raise StoreError(f"store root {self.root} is not a directory")
        return sorted(e.name for e in os.scandir(self.root) if is_agent(e.name) and (Path(e.path) / VERSIONS).is_dir())

    def has_agent(self, agent: str) -> bool:
        return (self.agent_dir(agent) / VERSIONS).is_dir()

    def labels(self, agent: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.agent_dir(agent) / VERSIONS) if is_label(e.name))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def is_visible(self, agent: str, label: str) -> bool:
        """A version exists for readers only once its directory, complete with manifest, is in versions/."""
        path = self.agent_dir(agent) / VERSIONS / label
        manifest = path / MANIFEST
        return not path.is_symlink() and path.is_dir() and manifest.is_file() and not manifest.is_symlink()

    def visible_labels(self, agent: str) -> list[str]:
        return [v for v in self.labels(agent) if self.is_visible(agent, v)]

    def unfinished(self, agent: str, label: str) -> tuple[bool, str | None]:
        path = self.version_dir(agent, label)
        if not path.is_symlink() and path.is_dir() and not os.listdir(path):
            return True, f"{agent} {label}: empty directory left by an interrupted publish (ignored)"
        return False, None

    def read_manifest(self, agent: str, label: str) -> tuple[Any, str] | None:
        path = self.version_dir(agent, label)
        if path.is_symlink():
            raise IntegrityError(f"{path} is a symlink; refusing to follow it (versions are real directories)")
        manifest_path = path / MANIFEST
        if not path.is_dir() or (not os.path.lexists(manifest_path) and not os.listdir(path)):
            return None
        if manifest_path.is_symlink() or not manifest_path.is_file():
            raise IntegrityError(f"version {agent} {label} has no manifest.json ({manifest_path})")
        return read_json(manifest_path, "manifest", IntegrityError), str(manifest_path)

    def current_location(self, agent: str) -> str:
        return str(self.agent_dir(agent) / CURRENT)

    def read_current(self, agent: str) -> str | None:
        """The label the `current` symlink names; never followed outside versions/."""
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
        return label

    def read_map(self) -> dict[str, Any] | None:
        return agent_map.read_map(self.map_path)

    def journal(self, agent: str, limit: int | None = None) -> list[dict[str, Any]]:
        found = journal.for_agent(journal.read_entries(self.journal_path), agent)
        return found[-limit:] if limit is not None and limit < len(found) else found

    def _state(self, agent: str) -> ServiceState:
        """What serves ``agent``: a damaged `current` counts as nothing in service (what promote repairs)."""
        try:
            label = self.read_current(agent)
            problem = None
        except IntegrityError as exc:
            label, problem = None, str(exc)
        if label is not None and not self.is_visible(agent, label):
            problem = f"{self.current_location(agent)} points at version {label!r}, which is missing or has no manifest"
            problem, label = problem + REPAIR, None

        def history() -> History:
            entries = journal.read_entries(self.journal_path)
            return History(journal.in_service(entries, agent), journal.undo_stack(entries, agent))

        return ServiceState(label, damage=lambda: problem, history=history)

    def service_state(self, agent: str) -> ServiceState:
        return self._state(check_agent(agent))

    def snapshot(self, agent: str) -> Snapshot:
        pending_path = self.agent_dir(agent) / PENDING
        for _attempt in range(5):
            before = pending_path.exists()
            state = self._state(agent)
            records = self.journal(agent)
            document = self.read_map()
            if before == pending_path.exists() and state.current == self._state(agent).current:
                break  # no write started or finished while we read
        else:
            note = f"{agent}: writes kept changing `current` while it was checked; not compared"
            return Snapshot(state, records, document, [note], settled=False)
        if not before:
            return Snapshot(state, records, document)
        if self._writer_is_active(agent):
            note = f"{agent}: a write is in progress"
        else:
            # Nothing is lost or half-written (versions are whole, `current` and the map each point at a
            # whole version), but until recovery they may name different versions.
            note = (
                f"{agent}: a crashed write is pending, so `current` and the agent map may name different "
                f"versions until `jnreg store recover {agent}` (or any store write) finishes or undoes it"
            )
        return Snapshot(state, records, document, [note], settled=False)

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

    def stored_files(self, agent: str, label: str) -> dict[str, int | None]:
        return dir_files(self.version_dir(agent, label))

    def file_sha256(self, agent: str, label: str, name: str) -> str:
        return sha256_file(self.version_dir(agent, label) / name)

    def adapter_path(self, agent: str, label: str, manifest: dict[str, Any]) -> Path:
        return self.version_dir(agent, label)

    def label_state(self, agent: str, label: str) -> str | None:
        if os.path.lexists(self.agent_dir(agent) / VERSIONS / label):
            return "version"
        return "used" if journal.was_published(self.journal_path, agent, label) else None

    def _staging_dirs(self, agent: str) -> list[Path]:
        """Staging directories whose publish was killed (their owner is gone)."""
        try:
            entries = list(os.scandir(self.agent_dir(agent)))
        except FileNotFoundError:
            return []
        staged = [Path(e.path) for e in entries if (parse_owned(e.name) or ("",))[0] == "staging"]
        return sorted(path for path in staged if is_stale(path))

    def leftovers(self, agent: str) -> list[str]:
        staged = self._staging_dirs(agent)
        if not staged:
            return []
        size = sum(tree_size(p) for p in staged)
        names = ", ".join(p.name for p in staged)
        return [
            f"{agent}: {len(staged)} staging director{'y' if len(staged) == 1 else 'ies'} of killed publishes "
            f"({megabytes(size)}: {names}); `jnreg store recover {agent}` removes them"
        ]

    # Evaluations -------------------------------------------------------------------------------------

    def evaluation_location(self, agent: str, version: str, name: str) -> str:
        return str(self.evaluations_dir(agent, version) / name)

    def write_evaluation(self, agent: str, version: str, document: dict[str, Any], rows: bytes) -> None:
        # No lock: each file is written whole under a name of its own, and only the record makes it count.
        directory = self.evaluations_dir(agent, version)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / document["rows_file"], rows)
        atomic_write(directory / f"{document['id']}.json", dump_json(document).encode("utf-8"))

    def evaluation_documents(self, agent: str, version: str) -> list[tuple[str, str, bytes]]:
        directory = self.evaluations_dir(agent, version)
        if not directory.is_dir():
            return []
        return [(str(path), path.stem, path.read_bytes()) for path in sorted(directory.glob("e*.json"))]

    def read_evaluation_file(self, agent: str, version: str, name: str) -> bytes | None:
        return _read_or_none(self.evaluations_dir(agent, version) / name)

    def read_version_file(self, agent: str, label: str, name: str) -> bytes | None:
        return _read_or_none(self.version_dir(agent, label) / name)

    def report_location(self, agent: str, version: str) -> str:
        return str(self._report_path(agent, version))

    def write_report(self, agent: str, version: str, page: bytes) -> None:
        path = self._report_path(agent, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, page)

    def read_report(self, agent: str, version: str) -> bytes | None:
        return _read_or_none(self._report_path(agent, version))

    # Writing -------------------------------------------------------------------------------------

    def prepare(self, agent: str) -> Path:
        """Create the root and the agent's directories (writers only); the agent's."""
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
    def lock(self, path: Path, what: str) -> Iterator[None]:
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
    def writing(self, agent: str, done: list[str] | None = None) -> Iterator[Path]:
        """Hold the agent, map and journal locks (in that order), after finishing what a crash left.

        What the recovery did is added to ``done``.
        """
        agent_dir = self.prepare(agent)
        done = done if done is not None else []
        with ExitStack() as stack:
            stack.enter_context(self.lock(agent_dir / AGENT_LOCK, f"agent {agent!r}"))
            stack.enter_context(self.lock(agent_map.lock_path(self.map_path), f"agent map {self.map_path}"))
            stack.enter_context(self.lock(self.root / JOURNAL_LOCK, "the store journal"))
            self.read_map()  # never change `current` while the map cannot follow
            journal.repair_tail(self.journal_path)
            self._recover_pending(agent, done)
            self._clean_leftovers(agent, done)
            try:
                yield agent_dir
            except BaseException:
                # Leave nothing half-done: finish the write if it passed its commit point, else undo it.
                with suppress(Exception):
                    self._recover_pending(agent, [])
                raise

    def _write_pending(self, agent: str, entry: dict[str, Any]) -> None:
        atomic_write(self.agent_dir(agent) / PENDING, dump_json(entry).encode("utf-8"))

    def _clear_pending(self, agent: str) -> None:
        (self.agent_dir(agent) / PENDING).unlink(missing_ok=True)
        fsync_dir(self.agent_dir(agent))

    def _recover_pending(self, agent: str, done: list[str]) -> None:
        """Finish or undo the write a crash interrupted; its commit point decides which."""
        path = self.agent_dir(agent) / PENDING
        if not path.exists():
            return
        entry = read_json(path, "pending write record", IntegrityError)
        validate("journal_entry", entry, f"pending write record {path}")
        version, action = entry["version"], entry["action"]
        current = self._state(agent).current
        if action == "publish":
            committed = self.is_visible(agent, version)  # the rename into versions/ commits a publish
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
                self._point_map_at(agent, self._manifest(agent, version))
            if not journal.has_op(journal.read_entries(self.journal_path), entry["op"]):
                journal.append(self.journal_path, {**entry, "current": current})
            done.append(f"finished the interrupted {action} of {agent} {version}")
        else:
            done.append(f"undid the interrupted {action} of {agent} {version}")
        self._clear_pending(agent)

    def _clean_leftovers(self, agent: str, done: list[str]) -> None:
        """Remove what crashed writers left: their staging dirs, trash and temp files, and empty claims."""
        agent_dir = self.agent_dir(agent)
        for entry in os.scandir(agent_dir):
            owned = parse_owned(entry.name)
            if owned and is_stale(Path(entry.path)):
                size = tree_size(Path(entry.path)) if entry.is_dir(follow_symlinks=False) else entry.stat().st_size
                remove_tree(Path(entry.path))
                if owned[0] == "staging":
                    done.append(f"removed {entry.name}, left by a killed publish ({megabytes(size)})")
        # An empty claim in versions/ is removed by _recover_pending: a publish records its pending entry
        # before it claims, so every claim a crash leaves is named by a pending record. No scan of every
        # version is needed, which keeps a write's cost independent of the store's history.
        for entry in os.scandir(self.map_path.parent):
            owned = parse_owned(entry.name)
            if owned and owned[0] == "tmp" and entry.name.endswith(f"-{self.map_path.name}"):
                if is_stale(Path(entry.path)):
                    Path(entry.path).unlink(missing_ok=True)

    def _manifest(self, agent: str, label: str) -> dict[str, Any]:
        found = self.read_manifest(agent, label)
        if found is None:
            raise IntegrityError(f"{agent} {label} vanished while it was being put in service")
        return found[0]

    def swap_current(self, agent: str, version: str) -> None:
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

    def _point_map_at(self, agent: str, manifest: dict[str, Any]) -> bool:
        """Serve ``manifest``'s version first for ``agent`` in the map (held: map lock); whether the map changed."""
        document = self.read_map()
        updated = agent_map.with_current(document, agent, manifest)
        if updated == document:
            return False
        agent_map.write_map(self.map_path, updated, before_replace=lambda: crash_point("map-write"))
        return True

    def _append_journal(self, entry: dict[str, Any]) -> None:
        refuse_secrets(json.dumps(entry), "journal entry")
        journal.append(self.journal_path, entry)

    def publish(self, draft: Draft) -> tuple[str, Path, dict[str, Any]]:
        agent, source = draft.agent, draft.source
        agent_dir = self.prepare(agent)
        staging = agent_dir / owned_name("staging")
        try:
            os.mkdir(staging)
            copied = {name: copy_new_file(path, staging / name) for name, path in source.files.items()}
            for name in copied:
                if name not in BINARY_FILES:
                    refuse_secrets((staging / name).read_bytes(), name)  # what was copied, not what was checked
            fsync_dir(staging)
            crash_point("staged")
            with self.writing(agent):
                return self._commit_publish(draft, staging, copied)
        except OSError as exc:
            raise StoreError(f"publish of {agent} failed: {exc.strerror or exc}") from None
        finally:
            if os.path.lexists(staging):
                with suppress(OSError):
                    remove_tree(staging)

    def _commit_publish(
        self, draft: Draft, staging: Path, copied: dict[str, tuple[int, str]]
    ) -> tuple[str, Path, dict[str, Any]]:
        """Name, seal and rename a staged version into place, then put it in service (held: all locks)."""
        agent = draft.agent
        versions_dir = self.agent_dir(agent) / VERSIONS
        if draft.version is not None:
            draft.refuse_used_label(draft.version)
        label = draft.version or draft.free_label(None)
        previous = self._state(agent).current
        sealed = draft.seal(label, copied)
        for name, data in sealed.extra.items():
            write_new_file(staging / name, data)
        write_new_file(staging / MANIFEST, sealed.text.encode("utf-8"))
        fsync_dir(staging)

        entry = draft.entry(sealed.manifest, previous)
        self._write_pending(agent, entry)
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
        if draft.promote:
            crash_point("before-current-swap")
            self.swap_current(agent, label)
            self._point_map_at(agent, sealed.manifest)
        crash_point("before-journal")
        self._append_journal(entry)
        self._clear_pending(agent)
        return label, target, sealed.manifest

    def move(self, agent: str, decide: Decide) -> dict[str, Any] | None:
        with self.writing(agent):
            state = self._state(agent)
            change = decide(state)
            if change is None:
                if state.current is not None:
                    self._point_map_at(agent, self._manifest(agent, state.current))
                return None
            entry = change.entry
            self._write_pending(agent, entry)
            self.swap_current(agent, entry["version"])
            self._point_map_at(agent, change.manifest)
            crash_point("before-journal")
            self._append_journal(entry)
            self._clear_pending(agent)
            return entry

    def remove(self, agent: str, version: str, decide: Decide) -> bool:
        with self.writing(agent) as agent_dir:
            change = decide(self._state(agent))
            if change is None:
                return False
            self._write_pending(agent, change.entry)
            trash = agent_dir / owned_name("trash")
            target = agent_dir / VERSIONS / version
            os.chmod(target, 0o755)  # moving a directory to another parent rewrites its ".."
            os.rename(target, trash)
            fsync_dir(agent_dir / VERSIONS)
            crash_point("gc-moved")
            self._append_journal(change.entry)
            self._clear_pending(agent)
            remove_tree(trash)
            return True

    def recover(self, agent: str, choose: Callable[[ServiceState], dict[str, Any] | None]) -> list[str]:
        done: list[str] = []
        with self.writing(agent, done):  # taking the write locks finishes or undoes a crashed write
            state = self._state(agent)
            manifest = choose(state)
            if manifest is not None:
                self.swap_current(agent, manifest["version"])
                done.append(f"pointed {self.current_location(agent)} at {manifest['version']}, as the journal says")
            elif state.current is not None:
                manifest = self._manifest(agent, state.current)
            if manifest is not None and self._point_map_at(agent, manifest):
                done.append(f"pointed agent map {self.map_path} at {agent} {manifest['version']}")
        return done
