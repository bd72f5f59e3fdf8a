from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from jnreg import __version__
from jnreg.cli import cli
from jnreg.testing import BUILTIN_PLUGINS
from tests.helpers import TINY, heavy_imports_after, run_jnreg


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_and_version(runner):
    done = runner.invoke(cli, ["--help"])
    assert done.exit_code == 0
    for command in ("agents", "train", "store", "generate"):
        assert command in done.output
    assert "--store-root" in done.output and "--agent-map" in done.output
    done = runner.invoke(cli, ["--version"])
    assert done.exit_code == 0 and __version__ in done.output


def test_agents_list_text_and_json(runner, builtin_agents):
    done = runner.invoke(cli, ["agents", "list"])
    assert done.exit_code == 0
    for name in BUILTIN_PLUGINS:
        assert name in done.output
    done = runner.invoke(cli, ["agents", "list", "--json"])
    listed = json.loads(done.output)["agents"]
    assert [a["name"] for a in listed] == sorted(BUILTIN_PLUGINS)
    assert all(a["description"] and a["plugin"] for a in listed)


def test_agents_show_json_has_defaults_template_samples_origin(runner, builtin_agents):
    done = runner.invoke(cli, ["agents", "show", "synthesizer", "--json"])
    assert done.exit_code == 0, done.output
    info = json.loads(done.output)
    assert info["name"] == "synthesizer"
    assert info["plugin"] == "synthesizer"
    assert info["defaults"]["base_model"] == "mistralai/Mistral-7B-Instruct-v0.3"
    assert info["defaults"]["learning_rate"] > 0
    assert "summary" in info["template"]["system"]
    assert info["sample_rows"] >= 24
    assert info["serving"] == {"max_new_tokens": 512, "temperature": 0.3}
    assert info["response_schema"]["required"]


def test_agents_show_text(runner, builtin_agents):
    done = runner.invoke(cli, ["agents", "show", "fact_checker"])
    assert done.exit_code == 0
    assert "fact_checker" in done.output and "sample rows" in done.output and "learning_rate" in done.output


def test_unknown_agent_is_one_line_and_non_zero(runner, builtin_agents):
    done = runner.invoke(cli, ["agents", "show", "weather_bot"])
    assert done.exit_code == 1
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and "weather_bot" in lines[0] and "synthesizer" in lines[0]


def test_real_console_script_help_version_and_errors():
    done = run_jnreg("--version")
    assert done.returncode == 0 and __version__ in done.stdout
    done = run_jnreg("agents", "show", "analyst")
    assert done.returncode == 0 and "analyst" in done.stdout
    done = run_jnreg("agents", "show", "nope")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "unknown agent 'nope'" in done.stderr


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["agents", "list"], ["agents", "show", "synthesizer", "--json"], ["train", "--help"]],
    ids=["help", "agents-list", "agents-show", "train-help"],
)
def test_cli_paths_import_no_heavy_library(argv):
    assert heavy_imports_after(argv) == []


def test_guide_script_is_a_shim_over_train(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "train_qlora.py"
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "--model_name_or_path" in done.stdout and "--gradient-accumulation" in done.stdout


def test_an_internal_failure_is_one_line_naming_the_file_with_its_traceback(tmp_path):
    """A real failure inside training (the Trainer cannot make its checkpoint directory), not a user error."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint-1").write_text("a file where the first checkpoint goes")
    logs = tmp_path / "tmp"
    logs.mkdir()
    done = run_jnreg(
        "train", "fact_checker", "--model_name_or_path", TINY, "--output-dir", str(out), "--max-train-samples", "4",
        "--eval-fraction", "0", "--max-steps", "1", "--save-steps", "1", env={"TMPDIR": str(logs)},
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: internal error: FileExistsError:"), done.stderr[-2000:]
    [log] = logs.glob("jnreg-crash-*.log")
    assert str(log) in errors[0]
    text = log.read_text()
    assert text.startswith("Traceback") and "FileExistsError" in text and "_save_checkpoint" in text
