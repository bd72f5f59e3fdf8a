"""Which checkpoint a resumed run starts from.

A checkpoint is complete once the Trainer has written its last file: ``trainer_state.json``
comes after the adapter weights, the optimizer, the scheduler and the RNG states, so a
directory without a readable one that names its own step (a run killed while writing it,
or a directory that only looks like a checkpoint) is skipped, with the reason, and the
newest complete one is used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "trainer_state.json"
NEEDED = ("optimizer.pt", "scheduler.pt")
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def newest_complete(output_dir: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest complete checkpoint in ``output_dir``, and a line for each newer one skipped, saying why."""
    found = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_dir():
                found.append(Checkpoint(path, int(match.group(1))))
    skipped = []
    for checkpoint in sorted(found, key=lambda c: c.step, reverse=True):
        why = incomplete(checkpoint)
        if why is None:
            return checkpoint, skipped
        skipped.append(f"skipping {checkpoint.path.name}: {why}")
    return None, skipped


def incomplete(checkpoint: Checkpoint) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it is complete."""
    path = checkpoint.path
    missing = [] if any((path / name).is_file() for name in WEIGHTS) else ["adapter weights"]
    missing += [name for name in (*NEEDED, STATE_FILE) if not (path / name).is_file()]
    if missing:
        return f"incomplete (no {', '.join(missing)}), as a run stopped while writing it leaves it"
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return f"its {STATE_FILE} cannot be read, as a run stopped while writing it leaves it"
    step = state.get("global_step") if isinstance(state, dict) else None
    if step != checkpoint.step:
        return f"its {STATE_FILE} is for step {step}, not {checkpoint.step}"
    return None
