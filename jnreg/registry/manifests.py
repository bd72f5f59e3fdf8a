"""A version's manifest: what publish writes into it (digest, summary, model card) and how stored files are checked."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jnreg import __version__
from jnreg.errors import IntegrityError, StoreError
from jnreg.fsutil import dump_json
from jnreg.names import MANIFEST
from jnreg.registry import journal
from jnreg.registry.adapter_dir import MODEL_CARD, SUMMARY, AdapterSource
from jnreg.registry.no_secrets import refuse_secrets
from jnreg.registry.signing import SIGNATURE
from jnreg.schemas import validate


def compute_digest(files: list[dict[str, Any]]) -> str:
    """A version's digest: sha256 of "\\n".join(f"{path}\\t{sha256}") over its files sorted by path."""
    text = "\n".join(f"{f['path']}\t{f['sha256']}" for f in sorted(files, key=lambda f: f["path"]))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    for name in sorted(set(present) - set(listed) - {MANIFEST, SIGNATURE}):
        problems.append(f"{where}: {name} is not in the manifest")
    if compute_digest(manifest["files"]) != manifest["digest"]:
        problems.append(f"{where}: manifest digest does not match its file list")
    return problems


def dir_files(path: Path) -> dict[str, int | None]:
    """Each entry of the local directory ``path`` and its size; None when it is not a regular file."""
    present: dict[str, int | None] = {}
    for entry in os.scandir(path):
        regular = entry.is_file(follow_symlinks=False)
        present[entry.name] = entry.stat(follow_symlinks=False).st_size if regular else None
    return present


def stored_summary(summary: dict[str, Any], adapter_name: str, version: str, where: str) -> dict[str, Any]:
    """The summary as stored in the version: carrying the final adapter name and version label."""
    stored = {**summary, "adapter_name": adapter_name, "adapter_version": version}
    validate("training_summary", stored, f"training summary in {where}")
    return stored


def model_card(manifest: dict[str, Any]) -> str:
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


def base_model_of(source: AdapterSource, given: str | None, source_dir: Path | str) -> str:
    """The base model the adapter names, or ``given``; refused when both are there and differ."""
    named = (source.summary or {}).get("base_model") or source.config.get("base_model_name_or_path")
    named = named if isinstance(named, str) and named else None
    if given is not None and not given.strip():
        raise StoreError("--base-model is empty")
    if given and named and given != named:
        raise StoreError(f"{source_dir} was trained on {named!r}, not on the base model given, {given!r}")
    chosen = given or named
    if not chosen:
        raise StoreError(
            f"{source_dir} names no base model (training_summary.base_model or base_model_name_or_path); "
            "say which with --base-model"
        )
    return chosen


@dataclass(frozen=True)
class Sealed:
    """What a version gets under its label: the files publish adds (summary, model card), its manifest and text."""

    extra: dict[str, bytes]
    manifest: dict[str, Any]
    text: str


def seal(
    agent: str,
    label: str,
    source: AdapterSource,
    copied: dict[str, tuple[int, str]],
    *,
    adapter_name: str,
    base_model: str,
) -> Sealed:
    """The manifest of ``source`` stored as ``agent`` ``label``.

    ``copied`` holds (size, sha256) of the adapter's files as stored; the new files are added to it.
    """
    config, summary = source.config, source.summary
    extra: dict[str, bytes] = {}
    stored = None
    if summary is not None:
        stored = dump_json(stored_summary(summary, adapter_name, label, f"{agent} {label}"))
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
        extra[MODEL_CARD] = model_card(manifest).encode("utf-8")
    for name, data in extra.items():
        copied[name] = (len(data), hashlib.sha256(data).hexdigest())
    manifest["files"] = [{"path": n, "size": s, "sha256": h} for n, (s, h) in sorted(copied.items())]
    manifest["digest"] = compute_digest(manifest["files"])
    validate("manifest", manifest, f"manifest of {agent} {label}")
    text = dump_json(manifest)
    refuse_secrets(text, MANIFEST)
    return Sealed(extra=extra, manifest=manifest, text=text)


def prompt_format(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """How the version was prompted in training (its summary's ``dataset.prompt``), or None when it does not say."""
    summary = manifest.get("training_summary") or {}
    found = (summary.get("dataset") or {}).get("prompt")
    return found if isinstance(found, dict) else None
