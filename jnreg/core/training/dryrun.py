"""``--dry-run``: every check a training run makes, and a report of the data, without training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jnreg.core.data.prepare import PreparedData, marked_example, prepare_data
from jnreg.core.host.plugins import Agent
from jnreg.core.models.loading import hub_token, load_config, load_tokenizer
from jnreg.core.training import launch, preflight
from jnreg.core.training.config import CONFIG_FILE, TrainConfig
from jnreg.core.training.outputs import (
    DRY_RUN_CONFIG_FILE,
    DRY_RUN_SUMMARY_FILE,
    SUMMARY_FILE,
    build_summary,
    holds_trained_run,
    make_output_dir,
    now,
    save_config,
    write_json,
)
from jnreg.errors import EnvironmentCheckError

Echo = Callable[[str], None]


def dry_run(config: TrainConfig, agent: Agent, echo: Echo = print) -> dict[str, Any]:
    """Every check a run makes, no training: packages, backend, tokenizer, config, data, memory."""
    started = now()
    preflight.check_trackers(config.trackers)
    output_dir = make_output_dir(config)
    # A trained run's summary and config are what `store publish` and `--config` read: keep them.
    trained = holds_trained_run(output_dir)
    summary_file, config_file = (DRY_RUN_SUMMARY_FILE, DRY_RUN_CONFIG_FILE) if trained else (SUMMARY_FILE, CONFIG_FILE)
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
    if config.processes > 1:
        # Every process holds a whole replica: the estimate below is per GPU, and each needs its own.
        echo(f"ok    {config.processes} data-parallel processes ({launch.check_devices(config.processes)})")
    echo(f"ok    global batch: {launch.describe_global_batch(config)}")
    capacity = report.gpu_bytes or preflight.RTX_3090_BYTES
    gpu = report.gpu_name or "a 24 GB RTX 3090 (no GPU here)"
    fits = estimate["total_bytes"] < capacity
    verdict = "fits" if fits else "does NOT fit"
    echo(
        f"{'ok   ' if fits else 'FAIL '} GPU memory estimate{' per GPU' if config.processes > 1 else ''}: "
        f"{estimate['total_bytes'] / preflight.GiB:.1f} GiB "
        f"({estimate['parameters'] / 1e6:.1f}M parameters, {estimate['lora_parameters'] / 1e6:.2f}M LoRA) "
        f"{verdict} on {gpu} ({capacity / preflight.GiB:.0f} GiB)"
    )
    summary = build_summary(
        config,
        dry_run=True,
        dataset=stats,
        metrics={"memory_estimate": estimate},
        started=started,
        device=report.device,
    )
    write_json(output_dir / summary_file, summary)
    save_config(config, output_dir, config_file)
    if not fits:
        raise EnvironmentCheckError(
            f"check failed: training needs about {estimate['total_bytes'] / preflight.GiB:.1f} GiB, "
            f"more than {gpu} has; "
            "lower --max-seq-length or --train-batch-size, or use --quantization nf4"
        )
    kept = f" (kept the trained run's {SUMMARY_FILE} and {CONFIG_FILE})" if trained else ""
    echo(f"dry run passed; wrote {output_dir / summary_file} and {output_dir / config_file}{kept}")
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
