"""Training settings: core defaults, then the agent plugin's, then a config file, then the flags."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from jnreg.core.host.spec import AgentSpec, DataOptions, Hyperparameters
from jnreg.errors import ConfigError
from jnreg.names import CONFIG_FILE as CONFIG_FILE  # where the run's config is saved; named with the others
from jnreg.names import is_label
from jnreg.schemas import errors as schema_errors

CONFIG_SCHEMA_VERSION = 1
# Settings that say what to do with a run rather than how to train; never saved for a rerun.
ACTIONS = ("dry_run", "resume", "publish", "adapter_version", "store_root", "builtin_settings")
# What the built-in model trains with when the user sets none of these. The 7B defaults barely move a
# model of its size (eval loss 8.34 -> 8.33 in the quick start); these show it learning in seconds.
BUILTIN_MODEL_SETTINGS: dict[str, Any] = {
    "learning_rate": 3e-3,
    "epochs": 6.0,
    "train_batch_size": 4,
    "eval_batch_size": 4,
    "gradient_accumulation": 1,
}
# The guide's and other spellings a config file may use.
ALIASES = {
    "model_name_or_path": "base_model",
    "model": "base_model",
    "lr": "learning_rate",
    "num_train_epochs": "epochs",
    "lora_r": "adapter_r",
    "lora_alpha": "adapter_alpha",
    "lora_dropout": "adapter_dropout",
    "max_length": "max_seq_length",
    "gradient_accumulation_steps": "gradient_accumulation",
    "per_device_train_batch_size": "train_batch_size",
}


@dataclass(frozen=True)
class TrainConfig(Hyperparameters):
    """Everything one training run needs; validated on creation."""

    agent: str = field(default="", metadata={"help": "Agent whose adapter is trained."})
    adapter_name: str = field(default="", metadata={"help": "Adapter name (default: the agent's)."})
    base_model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the base model."})
    quantization: str = field(default="nf4", metadata={"help": "nf4 (QLoRA), 8bit or none."})
    train_files: tuple[str, ...] = field(default=(), metadata={"help": "JSON/JSONL files or globs."})
    dataset_name: str | None = field(default=None, metadata={"help": "datasets name or local dataset directory."})
    dataset_config: str | None = field(default=None, metadata={"help": "datasets configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "datasets split."})
    eval_files: tuple[str, ...] = field(default=(), metadata={"help": "Evaluation files (else a held-out fraction)."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Fraction held out for evaluation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})
    text_field: str = field(default="text", metadata={"help": "Column with whole-text rows."})
    prompt_field: str = field(default="prompt", metadata={"help": "Column with the prompt."})
    response_field: str = field(default="response", metadata={"help": "Column with the response."})
    prompt_template: str | None = field(
        default=None, metadata={"help": "Template with {prompt}, {response}, {system}."}
    )
    on_bad_row: str = field(default="fail", metadata={"help": "fail or skip bad rows."})
    overlong: str = field(default="truncate", metadata={"help": "truncate (prompt, from the left) or drop."})
    output_dir: str = field(default="", metadata={"help": "Where the adapter is written."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: epochs decide)."})
    logging_steps: int = field(default=5, metadata={"help": "Print the loss every N steps."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N steps (default: each epoch)."})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "Stop after N evals without gain."})
    report_to: str = field(
        default="none", metadata={"help": "none, or trackers: tensorboard, mlflow, wandb, trackio (comma-separated)."}
    )
    processes: int = field(default=1, metadata={"help": "Data-parallel training processes (one per GPU)."})
    dry_run: bool = field(default=False, metadata={"help": "Check everything, train nothing."})
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint."})
    publish: bool = field(default=False, metadata={"help": "Publish to the ModelStore after training."})
    adapter_version: str | None = field(default=None, metadata={"help": "Version label when publishing."})
    store_root: str | None = field(default=None, metadata={"help": "ModelStore root when publishing."})
    builtin_settings: tuple[str, ...] = field(
        default=(), metadata={"help": "Settings taken from the built-in model's own, not from the defaults."}
    )

    def __post_init__(self) -> None:
        for name in ("train_files", "eval_files", "target_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = value.split(",") if name == "target_modules" else [value]
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.report_to, (list, tuple)):
            object.__setattr__(self, "report_to", ",".join(self.report_to) or "none")
        if isinstance(self.report_to, str):
            # "none" among trackers means no tracker; each tracker once, in the order given.
            named = [t for t in dict.fromkeys(self.report_to.lower().replace(" ", "").split(",")) if t]
            object.__setattr__(self, "report_to", ",".join(t for t in named if t != "none") or "none")
        # Types and ranges first, so a config file's "epochs": "three" gets a message, not a TypeError.
        problems = schema_errors("train_config", self.to_document())
        if problems:
            raise ConfigError(f"invalid setting {problems[0]}")
        super().__post_init__()
        if not is_label(self.adapter_name):
            raise ConfigError(f"invalid adapter name {self.adapter_name!r}: use letters, digits, '.', '_' and '-'")
        if self.adapter_version is not None and not is_label(self.adapter_version):
            raise ConfigError(f"invalid version label {self.adapter_version!r}: use letters, digits, '.', '_' and '-'")
        if self.train_files and self.dataset_name:
            raise ConfigError("give --train-files or --dataset-name, not both")
        if self.max_steps == 0:
            raise ConfigError("max_steps must be -1 (off) or >= 1")
        if self.early_stopping_patience is not None and self.eval_fraction == 0 and not self.eval_files:
            raise ConfigError("early stopping needs evaluation rows: give --eval-files or a non-zero --eval-fraction")

    @property
    def data_options(self) -> DataOptions:
        return DataOptions(
            train_files=self.train_files,
            dataset_name=self.dataset_name,
            dataset_config=self.dataset_config,
            dataset_split=self.dataset_split,
            max_samples=self.max_train_samples,
            text_field=self.text_field,
            prompt_field=self.prompt_field,
            response_field=self.response_field,
        )

    @property
    def eval_options(self) -> DataOptions:
        return replace(self.data_options, train_files=self.eval_files, dataset_name=None, max_samples=None)

    @property
    def trackers(self) -> tuple[str, ...]:
        """The trackers the Trainer logs to besides jnreg's own log."""
        return () if self.report_to == "none" else tuple(self.report_to.split(","))

    @property
    def global_batch_size(self) -> int:
        """Rows per optimizer step: every process's batch, accumulated."""
        return self.processes * self.train_batch_size * self.gradient_accumulation

    def hyperparameters(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(Hyperparameters)}
        values["target_modules"] = list(self.target_modules)
        values.pop("base_model")
        return values

    def to_document(self) -> dict[str, Any]:
        """The config as saved beside the adapter: feeding it back with --config reruns the run."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in ACTIONS}
        return {"schema_version": CONFIG_SCHEMA_VERSION, **values}


def _normalise_keys(values: dict[str, Any], origin: str) -> dict[str, Any]:
    known = {f.name for f in fields(TrainConfig)}
    out: dict[str, Any] = {}
    unknown = []
    for key, value in values.items():
        name = key.replace("-", "_")
        name = ALIASES.get(name, name)
        if name == "schema_version":
            continue
        if name not in known:
            unknown.append(key)
            continue
        out[name] = value
    if unknown:
        raise ConfigError(f"{origin}: unknown setting(s): {', '.join(sorted(unknown))}")
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML or JSON file (a TOML file may keep them under [train])."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            values = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
        values = values.get("train", values)
    else:
        try:
            values = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: invalid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings")
    return _normalise_keys(values, f"config file {path}")


def build_config(spec: AgentSpec, file_values: dict[str, Any], flag_values: dict[str, Any]) -> TrainConfig:
    """Core defaults < the agent plugin's defaults < the config file < the flags given."""
    from jnreg.core.models.loading import is_builtin

    chosen = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    values: dict[str, Any] = asdict(spec.defaults) | chosen
    tuned = tuple(k for k in BUILTIN_MODEL_SETTINGS if k not in chosen) if is_builtin(values["base_model"]) else ()
    values.update({k: BUILTIN_MODEL_SETTINGS[k] for k in tuned}, builtin_settings=tuned)
    values["agent"] = spec.name
    if not values.get("adapter_name"):
        values["adapter_name"] = spec.default_adapter_name
    if not values.get("output_dir"):
        values["output_dir"] = str(Path("output") / "adapters" / values["adapter_name"])
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid settings: {exc}") from None
