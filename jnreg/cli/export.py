"""``jnreg export``: a stored adapter merged into its dequantized base, as a plain transformers model directory."""

from __future__ import annotations

from pathlib import Path

import click

from jnreg.cli.base import echo_json, open_store


@click.command("export")
@click.argument("agent")
@click.argument("version", required=False)
@click.option(
    "--merged",
    "target",
    type=click.Path(path_type=Path),
    required=True,
    help="New directory for the base model with the adapter merged in.",
)
@click.option("--dtype", type=click.Choice(["bf16", "fp32"]), default="bf16", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def export(ctx: click.Context, agent: str, version: str | None, target: Path, dtype: str, as_json: bool) -> None:
    """Write AGENT's VERSION [in service] merged into its dequantized base, as a plain transformers model."""
    from jnreg.core.export.merge import check_target, merge_adapter, model_card, write_model_dir
    from jnreg.core.models.loading import quiet_library_warnings
    from jnreg.registry import load
    from jnreg.registry.manifests import prompt_format

    check_target(target)  # before anything slow
    store = open_store(ctx)
    resolution = store.resolve(agent, version)
    summary = resolution.manifest["training_summary"] or {}
    quantization = summary.get("quantization") or "nf4"  # the base the adapter was trained against
    quiet_library_warnings()
    model, tokenizer = load(
        agent,
        resolution.version,
        None if quantization == "none" else quantization,
        store=store,
        device_map={"": "cpu"},  # the merge upcasts to fp32: host memory, not the GPU's
    )
    merged = merge_adapter(model, dtype)
    card = model_card(
        agent=agent,
        version=resolution.version,
        digest=resolution.digest,
        adapter_name=resolution.adapter_name,
        base_model=resolution.base_model,
        dtype=dtype,
        prompt_template=(prompt_format(resolution.manifest) or {}).get("prompt_template"),
    )
    write_model_dir(merged, tokenizer, target, card)
    row = {
        "agent": agent,
        "version": resolution.version,
        "digest": resolution.digest,
        "base_model": resolution.base_model,
        "dtype": dtype,
        "path": str(Path(target).absolute()),
    }
    if as_json:
        echo_json(row)
    else:
        click.echo(f"exported {agent} {resolution.version} merged into {resolution.base_model} ({dtype}) to {target}")
