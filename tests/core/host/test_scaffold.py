from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from tests.helpers import run_jnreg


def test_new_plugin_installs_with_pip_shows_up_and_passes_its_own_test(tmp_path):
    name = f"team_{uuid.uuid4().hex[:8]}"
    target = tmp_path / "plugin"
    done = CliRunner().invoke(cli, ["agents", "new", name, "--dir", str(target), "--description", "Desk notes."])
    assert done.exit_code == 0, done.output
    assert (target / "pyproject.toml").is_file() and (target / "tests" / "test_plugin.py").is_file()

    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(target)]
    installed = subprocess.run(pip, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    dist = f"jnreg-{name.replace('_', '-')}"
    try:
        listed = run_jnreg("agents", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        agents = {a["name"]: a for a in json.loads(listed.stdout)["agents"]}
        assert agents[name]["package"] == dist
        assert agents[name]["description"] == "Desk notes."
        assert "synthesizer" in agents

        own = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(target / "tests")],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert own.returncode == 0, own.stdout + own.stderr
        assert "2 passed" in own.stdout
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "--quiet", dist], capture_output=True)


@pytest.mark.parametrize("bad", ["Bad-Name", "../escape", "1abc"])
def test_new_refuses_bad_names(tmp_path, bad):
    done = CliRunner().invoke(cli, ["agents", "new", bad, "--dir", str(tmp_path / "x")])
    assert done.exit_code == 1 and "must match" in done.output
    assert not (tmp_path / "x").exists()


def test_new_refuses_the_name_of_an_existing_agent(tmp_path, builtin_agents):
    done = CliRunner().invoke(cli, ["agents", "new", "synthesizer", "--dir", str(tmp_path / "x")])
    assert done.exit_code == 1 and "already exists" in done.output
    assert not (tmp_path / "x").exists()


def test_new_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    done = CliRunner().invoke(cli, ["agents", "new", "desk", "--dir", str(tmp_path)])
    assert done.exit_code == 1 and "not an empty directory" in done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
