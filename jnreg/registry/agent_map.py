"""AGENT_MODEL_MAP.json: read and validate it, point an agent at the version in service, write it atomically.

The map keeps the shape JustNews loaders read (``base_models`` and per-agent lists under ``agents``);
every section, agent, entry and field jnreg did not write is carried over unchanged.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jnreg.errors import IntegrityError, StoreError
from jnreg.fsutil import atomic_write, json_problem
from jnreg.names import KNOWN_BASE_REFS, base_ref_slug, is_label
from jnreg.schemas import validate

MAP_FILE = "AGENT_MODEL_MAP.json"


def empty_map() -> dict[str, Any]:
    return {"base_models": {}, "agents": {}}


def lock_path(map_path: Path) -> Path:
    """The lock beside the map, so stores that share one map also share its lock."""
    return map_path.parent / f".{map_path.name}.lock"


def read_map(path: Path) -> dict[str, Any] | None:
    """The map at ``path``, validated; None when there is none yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        raise IntegrityError(f"agent map {path} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"cannot read agent map {path}: {exc}") from None
    return parse_map(text, str(path))


def parse_map(text: str, where: str) -> dict[str, Any]:
    """The map in ``text`` (read from ``where``), validated."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntegrityError(
            f"agent map {where} is not valid JSON ({json_problem(exc)}); "
            "fix or restore it: jnreg never overwrites a map it cannot read"
        ) from None
    validate("agent_model_map", document, f"agent map {where}")
    return document


def map_text(document: dict[str, Any], where: str) -> str:
    """``document`` validated and as jnreg writes it."""
    validate("agent_model_map", document, f"the agent map jnreg was about to write to {where}")
    # Key order as found: the map is also edited by hand, and a rewrite should show only what changed.
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_map(path: Path, document: dict[str, Any], *, before_replace: Callable[[], None] | None = None) -> None:
    """Validate ``document`` and replace the map with it atomically."""
    text = map_text(document, str(path))
    try:
        atomic_write(path, text.encode("utf-8"), before_replace=before_replace)
    except OSError as exc:
        raise StoreError(f"cannot write agent map {path}: {exc.strerror or exc}") from None


# The folder of an agent's published versions, in the store and in the map's paths.
VERSIONS = "versions"


def store_path(agent: str, version: str) -> str:
    """``adapter_model_store_path`` of a published version: relative to the store root."""
    return f"{agent}/{VERSIONS}/{version}"


def stored_version(entry: dict[str, Any], agent: str) -> str | None:
    """The version a map entry's ``adapter_model_store_path`` names, as ``store_path`` writes it; None for an
    entry jnreg did not write."""
    head, _, label = str(entry.get("adapter_model_store_path", "")).partition(f"{agent}/{VERSIONS}/")
    return label if not head and is_label(label) else None


def find_base_ref(document: dict[str, Any] | None, base_model: str) -> str | None:
    """The ``base_models`` key whose ``hf_id`` is ``base_model``, if the map has one."""
    base_models = (document or {}).get("base_models", {})
    preferred = KNOWN_BASE_REFS.get(base_model)
    if preferred in base_models and base_models[preferred].get("hf_id") == base_model:
        return preferred
    return next((key for key, value in sorted(base_models.items()) if value.get("hf_id") == base_model), None)


def base_ref_for(document: dict[str, Any] | None, base_model: str) -> str:
    """The ref the map uses (or would use) for ``base_model``."""
    found = find_base_ref(document, base_model)
    if found is not None:
        return found
    taken = set((document or {}).get("base_models", {}))
    slug = base_ref_slug(base_model)
    ref, n = slug, 1
    while ref in taken:
        n += 1
        ref = f"{slug}-{n}"
    return ref


def entries(document: dict[str, Any] | None, agent: str) -> list[dict[str, Any]]:
    return list((document or {}).get("agents", {}).get(agent, []))


def entry_for(document: dict[str, Any] | None, agent: str, adapter_name: str | None = None) -> dict[str, Any] | None:
    """The entry a JustNews loader picks: the one named ``adapter_name``, else the first."""
    found = entries(document, agent)
    named = [e for e in found if e.get("adapter_name") == adapter_name]
    return named[0] if named else (found[0] if found else None)


def hf_id_of(document: dict[str, Any] | None, base_ref: str) -> str | None:
    value = (document or {}).get("base_models", {}).get(base_ref)
    return value.get("hf_id") if isinstance(value, dict) else None


def with_current(document: dict[str, Any] | None, agent: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy of the map whose first entry for ``agent`` is the version in ``manifest``; one entry per adapter name."""
    adapter_name, version, base_model = manifest["adapter_name"], manifest["version"], manifest["base_model"]
    updated = copy.deepcopy(document) if document is not None else empty_map()
    base_ref = base_ref_for(updated, base_model)
    updated["base_models"].setdefault(base_ref, {"hf_id": base_model, "peft_support": True})
    old = entries(updated, agent)
    replaced = next((e for e in old if e.get("adapter_name") == adapter_name), {})
    # Fields someone added by hand to this adapter's entry (serving settings, notes) stay.
    entry = {
        **replaced,
        "base_ref": base_ref,
        "adapter_name": adapter_name,
        "adapter_model_store_path": store_path(agent, version),
        "adapter_version": version,
        "digest": manifest["digest"],
        "published_at": manifest["created_at"],
    }
    updated["agents"][agent] = [entry] + [e for e in old if e.get("adapter_name") != adapter_name]
    return updated
