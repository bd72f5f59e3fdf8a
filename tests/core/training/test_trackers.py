"""--report-to: several trackers at once through the Trainer's integrations, and a missing one refused up front."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from jnreg.core.training.config import build_config
from tests.helpers import TINY, run_jnreg

AGENT = "fact_checker"


def wandb_records(path: Path) -> list[object]:
    """The records of an offline run's .wandb file: a 7-byte header, then LevelDB-log records in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, position, pending = [], 7, b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One short training run reporting to mlflow (a file tracking URI) and wandb (offline) at once."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    work = tmp_path_factory.mktemp("trackers")
    env = {
        "MLFLOW_TRACKING_URI": (work / "mlruns").as_uri(),
        "MLFLOW_ALLOW_FILE_STORE": "true",  # mlflow 3 keeps file stores in maintenance mode behind this switch
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(work),
        "WANDB_SILENT": "true",
    }
    done = run_jnreg(
        "train", AGENT, "--model_name_or_path", TINY, "--max-train-samples", "8", "--epochs", "1",
        "--logging-steps", "1", "--output-dir", str(work / "out"), "--report-to", "mlflow", "wandb",
        env=env, cwd=work, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((work / "out" / "training_log.json").read_text())
    return work, [entry for entry in log["steps"] if "loss" in entry]


def test_mlflow_gets_the_config_as_params_and_the_metrics_per_step(tracked):
    work, steps = tracked
    (run,) = [p for p in (work / "mlruns").glob("*/*") if (p / "params").is_dir()]
    params = {p.name: p.read_text() for p in (run / "params").iterdir()}
    config = json.loads((work / "out" / "jnreg_config.json").read_text())
    assert params["jnreg.agent"] == AGENT and params["jnreg.adapter_r"] == str(config["adapter_r"])
    assert params["jnreg.target_modules"] == ",".join(config["target_modules"])
    assert float(params["learning_rate"]) == config["learning_rate"]  # the Trainer's own arguments too
    logged = [line.split() for line in (run / "metrics" / "loss").read_text().splitlines()]
    assert [int(step) for _, _, step in logged] == [e["step"] for e in steps]
    assert [float(value) for _, value, _ in logged] == pytest.approx([e["loss"] for e in steps])


def test_wandb_offline_run_holds_the_config_and_the_metrics_per_step(tracked):
    work, steps = tracked
    (run_file,) = (work / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    config = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert config["jnreg.agent"] == AGENT and config["jnreg.adapter_r"] == 16
    history = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            if "train/loss" in items:
                history.append((items["train/global_step"], items["train/loss"]))
    assert [step for step, _ in history] == [e["step"] for e in steps]
    assert [loss for _, loss in history] == pytest.approx([e["loss"] for e in steps])


def test_a_tracker_that_is_not_installed_is_one_line_before_training(tmp_path):
    if importlib.util.find_spec("trackio") is not None:
        pytest.skip("trackio is installed here")
    done = run_jnreg(
        "train", AGENT, "--model_name_or_path", TINY, "--output-dir", str(tmp_path / "out"), "--report-to", "trackio"
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: --report-to trackio: trackio is not installed; pip install 'jnreg[trackio]'"
    )
    assert "Traceback" not in done.stderr and "eval loss" not in done.stdout and not (tmp_path / "out").exists()
    dry = run_jnreg(
        "train", AGENT, "--dry-run", "--output-dir", str(tmp_path / "out"), "--report-to", "wandb", "trackio"
    )
    assert dry.returncode != 0 and "pip install 'jnreg[trackio]'" in dry.stderr


def test_report_to_takes_several_trackers_and_none_means_none(builtin_agents, tmp_path):
    spec = builtin_agents.get(AGENT).spec

    def trackers(value):
        return build_config(spec, {}, {"output_dir": str(tmp_path), "report_to": value}).trackers

    assert trackers(("mlflow", "wandb", "mlflow")) == ("mlflow", "wandb")
    assert trackers(("none",)) == () and trackers("tensorboard") == ("tensorboard",)
    assert trackers(("none", "wandb")) == ("wandb",)
    with pytest.raises(Exception, match="report_to"):
        trackers(("comet",))
