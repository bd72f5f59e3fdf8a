"""Registry behaviours found by trying to break it: reused labels, symlinks, the journal, repair, live readers."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from jnreg.errors import IntegrityError, StoreConflict
from jnreg.registry import ModelStore
from jnreg.registry.journal import read_entries
from tests.registry_helpers import make_adapter, start


def first_entry_version(store: ModelStore, agent: str) -> str:
    return store.read_map()["agents"][agent][0]["adapter_version"]


def test_labels_removed_by_gc_are_never_reused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for n, label in enumerate(["a", "b", "c"], start=1):
        store.publish("critic", make_adapter(tmp_path / f"s{n}", seed=n), version=label)
    assert store.gc("critic", keep=1).removed == ["a"]
    with pytest.raises(StoreConflict, match="had a version 'a' before"):
        store.publish("critic", make_adapter(tmp_path / "s9", seed=9), version="a")
    with pytest.raises(StoreConflict, match="had a version 'a' before"):
        store.check_can_publish("critic", version="a")
    # Default labels skip a label the journal has seen, even when its directory is gone.
    default = store._free_label("critic")
    store.publish("critic", make_adapter(tmp_path / "s4", seed=4), version=default)
    store.publish("critic", make_adapter(tmp_path / "s6", seed=6), version="d")
    store.publish("critic", make_adapter(tmp_path / "s7", seed=7), version="e")
    assert default in store.gc("critic", keep=1).removed
    assert not (store.root / "critic" / "versions" / default).exists()
    again = store.publish("critic", make_adapter(tmp_path / "s5", seed=5))
    assert again.version != default
    labels = [e["version"] for e in read_entries(store.journal_path) if e["action"] == "publish"]
    assert len(labels) == len(set(labels))


def test_a_symlinked_agent_map_is_updated_through_the_link(tmp_path: Path) -> None:
    real = tmp_path / "orchestrator" / "AGENT_MODEL_MAP.json"
    real.parent.mkdir()
    real.write_text(json.dumps({"base_models": {}, "agents": {}, "vllm_agents": {"z": 1, "a": 2}}))
    link = tmp_path / "links" / "AGENT_MODEL_MAP.json"
    link.parent.mkdir()
    link.symlink_to(real)
    store = ModelStore(tmp_path / "store", link)
    published = store.publish("critic", make_adapter(tmp_path / "s1", seed=1))
    assert link.is_symlink()
    document = json.loads(real.read_text())
    assert document["agents"]["critic"][0]["adapter_version"] == published.version
    assert list(document) == ["base_models", "agents", "vllm_agents"]  # key order kept
    assert list(document["vllm_agents"]) == ["z", "a"]


@pytest.mark.parametrize("linked", ["agent", "versions"])
def test_symlinked_agent_or_versions_directories_are_refused(tmp_path: Path, linked: str) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s1", seed=1), version="a")
    inside = store.root / "critic" if linked == "agent" else store.root / "critic" / "versions"
    outside = tmp_path / "elsewhere"
    inside.rename(outside)
    inside.symlink_to(outside)
    for action in (
        lambda: store.resolve("critic"),
        lambda: store.publish("critic", make_adapter(tmp_path / "s2", seed=2), version="b"),
    ):
        with pytest.raises(IntegrityError, match="is a symlink"):
            action()
    assert not (outside / "versions" / "b").exists() and not (outside / "b").exists()


def test_a_whole_last_journal_line_without_newline_is_kept(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s1", seed=1), version="a")
    store.publish("critic", make_adapter(tmp_path / "s2", seed=2), version="b")
    store.journal_path.write_bytes(store.journal_path.read_bytes().rstrip(b"\n"))
    assert [e["version"] for e in store.history("critic")] == ["a", "b"]
    store.publish("critic", make_adapter(tmp_path / "s3", seed=3), version="c")
    assert [e["version"] for e in store.history("critic")] == ["a", "b", "c"]
    assert store.journal_path.read_bytes().count(b"\n") == 3


def test_rollback_refuses_when_the_journal_missed_a_change(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for n, label in enumerate(["a", "b", "c"], start=1):
        store.publish("critic", make_adapter(tmp_path / f"s{n}", seed=n), version=label)
    lines = store.journal_path.read_bytes().splitlines(keepends=True)
    store.journal_path.write_bytes(b"".join(lines[:-1]))  # the record of c is lost
    with pytest.raises(IntegrityError, match="refusing to guess"):
        store.rollback("critic")
    assert store.current("critic") == "c"


def test_promote_repairs_a_dangling_current_and_list_names_the_damage(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s1", seed=1), version="a")
    store.publish("analyst", make_adapter(tmp_path / "s2", seed=2), version="x")
    current = store.root / "critic" / "current"
    current.unlink()
    current.symlink_to("versions/gone")
    listed = CliRunner().invoke(cli, ["--store-root", str(store.root), "store", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["agent"]: row for row in json.loads(listed.stdout)["agents"]}
    assert rows["analyst"]["current"] == "x" and "gone" in rows["critic"]["problem"]
    with pytest.raises(IntegrityError, match="store promote"):
        store.resolve("critic")
    store.promote("critic", "a")
    assert store.current("critic") == first_entry_version(store, "critic") == "a"
    assert store.verify().ok


def test_recover_finishes_a_crashed_publish(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s1", seed=1), version="a")
    crashed = start(
        "publish", str(store.root), "critic", str(make_adapter(tmp_path / "s2", seed=2)), "--version", "b",
        env={"JNREG_TEST_CRASH_AT": "map-write"},
    )  # fmt: skip
    crashed.communicate(timeout=60)
    assert crashed.returncode == -signal.SIGKILL
    report = store.verify()
    assert report.ok and any("store recover critic" in note for note in report.notes)
    done = CliRunner().invoke(cli, ["--store-root", str(store.root), "store", "recover", "critic", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"agent": "critic", "recovered": True, "current": "b"}
    assert first_entry_version(store, "critic") == "b"
    assert store.verify().notes == []


def test_verify_and_list_stay_right_while_writers_run(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s0", seed=0), version="v0")
    sources = [make_adapter(tmp_path / f"s{n}", seed=n) for n in range(1, 9)]
    writers = []
    for n, source in enumerate(sources, start=1):
        writers.append(start("publish", str(store.root), "critic", str(source), "--version", f"v{n}"))
        writers.append(start("gc", str(store.root), "critic", "2"))
    checks = 0
    deadline = time.monotonic() + 60
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        report = store.verify()
        assert report.ok, report.problems
        assert all(m["agent"] == "critic" for m in store.versions("critic"))
        checks += 1
    for writer in writers:
        writer.communicate(timeout=60)
        assert writer.returncode == 0
    assert checks > 0 and store.verify().ok
    assert os.path.isdir(store.resolve("critic").adapter_path)
