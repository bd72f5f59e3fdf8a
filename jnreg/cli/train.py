"""``jnreg train``: the guide's options, merged over the agent's defaults, then a dry run or training."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jnreg.cli.base import MultiValueCommand, echo_json, open_store, progress_echo
from jnreg.cli.train_options import config_options, config_values
from jnreg.core.training import launch
from jnreg.errors import ConfigError, GateError

if TYPE_CHECKING:
    from collections.abc import Callable

    from jnreg.core.evaluation.gate import Requirement
    from jnreg.core.host.plugins import Agent
    from jnreg.core.training.config import TrainConfig
    from jnreg.registry.store import ModelStore


@click.command(cls=MultiValueCommand)
@click.argument("agent_arg", metavar="[AGENT]", required=False)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="TOML or JSON file of settings; flags override it.",
)
@config_options
@click.option(
    "--require",
    multiple=True,
    metavar="METRIC>=X",
    help="With --publish: put the version in service only if its evaluation meets this [the agent's default].",
)
@click.option(
    "--sign-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --publish: PEM EC private key to sign the version with [env JNREG_SIGNING_KEY].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON at the end.")
@click.pass_context
def train(
    ctx: click.Context,
    agent_arg: str | None,
    agent_opt: str | None,
    config_file: Path | None,
    as_json: bool,
    require: tuple[str, ...],
    sign_key: Path | None,
    **flags: Any,
) -> None:
    """Fine-tune AGENT's LoRA adapter with QLoRA (4-bit NF4 base + LoRA).

    Every setting is a flag; hyperparameters default to the agent plugin's, and the built-in demo
    model brings its own where none is given.
    """
    with launch.reporting_failures():
        _train(ctx, agent_arg, agent_opt, config_file, as_json, require, config_values(flags), sign_key)


def _train(
    ctx: click.Context,
    agent_arg: str | None,
    agent_opt: str | None,
    config_file: Path | None,
    as_json: bool,
    require: tuple[str, ...],
    flags: dict[str, Any],
    sign_key: Path | None = None,
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
    config = launch.in_this_world(build_config(agent.spec, file_values, flags))
    if require and not config.publish:
        raise ConfigError("--require gates publishing: add --publish")
    if config.adapter_version and not config.publish:
        raise ConfigError("--adapter-version labels the published version: add --publish")
    if sign_key and not config.publish:
        raise ConfigError("--sign-key signs what is published: add --publish")
    requirements = _requirements(config, require)  # a malformed one fails before training
    echo = launch.main_only(progress_echo(as_json))
    if launch.is_managed():  # the launching process printed it, and owns the output directory
        _run(ctx, agent, config, as_json, require, requirements, echo, sign_key)
        return
    if config_file is not None:
        _print_file_settings(config_file, file_values, build_config(agent.spec, {}, flags), config, echo)
    _print_config(config, echo)
    with _removed_if_left_empty(Path(config.output_dir)):
        _run(ctx, agent, config, as_json, require, requirements, echo, sign_key)


def _run(
    ctx: click.Context,
    agent: Agent,
    config: TrainConfig,
    as_json: bool,
    require: tuple[str, ...],
    requirements: list[Requirement],
    echo: Callable[[str], None],
    sign_key: Path | None = None,
) -> None:
    if config.processes > 1 and not config.dry_run and not launch.is_distributed():
        actions = _actions(config, as_json, require) + (["--sign-key", str(sign_key)] if sign_key else [])
        launch.run(config, actions=actions, root_options=_root_options(ctx), echo=echo)
        return
    if config.dry_run and not launch.is_main():
        return
    if config.dry_run:
        from jnreg.core.training.dryrun import dry_run

        summary = dry_run(config, agent, echo=echo)
    else:
        from jnreg.core.training import engine

        store = _store_for(ctx, config, sign_key) if config.publish and launch.is_main() else None
        summary = engine.train(config, agent, echo=echo)
        launch.finish()
        if store is not None:
            summary = _publish(store, config, echo, requirements, sign_key) | {"training": summary}
    if as_json and launch.is_main():
        echo_json(summary)


@contextlib.contextmanager
def _removed_if_left_empty(output_dir: Path) -> Iterator[None]:
    """A run that fails leaves no empty directories it made; what it did leave is named."""
    made = None
    for folder in (output_dir, *output_dir.parents):
        if folder.exists():
            break
        made = folder
    try:
        yield
    except GateError:
        raise  # trained and published, only kept out of service: the adapter is the run's result
    except BaseException:
        if made is not None:
            for folder in (output_dir, *output_dir.parents):
                try:
                    folder.rmdir()  # only an empty one goes
                except OSError:
                    break
                if folder == made:
                    break
            if output_dir.is_dir():
                left = sorted(p.name for p in output_dir.iterdir())
                shown = ", ".join(left[:5]) + (f", … {len(left) - 5} more" if len(left) > 5 else "")
                click.echo(f"note: the failed run left {output_dir}: {shown}", err=True)
        raise


def _print_file_settings(
    config_file: Path, file_values: dict[str, Any], without_file: Any, config: Any, echo: Any
) -> None:
    """Say which settings the config file chose, above all when it was written for another agent."""
    document, default = config.to_document(), without_file.to_document()
    chosen = [key for key in file_values if key in document and document[key] != default[key]]
    if not chosen:
        return
    shown = ", ".join(f"{key}={_shown(document[key])}" for key in chosen)
    written_for = file_values.get("agent")
    if written_for and written_for != config.agent:
        echo(f"note: {config_file} was written for agent {written_for}; training {config.agent} with its {shown}")
    else:
        echo(f"from {config_file}: {shown}")


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _actions(config: TrainConfig, as_json: bool, require: tuple[str, ...]) -> list[str]:
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


def _print_config(config: TrainConfig, echo: Callable[[str], None]) -> None:
    import textwrap

    from jnreg.core.training.config import CONFIG_FILE

    document = config.to_document()
    settings_text = ", ".join(
        f"{key}={_shown(value)}"
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


def _store_for(ctx: click.Context, config: TrainConfig, sign_key: Path | None = None) -> ModelStore:
    """The store to publish into, checked before training so a run that cannot be published fails now."""
    from jnreg.registry.signing import load_signer

    load_signer(sign_key)  # a signing key that cannot be used fails before hours of training, not after
    store = open_store(ctx, config.store_root)
    store.check_can_publish(config.agent, adapter_name=config.adapter_name, version=config.adapter_version)
    return store


def _requirements(config: TrainConfig, require: tuple[str, ...]) -> list[Requirement]:
    if not config.publish:
        return []
    from jnreg.release import requirements_for

    return requirements_for(config.agent, require)


def _publish(
    store: ModelStore,
    config: TrainConfig,
    echo: Callable[[str], None],
    requirements: list[Requirement],
    sign_key: Path | None = None,
) -> dict[str, Any]:

    from jnreg import release
    from jnreg.cli.report import release_hooks

    result = release.publish(
        store,
        config.agent,
        Path(config.output_dir),
        require=requirements,
        **release_hooks(store, config.agent, echo),
        adapter_name=config.adapter_name,
        version=config.adapter_version,
        sign_key=sign_key,
    )
    echo(f"published {config.agent} {result.version} ({result.digest[:12]}) to {result.path}")
    echo(f"page: {store.report_location(config.agent, result.version)}")
    return {
        "published": {
            "agent": config.agent,
            "version": result.version,
            "path": str(result.path),
            "digest": result.digest,
            "signer": result.signer,
        }
    }
