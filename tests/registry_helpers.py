"""Registry test helpers: fake PEFT adapter directories in pure Python, store snapshots, and worker processes.

Run as ``python -m tests.registry_helpers ROLE ...`` for the roles the concurrency and crash tests start.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TINY = "jnreg:tiny-mistral"
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"
LOADER_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_summary.json",
    "README.md",
    "manifest.json",
}


def safetensors_bytes(tensors: dict[str, list[float]]) -> bytes:
    """A safetensors file written by hand: 8-byte little-endian header length, JSON header, raw F32 data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, values in tensors.items():
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": [len(values)], "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def summary_for(agent: str, adapter_name: str | None = None, base_model: str = TINY) -> dict[str, Any]:
    """A training summary that matches the training_summary schema."""
    return {
        "schema_version": 1,
        "agent": agent,
        "adapter_name": adapter_name or f"{agent}_adapter",
        "adapter_version": None,
        "dry_run": False,
        "base_model": base_model,
        "base_model_revision": None,
        "quantization": "nf4",
        "hyperparameters": {
            "epochs": 1,
            "learning_rate": 2e-4,
            "train_batch_size": 1,
            "gradient_accumulation": 1,
            "adapter_r": 8,
            "adapter_alpha": 16,
            "adapter_dropout": 0.05,
            "target_modules": ["q_proj", "v_proj"],
            "max_seq_length": 256,
        },
        "dataset": {
            "source": "samples.jsonl",
            "sha256": "0" * 64,
            "rows": 4,
            "rows_skipped": 0,
            "eval_rows": 1,
            "prompt_tokens": 10,
            "response_tokens": 10,
            "supervised_tokens": 10,
        },
        "metrics": {"train_loss": 1.0},
        "library_versions": {"peft": "0.21"},
        "seed": 42,
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:01:00Z",
        "device": "cpu",
    }


def make_adapter(
    directory: Path,
    *,
    seed: int = 0,
    base_model: str = TINY,
    summary: dict[str, Any] | None = None,
    junk: bool = True,
    tokenizer: bool = True,
) -> Path:
    """A valid LoRA adapter directory (distinct per ``seed``) plus training junk that must never be published."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": base_model,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    values = [float(seed + i) / 7 for i in range(16)]
    (directory / "adapter_model.safetensors").write_bytes(
        safetensors_bytes(
            {"base_model.model.q_proj.lora_A.weight": values, "base_model.model.q_proj.lora_B.weight": values}
        )
    )
    if tokenizer:
        (directory / "tokenizer.json").write_text(json.dumps({"version": "1.0", "seed": seed}))
        (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    if summary is not None:
        (directory / "training_summary.json").write_text(json.dumps(summary))
    if junk:
        (directory / "checkpoint-10").mkdir(exist_ok=True)
        (directory / "checkpoint-10" / "optimizer.pt").write_bytes(b"junk")
        (directory / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"junk")
        (directory / "optimizer.pt").write_bytes(b"pickled optimizer state")
        (directory / "training_args.bin").write_bytes(b"pickled args")
        (directory / "adapter_model.bin").write_bytes(b"pickled weights")
        (directory / "trainer_state.json").write_text("{}")
    return directory


def big_weights(path: Path, size: int) -> None:
    """Replace ``path`` with a safetensors file of ``size`` bytes of fresh random data (nothing compresses or
    caches it)."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header)
        for _ in range(size // (1 << 20)):
            handle.write(os.urandom(1 << 20))


def adapter_source(path: Path, seed: int, weights_bytes: int = 0) -> Path:
    """An adapter directory with its own README, so every version of it has identical files; its weights are
    ``weights_bytes`` of random data when given."""
    make_adapter(path, seed=seed, junk=False)
    (path / "README.md").write_text(f"# bench adapter {seed}\n")
    if weights_bytes:
        big_weights(path / "adapter_model.safetensors", weights_bytes)
    return path


ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def random_lora(directory: Path, seed: int, *, r: int = 8, targets: tuple[str, ...] = ALL_PROJECTIONS) -> Path:
    """A real LoRA adapter for the built-in model whose weights are all random (so it changes every answer),
    with the model's tokenizer beside it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from jnreg.core.models.loading import load_tokenizer, model_path

    base = AutoModelForCausalLM.from_pretrained(model_path(TINY), dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False, task_type="CAUSAL_LM"
    )
    model = get_peft_model(base, config)
    model.peft_config["default"].base_model_name_or_path = TINY
    model.save_pretrained(directory)
    load_tokenizer(model_path(TINY)).save_pretrained(directory)
    return directory


def snapshot(root: Path) -> dict[str, Any]:
    """Everything under ``root`` that matters: each path with its kind, mode and content hash or link target."""
    found: dict[str, Any] = {}
    if not os.path.lexists(root):
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            info = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                found[rel] = ("file", stat.S_IMODE(info.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m tests.registry_helpers ARGS`` in a fresh interpreter."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.registry_helpers", *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _publish(root: str, agent: str, source: str, *flags: str) -> None:
    from jnreg.registry import ModelStore

    version = flags[flags.index("--version") + 1] if "--version" in flags else None
    result = ModelStore(root).publish(agent, source, version=version, promote="--no-promote" not in flags)
    print(json.dumps({"agent": agent, "version": result.version, "digest": result.digest}))


def _watch(root: str, stop_file: str) -> None:
    """Read the map and every agent's `current` in a loop, as an orchestrator would, until ``stop_file`` appears."""
    from jnreg.registry import ModelStore

    store = ModelStore(root)
    reads = 0
    while True:
        stop = os.path.exists(stop_file)
        store.read_map()  # raises on a half-written or invalid map
        for agent in store.agents():
            if store.current(agent) is not None:
                store.resolve(agent)
        reads += 1
        if stop:
            break
    print(json.dumps({"reads": reads}))


def _hold_lock(lock_file: str, ready_file: str, seconds: str) -> None:
    from filelock import FileLock

    with FileLock(lock_file):
        Path(ready_file).write_text("held")
        time.sleep(float(seconds))


def _promote(root: str, agent: str, version: str) -> None:
    from jnreg.registry import ModelStore

    ModelStore(root).promote(agent, version)


def _gc(root: str, agent: str, keep: str) -> None:
    from jnreg.registry import ModelStore

    ModelStore(root).gc(agent, int(keep))


def _flip(root: str, agent: str, *versions: str) -> None:
    """Promote each of ``versions`` in turn, rolling back after each: a writer that keeps moving `current`."""
    from jnreg.registry import ModelStore

    store = ModelStore(root)
    for version in versions:
        store.promote(agent, version)
        store.rollback(agent)
    print(json.dumps({"done": len(versions)}))


ROLES = {
    "publish": _publish,
    "watch": _watch,
    "hold-lock": _hold_lock,
    "promote": _promote,
    "gc": _gc,
    "flip": _flip,
}

if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
