"""Data-parallel training: several real processes through accelerate's launcher, gloo on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from jnreg.core.training import engine, launch
from jnreg.errors import ConfigError
from jnreg.schemas import errors as schema_errors
from tests.helpers import TINY, config_for, quiet, run_jnreg

# 8 rows: 2 optimizer steps of 4 rows, both learning (no warm-up step at a zero learning rate).
# Dropout is off: its masks depend on how rows fall into batches, which is what the two runs change.
SMALL = {"max_train_samples": 8, "eval_fraction": 0, "epochs": 1.0, "warmup_ratio": 0, "adapter_dropout": 0}


def _launch_env() -> dict[str, str]:
    """The console script's environment: the built-in agents load through their entry points."""
    return {k: v for k, v in os.environ.items() if k != "JNREG_DISABLE_PLUGIN_AUTOLOAD"}


def _signing_key(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    encoding, form = serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL
    path.write_bytes(key.private_bytes(encoding, form, serialization.NoEncryption()))
    return path


def _error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error:")]


def test_two_processes_train_and_report_what_one_does_with_evaluation_on(builtin_agents, tmp_path):
    """The same global batch over 1 and 2 processes, on 5 rows that do not fill the last batch of 4 (the first
    process gets one row of it, the second none), evaluating 3 rows that do not split evenly over 2."""
    from safetensors.torch import load_file

    agent = builtin_agents.get("fact_checker")
    rows = (Path(__file__).parents[3] / "jnreg" / "plugins" / "data" / "fact_checker.jsonl").read_text().splitlines()
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("\n".join(rows[-3:]) + "\n")
    lines: list[str] = []
    uneven = {**SMALL, "max_train_samples": 5}
    one = config_for(
        agent, tmp_path / "one", train_batch_size=4, gradient_accumulation=1, eval_files=(str(held_out),), **uneven
    )
    alone = engine.train(one, agent, echo=lines.append)

    two = replace(one, processes=2, train_batch_size=2, output_dir=str(tmp_path / "two"))
    assert two.global_batch_size == one.global_batch_size == 4
    config_file = tmp_path / "two.json"
    config_file.write_text(json.dumps(two.to_document()))
    store = tmp_path / "store"
    key = _signing_key(tmp_path / "signing.pem")
    done = run_jnreg(
        "--store-root", str(store), "train", "--config", str(config_file), "--publish", "--json",
        "--sign-key", str(key),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # one document: only the main process printed
    together = result["training"]
    assert schema_errors("training_summary", together) == []
    assert (together["processes"], together["global_batch_size"]) == (2, 4)
    assert done.stderr.count("trained 2 steps") == 1 and done.stderr.count("step 2/2") == 2  # a loss, an eval

    # Split, not repeated: as many optimizer steps, and every row's tokens counted once per epoch
    # over both processes. Each process going through all rows would double both; filling the last
    # batch with rows from the start (accelerate's way) would count 3 rows twice.
    dataset = alone["dataset"]
    assert together["metrics"]["steps"] == alone["metrics"]["steps"] == 2
    epoch_tokens = dataset["prompt_tokens"] + dataset["response_tokens"]
    assert together["metrics"]["input_tokens"] == alone["metrics"]["input_tokens"] == epoch_tokens
    # The per-step log counts the same tokens, over both processes: its last running total is the summary's.
    log = json.loads((tmp_path / "two" / "training_log.json").read_text())
    trained = [entry for entry in log["steps"] if "loss" in entry]
    assert trained[-1]["step"] == 2 and trained[-1]["input_tokens"] == together["metrics"]["input_tokens"]

    # The same figures: the eval losses count each held-out row once (not the row the uneven split
    # repeats), and the train loss is the run's, not what one process had left since its last log.
    # Measured before that fix, on 8 rows: train loss 8.2625 against 8.2564, eval loss 8.5792 against 8.5328.
    for name in ("train_loss", "eval_loss_before", "eval_loss"):
        assert together["metrics"][name] == pytest.approx(alone["metrics"][name], abs=1e-3), name
    assert _losses(done.stderr.splitlines()) == pytest.approx(_losses(lines), abs=1e-3)

    # The same adapter. Compared as updates (trained minus the seeded initial weights), since LoRA A
    # starts random and B at zero. Measured: the updates differ by at most 7.3e-5 of their size
    # (float summation order: batches of 2 padded apart, gradients averaged over gloo, and Adam's
    # first steps, which amplify rounding in near-zero gradients), while training each half-batch
    # twice instead of splitting it makes them differ by 1.0 of their size, and an evaluation that
    # kept the model out of DDP (each process training its own replica) by 0.84. 1e-2 sits between.
    initial = _initial_lora(agent, one, tmp_path / "init")
    single = load_file(tmp_path / "one" / "adapter_model.safetensors")
    double = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert single.keys() == double.keys() == initial.keys()
    for key in single:
        update = single[key] - initial[key]
        difference = ((double[key] - initial[key]) - update).norm() / update.norm()
        assert update.norm() > 0 and difference < 1e-2, (key, float(difference))

    # Published once, by the main process, from the output directory it alone wrote.
    assert [v["version"] for v in _store(store).versions("fact_checker")] == [result["published"]["version"]]
    assert _store(store).signer("fact_checker", result["published"]["version"]) == result["published"]["signer"]
    assert not list((tmp_path / "two").glob(".jnreg-write-test*"))


def _losses(lines: list[str]) -> list[float]:
    """Every loss the progress lines and the closing line print, in order."""
    import re

    text = "\n".join(line for line in lines if line.startswith(("step ", "eval loss", "trained ")))
    return [float(x) for x in re.findall(r"(?:loss|eval_loss|->) (\d+\.\d+)", text)]


def _initial_lora(agent, config, output_dir: Path) -> dict:
    """The LoRA weights a run starts from, keyed as the saved adapter keys them."""
    from peft import get_peft_model_state_dict

    ready = engine.setup(replace(config, output_dir=str(output_dir)), agent, echo=quiet)
    return {key: value.clone() for key, value in get_peft_model_state_dict(ready.trainer.model).items()}


def _store(root: Path):
    from jnreg.registry.store import ModelStore

    return ModelStore(root)


def test_a_bad_row_stops_every_process_with_one_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a good row"}\n{"text": oops}\n')
    out = tmp_path / "out"
    done = run_jnreg(
        "train", "synthesizer", "--model_name_or_path", TINY, "--train-files", str(bad),
        "--output-dir", str(out), "--processes", "2", timeout=240,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    errors = _error_lines(done)
    assert len(errors) == 1 and errors[0].startswith(f"Error: {bad}:2: invalid JSON"), errors
    assert not (out / "adapter_model.safetensors").exists()


def test_a_failure_in_the_main_process_alone_stops_the_others(tmp_path):
    """Only the main process checks the store; the other one is loading its replica when it fails."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "AGENT_MODEL_MAP.json").write_text("{ not json")
    out = tmp_path / "out"
    done = run_jnreg(
        "--store-root", str(store), "train", "fact_checker", "--model_name_or_path", TINY,
        "--output-dir", str(out), "--max-steps", "1", "--processes", "2", "--publish", timeout=240,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    errors = _error_lines(done)
    assert len(errors) == 1 and "AGENT_MODEL_MAP.json" in errors[0]
    assert not (out / "adapter_model.safetensors").exists()


def test_accelerate_launch_runs_jnreg_as_a_module(tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        *launch.launcher_args(2, ["train", "fact_checker", "--model_name_or_path", TINY, "--output-dir", str(out),
                                  "--max-train-samples", "8", "--train-batch-size", "1",
                                  "--gradient-accumulation", "8", "--dry-run", "--json"], threads=1),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=_launch_env(), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # one document: the other process printed nothing
    assert (summary["processes"], summary["global_batch_size"]) == (2, 16)
    assert done.stderr.count("global batch: 16 rows per optimizer step = 2 processes × 1 row × 8") == 2
    saved = json.loads((out / "jnreg_config.json").read_text())
    assert saved["processes"] == 2 and schema_errors("train_config", saved) == []


def test_dry_run_states_the_processes_and_the_global_batch(builtin_agents, tmp_path):
    done = CliRunner().invoke(
        cli,
        ["train", "fact_checker", "--model_name_or_path", TINY, "--output-dir", str(tmp_path / "o"),
         "--max-train-samples", "4", "--processes", "3", "--train-batch-size", "2", "--gradient-accumulation", "8",
         "--dry-run"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "processes=3" in done.output
    assert "global batch: 48 rows per optimizer step = 3 processes × 2 rows × 8 accumulation steps" in done.output
    assert "3 data-parallel processes (on the CPU, gloo)" in done.output
    assert "GPU memory estimate per GPU" in done.output
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    assert (summary["processes"], summary["global_batch_size"]) == (3, 48)


def test_processes_must_agree_with_the_launcher(builtin_agents, tmp_path, monkeypatch):
    agent = builtin_agents.get("fact_checker")
    config = config_for(agent, tmp_path / "o")
    assert launch.in_this_world(config).processes == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launch.in_this_world(config).processes == 4
    with pytest.raises(ConfigError, match="launched as 4 processes, but processes is 2"):
        launch.in_this_world(replace(config, processes=2))
    done = CliRunner().invoke(cli, ["train", "fact_checker", "--processes", "0", "--dry-run"])
    assert done.exit_code == 2 and "--processes" in done.output


def test_the_launch_reports_a_user_error_before_a_crash(tmp_path):
    (tmp_path / "rank1.crash").write_text("RuntimeError: gloo connection closed\n")
    os.utime(tmp_path / "rank1.crash", (1, 1))
    (tmp_path / "rank0.error").write_text("no data file matches 'x.jsonl'\n")
    assert launch._failure_message(tmp_path, RuntimeError("x"), 2) == "no data file matches 'x.jsonl'"
    (tmp_path / "rank0.error").unlink()
    message = launch._failure_message(tmp_path, RuntimeError("x"), 2)
    assert message == "training process 1 of 2 failed: RuntimeError: gloo connection closed"


def test_a_process_that_crashes_leaves_one_line_and_its_traceback_for_the_launch(tmp_path, monkeypatch):
    logs = tmp_path / "tmp"
    logs.mkdir()
    monkeypatch.setenv("TMPDIR", str(logs))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", launch.LAUNCH_DIR_ENV: str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped, launch.reporting_failures():
        {}["missing"]  # noqa: B018 - a failure inside jnreg, not a user error
    assert stopped.value.code == 1
    [log] = logs.glob("jnreg-crash-*.log")
    assert "Traceback" in log.read_text() and "KeyError" in log.read_text()
    message = launch._failure_message(tmp_path, RuntimeError("x"), 2)
    assert message.startswith("training process 1 of 2 failed: KeyError: 'missing' (the traceback is in ")
    assert str(log) in message and "\n" not in message
