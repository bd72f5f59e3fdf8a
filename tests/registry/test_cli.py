"""``jnreg store`` through click and through the real console script: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from jnreg.registry import ModelStore
from tests.helpers import heavy_imports_after, run_jnreg
from tests.registry_helpers import MISTRAL, make_adapter, snapshot, start, summary_for

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("MODEL_STORE_ROOT", "AGENT_MODEL_MAP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JNREG_LOCK_TIMEOUT", "0.5")
    return tmp_path / "store"


def jnreg(root: Path, *args: str):
    return CliRunner().invoke(cli, ["--store-root", str(root), "store", *args], catch_exceptions=False)


def one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and fragment in lines[-1], result.stderr


def test_store_commands_end_to_end(root: Path, tmp_path: Path) -> None:
    source = make_adapter(tmp_path / "src1", seed=1, summary=summary_for("journalist"))
    done = jnreg(root, "publish", "journalist", str(source), "--adapter-version", "v1", "--json")
    assert done.exit_code == 0, done.output
    published = json.loads(done.stdout)
    assert published["version"] == "v1" and published["promoted"] is True
    done = jnreg(root, "publish", "journalist", str(make_adapter(tmp_path / "src2", seed=2)), "--adapter-version", "v2")
    assert done.exit_code == 0 and "published journalist v2" in done.stdout
    done = jnreg(
        root,
        "publish",
        "journalist",
        str(make_adapter(tmp_path / "src3", seed=3)),
        "--no-promote",
        "--adapter-name",
        "trial",
        "--json",
    )
    trial = json.loads(done.stdout)
    assert trial["promoted"] is False and trial["version"].startswith("v")

    listing = json.loads(jnreg(root, "list", "--json").stdout)
    assert listing["agents"] == [{"agent": "journalist", "current": "v2", "versions": 3, "problem": None}]
    versions = json.loads(jnreg(root, "list", "journalist", "--json").stdout)
    assert [v["version"] for v in versions["versions"]] == ["v1", "v2", trial["version"]]
    assert [v["current"] for v in versions["versions"]] == [False, True, False]
    assert "* v2" in jnreg(root, "list", "journalist").stdout

    shown = json.loads(jnreg(root, "show", "journalist", "v1", "--json").stdout)
    assert shown["manifest"]["training_summary"]["adapter_version"] == "v1"
    assert "digest:" in jnreg(root, "show", "journalist").stdout
    resolved = json.loads(jnreg(root, "resolve", "journalist", "--json").stdout)
    assert resolved["version"] == "v2" and Path(resolved["adapter_path"]).is_absolute()
    assert resolved["adapter_path"] == str(root / "journalist" / "versions" / "v2")
    assert json.loads(jnreg(root, "resolve", "journalist", "--version", "v1", "--json").stdout)["version"] == "v1"

    assert "v2 -> " + trial["version"] in jnreg(root, "promote", "journalist", trial["version"]).stdout
    assert "already in service" in jnreg(root, "promote", "journalist", trial["version"]).stdout
    rolled = json.loads(jnreg(root, "rollback", "journalist", "--json").stdout)
    assert rolled == {"agent": "journalist", "current": "v2", "previous": trial["version"]}

    history = json.loads(jnreg(root, "history", "journalist", "--json").stdout)["entries"]
    assert [e["action"] for e in history] == ["publish", "publish", "publish", "promote", "rollback"]
    assert "rollback" in jnreg(root, "history", "journalist").stdout

    verified = jnreg(root, "verify")
    assert verified.exit_code == 0 and "ok: 3 version(s) intact" in verified.stdout
    assert json.loads(jnreg(root, "verify", "journalist", "v1", "--json").stdout)["ok"] is True

    dry = json.loads(jnreg(root, "gc", "journalist", "--keep", "0", "--dry-run", "--json").stdout)
    # v2 is in service, v1 the rollback target (an undo stack), and the map still names the trial.
    assert dry["removed"] == [] and sorted(dry["kept"]) == sorted(["v1", "v2", trial["version"]])
    for label in ("v4", "v5"):
        source = make_adapter(tmp_path / label, seed=int(label[1]))
        assert jnreg(root, "publish", "journalist", str(source), "--adapter-version", label).exit_code == 0
    assert jnreg(root, "gc", "journalist", "--keep", "0", "--dry-run").stdout.count("would remove") == 2
    done = jnreg(root, "gc", "journalist", "--keep", "0")
    assert "removed journalist v1" in done.stdout and "removed journalist v2" in done.stdout
    left = json.loads(jnreg(root, "list", "journalist", "--json").stdout)["versions"]
    assert sorted(v["version"] for v in left) == sorted([trial["version"], "v4", "v5"])
    assert jnreg(root, "verify").exit_code == 0


def test_default_root_is_announced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_STORE_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(cli, ["store", "list"])
    assert done.exit_code == 0
    assert "./model_store" in done.stderr
    assert not (tmp_path / "model_store").exists()  # reading creates nothing
    source = make_adapter(tmp_path / "src", seed=1)
    assert CliRunner().invoke(cli, ["store", "publish", "critic", str(source)]).exit_code == 0
    assert (tmp_path / "model_store" / "critic" / "current").is_symlink()
    env_root = tmp_path / "from-env"
    done = CliRunner().invoke(cli, ["store", "publish", "critic", str(source)], env={"MODEL_STORE_ROOT": str(env_root)})
    assert done.exit_code == 0 and "./model_store" not in done.stderr
    assert (env_root / "critic" / "current").is_symlink()


def test_user_errors_are_one_line_and_change_nothing(root: Path, tmp_path: Path) -> None:
    good = make_adapter(tmp_path / "good", seed=1)
    assert jnreg(root, "publish", "critic", str(good), "--adapter-version", "v1").exit_code == 0
    cases = [
        (("resolve", "nobody"), "agent 'nobody' has no versions"),
        (("show", "critic", "v9"), "no version 'v9'"),
        (("promote", "critic", "v9"), "no version 'v9'"),
        (("rollback", "critic"), "nothing to roll back to"),
        (("history", "nobody"), "no history"),
        (("verify", "nobody"), "agent 'nobody' has no versions"),
        (("list", "nobody"), "agent 'nobody' has no versions"),
        (("resolve", "../etc"), "invalid agent name"),
        (("publish", "critic", str(good), "--adapter-version", "../x"), "invalid version label"),
        (("publish", "critic", str(good), "--adapter-version", "/abs"), "invalid version label"),
        (("publish", "critic", str(good), "--adapter-version", "a/b"), "invalid version label"),
        (("publish", "critic", str(good), "--adapter-version", ""), "invalid version label"),
        (("publish", "critic", str(good), "--adapter-version", "v1"), "already has a version 'v1'"),
        (("publish", "critic", str(tmp_path / "missing")), "does not exist"),
        (("publish", "critic", str(tmp_path)), "not a valid PEFT adapter"),
        (("show", "critic", ".."), "invalid version label"),
    ]
    for args, fragment in cases:
        before = snapshot(root)
        one_line_error(jnreg(root, *args), fragment)
        assert snapshot(root) == before, args


def test_publish_names_the_base_model_the_adapter_does_not(root: Path, tmp_path: Path) -> None:
    source = make_adapter(tmp_path / "nameless", seed=2)
    config = json.loads((source / "adapter_config.json").read_text())
    del config["base_model_name_or_path"]
    (source / "adapter_config.json").write_text(json.dumps(config))
    before = snapshot(root)
    one_line_error(jnreg(root, "publish", "critic", str(source)), "say which with --base-model")
    one_line_error(jnreg(root, "publish", "critic", str(source), "--base-model", " "), "--base-model is empty")
    assert snapshot(root) == before

    result = jnreg(root, "publish", "critic", str(source), "--base-model", MISTRAL, "--json")
    assert result.exit_code == 0, result.output
    version = json.loads(result.output)["version"]
    shown = json.loads(jnreg(root, "show", "critic", version, "--json").output)
    assert shown["manifest"]["base_model"] == MISTRAL
    document = json.loads((root / "AGENT_MODEL_MAP.json").read_text())
    assert document["base_models"]["mistral-7b-v0.3"]["hf_id"] == MISTRAL

    named = make_adapter(tmp_path / "named", seed=3, base_model="org/other-base")
    before = snapshot(root)
    result = jnreg(root, "publish", "critic", str(named), "--base-model", MISTRAL)
    one_line_error(result, "'org/other-base'")
    assert MISTRAL in result.stderr
    assert snapshot(root) == before
    agreeing = jnreg(root, "publish", "critic", str(named), "--base-model", "org/other-base", "--json")
    assert agreeing.exit_code == 0, agreeing.output


def test_damaged_store_errors(root: Path, tmp_path: Path) -> None:
    for i in (1, 2):
        jnreg(root, "publish", "critic", str(make_adapter(tmp_path / f"s{i}", seed=i)), "--adapter-version", f"v{i}")
    weights = root / "critic" / "versions" / "v1" / "adapter_model.safetensors"
    os.chmod(weights, 0o644)
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    failed = jnreg(root, "verify")
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert "problem: critic v1: adapter_model.safetensors is corrupt" in failed.stderr
    assert "critic v2" not in failed.stderr
    before = snapshot(root)
    one_line_error(jnreg(root, "promote", "critic", "v1"), "refusing to promote critic to v1")
    assert snapshot(root) == before

    manifest = root / "critic" / "versions" / "v2" / "manifest.json"
    os.chmod(manifest, 0o644)
    manifest.write_text(manifest.read_text()[:-20])
    one_line_error(jnreg(root, "resolve", "critic"), "is not valid JSON")
    one_line_error(jnreg(root, "list", "critic"), "is not valid JSON")

    map_path = root / "AGENT_MODEL_MAP.json"
    for text, fragment in (("{]", "is not valid JSON"), ('{"base_models": {}, "agents": []}', "schema")):
        map_path.write_text(text)
        before = snapshot(root)
        one_line_error(
            jnreg(root, "publish", "critic", str(make_adapter(tmp_path / "s3", seed=3))), f"agent map {map_path}"
        )
        one_line_error(jnreg(root, "rollback", "critic"), fragment)
        assert snapshot(root) == before


def test_unwritable_root_and_held_lock(root: Path, tmp_path: Path) -> None:
    source = make_adapter(tmp_path / "src", seed=1)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    one_line_error(jnreg(a_file / "store", "publish", "critic", str(source)), "cannot create the store")
    one_line_error(jnreg(Path("/proc/jnreg-store"), "publish", "critic", str(source)), "cannot create the store")
    assert a_file.read_text() == "x"

    assert jnreg(root, "publish", "critic", str(source), "--adapter-version", "v1").exit_code == 0
    ready = tmp_path / "ready"
    holder = start("hold-lock", str(root / ".AGENT_MODEL_MAP.json.lock"), str(ready), "30")
    try:
        while not ready.exists():
            assert holder.poll() is None, holder.communicate()
        before = snapshot(root)
        one_line_error(
            jnreg(root, "publish", "critic", str(make_adapter(tmp_path / "s2", seed=2))),
            "locked by another process for more than 0.5 s",
        )
        assert snapshot(root) == before
    finally:
        holder.kill()
        holder.communicate()


def test_console_script_errors_have_no_traceback(root: Path, tmp_path: Path) -> None:
    source = make_adapter(tmp_path / "src", seed=1, base_model=MISTRAL)
    ModelStore(root).publish("critic", source, version="v1")
    (root / "AGENT_MODEL_MAP.json").write_text('{"agents": {}}')
    before = snapshot(root)
    for args, fragment in (
        (("store", "resolve", "nobody"), "no versions"),
        (("store", "publish", "critic", str(source), "--adapter-version", "../x"), "invalid version label"),
        (("store", "publish", "critic", str(source)), "schema"),
        (("store", "verify"), "problem"),
    ):
        done = run_jnreg("--store-root", str(root), *args)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and fragment in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert snapshot(root) == before
    done = run_jnreg("store", "list", "--json", env={"MODEL_STORE_ROOT": str(root)})
    assert done.returncode == 0 and json.loads(done.stdout)["agents"][0]["current"] == "v1"


def test_store_commands_import_no_heavy_library(root: Path, tmp_path: Path) -> None:
    ModelStore(root).publish("critic", make_adapter(tmp_path / "src", seed=1), version="v1")
    assert heavy_imports_after(["--store-root", str(root), "store", "list"]) == []
    assert heavy_imports_after(["--store-root", str(root), "store", "resolve", "critic"]) == []
