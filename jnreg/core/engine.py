"""The training engine: data → tokens → 4-bit base + LoRA → TRL's SFTTrainer → adapter and summary."""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jnreg.core import data as data_mod
from jnreg.core import preflight
from jnreg.core.config import CONFIG_FILE, TrainConfig
from jnreg.core.errors import ConfigError
from jnreg.core.models import load_base_model, load_config, load_tokenizer
from jnreg.core.plugins import Agent
from jnreg.schemas import validate

SUMMARY_FILE = "training_summary.json"
Echo = Callable[[str], None]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_json(path: Path, document: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class PreparedData:
    """Checked, split and tokenized rows, with what was skipped, truncated or dropped."""

    source: str
    checked: data_mod.CheckedData
    train: data_mod.Tokenized
    eval: data_mod.Tokenized | None
    renderer: data_mod.Renderer
    first_example: data_mod.Example

    def stats(self) -> dict[str, Any]:
        lengths = self.train.lengths
        both = [self.train] + ([self.eval] if self.eval else [])
        return {
            "source": self.source,
            "sha256": self.checked.sha256,
            "rows": len(self.train.rows),
            "eval_rows": len(self.eval.rows) if self.eval else 0,
            "rows_skipped": len(self.checked.skipped),
            "rows_truncated": sum(len(t.truncated) for t in both),
            "rows_dropped_too_long": sum(len(t.dropped) for t in both),
            "prompt_tokens": self.train.prompt_tokens,
            "response_tokens": self.train.response_tokens,
            "supervised_tokens": self.train.supervised_tokens,
            "length_p50": data_mod.percentile(lengths, 50),
            "length_p95": data_mod.percentile(lengths, 95),
            "length_max": max(lengths),
            "skipped": self.checked.skipped[:50],
        }


def describe_source(config: TrainConfig, agent: Agent) -> str:
    if config.train_files:
        return ", ".join(config.train_files)
    if config.dataset_name:
        return f"{config.dataset_name}[{config.dataset_split}]"
    return f"{agent.name} sample data ({agent.plugin})"


def prepare_data(config: TrainConfig, agent: Agent, tokenizer: Any) -> PreparedData:
    spec = agent.spec
    records = data_mod.load_records(spec, config.data_options, agent.plugin)
    checked = data_mod.check_records(
        records, config.data_options, spec, on_bad_row=config.on_bad_row, limit=config.max_train_samples
    )
    if config.eval_files:
        eval_checked = data_mod.check_records(
            data_mod.default_loader(config.eval_options, None), config.eval_options, spec, on_bad_row=config.on_bad_row
        )
        checked.skipped.extend(eval_checked.skipped)
        train_rows, eval_rows = checked.examples, eval_checked.examples
    else:
        train_rows, eval_rows = data_mod.split_eval(checked.examples, config.eval_fraction, config.seed)
    renderer = data_mod.Renderer(tokenizer, spec.template, config.prompt_template)
    train = data_mod.tokenize(train_rows, renderer, config.max_seq_length, config.overlong)
    evaluation = data_mod.tokenize(eval_rows, renderer, config.max_seq_length, config.overlong) if eval_rows else None
    return PreparedData(describe_source(config, agent), checked, train, evaluation, renderer, train_rows[0])


def marked_example(prepared: PreparedData) -> str:
    """The first row as the model sees it, trained tokens between ⟦ and ⟧."""
    prompt, completion = prepared.renderer.render(prepared.first_example)
    tok = prepared.renderer.tokenizer
    return tok.decode(prompt) + "⟦" + tok.decode(completion) + "⟧"


def _summary(
    config: TrainConfig, *, dry_run: bool, dataset: dict[str, Any], metrics: dict[str, Any], started: str, device: str
) -> dict[str, Any]:
    dataset = {k: v for k, v in dataset.items() if not k.startswith("length_")}
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
        "finished_at": _now(),
        "device": device,
    }
    validate("training_summary", summary, "training summary", error=ConfigError)
    return summary


def save_config(config: TrainConfig, output_dir: Path) -> None:
    document = config.to_document()
    validate("train_config", document, "effective config", error=ConfigError)
    write_json(output_dir / CONFIG_FILE, document)


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def dry_run(config: TrainConfig, agent: Agent, echo: Echo = print) -> dict[str, Any]:
    """Every check a run makes, no training: packages, backend, tokenizer, config, data, memory."""
    started = _now()
    report = preflight.check_environment(config.quantization)
    for line in report.lines:
        echo(line)
    report.raise_if_failed()
    token = hub_token()
    tokenizer = load_tokenizer(config.base_model, token=token, revision=config.base_model_revision)
    model_config = load_config(config.base_model, token=token, revision=config.base_model_revision)
    echo(f"ok    tokenizer and config of {config.base_model} ({model_config.model_type})")
    prepared = prepare_data(config, agent, tokenizer)
    stats = prepared.stats()
    echo(f"ok    data: {stats['rows']} training rows, {stats['eval_rows']} eval rows from {stats['source']}")
    _echo_data_report(prepared, stats, config, echo)
    estimate = preflight.estimate_gpu_memory(
        model_config,
        quantization=config.quantization,
        target_modules=config.target_modules,
        r=config.adapter_r,
        batch_size=config.train_batch_size,
        seq_len=min(config.max_seq_length, stats["length_max"]),
    )
    capacity = report.gpu_bytes or preflight.RTX_3090_BYTES
    gpu = report.gpu_name or "a 24 GB RTX 3090 (no GPU here)"
    verdict = "fits" if estimate["total_bytes"] < capacity else "does NOT fit"
    echo(
        f"note  GPU memory estimate: {estimate['total_bytes'] / preflight.GiB:.1f} GiB "
        f"({estimate['parameters'] / 1e6:.1f}M parameters, {estimate['lora_parameters'] / 1e6:.2f}M LoRA) "
        f"{verdict} on {gpu} ({capacity / preflight.GiB:.0f} GiB)"
    )
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = _summary(
        config,
        dry_run=True,
        dataset=stats,
        metrics={"memory_estimate": estimate},
        started=started,
        device=report.device,
    )
    write_json(output_dir / SUMMARY_FILE, summary)
    save_config(config, output_dir)
    echo(f"dry run passed; wrote {output_dir / SUMMARY_FILE} and {output_dir / CONFIG_FILE}")
    return summary


def _echo_data_report(prepared: PreparedData, stats: dict[str, Any], config: TrainConfig, echo: Echo) -> None:
    echo(
        f"      tokens: prompt {stats['prompt_tokens']}, response {stats['response_tokens']}, "
        f"supervised {stats['supervised_tokens']}; length p50 {stats['length_p50']}, p95 {stats['length_p95']}, "
        f"max {stats['length_max']} (limit {config.max_seq_length})"
    )
    echo(
        f"      rows over the limit: {stats['rows_truncated']} truncated, {stats['rows_dropped_too_long']} dropped "
        f"({config.overlong}); bad rows skipped: {stats['rows_skipped']}"
    )
    for line in prepared.checked.skipped[:5]:
        echo(f"      skipped {line}")
    echo(f"      example ({prepared.first_example.where}); trained tokens are inside ⟦ ⟧:")
    for line in marked_example(prepared).splitlines():
        echo(f"      | {line}")


def _device_metrics(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


def _record_base_model(output_dir: Path, base_model: str) -> None:
    """Name the base model by its public id, not the local cache path it was loaded from."""
    path = output_dir / "adapter_config.json"
    adapter_config = json.loads(path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = base_model
    write_json(path, adapter_config)


def quiet_library_warnings() -> None:
    """Silence library warnings that say nothing actionable to a jnreg user."""
    import warnings

    # transformers 5 renames gradient_checkpointing to activation_checkpointing; TRL still uses the old names.
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6.*", category=FutureWarning)
    # bitsandbytes' CPU gemv_4bit kernel has no autograd registration; its input gradients were checked
    # against the dequantized weights (tests/test_train.py), so the warning's "may be incorrect" does not apply.
    warnings.filterwarnings("ignore", message=r"bitsandbytes::gemv_4bit: an autograd kernel", category=UserWarning)


@dataclass
class Setup:
    """A trainer ready to run, with the data and device it was built for."""

    trainer: Any
    prepared: PreparedData
    tokenizer: Any
    device: str
    resume_from: str | None


def setup(config: TrainConfig, agent: Agent, *, echo: Echo = print, callbacks: Sequence[Any] = ()) -> Setup:
    """Check the environment, prepare the data, load the quantized base, add LoRA, build the trainer."""
    report = preflight.check_environment(config.quantization)
    report.raise_if_failed()
    output_dir = Path(config.output_dir)
    resume_from = None
    if config.resume:
        resume_from = _last_checkpoint(output_dir)
        if resume_from is None:
            raise ConfigError(f"--resume: no checkpoint in {output_dir} to resume from")
        echo(f"resuming from {resume_from}")

    import datasets
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import EarlyStoppingCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from jnreg.core.progress import LossLines

    datasets.disable_progress_bars()  # the data report says what these map steps would
    quiet_library_warnings()
    token = hub_token()
    tokenizer = load_tokenizer(config.base_model, token=token, revision=config.base_model_revision)
    prepared = prepare_data(config, agent, tokenizer)
    stats = prepared.stats()
    echo(
        f"data: {stats['rows']} training rows, {stats['eval_rows']} eval rows, "
        f"{stats['supervised_tokens']} supervised tokens from {stats['source']}"
    )

    set_seed(config.seed)
    model = load_base_model(config.base_model, config.quantization, token=token, revision=config.base_model_revision)
    checkpointing = {"use_reentrant": False}
    if config.quantization != "none":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs=checkpointing
        )
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=config.adapter_r,
        lora_alpha=config.adapter_alpha,
        lora_dropout=config.adapter_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    set_seed(config.seed)
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"cannot apply LoRA: {str(exc).splitlines()[0]}") from None

    has_eval = prepared.eval is not None
    use_cuda = report.device == "cuda"
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.train_batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy=("steps" if config.eval_steps else "epoch") if has_eval else "no",
        eval_steps=config.eval_steps,
        load_best_model_at_end=has_eval and config.early_stopping_patience is not None,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[] if config.report_to == "none" else [config.report_to],
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs=checkpointing,
        bf16=use_cuda and torch.cuda.is_bf16_supported(),
        fp16=use_cuda and not torch.cuda.is_bf16_supported(),
        use_cpu=not use_cuda,
        max_length=None,  # rows are already within max_seq_length, truncated our way
        completion_only_loss=True,
        packing=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    train_dataset = Dataset.from_list(prepared.train.rows)
    eval_dataset = Dataset.from_list(prepared.eval.rows) if prepared.eval else None
    extra = list(callbacks)
    if has_eval and config.early_stopping_patience is not None:
        extra.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=extra,
    )
    # TRL casts a quantized model's LoRA weights to bf16; a resumed run reloads them as fp32, so
    # an interrupted run would not end where an uninterrupted one does. fp32 adapters also keep
    # small updates that bf16 rounds away, and autocast still computes in bf16 on the GPU.
    for param in trainer.model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback" and callback.logging_dir is None:
            # Otherwise the evaluation before training opens a writer in ./runs, not in the output dir.
            callback.logging_dir = str(output_dir / "runs")
    LossLines.install(trainer, echo)
    return Setup(trainer, prepared, tokenizer, report.device, resume_from)


def train(config: TrainConfig, agent: Agent, *, echo: Echo = print, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train the adapter and write it, the tokenizer, the summary and the effective config."""
    import torch

    started = _now()
    ready = setup(config, agent, echo=echo, callbacks=callbacks)
    trainer, prepared, tokenizer, resume_from = ready.trainer, ready.prepared, ready.tokenizer, ready.resume_from
    output_dir = Path(config.output_dir)
    has_eval = prepared.eval is not None
    use_cuda = ready.device == "cuda"
    eval_before = trainer.evaluate()["eval_loss"] if has_eval and resume_from is None else None
    if eval_before is not None:
        echo(f"eval loss before training: {eval_before:.4f}")
    if use_cuda:
        torch.cuda.reset_peak_memory_stats()
    clock = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    runtime = time.perf_counter() - clock
    eval_after = trainer.evaluate()["eval_loss"] if has_eval else None

    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(output_dir), safe_serialization=True)
    _record_base_model(output_dir, config.base_model)
    tokenizer.save_pretrained(str(output_dir))
    tokens_seen = sum(prepared.train.lengths) * config.epochs if config.max_steps < 0 else None
    metrics = {
        "train_loss": float(result.training_loss),
        "eval_loss": eval_after,
        "eval_loss_before": eval_before,
        "runtime_s": round(runtime, 3),
        "tokens_per_second": round(tokens_seen / runtime, 2) if tokens_seen and runtime > 0 else None,
        "peak_memory_bytes": _device_metrics(ready.device),
        "steps": int(result.global_step),
    }
    summary = _summary(
        config, dry_run=False, dataset=prepared.stats(), metrics=metrics, started=started, device=ready.device
    )
    write_json(output_dir / SUMMARY_FILE, summary)
    save_config(config, output_dir)
    echo(
        f"trained {metrics['steps']} steps in {runtime:.1f}s; train loss {metrics['train_loss']:.4f}"
        + (f", eval loss {eval_before:.4f} -> {eval_after:.4f}" if eval_before is not None and eval_after else "")
    )
    echo(f"adapter written to {output_dir}")
    return summary
