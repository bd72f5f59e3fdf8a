"""Where each storage keeps a version's ``model.sig``: beside its files, never among them, added without a rewrite.

One mixin per storage, each needing only what its storage already has (a version directory and the
write locks; a bucket), so the storages gain the two operations without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from jnreg.errors import IntegrityError, StoreConflict, StoreNotFound
from jnreg.fsutil import fsync_dir, make_read_only, owned_name, write_new_file
from jnreg.names import check_agent, check_version
from jnreg.registry.signing import SIGNATURE
from jnreg.registry.storage.bucket import Conflict
from jnreg.registry.storage.object_layout import version_key

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from jnreg.registry.storage.bucket import Bucket


class LocalSignatureFiles:
    """``model.sig`` in a local version directory, which is read-only once published."""

    root: Path
    version_dir: Callable[[str, str], Path]
    is_visible: Callable[[str, str], bool]
    writing: Callable[[str], AbstractContextManager[Path]]

    def read_signature(self, agent: str, label: str) -> bytes | None:
        path = self.version_dir(agent, label) / SIGNATURE
        if path.is_symlink():
            raise IntegrityError(f"{path} is a symlink; the store never follows links out of its root")
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def write_signature(self, agent: str, label: str, data: bytes, *, replace: bool) -> None:
        with self.writing(agent) as agent_dir:
            if not self.is_visible(agent, label):  # a gc may have removed it meanwhile
                raise StoreNotFound(f"agent {agent!r} has no version {label!r} in the store at {self.root}")
            path = self.version_dir(agent, label)
            if os.path.lexists(path / SIGNATURE) and not replace:
                raise StoreConflict(f"{agent} {label} already has a {SIGNATURE}")
            # Written beside the version first, so a crash leaves nothing inside it that verify would report.
            temp = agent_dir / owned_name("tmp", SIGNATURE)
            write_new_file(temp, data)
            os.chmod(path, 0o755)
            try:
                os.replace(temp, path / SIGNATURE)
            finally:
                temp.unlink(missing_ok=True)
                make_read_only(path)
            fsync_dir(path)


class ObjectSignatureFiles:
    """``model.sig`` as an object beside the version's files."""

    bucket: Bucket

    def read_signature(self, agent: str, label: str) -> bytes | None:
        got = self.bucket.get(version_key(check_agent(agent), check_version(label), SIGNATURE))
        return got[0] if got is not None else None

    def write_signature(self, agent: str, label: str, data: bytes, *, replace: bool) -> None:
        key = version_key(agent, label, SIGNATURE)
        if replace:
            self.bucket.put(key, data)
            return
        try:
            self.bucket.put_new(key, data)
        except Conflict:
            raise StoreConflict(f"{agent} {label} already has a {SIGNATURE}") from None
