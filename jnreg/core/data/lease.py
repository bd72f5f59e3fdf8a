"""Leases on data-cache entries: a shared lock a run holds while it reads an entry, which eviction respects.

The lock is ``flock`` on the entry's ``lease`` file, so it belongs to an open file: it ends when the
lease is released or dropped, or when the process ends however it ends, and a crashed run never
pins an entry.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows, where a file a run has open cannot be removed in the first place
    fcntl = None  # type: ignore[assignment]

LEASE_FILE = "lease"


class Lease:
    """This process's shared lock on an entry's lease file; it ends with ``release``, the object, or the process."""

    def __init__(self, fd: int) -> None:
        self._close = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        self._close()

    def __copy__(self) -> Lease:
        return self  # one lock, one owner: a copy closing the descriptor would end the original's lease

    def __deepcopy__(self, memo: dict[int, Any]) -> Lease:
        return self


def hold(directory: Path) -> Lease | None:
    """A lease on the entry in ``directory``, or None where it is gone or the file system takes no locks."""
    path = directory / LEASE_FILE
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            try:
                fd = os.open(path, os.O_RDONLY)  # a cache this user may read but not write
            except OSError:
                return None
        lease = Lease(fd)
        if fcntl is None:
            return lease
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            # Eviction renames an entry away before removing it: a lock on the file it took along is no lease.
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return lease
        except OSError:
            pass
        lease.release()
    return None


@contextmanager
def unheld(directory: Path) -> Iterator[bool]:
    """Whether no process holds a lease on the entry in ``directory``; if none does, none can take one inside."""
    try:
        fd: int | None = os.open(directory / LEASE_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        fd = None  # it cannot have a lease file, so nothing holds a lease on it
    free = True
    if fd is not None and fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            free = False
        except OSError:
            pass  # the file system takes no locks: as if none were held
    try:
        yield free
    finally:
        if fd is not None:
            os.close(fd)
