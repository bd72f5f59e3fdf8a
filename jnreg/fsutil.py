"""Durable file operations: atomic writes, fsync of files and directories, sha256, and owner-tagged temp names."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import BinaryIO

CHUNK = 1 << 20
# Leftovers (staging dirs, trash, temp files) carry their owner's host and pid in their name, so the
# next writer can tell a crashed owner's leftovers from a live writer's work in progress.
_OWNED = re.compile(r"\.(?P<kind>staging|trash|tmp)-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})(?:-.*)?")
# A live owner on another host, or one whose pid may have been reused, is presumed gone after this long.
STALE_OTHER_HOST_S = 3600.0
STALE_SAME_HOST_S = 24 * 3600.0


def host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def owned_name(kind: str, suffix: str = "") -> str:
    """A hidden name like ``.staging-<host>-<pid>-<random>`` that says who made it."""
    name = f".{kind}-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    return f"{name}-{suffix}" if suffix else name


def parse_owned(name: str) -> tuple[str, str, int] | None:
    """(kind, host, pid) of an owner-tagged name, or None for any other name."""
    match = _OWNED.fullmatch(name)
    return (match["kind"], match["host"], int(match["pid"])) if match else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A killed child its parent has not reaped yet still answers kill(0); it will never write again.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def is_stale(path: Path) -> bool:
    """Whether ``path`` is an owner-tagged leftover whose owner is gone (dead pid, or too old)."""
    owned = parse_owned(path.name)
    if owned is None:
        return False
    _, host, pid = owned
    try:
        age = time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if host != host_tag():
        return age > STALE_OTHER_HOST_S
    if pid == os.getpid():
        return False
    return not pid_alive(pid) or age > STALE_SAME_HOST_S


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# Files this large are copied by the kernel while a second thread hashes what was written.
KERNEL_COPY_MIN = 8 * CHUNK
KERNEL_COPY_STEP = 16 * CHUNK


def copy_new_file(source: Path, target: Path) -> tuple[int, str]:
    """Copy ``source`` to a ``target`` that must not exist yet, fsync it; return (size, sha256) of the copy."""
    # O_NOFOLLOW: a source file swapped for a symlink after it was checked is refused, not copied.
    with os.fdopen(os.open(source, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if os.fstat(handle.fileno()).st_size >= KERNEL_COPY_MIN and hasattr(os, "copy_file_range"):
                found = _kernel_copy(handle.fileno(), fd)
            else:
                found = _plain_copy(handle, fd)
            os.fsync(fd)
        finally:
            os.close(fd)
    return found


def _plain_copy(handle: BinaryIO, fd: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        write_all(fd, chunk)
    return size, digest.hexdigest()


def _kernel_copy(source_fd: int, fd: int) -> tuple[int, str]:
    """copy_file_range in steps; a thread hashes each step as read back from the copy, so the hash is of what
    was stored and the hashing overlaps the copying."""
    import queue
    import threading

    digest = hashlib.sha256()
    steps: queue.Queue[tuple[int, int] | None] = queue.Queue()
    failed: list[BaseException] = []

    def hash_copy() -> None:
        try:
            while (step := steps.get()) is not None:
                offset, length = step
                while length:
                    data = os.pread(fd, min(length, 4 * CHUNK), offset)
                    if not data:
                        raise OSError(f"copy is shorter than written at offset {offset}")
                    digest.update(data)
                    offset += len(data)
                    length -= len(data)
        except BaseException as exc:  # re-raised in the copying thread
            failed.append(exc)
            while steps.get() is not None:
                pass

    hasher = threading.Thread(target=hash_copy, daemon=True)
    hasher.start()
    size = 0
    try:
        while True:
            try:
                done = os.copy_file_range(source_fd, fd, KERNEL_COPY_STEP)
            except OSError:
                if size:
                    raise
                steps.put(None)
                hasher.join()
                os.lseek(source_fd, 0, os.SEEK_SET)
                with os.fdopen(os.dup(source_fd), "rb") as handle:
                    return _plain_copy(handle, fd)  # a filesystem pair that cannot copy in the kernel
            if not done:
                break
            steps.put((size, done))
            size += done
    finally:
        steps.put(None)
        hasher.join()
    if failed:
        raise failed[0]
    return size, digest.hexdigest()


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``: os.write may write less than it was given."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_synced(path: Path, data: bytes, flags: int) -> None:
    """Open ``path`` for writing with ``flags``, write all of ``data`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | flags, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(target: Path, data: bytes) -> tuple[int, str]:
    """Write ``data`` to a ``target`` that must not exist yet, fsync it; return (size, sha256)."""
    write_synced(target, data, os.O_CREAT | os.O_EXCL)
    return len(data), hashlib.sha256(data).hexdigest()


def json_message(exc: json.JSONDecodeError) -> str:
    """json's message without its position; some end in " at", the position's lead-in, which goes too."""
    return exc.msg.removesuffix(" at")


def json_problem(exc: json.JSONDecodeError | UnicodeDecodeError) -> str:
    """What is wrong with a JSON text and where ("Invalid control character at line 1 column 5")."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    return f"{json_message(exc)} at line {exc.lineno} column {exc.colno}"


def read_json(path: Path, what: str, error: type[Exception]) -> Any:
    """Parse the JSON file at ``path``; ``error`` names ``what`` and the problem when it cannot."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} is not valid JSON: {json_problem(exc)}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def dump_json(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def atomic_write(path: Path, data: bytes, *, before_replace: Callable[[], None] | None = None) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never a mix, even after a crash."""
    temp = path.parent / owned_name("tmp", path.name)
    try:
        write_new_file(temp, data)
        if before_replace is not None:
            before_replace()
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def make_read_only(directory: Path) -> None:
    """Files 0444, then the directory 0555: a published version is never rewritten in place."""
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            os.chmod(entry.path, 0o444)
    os.chmod(directory, 0o555)


def remove_tree(path: Path) -> None:
    """Remove ``path`` (file, link or directory tree), read-only parts included."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    for dirpath, _, _ in os.walk(path):
        mode = os.lstat(dirpath).st_mode
        if not mode & stat.S_IWUSR:
            os.chmod(dirpath, 0o755)
    shutil.rmtree(path)


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} bytes"
