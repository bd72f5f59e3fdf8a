"""The local copies a server loads adapters from: one directory per digest, every file's sha256 checked.

A version reaches vLLM only from here. ``verify_copy`` is the one place a version's files are checked before
they are served; a check of a version's signature belongs beside it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.errors import IntegrityError
from jnreg.fsutil import copy_new_file, dump_json, fsync_dir, make_read_only, owned_name, remove_tree, sha256_file
from jnreg.names import check_agent, check_version
from jnreg.registry.manifests import prompt_format

if TYPE_CHECKING:
    from jnreg.registry.store import ModelStore

MANIFEST = "manifest.json"
COPIES_ENV = "JNREG_SERVE_CACHE"
LOCK_TIMEOUT_S = 600.0


def copies_root() -> Path:
    """Where served copies live: $JNREG_SERVE_CACHE, else <$JNREG_CACHE or ~/.cache/jnreg>/serve."""
    if os.environ.get(COPIES_ENV):
        return Path(os.environ[COPIES_ENV])
    base = os.environ.get("JNREG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jnreg")
    return Path(base) / "serve"


@dataclass(frozen=True)
class ServedVersion:
    """One version as a server loads it: its verified local copy and what vLLM needs to know about it."""

    agent: str
    version: str
    digest: str
    base_model: str
    rank: int
    path: Path
    prompt_template: str | None = None  # the --prompt-template it was trained with, if not the chat template


def _digest(files: list[dict[str, Any]]) -> str:
    text = "\n".join(f"{f['path']}\t{f['sha256']}" for f in sorted(files, key=lambda f: f["path"]))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def verify_copy(path: Path, manifest: dict[str, Any]) -> list[str]:
    """Every way the copy at ``path`` differs from ``manifest`` (missing, extra, resized or changed files)."""
    where = f"{manifest['agent']} {manifest['version']} (copy in {path})"
    listed = {f["path"]: f for f in manifest["files"]}
    problems = []
    if _digest(manifest["files"]) != manifest["digest"]:
        problems.append(f"{where}: manifest digest does not match its file list")
    try:
        entries = {e.name: e for e in os.scandir(path)}
    except OSError as exc:
        return [f"{where}: {exc.strerror or exc}"]
    for name, item in sorted(listed.items()):
        entry = entries.get(name)
        if entry is None:
            problems.append(f"{where}: {name} is missing")
        elif not entry.is_file(follow_symlinks=False):
            problems.append(f"{where}: {name} is not a regular file")
        elif entry.stat(follow_symlinks=False).st_size != item["size"]:
            problems.append(f"{where}: {name} has the wrong size")
        elif sha256_file(Path(entry.path)) != item["sha256"]:
            problems.append(f"{where}: {name} is corrupt (sha256 differs from the manifest)")
    for name in sorted(set(entries) - set(listed) - {MANIFEST}):
        problems.append(f"{where}: {name} is not in the manifest")
    return problems


_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _lock_for(digest: str) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault(digest, threading.Lock())


def _served(manifest: dict[str, Any], path: Path) -> ServedVersion:
    return ServedVersion(
        agent=manifest["agent"],
        version=manifest["version"],
        digest=manifest["digest"],
        base_model=manifest["base_model"],
        rank=int(manifest["r"]),
        path=path,
        prompt_template=(prompt_format(manifest) or {}).get("prompt_template"),
    )


def served_copy(store: ModelStore, agent: str, version: str) -> ServedVersion:
    """``agent`` ``version`` from ``store`` as a verified local copy, made (downloaded) once per digest.

    Threads of one process and other processes asking for the same version at the same time wait for the
    one copy being made. Raises StoreNotFound for an unknown agent or version, SignatureError for one the
    trust policy refuses, and IntegrityError for a version whose files do not match its manifest; nothing
    unverified is ever left where it would be served.
    """
    from filelock import FileLock

    agent, version = check_agent(agent), check_version(version)
    manifest = store.manifest(agent, version)
    # Under the host's trust policy the signature is checked on every ask, the copy's too: a version copied
    # under another name keeps its files, so its digest, and a copy made before would otherwise serve it.
    store.require_trusted(agent, version, manifest)
    digest = manifest["digest"]
    target = copies_root() / digest
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock_for(digest), FileLock(str(target) + ".lock", timeout=LOCK_TIMEOUT_S):
        if os.path.lexists(target):
            problems = verify_copy(target, manifest)
            if not problems:
                return _served(manifest, target)
            # A copy changed since it was made is not repaired in place: it is replaced by a fresh one.
            remove_tree(target)
        resolution = store.resolve(agent, version)  # an object store downloads and checks it here
        source = Path(resolution.adapter_path)
        staging = target.parent / owned_name("staging", digest)
        os.mkdir(staging)
        try:
            for item in manifest["files"]:
                try:
                    found = copy_new_file(source / item["path"], staging / item["path"])
                except FileNotFoundError:
                    raise IntegrityError(f"{agent} {version}: {item['path']} is missing from {source}") from None
                if found != (item["size"], item["sha256"]):
                    raise IntegrityError(f"{agent} {version}: {item['path']} in {source} is corrupt")
            (staging / MANIFEST).write_text(dump_json(manifest), encoding="utf-8")
            problems = verify_copy(staging, manifest)
            if problems:
                raise IntegrityError(problems[0])
            make_read_only(staging)
            fsync_dir(staging)
            os.rename(staging, target)
            fsync_dir(target.parent)
        finally:
            if os.path.lexists(staging):
                remove_tree(staging)
    return _served(manifest, target)
