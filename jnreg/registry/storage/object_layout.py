"""Where object storage keeps each thing (the keys), and the local copies loaders read of its versions.

Layout under ``s3://bucket/prefix``::

    AGENT_MODEL_MAP.json                    the map; rewritten by compare-and-swap on its ETag (If-Match)
    <agent>/journal/<seq>.json              one journal entry per write, created only (If-None-Match: *);
                                            claiming the next number orders every write of the agent
    <agent>/current                         {"version", "seq"}: moved by compare-and-swap after its record
    <agent>/service/<seq>.json              what the journal says after record <seq> (the version in service
                                            and the undo stack), so rollback and gc read one object, not the
                                            whole journal; created only, and rebuilt from the records when absent
    <agent>/versions/<label>/claim.json     created only; reserves the label forever, even after gc
    <agent>/versions/<label>/<file>         the version's files, uploaded after the claim
    <agent>/versions/<label>/manifest.json  created only, last: the version is visible from here on
    <agent>/pending/<owner>.json            a publish or gc in progress; the next writer finishes or undoes
                                            it once its owner is gone
    <agent>/evaluations/<version>/<id>.json an evaluation, beside the version (its rows in <id>.rows.jsonl)
    <agent>/reports/<version>.html          the version's page, replaced whole when it is made again

A writer killed at any point leaves no visible half version: a version without its manifest is not a
version, and the next write on the agent (or ``recover``) removes what the dead writer uploaded.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from jnreg.errors import IntegrityError
from jnreg.fsutil import (
    STALE_OTHER_HOST_S,
    STALE_SAME_HOST_S,
    dump_json,
    fsync_dir,
    host_tag,
    owned_name,
    pid_alive,
    remove_tree,
)
from jnreg.names import check_agent, check_version
from jnreg.registry import agent_map, journal
from jnreg.registry.agent_map import MAP_FILE
from jnreg.registry.no_secrets import refuse_secrets
from jnreg.registry.storage.base import CURRENT, EVALUATIONS, MANIFEST, REPORTS, VERSIONS
from jnreg.registry.storage.bucket import Bucket
from jnreg.schemas import validate

CLAIM = "claim.json"
JOURNAL = "journal"
PENDING = "pending"
SERVICE = "service"
# How often a writer retries after losing a conditional write before it reports a conflict.
MAX_ATTEMPTS = 200
# Where object storage can be killed by the crash tests (see base.crash_point).
CRASH_POINTS = ("uploading", "uploaded", "visible", "journaled", "gc-journaled")
_OWNER = re.compile(r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})")


def version_key(agent: str, version: str, name: str = "") -> str:
    return f"{agent}/{VERSIONS}/{version}/{name}"


def record_key(agent: str, seq: int) -> str:
    return f"{agent}/{JOURNAL}/{seq:010d}.json"


def record_seq(agent: str, key: str) -> int | None:
    """The sequence number of a journal record's key; None for any other key."""
    name = key[len(f"{agent}/{JOURNAL}/") :].removesuffix(".json")
    return int(name) if name.isdigit() else None


def service_key(agent: str, seq: int) -> str:
    return f"{agent}/{SERVICE}/{seq:010d}.json"


def current_key(agent: str) -> str:
    return f"{agent}/{CURRENT}"


def pending_key(agent: str, owner: str) -> str:
    return f"{agent}/{PENDING}/{owner}.json"


def evaluation_key(agent: str, version: str, name: str = "") -> str:
    return f"{check_agent(agent)}/{EVALUATIONS}/{check_version(version)}/{name}"


def report_key(agent: str, version: str) -> str:
    return f"{check_agent(agent)}/{REPORTS}/{check_version(version)}.html"


def read_map_object(bucket: Bucket) -> tuple[dict[str, Any] | None, str | None]:
    """The agent map kept in the bucket, validated, and its ETag; (None, None) when there is none yet."""
    got = bucket.get(MAP_FILE)
    if got is None:
        return None, None
    try:
        text = got[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntegrityError(f"cannot read agent map {bucket.where(MAP_FILE)}: {exc}") from None
    return agent_map.parse_map(text, bucket.where(MAP_FILE)), got[1]


def read_document(bucket: Bucket, key: str, schema: str, what: str) -> tuple[dict[str, Any], str | None] | None:
    """The JSON object at ``key``, validated, and its ETag; None when there is none."""
    got = bucket.get(key)
    if got is None:
        return None
    data, etag = got
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{what} {bucket.where(key)} is not valid JSON: {exc}") from None
    validate(schema, document, f"{what} {bucket.where(key)}")
    return document, etag


def owner_gone(owner: str, age_s: float) -> bool:
    """Whether the writer named ``owner`` (host-pid-random) can no longer be writing."""
    match = _OWNER.fullmatch(owner)
    if match is None:
        return age_s > STALE_OTHER_HOST_S
    if match["host"] != host_tag():
        return age_s > STALE_OTHER_HOST_S
    if int(match["pid"]) == os.getpid():
        return False
    return not pid_alive(int(match["pid"])) or age_s > STALE_SAME_HOST_S


def pause(attempt: int) -> None:
    """Back off a little after a lost conditional write, with jitter so racing writers spread out."""
    time.sleep(min(0.2, 0.002 * (attempt + 1)) * (0.5 + secrets.randbelow(1000) / 1000))


def cache_root() -> Path:
    """Where resolve and load keep downloaded versions, one directory per digest."""
    base = os.environ.get("JNREG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jnreg")
    return Path(base) / "store"


def fetch(bucket: Bucket, agent: str, version: str, manifest: dict[str, Any], target: Path) -> Path:
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
                size, sha = bucket.download(version_key(agent, version, name), staging / name)
            except FileNotFoundError:
                raise IntegrityError(f"{agent} {version}: {name} is missing from {bucket.url}") from None
            if (size, sha) != (item["size"], item["sha256"]):
                raise IntegrityError(
                    f"{agent} {version}: {name} in {bucket.url} is corrupt "
                    f"(sha256 {sha[:12]}…, manifest says {item['sha256'][:12]}…)"
                )
        (staging / MANIFEST).write_text(dump_json(manifest), encoding="utf-8")
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


def intent(owner: str, action: str, agent: str, version: str, op: str) -> bytes:
    """The record of a publish or gc in progress (a pending record, or a label's claim), by ``owner``."""
    document = {
        "schema_version": 1,
        "owner": owner,
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
