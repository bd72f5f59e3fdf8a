"""``jnreg train``: the guide's options, merged over the agent's defaults, then a dry run or training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from jnreg.cli.base import StoreRoot, echo_json, open_store, progress_echo
from jnreg.core.training import launch
from jnreg.errors import ConfigError

# Options that take several values after one flag, as the guide writes them
# (``--train-files data/*.jsonl`` after the shell expands the glob).
MULTI_VALUE = ("--train-files", "--eval-files", "--report-to")


class MultiValueCommand(click.Command):
    """Lets ``--train-files a b c`` mean ``--train-files a --train-files b --train-files c``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        expanded: list[str] = []
        current, has_value = None, False
        for arg in args:
            if current is not None and not arg.startswith("-"):
                expanded.extend([current, arg] if has_value else [arg])
                has_value = True
                continue
            flag = arg.split("=", 1)[0]
            current = flag if flag in MULTI_VALUE else None
            has_value = "=" in arg
            expanded.append(arg)
        return super().parse_args(ctx, expanded)


def _choice(*values: str) -> click.Choice:
    return click.Choice(values, case_sensitive=False)


@click.command(cls=MultiValueCommand)
@click.argument("agent_arg", metavar="[AGENT]", required=False)
@click.option("--agent", "agent_opt", help="Agent to train (the guide's spelling; same as the AGENT argument).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="TOML or JSON file of settings; flags override it.",
)
@click.option("--adapter-name", help="Adapter name [default: the agent's].")
@click.option(
    "--model_name_or_path",
    "--model-name-or-path",
    "base_model",
    help="Base model: hub id, local directory, or jnreg:tiny-mistral (built in, offline).",
)
@click.option("--revision", "base_model_revision", help="Hub revision of the base model.")
@click.option("--quantization", type=_choice("nf4", "8bit", "none"), help="Base model quantization [nf4].")
@click.option("--train-files", multiple=True, help="JSON/JSONL files or globs (several allowed).")
@click.option("--dataset-name", help="datasets name or a local dataset directory.")
@click.option("--dataset-config", help="datasets configuration name.")
@click.option("--dataset-split", help="datasets split [train].")
@click.option("--eval-files", multiple=True, help="Evaluation files (else --eval-fraction is held out).")
@click.option("--eval-fraction", type=float, help="Fraction of rows held out for evaluation [0.1].")
@click.option("--text-field", help="Column holding whole-text rows [text].")
@click.option("--prompt-field", help="Column holding the prompt [prompt].")
@click.option("--response-field", help="Column holding the response [response].")
@click.option("--prompt-template", help="Template string with {prompt} and {response} (and optionally {system}).")
@click.option("--max-train-samples", type=int, help="Use at most N training rows (smoke tests).")
@click.option("--on-bad-row", type=_choice("fail", "skip"), help="Stop at a bad row, or skip and count it [fail].")
@click.option(
    "--overlong",
    type=_choice("truncate", "drop"),
    help="Rows over --max-seq-length: truncate the prompt from the left, or drop [truncate].",
)
@click.option("--output_dir", "--output-dir", "output_dir", help="Output directory [output/adapters/<adapter_name>].")
@click.option("--epochs", type=float, help="Training epochs.")
@click.option("--max-steps", type=int, help="Stop after N optimizer steps.")
@click.option("--train-batch-size", type=int, help="Rows per device step.")
@click.option("--gradient-accumulation", type=int, help="Steps per optimizer update.")
@click.option("--learning-rate", type=float, help="Peak learning rate.")
@click.option("--adapter-r", type=int, help="LoRA rank.")
@click.option("--adapter-alpha", type=int, help="LoRA alpha.")
@click.option("--adapter-dropout", type=float, help="LoRA dropout.")
@click.option("--target-modules", help="Comma-separated module names LoRA wraps.")
@click.option("--max-seq-length", type=int, help="Longest row in tokens.")
@click.option("--seed", type=int, help="Random seed [42].")
@click.option("--logging-steps", type=int, help="Print the loss every N steps.")
@click.option("--save-steps", type=int, help="Checkpoint every N steps.")
@click.option("--save-total-limit", type=int, help="Checkpoints kept.")
@click.option("--eval-steps", type=int, help="Evaluate every N steps [each epoch].")
@click.option("--early-stopping-patience", type=int, help="Stop after N evaluations without a lower eval loss.")
@click.option(
    "--report-to",
    multiple=True,
    type=_choice("none", "tensorboard", "mlflow", "wandb", "trackio"),
    help="Also log to these trackers (several allowed; each is an extra: pip install 'jnreg[mlflow]').",
)
@click.option("--resume", is_flag=True, default=None, help="Continue from the last checkpoint in the output dir.")
@click.option(
    "--dry-run", is_flag=True, default=None, help="Check packages, device, model, data and memory; no training."
)
@click.option("--publish", is_flag=True, default=None, help="Publish the adapter to the ModelStore afterwards.")
@click.option("--adapter-version", help="Version label for --publish [vYYYYMMDD-HHMM].")
@click.option(
    "--require",
    multiple=True,
    metavar="METRIC>=X",
    help="With --publish: put the version in service only if its evaluation meets this [the agent's default].",
)
@click.option(
    "--store-root",
    "train_store_root",
    type=StoreRoot(),
    help="ModelStore root for --publish (same as the global option).",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    help="Data-parallel processes, one per GPU, started through accelerate [1].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON at the end.")
@click.pass_context
def train(
    ctx: click.Context,
    agent_arg: str | None,
    agent_opt: str | None,
    config_file: Path | None,
    as_json: bool,
    train_store_root: Path | str | None,
    require: tuple[str, ...],
    **flags: Any,
) -> None:
    """Fine-tune AGENT's LoRA adapter with QLoRA (4-bit NF4 base + LoRA)."""
    with launch.reporting_failures():
        _train(ctx, agent_arg, agent_opt, config_file, as_json, train_store_root, require, flags)


def _train(
    ctx: click.Context,
    agent_arg: str | None,
    agent_opt: str | None,
    config_file: Path | None,
    as_json: bool,
    train_store_root: Path | str | None,
    require: tuple[str, ...],
    flags: dict[str, Any],
) -> None:
    from jnreg.core.host.plugins import get_host
    from jnreg.core.training.config import build_config, read_config_file

    file_values = read_config_file(config_file) if config_file else {}
    if agent_arg and agent_opt and agent_arg != agent_opt:
        raise ConfigError(f"two agents given: {agent_arg!r} and --agent {agent_opt!r}")
    agent_name = agent_arg or agent_opt or file_values.get("agent")
    if not agent_name:
        raise ConfigError("which agent? give AGENT, --agent, or an agent in --config")
    agent = get_host().get(agent_name)
    flags = {k: (v or None) if isinstance(v, tuple) else v for k, v in flags.items()}
    flags["store_root"] = str(train_store_root) if train_store_root else None
    config = launch.in_this_world(build_config(agent.spec, file_values, flags))
    if require and not config.publish:
        raise ConfigError("--require gates publishing: add --publish")
    requirements = _requirements(config, require)  # a malformed one fails before training
    echo = launch.main_only(progress_echo(as_json))
    if not launch.is_managed():  # the launching process printed it already
        _print_config(config, echo)

    if config.processes > 1 and not config.dry_run and not launch.is_distributed():
        actions = _actions(config, as_json, require)
        launch.run(config, actions=actions, root_options=_root_options(ctx), echo=echo)
        return
    if config.dry_run and not launch.is_main():
        return
    if config.dry_run:
        from jnreg.core.training.dryrun import dry_run

        summary = dry_run(config, agent, echo=echo)
    else:
        from jnreg.core.training import engine

        store = _store_for(ctx, config) if config.publish and launch.is_main() else None
        summary = engine.train(config, agent, echo=echo)
        launch.finish()
        if store is not None:
            summary = _publish(store, config, echo, requirements) | {"training": summary}
    if as_json and launch.is_main():
        echo_json(summary)


def _actions(config: Any, as_json: bool, require: tuple[str, ...]) -> list[str]:
    """The flags that say what to do with a run, which its saved config leaves out."""
    actions = ["--resume"] if config.resume else []
    if config.publish:
        actions.append("--publish")
    if config.adapter_version:
        actions += ["--adapter-version", config.adapter_version]
    if config.store_root:
        actions += ["--store-root", config.store_root]
    for requirement in require:
        actions += ["--require", requirement]
    return actions + (["--json"] if as_json else [])


def _root_options(ctx: click.Context) -> list[str]:
    shared = ctx.find_root().obj
    options = ["--store-root", str(shared.store_root)] if shared.store_root else []
    return options + (["--agent-map", str(shared.agent_map)] if shared.agent_map else [])


def _print_config(config: Any, echo: Any) -> None:
    import textwrap

    from jnreg.core.training.config import CONFIG_FILE

    document = config.to_document()
    settings_text = ", ".join(
        f"{key}={','.join(value) if isinstance(value, list) else value}"
        for key, value in sorted(document.items())
        if value not in (None, [], ()) and key != "schema_version"
    )
    echo(f"training {config.agent} adapter {config.adapter_name!r} on {config.base_model}")
    echo(f"effective config (saved as {Path(config.output_dir) / CONFIG_FILE}):")
    echo(textwrap.fill(settings_text, width=100, initial_indent="  ", subsequent_indent="  "))
    if config.builtin_settings:
        chosen = ", ".join(f"{key}={getattr(config, key)}" for key in config.builtin_settings)
        echo(
            f"note: {config.base_model} is the built-in demo model, so it trains with settings made for it, "
            f"not the 7B defaults: {chosen} (set any of them to change it)"
        )
    echo(f"global batch: {launch.describe_global_batch(config)}")


def _store_for(ctx: click.Context, config: Any) -> Any:
    """The store to publish into, checked before training so a run that cannot be published fails now."""
    store = open_store(ctx, config.store_root)
    store.check_can_publish(config.agent, adapter_name=config.adapter_name, version=config.adapter_version)
    return store


def _requirements(config: Any, require: tuple[str, ...]) -> list[Any]:
    if not config.publish:
        return []
    from jnreg.cli.gate import requirements_for

    return requirements_for(config.agent, require)


def _publish(store: Any, config: Any, echo: Any, requirements: list[Any]) -> dict[str, Any]:
    from jnreg.cli.gate import gated_publish

    result = gated_publish(
        store,
        config.agent,
        Path(config.output_dir),
        requirements,
        echo,
        adapter_name=config.adapter_name,
        version=config.adapter_version,
    )
    echo(f"published {config.agent} {result.version} ({result.digest[:12]}) to {result.path}")
    echo(f"page: {store.report_location(config.agent, result.version)}")
    return {
        "published": {
            "agent": config.agent,
            "version": result.version,
            "path": str(result.path),
            "digest": result.digest,
        }
    }
