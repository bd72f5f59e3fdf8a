"""journal.jsonl: one fsynced line per publish, promote, rollback and gc removal, and what it tells rollback."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jnreg.errors import IntegrityError, StoreError
from jnreg.fsutil import fsync_dir, write_synced
from jnreg.schemas import errors, validate

JOURNAL_FILE = "journal.jsonl"
ACTIONS = ("publish", "promote", "rollback", "gc")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def who() -> str:
    """user@host: who did it, never anything from the environment beyond the login name."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def make_entry(
    action: str,
    agent: str,
    version: str,
    *,
    previous: str | None,
    current: str | None,
    digest: str | None = None,
    adapter_name: str | None = None,
) -> dict[str, Any]:
    import uuid

    entry = {
        "schema_version": 1,
        "op": uuid.uuid4().hex,
        "when": now(),
        "who": who(),
        "pid": os.getpid(),
        "action": action,
        "agent": agent,
        "version": version,
        "adapter_name": adapter_name,
        "digest": digest,
        "previous": previous,
        "current": current,
    }
    validate("journal_entry", entry, f"journal entry for {action} {agent} {version}")
    return entry


def version_entry(
    action: str, agent: str, manifest: dict[str, Any], *, previous: str | None, current: str | None
) -> dict[str, Any]:
    """The entry of ``action`` on the version ``manifest`` describes, with its digest and adapter name."""
    return make_entry(
        action,
        agent,
        manifest["version"],
        previous=previous,
        current=current,
        digest=manifest["digest"],
        adapter_name=manifest["adapter_name"],
    )


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Every entry, validated; a torn last line (a crash mid-append) is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot read journal {path}: {exc.strerror or exc}") from None
    lines = data.split(b"\n")
    found = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"journal {path} line {number} is not valid JSON: {exc}") from None
        validate("journal_entry", entry, f"journal {path} line {number}")
        found.append(entry)
    last = _complete_entry(lines[-1])
    if last is not None:
        found.append(last)  # whole and valid, only its newline missing
    return found


def _complete_entry(line: bytes) -> dict[str, Any] | None:
    """The entry on a line without its newline, if the line holds a whole valid entry."""
    if not line.strip():
        return None
    try:
        entry = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return entry if not errors("journal_entry", entry) else None


def repair_tail(path: Path) -> None:
    """End the journal on a newline: finish a whole last entry, cut a torn one (its pending intent redoes it)."""
    try:
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
            keep = data.rfind(b"\n") + 1
            if _complete_entry(data[keep:]) is not None:
                handle.write(b"\n")
            else:
                handle.truncate(keep)
            os.fsync(handle.fileno())
    except FileNotFoundError:
        return


def append(path: Path, entry: dict[str, Any]) -> None:
    """Append one validated line and fsync it; the caller holds the journal lock."""
    validate("journal_entry", entry, f"journal entry for {entry.get('action')} {entry.get('agent')}")
    line = (json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    created = not path.exists()
    write_synced(path, line, os.O_APPEND | os.O_CREAT)
    if created:
        fsync_dir(path.parent)


def was_published(path: Path, agent: str, version: str) -> bool:
    """Whether the journal records a publish of ``agent`` ``version``, without parsing every line.

    Only lines that mention the label are parsed, so the cost is a byte search, not a line-by-line decode.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot read journal {path}: {exc.strerror or exc}") from None
    needle = re.compile(rb'"version"\s*:\s*"' + re.escape(version.encode("utf-8")) + rb'"')
    for match in needle.finditer(data):
        start = data.rfind(b"\n", 0, match.start()) + 1
        end = data.find(b"\n", match.end())
        line = data[start : end if end >= 0 else len(data)]
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a torn last line; its pending record redoes it
        if isinstance(entry, dict) and entry.get("agent") == agent and entry.get("action") == "publish":
            if entry.get("version") == version:
                return True
    return False


def has_op(entries: list[dict[str, Any]], op: str) -> bool:
    return any(entry["op"] == op for entry in entries)


def for_agent(entries: list[dict[str, Any]], agent: str) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["agent"] == agent]


def in_service(entries: list[dict[str, Any]], agent: str) -> str | None:
    """The version the journal last put in service for ``agent``."""
    moves = [e for e in for_agent(entries, agent) if e["action"] in ("publish", "promote", "rollback")]
    return moves[-1]["current"] if moves else None


def undo_after(undo: tuple[str | None, ...], entry: dict[str, Any]) -> tuple[str | None, ...]:
    """The undo stack of earlier versions in service once ``entry`` is recorded (entries of one agent).

    A publish or promote that moves `current` pushes the version it replaced; a rollback pops it again.
    """
    moved = entry["previous"] != entry["current"]
    if entry["action"] in ("publish", "promote") and moved and entry["current"] == entry["version"]:
        return (*undo, entry["previous"])
    if entry["action"] == "rollback" and undo:
        return undo[:-1]
    return undo


def undo_stack(entries: list[dict[str, Any]], agent: str) -> tuple[str | None, ...]:
    stack: tuple[str | None, ...] = ()
    for entry in for_agent(entries, agent):
        stack = undo_after(stack, entry)
    return stack


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as the journal compares it: in UTC, a time without a zone taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise StoreError(
            f"{text!r} is neither an ISO 8601 time (2026-11-25T12:00:00Z) nor a published version"
        ) from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def published_at(entries: list[dict[str, Any]], agent: str, version: str) -> str | None:
    """When ``version`` of ``agent`` was published, from its journal entry."""
    found = [e["when"] for e in for_agent(entries, agent) if e["action"] == "publish" and e["version"] == version]
    return found[0] if found else None


def until(entries: list[dict[str, Any]], agent: str, moment: datetime) -> list[dict[str, Any]]:
    """The agent's entries made at or before ``moment``."""
    return [e for e in for_agent(entries, agent) if parse_time(e["when"]) <= moment]


def in_service_at(entries: list[dict[str, Any]], agent: str, moment: datetime) -> str | None:
    """The version in service for ``agent`` at ``moment``, as the journal tells it."""
    return in_service(until(entries, agent, moment), agent)
