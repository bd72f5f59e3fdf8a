"""What a publishable PEFT adapter directory is, and which of its files a loader needs (no torch needed)."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jnreg.errors import IntegrityError, StoreError
from jnreg.fsutil import read_json
from jnreg.names import CONFIG_FILE, EVAL_ROWS_FILE, TRAINING_LOG_FILE
from jnreg.registry.no_secrets import refuse_secrets

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SUMMARY = "training_summary.json"
MODEL_CARD = "README.md"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
# Everything a loader needs, and how the version was made (its config and per-step log); no checkpoints,
# optimizer state or pickles.
COPIED_FILES = (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MODEL_CARD,
    EVAL_ROWS_FILE,
    TRAINING_LOG_FILE,
    CONFIG_FILE,
    *TOKENIZER_FILES,
)
BINARY_FILES = frozenset({ADAPTER_WEIGHTS, "tokenizer.model"})
LORA_TYPES = frozenset({"LORA", "ADALORA"})
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class AdapterSource:
    """A checked adapter directory: the files to take, its adapter config and its training summary."""

    files: dict[str, Path]
    config: dict[str, Any]
    summary: dict[str, Any] | None


def check_safetensors(path: Path) -> int:
    """Parse a safetensors header (8-byte little-endian length, then JSON) without torch; return the tensor count."""

    def bad(why: str) -> StoreError:
        return StoreError(f"not a valid PEFT adapter: {path} is not a safetensors file ({why})")

    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise bad("shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length == 0 or length > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise bad(f"header length {length} does not fit a {size}-byte file")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_size = size - 8 - length
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        raise bad("it holds no tensors")
    for name, info in tensors.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(info.get("dtype") if isinstance(info, dict) else None, str)
            or not isinstance(info.get("shape"), list)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise bad(f"tensor {name!r} has a bad dtype, shape or data offsets (truncated file?)")
    return len(tensors)


def check_adapter_config(config: Any, path: Path) -> None:
    if not isinstance(config, dict):
        raise StoreError(f"not a valid PEFT adapter: {path} is not a JSON object")
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or not peft_type:
        raise StoreError(f"not a valid PEFT adapter: {path} has no peft_type")
    if peft_type.upper() in LORA_TYPES:
        r, alpha, targets = config.get("r"), config.get("lora_alpha"), config.get("target_modules")
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise StoreError(f"not a valid PEFT adapter: {path} has no positive integer r")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
            raise StoreError(f"not a valid PEFT adapter: {path} has no positive lora_alpha")
        if not (isinstance(targets, str) and targets) and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)
        ):
            raise StoreError(f"not a valid PEFT adapter: {path} has no target_modules")


def inspect_source(source: Path) -> AdapterSource:
    """Check that ``source`` is a PEFT adapter directory and pick the files a loader needs from it."""
    try:
        return _inspect(source)
    except OSError as exc:
        raise StoreError(f"cannot read adapter directory {source}: {exc.strerror or exc}") from None


def _inspect(source: Path) -> AdapterSource:
    if not source.is_dir():
        raise StoreError(f"adapter directory {source} does not exist or is not a directory")
    real_root = source.resolve()
    files: dict[str, Path] = {}
    for name in (*COPIED_FILES, SUMMARY):
        path = source / name
        if not os.path.lexists(path):
            continue
        if path.is_symlink():
            if not path.resolve().is_relative_to(real_root):
                raise StoreError(f"{path} is a symlink pointing outside {source}; refusing to publish it")
            path = path.resolve()  # copied from its target, which the copy opens without following links
        if not path.is_file():
            raise StoreError(f"{path} is not a regular file")
        files[name] = path
    if ADAPTER_CONFIG not in files:
        raise StoreError(f"not a valid PEFT adapter: {source} has no {ADAPTER_CONFIG}")
    config = read_json(files[ADAPTER_CONFIG], "adapter config", StoreError)
    check_adapter_config(config, files[ADAPTER_CONFIG])
    if ADAPTER_WEIGHTS not in files:
        pickled = " (only adapter_model.bin, a pickle: save with safe_serialization=True)"
        raise StoreError(
            f"not a valid PEFT adapter: {source} has no {ADAPTER_WEIGHTS}"
            + (pickled if (source / "adapter_model.bin").exists() else "")
        )
    check_safetensors(files[ADAPTER_WEIGHTS])
    summary = None
    if SUMMARY in files:
        summary = read_json(files.pop(SUMMARY), "training summary", IntegrityError)
        if not isinstance(summary, dict):
            raise IntegrityError(f"training summary {source / SUMMARY} is not a JSON object")
        if summary.get("dry_run") is True:
            raise StoreError(
                f"{source / SUMMARY} is a dry run's report, not the summary of the training that made this "
                "adapter; train again into that directory (or remove the file) before publishing"
            )
    for name, path in files.items():
        if name not in BINARY_FILES:
            refuse_secrets(path.read_bytes(), str(path))
    return AdapterSource(files=files, config=config, summary=summary)
