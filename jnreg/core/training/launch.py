"""Data-parallel training: which process this is, and starting N of them through accelerate's launcher.

``jnreg train --processes N`` validates the settings once, writes them to a file, and starts N
copies of ``jnreg train --config FILE`` through ``accelerate launch --multi_gpu`` (torchrun's
elastic agent underneath: NCCL between GPUs, gloo on a host without CUDA). Each copy holds one
4-bit replica; the transformers Trainer shards every batch across them. A copy that fails
writes its one-line error (and, for a failure that is not the user's, its traceback to a file
the line names) to the launch directory before it exits, the elastic agent stops the others,
and this process turns what was written into one error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.errors import ConfigError, JnregError, LaunchError, first_line, internal_error

if TYPE_CHECKING:
    from jnreg.core.training.config import TrainConfig

# Set for the processes `jnreg train --processes N` starts: where they leave their errors.
LAUNCH_DIR_ENV = "JNREG_LAUNCH_DIR"
CONFIG_NAME = "config.json"
Echo = Callable[[str], None]


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world_size() -> int:
    """How many training processes run together (1 outside a launcher)."""
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    return _env_int("RANK", 0)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """The one process that prints, writes the output directory and publishes."""
    return rank() == 0


def is_managed() -> bool:
    """Started by ``jnreg train --processes N`` (not by ``accelerate launch`` directly)."""
    return is_distributed() and bool(os.environ.get(LAUNCH_DIR_ENV))


def main_only(echo: Echo) -> Echo:
    return echo if is_main() else _silent


def _silent(_line: str) -> None:
    pass


def in_this_world(config: TrainConfig) -> TrainConfig:
    """The config with ``processes`` equal to the processes actually running; a contradiction is an error."""
    size = world_size()
    if not is_distributed() or config.processes == size:
        return config
    if config.processes != 1:
        raise ConfigError(f"launched as {size} processes, but processes is {config.processes}")
    return replace(config, processes=size)


def bind_device() -> None:
    """Give each process the GPU at its local rank, before anything touches CUDA."""
    if not is_distributed():
        return
    import torch

    if torch.cuda.is_available():
        if local_rank() >= torch.cuda.device_count():
            raise ConfigError(
                f"process {rank()} wants GPU {local_rank()}, but only {torch.cuda.device_count()} are visible"
            )
        torch.cuda.set_device(local_rank())


def device_map() -> dict[str, Any] | None:
    """Where this process loads its replica: its own GPU (None: the single-process default)."""
    if not is_distributed():
        return None
    import torch

    return {"": local_rank()} if torch.cuda.is_available() else {"": "cpu"}


def max_over_processes(value: int) -> int:
    """The largest of ``value`` across the processes (a collective: every process must call it)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def finish() -> None:
    """Leave the process group, so a process exits without the library's teardown warnings."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def reporting_failures() -> Iterator[None]:
    """In a process ``jnreg train --processes`` started, leave any error for it to report once.

    The error is written and the process exits 1 without printing: the launching process prints
    it once. A failure that is not the user's also writes its traceback to a file the message names.
    """
    directory = os.environ.get(LAUNCH_DIR_ENV)
    if not directory or not is_distributed():
        yield
        return
    try:
        yield
    except JnregError as exc:
        _write_error(Path(directory), "error", first_line(exc))
        raise SystemExit(1) from None
    except Exception as exc:
        _write_error(Path(directory), "crash", internal_error(exc).removeprefix("internal error: "))
        raise SystemExit(1) from None


def _write_error(directory: Path, kind: str, message: str) -> None:
    path = directory / f"rank{rank()}.{kind}"
    with contextlib.suppress(OSError):
        path.write_text(message + "\n", encoding="utf-8")


def launcher_args(processes: int, train_args: list[str], *, threads: int) -> list[str]:
    """``accelerate launch`` arguments that start ``processes`` copies of ``jnreg <train_args>``."""
    return [
        "--multi_gpu",  # accelerate's torchrun path; on a host without CUDA the processes use gloo
        "--num_processes", str(processes),
        "--num_machines", "1",
        "--mixed_precision", "no",  # the Trainer sets bf16/fp16 itself, as in one process
        "--dynamo_backend", "no",
        "--main_process_port", "0",  # a free port, so two runs on one host never collide
        "--num_cpu_threads_per_process", str(threads),
        "--module", "jnreg", *train_args,
    ]  # fmt: skip


def worker_args(config_file: Path, *, actions: list[str], root_options: list[str]) -> list[str]:
    return [*root_options, "train", "--config", str(config_file), *actions]


def check_devices(processes: int) -> str:
    """Where ``processes`` replicas will run; an error when there are fewer GPUs than processes."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if processes > count:
            raise ConfigError(f"--processes {processes} needs {processes} GPUs; {count} visible")
        return "one GPU each, NCCL"
    return "on the CPU, gloo"


def describe_global_batch(config: TrainConfig) -> str:
    def count(n: int, what: str) -> str:
        return f"{n} {what}{'' if n == 1 else 'es' if what.endswith('s') else 's'}"

    return (
        f"{count(config.global_batch_size, 'row')} per optimizer step = {count(config.processes, 'process')} × "
        f"{count(config.train_batch_size, 'row')} × {count(config.gradient_accumulation, 'accumulation step')}"
    )


def run(config: TrainConfig, *, actions: list[str], root_options: list[str], echo: Echo) -> None:
    """Train with ``config.processes`` processes; return when all finished, raise LaunchError if one failed."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    where = check_devices(config.processes)
    threads = max(1, (os.cpu_count() or 1) // config.processes)
    with tempfile.TemporaryDirectory(prefix="jnreg-launch-") as tmp:
        directory = Path(tmp)
        config_file = directory / CONFIG_NAME
        config_file.write_text(json.dumps(config.to_document(), indent=2, sort_keys=True), encoding="utf-8")
        train_args = worker_args(config_file, actions=actions, root_options=root_options)
        args = launch_command_parser().parse_args(launcher_args(config.processes, train_args, threads=threads))
        echo(f"starting {config.processes} training processes ({where}) through accelerate")
        previous = os.environ.get(LAUNCH_DIR_ENV)
        os.environ[LAUNCH_DIR_ENV] = tmp
        try:
            with _quiet_launcher():
                launch_command(args)
        except Exception as exc:
            if type(exc).__name__ == "SignalException":  # the agent stopped the processes on Ctrl-C or SIGTERM
                raise KeyboardInterrupt from None
            raise LaunchError(_failure_message(directory, exc, config.processes)) from None
        finally:
            if previous is None:
                os.environ.pop(LAUNCH_DIR_ENV, None)
            else:
                os.environ[LAUNCH_DIR_ENV] = previous


@contextlib.contextmanager
def _quiet_launcher() -> Iterator[None]:
    """The elastic agent logs every worker it stops; the one error that matters is reported instead."""
    names = ("torch.distributed.elastic", "torch.distributed.run", "accelerate")
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _failure_message(directory: Path, exc: Exception, processes: int) -> str:
    """One line for a failed launch: the user error a process wrote, else which process died and how."""
    written = sorted(directory.glob("rank*.*"), key=lambda p: (p.stat().st_mtime, p.name))
    errors = [p for p in written if p.suffix == ".error"]
    if errors:
        return errors[0].read_text(encoding="utf-8").strip()
    if written:
        which = written[0].stem.removeprefix("rank")
        return f"training process {which} of {processes} failed: {written[0].read_text(encoding='utf-8').strip()}"
    failures = getattr(exc, "failures", None)
    if failures:
        first = min(failures, key=lambda r: failures[r].timestamp)
        failure = failures[first]
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        return f"training process {first} of {processes} stopped with {how}; see its output above"
    return f"cannot start {processes} training processes: {first_line(exc)}"
