"""Checks a run makes before it trains: packages, the device and bitsandbytes backend, GPU memory."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from jnreg.errors import ConfigError, EnvironmentCheckError, first_line

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

    from jnreg.core.data.prepare import PreparedData
    from jnreg.core.training.config import TrainConfig

# The libraries whose versions the checks compare with jnreg's own requirements in pyproject.toml.
CHECKED = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "safetensors")
RTX_3090_BYTES = 24 * 1024**3
GiB = 1024**3


def _required() -> dict[str, Any]:
    """The version specifiers jnreg declares for the checked libraries (empty when run from a source tree)."""
    from packaging.requirements import Requirement

    try:
        declared = metadata.requires("jnreg") or []
    except metadata.PackageNotFoundError:
        return {}
    found = {}
    for line in declared:
        requirement = Requirement(line)
        if requirement.name in CHECKED and requirement.marker is None:
            found[requirement.name] = requirement.specifier
    return found


# Each tracker --report-to takes, the module the Trainer's integration needs, and jnreg's extra that installs it.
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}


def check_trackers(trackers: tuple[str, ...]) -> None:
    """Refuse, before any work, a tracker whose package is not installed, naming the extra that installs it."""
    from importlib.util import find_spec

    for tracker in trackers:
        module, extra = TRACKERS[tracker]
        if find_spec(module) is None:
            raise ConfigError(f"--report-to {tracker}: {module} is not installed; pip install 'jnreg[{extra}]'")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in [*CHECKED, "jnreg", "tokenizers"]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass
class Report:
    """What the checks found; ``failures`` non-empty means the run must not go on."""

    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    device: str = "cpu"
    gpu_name: str | None = None
    gpu_bytes: int | None = None

    def ok(self, line: str) -> None:
        self.lines.append(f"ok    {line}")

    def note(self, line: str) -> None:
        self.lines.append(f"note  {line}")

    def fail(self, line: str) -> None:
        self.lines.append(f"FAIL  {line}")
        self.failures.append(line)

    def raise_if_failed(self) -> None:
        if self.failures:
            more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            raise EnvironmentCheckError(f"check failed: {self.failures[0]}{more}")


def check_environment(quantization: str) -> Report:
    """Packages and versions, CUDA, and whether bitsandbytes can run the chosen quantization here."""
    report = Report()
    versions = library_versions()
    required = _required()
    for name in CHECKED:
        found, wanted = versions.get(name), required.get(name)
        need = f" (need {wanted})" if wanted else ""
        if found is None:
            report.fail(f"{name} is not installed{need}")
        elif wanted is not None and not wanted.contains(found, prereleases=True):
            report.fail(f"{name} {found} is outside jnreg's supported range{need}")
        else:
            report.ok(f"{name} {found}")
    if report.failures:
        return report
    import torch

    if torch.cuda.is_available():
        report.device = "cuda"
        props = torch.cuda.get_device_properties(0)
        report.gpu_name, report.gpu_bytes = props.name, props.total_memory
        bf16 = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        report.ok(f"CUDA GPU {props.name}, {props.total_memory / GiB:.1f} GiB, compute dtype {bf16}")
    else:
        report.note("no CUDA GPU: training runs on the CPU in fp32 (fine for the built-in model, slow for 7B)")
    if quantization in ("nf4", "8bit"):
        _check_bitsandbytes(report, quantization)
    return report


def _check_bitsandbytes(report: Report, quantization: str) -> None:
    import torch

    from jnreg.core.models.loading import quiet_bitsandbytes

    quiet_bitsandbytes()
    try:
        import bitsandbytes as bnb

        device = report.device
        if quantization == "nf4":
            layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        else:
            layer = bnb.nn.Linear8bitLt(64, 32, bias=False, has_fp16_weights=False)
        layer = layer.to(device)
        out = layer(torch.randn(2, 64, device=device, dtype=torch.float32 if quantization == "nf4" else torch.float16))
        if out.shape != (2, 32) or not torch.isfinite(out.float()).all():
            raise RuntimeError("a quantized layer returned a wrong result")
    except Exception as exc:
        report.fail(f"bitsandbytes cannot run {quantization} on {report.device}: {first_line(exc)}")
        return
    backend = "CUDA" if report.device == "cuda" else "CPU fallback"
    report.ok(f"bitsandbytes {bnb.__version__}: {quantization} layers run on the {backend}")


def check_target_modules(model: torch.nn.Module, target_modules: tuple[str, ...]) -> None:
    """ConfigError naming every target module that matches no module of ``model``, as peft matches names.

    peft wraps what matches and ignores the rest, so a misspelt name would silently train less.
    """
    import torch

    names = [name for name, _ in model.named_modules()]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        output = model.get_output_embeddings()
        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and m is not output
            }
        )
        raise ConfigError(
            f"cannot apply LoRA: --target-modules {', '.join(missing)}: no module of the model is called that; "
            f"its linear layers are {', '.join(linear) or 'none'}"
        )


def count_parameters(model_config: PretrainedConfig, target_modules: tuple[str, ...], r: int) -> dict[str, int]:
    """Parameter counts by kind, from the config alone (no weights are loaded); unknown target modules fail."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(model_config)
    check_target_modules(model, target_modules)
    output = model.get_output_embeddings()
    counts = {"quantizable": 0, "other": 0, "lora": 0, "target_linear_layers": 0}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            counts["quantizable"] += module.weight.numel()
            if name.rsplit(".", 1)[-1] in target_modules:
                counts["target_linear_layers"] += 1
                counts["lora"] += r * (module.in_features + module.out_features)
    total = sum(p.numel() for p in model.parameters())
    counts["other"] = total - counts["quantizable"]
    counts["total"] = total
    return counts


def estimate_gpu_memory(
    model_config: PretrainedConfig,
    *,
    quantization: str,
    target_modules: tuple[str, ...],
    r: int,
    batch_size: int,
    seq_len: int,
) -> dict[str, Any]:
    """A rough peak-memory estimate for QLoRA training of this model and config, in bytes."""
    counts = count_parameters(model_config, target_modules, r)
    # NF4 stores 4 bits a weight plus ~0.127 bits of double-quantized absmax per weight.
    bytes_per_weight = {"nf4": 0.5 + 0.127 / 8, "8bit": 1.0 + 4 / 64, "none": 2.0}[quantization]
    weights = counts["quantizable"] * bytes_per_weight + counts["other"] * 2
    # LoRA weights, gradients and two AdamW moments, all fp32.
    lora = counts["lora"] * 16
    hidden = getattr(model_config, "hidden_size", 4096)
    layers = getattr(model_config, "num_hidden_layers", 32)
    vocab = getattr(model_config, "vocab_size", 32000)
    tokens = batch_size * seq_len
    # Gradient checkpointing keeps one bf16 hidden state per layer plus one layer's working set;
    # the logits and their fp32 loss copies are usually the largest single item.
    activations = tokens * hidden * 2 * layers + tokens * hidden * 2 * 16 + tokens * vocab * (2 + 4 + 4)
    overhead = 0.6 * GiB  # CUDA context, allocator slack
    total = weights + lora + activations + overhead
    return {
        "parameters": counts["total"],
        "lora_parameters": counts["lora"],
        "weights_bytes": int(weights),
        "lora_and_optimizer_bytes": int(lora),
        "activation_bytes": int(activations),
        "total_bytes": int(total),
    }


def activation_bytes(model_config: PretrainedConfig, tokens: int, *, dtype_bytes: int, checkpointing: bool) -> int:
    """Activations kept for the backward pass of ``tokens`` tokens, with or without gradient checkpointing.

    A decoder layer keeps about 16 hidden-sized and 5 MLP-sized values a token (norms, q/k/v,
    attention output, residuals, the gated MLP's three projections); checkpointing keeps only
    each layer's input and recomputes one layer at a time.
    """
    hidden = getattr(model_config, "hidden_size", 4096)
    layers = getattr(model_config, "num_hidden_layers", 32)
    intermediate = getattr(model_config, "intermediate_size", 4 * hidden)
    per_layer = tokens * (16 * hidden + 5 * intermediate) * dtype_bytes
    if checkpointing:
        return tokens * hidden * dtype_bytes * layers + per_layer
    return per_layer * layers


def needs_checkpointing(
    model_config: PretrainedConfig, config: TrainConfig, prepared: PreparedData, report: Report
) -> bool:
    """Whether a batch of the longest rows needs gradient checkpointing to fit in this device's memory.

    On a GPU the estimate without checkpointing must stay under 85% of its memory. On the CPU
    the activations must stay under an eighth of the memory available now, so a run never
    competes with the rest of the machine for it.
    """
    longest = min(config.max_seq_length, max(prepared.train.lengths))
    tokens = config.train_batch_size * longest
    if report.device == "cuda":
        estimate = estimate_gpu_memory(
            model_config,
            quantization=config.quantization,
            target_modules=config.target_modules,
            r=config.adapter_r,
            batch_size=config.train_batch_size,
            seq_len=longest,
        )
        without = estimate["total_bytes"] - estimate["activation_bytes"]
        without += activation_bytes(model_config, tokens, dtype_bytes=2, checkpointing=False)
        return without > 0.85 * (report.gpu_bytes or RTX_3090_BYTES)
    needed = activation_bytes(model_config, tokens, dtype_bytes=4, checkpointing=False)
    return needed > available_memory() / 8


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (Linux's MemAvailable; else all physical memory)."""
    import os

    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
