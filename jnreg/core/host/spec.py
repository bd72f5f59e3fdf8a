"""What an agent plugin hands to the host: the agent's spec, template, defaults and data options."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jnreg.errors import ConfigError
from jnreg.names import AGENT_PATTERN, is_agent
from jnreg.schemas import SchemaProblem, checker

DEFAULT_BASE_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
MISTRAL_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class Hyperparameters:
    """Training defaults an agent plugin sets; the user's config file and flags override them."""

    base_model: str = field(
        default=DEFAULT_BASE_MODEL, metadata={"help": "Base model: hub id, local path or jnreg:tiny-mistral."}
    )
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training rows."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps spent warming up."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    train_batch_size: int = field(default=1, metadata={"help": "Rows per device step."})
    eval_batch_size: int = field(default=1, metadata={"help": "Rows per evaluation step."})
    gradient_accumulation: int = field(default=8, metadata={"help": "Steps accumulated per optimizer update."})
    adapter_r: int = field(default=16, metadata={"help": "LoRA rank."})
    adapter_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    adapter_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    target_modules: tuple[str, ...] = field(default=MISTRAL_TARGET_MODULES, metadata={"help": "Modules LoRA wraps."})
    max_seq_length: int = field(default=2048, metadata={"help": "Longest training row, in tokens."})

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (list, str)):
            modules = self.target_modules.split(",") if isinstance(self.target_modules, str) else self.target_modules
            object.__setattr__(self, "target_modules", tuple(m.strip() for m in modules if m.strip()))
        _check(bool(self.base_model), "base_model must not be empty")
        _check(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        _check(0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate}")
        _check(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("train_batch_size", "eval_batch_size", "gradient_accumulation", "adapter_r", "adapter_alpha"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} must be a whole number >= 1, got {value!r}")
        _check(0 <= self.adapter_dropout < 1, f"adapter_dropout must be in [0, 1), got {self.adapter_dropout}")
        _check(len(self.target_modules) > 0, "target_modules must name at least one module")
        _check(
            isinstance(self.max_seq_length, int) and self.max_seq_length >= 16,
            f"max_seq_length must be a whole number >= 16, got {self.max_seq_length!r}",
        )


@dataclass(frozen=True)
class PromptTemplate:
    """How a prompt/response pair becomes the chat that serving sends: system + user, then assistant."""

    system: str
    user: str = "{prompt}"

    def __post_init__(self) -> None:
        _check(isinstance(self.system, str) and self.system.strip() != "", "template.system must be a non-empty string")
        _check("{prompt}" in self.user, "template.user must contain {prompt}")

    def messages(self, prompt: str) -> list[dict[str, str]]:
        user = self.user.replace("{prompt}", prompt)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Serving:
    """Generation settings the agent is served with."""

    max_new_tokens: int = 512
    temperature: float = 0.2

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, "serving.max_new_tokens must be >= 1")
        _check(self.temperature >= 0, "serving.temperature must be >= 0")


@dataclass(frozen=True)
class DataOptions:
    """The user's data options, handed to an agent's dataset loader."""

    train_files: tuple[str, ...] = ()
    dataset_name: str | None = None
    dataset_config: str | None = None
    dataset_split: str = "train"
    max_samples: int | None = None
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"


@dataclass(frozen=True)
class Record:
    """One training row and where it came from, so errors can name file and line."""

    data: Any
    source: str
    line: int
    problem: str | None = None
    unit: str = ""  # "" for a line number, "row " for a position in a list or dataset

    @property
    def where(self) -> str:
        return f"{self.source}:{self.unit}{self.line}"


DatasetLoader = Callable[[DataOptions], Iterable["Record | Mapping[str, Any]"]]


@dataclass(frozen=True)
class AgentSpec:
    """Everything jnreg needs to train and serve one agent's adapter."""

    name: str
    description: str
    template: PromptTemplate
    defaults: Hyperparameters = field(default_factory=Hyperparameters)
    serving: Serving = field(default_factory=Serving)
    sample_data: Path | None = None
    load_dataset: DatasetLoader | None = None
    response_schema: Mapping[str, Any] | None = None
    adapter_name: str | None = None
    # Default promotion requirements, e.g. ("schema_valid>=0.95",); --require replaces them.
    requirements: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(
            is_agent(self.name),
            f"agent name {self.name!r} must match {AGENT_PATTERN.pattern}",
        )
        _check(
            isinstance(self.description, str) and self.description.strip() != "",
            f"agent {self.name!r} needs a one-line description",
        )
        _check("\n" not in self.description.strip(), f"agent {self.name!r}: description must be one line")
        _check(isinstance(self.template, PromptTemplate), f"agent {self.name!r}: template must be a PromptTemplate")
        _check(isinstance(self.defaults, Hyperparameters), f"agent {self.name!r}: defaults must be Hyperparameters")
        _check(isinstance(self.serving, Serving), f"agent {self.name!r}: serving must be a Serving")
        _check(
            self.sample_data is not None or self.load_dataset is not None,
            f"agent {self.name!r} needs sample_data or a load_dataset callable",
        )
        _check(
            self.load_dataset is None or callable(self.load_dataset),
            f"agent {self.name!r}: load_dataset must be callable",
        )
        if self.response_schema is not None:
            try:
                checker(self.response_schema)  # compiled once here; rows and answers reuse it
            except SchemaProblem as exc:
                raise ConfigError(f"agent {self.name!r}: response_schema is not a valid JSON Schema: {exc}") from None
        if self.requirements:
            from jnreg.core.evaluation.gate import parse_requirements

            _check(not isinstance(self.requirements, str), f"agent {self.name!r}: requirements must be a tuple")
            object.__setattr__(self, "requirements", tuple(self.requirements))
            try:
                parse_requirements(self.requirements, self.response_schema)
            except ConfigError as exc:
                raise ConfigError(f"agent {self.name!r}: {exc}") from None

    @property
    def default_adapter_name(self) -> str:
        return self.adapter_name or f"{self.name}_adapter"
