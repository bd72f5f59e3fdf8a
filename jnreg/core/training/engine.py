"""The training engine: the quantized base with LoRA, TRL's SFTTrainer, and the trained adapter."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.core.data.prepare import PreparedData, data_files, prepare_data, row_notes
from jnreg.core.host.plugins import Agent
from jnreg.core.models.loading import (
    hub_token,
    keep_training_layout,
    load_base_model,
    load_tokenizer,
    quiet_library_warnings,
)
from jnreg.core.training import checkpoints, launch, preflight
from jnreg.core.training.config import TrainConfig
from jnreg.core.training.outputs import (
    SUMMARY_FILE,
    build_summary,
    make_output_dir,
    now,
    record_base_model,
    save_config,
    write_json,
)
from jnreg.errors import ConfigError, first_line
from jnreg.names import TRAINING_LOG_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback

    from jnreg.core.training.trainer import RunTrainer

Echo = Callable[[str], None]


def _device_metrics(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


@dataclass
class Setup:
    """A trainer ready to run, with the data and device it was built for."""

    trainer: RunTrainer
    prepared: PreparedData
    tokenizer: PreTrainedTokenizerBase
    device: str
    resume_from: str | None
    resumed_step: int = 0


def setup(config: TrainConfig, agent: Agent, *, echo: Echo = print, callbacks: Sequence[TrainerCallback] = ()) -> Setup:
    """Check the environment, prepare the data, load the quantized base, add LoRA, build the trainer."""
    # One of several data-parallel processes: each holds a replica; only the main one writes or prints.
    config, echo = launch.in_this_world(config), launch.main_only(echo)
    launch.bind_device()
    preflight.check_trackers(config.trackers)
    output_dir = make_output_dir(config) if launch.is_main() else Path(config.output_dir)
    report = preflight.check_environment(config.quantization)
    report.raise_if_failed()
    resume_from, resumed_step = None, 0
    if config.resume:
        checkpoint, skipped = checkpoints.newest_complete(output_dir)
        for line in skipped:
            echo(line)
        if checkpoint is None:
            kind = "complete checkpoint" if skipped else "checkpoint"
            raise ConfigError(f"--resume: no {kind} in {output_dir} to resume from")
        resume_from, resumed_step = str(checkpoint.path), checkpoint.step
        echo(f"resuming from {resume_from} (step {resumed_step})")

    import datasets
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import EarlyStoppingCallback, set_seed
    from trl import SFTConfig

    from jnreg.core.training.packed_trainer import PackedSFTTrainer
    from jnreg.core.training.packing import PackedCollator, can_pack, install_row_attention
    from jnreg.core.training.progress import TrainingDisplay
    from jnreg.core.training.trainer import RunTrainer

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
    for note in row_notes(prepared, config):
        echo(note)

    set_seed(config.seed)
    model = load_base_model(
        config.base_model,
        config.quantization,
        device_map=launch.device_map(),
        token=token,
        revision=config.base_model_revision,
    )
    keep_training_layout(model)  # evaluations run between training steps
    # Rows packed without padding, and activations recomputed only where memory needs it.
    pack = can_pack(model.config, config.max_seq_length)
    if pack:
        install_row_attention(model)
    recompute = preflight.needs_checkpointing(model.config, config, prepared, report)
    checkpointing = {"use_reentrant": False}
    if config.quantization != "none":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recompute, gradient_checkpointing_kwargs=checkpointing
        )
    elif recompute:
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
    preflight.check_target_modules(model, config.target_modules)
    set_seed(config.seed)
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"cannot apply LoRA: {first_line(exc)}") from None

    has_eval = prepared.eval is not None
    early_stopping = has_eval and config.early_stopping_patience is not None
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
        load_best_model_at_end=early_stopping,
        # Only early stopping needs a best model: tracking one makes save_total_limit=1 delete the newest
        # checkpoint at the end of training, the one a resumed run needs.
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False,
        seed=config.seed,
        data_seed=config.seed,
        report_to=list(config.trackers),
        gradient_checkpointing=recompute,
        gradient_checkpointing_kwargs=checkpointing if recompute else None,
        bf16=use_cuda and torch.cuda.is_bf16_supported(),
        fp16=use_cuda and not torch.cuda.is_bf16_supported(),
        use_cpu=not use_cuda,
        max_length=None,  # rows are already within max_seq_length, truncated our way
        completion_only_loss=True,
        packing=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in every step
        disable_tqdm=False,
        include_num_input_tokens_seen="non_padding",
    )
    train_dataset = prepared.train.dataset  # Arrow, memory-mapped from the data cache
    eval_dataset = prepared.eval.dataset if prepared.eval else None
    extra = list(callbacks)
    if early_stopping:
        extra.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    if config.trackers:
        from jnreg.core.training.trackers import TrackerConfig

        extra.append(TrackerConfig(config.to_document(), config.trackers))
    trainer = (PackedSFTTrainer if pack else RunTrainer)(
        model=model,
        args=args,
        data_collator=PackedCollator() if pack else None,
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
    TrainingDisplay.install(trainer, echo)
    return Setup(trainer, prepared, tokenizer, report.device, resume_from, resumed_step)


def _final_eval_loss(trainer: Trainer) -> float:
    """The eval loss of the trained adapter: the last evaluation if it ran at the final step, else a new one."""
    state = trainer.state
    if not trainer.args.load_best_model_at_end:
        for entry in reversed(state.log_history):
            if "eval_loss" in entry:
                if entry.get("step") == state.global_step:
                    return float(entry["eval_loss"])
                break
    return float(trainer.evaluate()["eval_loss"])


def _save_eval_rows(output_dir: Path, prepared: PreparedData) -> None:
    """The held-out rows beside the adapter, so they are published with it and `jnreg eval` finds them."""
    from jnreg.fsutil import atomic_write
    from jnreg.names import EVAL_ROWS_FILE

    path = output_dir / EVAL_ROWS_FILE
    if prepared.eval_rows is not None:
        atomic_write(path, prepared.eval_rows.read_bytes())
    else:
        path.unlink(missing_ok=True)  # a rerun without eval rows must not publish an older run's


def planned_steps(trainer: Trainer) -> int:
    """The optimizer steps the run is set to end at: ``max_steps``, else what its epochs come to."""
    if trainer.args.max_steps > 0:
        return int(trainer.args.max_steps)
    return int(trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1])


def _finished_summary(output_dir: Path, step: int) -> dict[str, Any] | None:
    """The summary a run that ended at ``step`` wrote beside its adapter, if it got that far."""
    import json

    try:
        summary = json.loads((output_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    finished = isinstance(summary, dict) and summary.get("metrics", {}).get("steps") == step
    return summary if finished and (output_dir / "adapter_model.safetensors").is_file() else None


def _load_checkpoint(trainer: Trainer, checkpoint: str) -> None:
    """The checkpoint's adapter weights and Trainer state, for a run that has no step left to train."""
    from transformers import TrainerState

    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / checkpoints.STATE_FILE))


def train(
    config: TrainConfig, agent: Agent, *, echo: Echo = print, callbacks: Sequence[TrainerCallback] = ()
) -> dict[str, Any]:
    """Train the adapter and write it, the tokenizer, the summary and the effective config.

    ``resume`` continues from the newest complete checkpoint to the run's last step. A run that
    already reached it is left as it is: its summary is returned and nothing is trained or
    written (a larger ``max_steps`` trains on to it). The train loss is over every step of the
    run, the resumed ones included; tokens and tokens/s count what this invocation processed.
    """
    import torch

    from jnreg.core.training.steplog import StepLog

    started = now()
    config, echo = launch.in_this_world(config), launch.main_only(echo)
    steps = StepLog()
    ready = setup(config, agent, echo=echo, callbacks=[*callbacks, steps])
    trainer, prepared, tokenizer, resume_from = ready.trainer, ready.prepared, ready.tokenizer, ready.resume_from
    output_dir = Path(config.output_dir)
    has_eval = prepared.eval is not None
    use_cuda = ready.device == "cuda"
    finished = resume_from is not None and ready.resumed_step >= planned_steps(trainer)
    if finished:
        done = _finished_summary(output_dir, ready.resumed_step)
        if done is not None:
            echo(
                f"nothing to train: the run already finished at step {ready.resumed_step}, and its adapter is in "
                f"{output_dir} (raise --max-steps to train further)"
            )
            return done
        echo(f"the run reached its last step, {ready.resumed_step}, in {resume_from}; writing its adapter")
    eval_before = trainer.evaluate()["eval_loss"] if has_eval and resume_from is None else None
    if eval_before is not None:
        echo(f"eval loss before training: {eval_before:.4f}")
    if use_cuda:
        torch.cuda.reset_peak_memory_stats()
    clock = time.perf_counter()
    if finished:
        _load_checkpoint(trainer, resume_from)
        trainer._initial_num_input_tokens_seen = trainer.state.num_input_tokens_seen
    else:
        trainer.train(resume_from_checkpoint=resume_from)
    runtime = time.perf_counter() - clock
    # Tokens this run processed (a resumed run counts from its checkpoint), padding excluded;
    # the Trainer sums them over the processes, so this and tokens/s are the whole run's.
    tokens_this_run = trainer.state.num_input_tokens_seen - trainer._initial_num_input_tokens_seen
    eval_after = _final_eval_loss(trainer) if has_eval else None
    peak_memory = launch.max_over_processes(_device_metrics(ready.device))  # the largest replica's
    train_loss = trainer.run_train_loss()
    metrics = {
        "train_loss": train_loss,
        "eval_loss": eval_after,
        "eval_loss_before": eval_before,
        "runtime_s": round(runtime, 3),
        "tokens_per_second": round(tokens_this_run / runtime, 2) if runtime > 0 else None,
        "peak_memory_bytes": peak_memory,
        "steps": int(trainer.state.global_step),
        "input_tokens": int(tokens_this_run),
    }
    dataset = {**prepared.stats(), "files": data_files(config, agent)}
    summary = build_summary(
        config, dry_run=False, dataset=dataset, metrics=metrics, started=started, device=ready.device
    )
    if launch.is_main():
        trainer.model.save_pretrained(str(output_dir), safe_serialization=True)
        record_base_model(output_dir, config.base_model)
        tokenizer.save_pretrained(str(output_dir))
        _save_eval_rows(output_dir, prepared)
        write_json(output_dir / SUMMARY_FILE, summary)
        write_json(output_dir / TRAINING_LOG_FILE, steps.document(config.agent, config.logging_steps))
        save_config(config, output_dir)
    echo(
        f"trained {metrics['steps']} steps in {runtime:.1f}s"
        + (f"; train loss {train_loss:.4f}" if train_loss is not None else "")
        + (f", eval loss {eval_before:.4f} -> {eval_after:.4f}" if eval_before is not None and eval_after else "")
    )
    echo(f"adapter written to {output_dir}")
    return summary
