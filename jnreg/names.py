"""The names the store accepts: agents, version labels and adapter names, and base-model refs."""

from __future__ import annotations

import re

from jnreg.errors import StoreError

AGENT_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,62}")
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# The training run's held-out rows, kept beside the adapter and published with it for `jnreg eval`.
EVAL_ROWS_FILE = "eval_rows.jsonl"
# Beside every published version: its files, their sizes and sha256s, and its digest.
MANIFEST = "manifest.json"
# The run's effective config; `jnreg train --config` on it reruns the run.
CONFIG_FILE = "jnreg_config.json"
# The run's log per logging step (loss, eval loss, learning rate, tokens/s), published with the adapter.
TRAINING_LOG_FILE = "training_log.json"
# The map's ref for the base every built-in agent uses; existing JustNews maps already say this.
KNOWN_BASE_REFS = {"mistralai/Mistral-7B-Instruct-v0.3": "mistral-7b-v0.3"}


def is_agent(name: object) -> bool:
    return isinstance(name, str) and AGENT_PATTERN.fullmatch(name) is not None


def is_label(name: object) -> bool:
    """A version label or adapter name: one safe path component, never ``.``, ``..`` or containing ``..``."""
    return isinstance(name, str) and LABEL_PATTERN.fullmatch(name) is not None and ".." not in name


def check_agent(name: object) -> str:
    if not is_agent(name):
        raise StoreError(
            f"invalid agent name {name!r}: use lower-case letters, digits and _ (pattern {AGENT_PATTERN.pattern})"
        )
    return name  # type: ignore[return-value]


def check_version(label: object) -> str:
    if not is_label(label):
        raise StoreError(
            f"invalid version label {label!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return label  # type: ignore[return-value]


def check_adapter_name(name: object) -> str:
    if not is_label(name):
        raise StoreError(
            f"invalid adapter name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name  # type: ignore[return-value]


def base_ref_slug(model_id: str) -> str:
    """The map key for a base model with no key yet: ``jnreg:tiny-mistral`` -> ``tiny-mistral``."""
    if model_id in KNOWN_BASE_REFS:
        return KNOWN_BASE_REFS[model_id]
    tail = re.split(r"[/:\\]", model_id.rstrip("/:"))[-1]
    slug = re.sub(r"[^a-z0-9._-]+", "-", tail.lower()).strip("-.")
    return slug or "base-model"
