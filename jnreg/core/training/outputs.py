"""What a run writes beside the adapter: training_summary.json and the effective config."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jnreg.core.training import preflight
from jnreg.core.training.config import CONFIG_FILE, TrainConfig
from jnreg.errors import ConfigError
from jnreg.fsutil import atomic_write, dump_json, read_json
from jnreg.schemas import validate

SUMMARY_FILE = "training_summary.json"
# Where a dry run reports into a directory a training run wrote, whose own files it must not replace.
DRY_RUN_SUMMARY_FILE = "dry_run_summary.json"
DRY_RUN_CONFIG_FILE = "dry_run_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_json(path: Path, document: Any) -> None:
    atomic_write(path, dump_json(document).encode("utf-8"))


def make_output_dir(config: TrainConfig) -> Path:
    """The output directory, created now so an unwritable one fails before any work."""
    path = Path(config.output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".jnreg-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write the output directory {path}: {exc.strerror or exc}") from None
    return path


def holds_trained_run(output_dir: Path) -> bool:
    """Whether ``output_dir`` holds a trained adapter or a training run's summary (an unreadable one counts)."""
    if (output_dir / ADAPTER_WEIGHTS_FILE).exists():
        return True
    path = output_dir / SUMMARY_FILE
    if not path.exists():
        return False
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return not (isinstance(summary, dict) and summary.get("dry_run") is True)


def build_summary(
    config: TrainConfig, *, dry_run: bool, dataset: dict[str, Any], metrics: dict[str, Any], started: str, device: str
) -> dict[str, Any]:
    dataset = {k: v for k, v in dataset.items() if not k.startswith("length_") or k == "length_histogram"}
    summary = {
        "schema_version": 1,
        "agent": config.agent,
        "adapter_name": config.adapter_name,
        "adapter_version": None,
        "dry_run": dry_run,
        "base_model": config.base_model,
        "base_model_revision": config.base_model_revision,
        "quantization": config.quantization,
        "hyperparameters": config.hyperparameters(),
        "dataset": dataset,
        "metrics": metrics,
        "library_versions": preflight.library_versions(),
        "seed": config.seed,
        "started_at": started,
        "finished_at": now(),
        "device": device,
        "processes": config.processes,
        "global_batch_size": config.global_batch_size,
    }
    validate("training_summary", summary, "training summary", error=ConfigError)
    return summary


def save_config(config: TrainConfig, output_dir: Path, name: str = CONFIG_FILE) -> None:
    document = config.to_document()
    validate("train_config", document, "effective config", error=ConfigError)
    write_json(output_dir / name, document)


def record_base_model(output_dir: Path, base_model: str) -> None:
    """Name the base model by its public id, not the local cache path it was loaded from."""
    path = output_dir / "adapter_config.json"
    adapter_config = read_json(path, "adapter config", ConfigError)
    adapter_config["base_model_name_or_path"] = base_model
    write_json(path, adapter_config)
