"""Real processes against one store: many publishers at once, and publishers killed at every step of a write."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from jnreg.fsutil import host_tag
from jnreg.registry import ModelStore
from jnreg.registry.journal import read_entries
from jnreg.registry.storage.local import CRASH_POINTS
from tests.registry_helpers import make_adapter, start

os.environ["HF_HUB_OFFLINE"] = "1"
WRITER_ENV = {"JNREG_LOCK_TIMEOUT": "120"}


def map_version(store: ModelStore, agent: str) -> str | None:
    entries = (store.read_map() or {}).get("agents", {}).get(agent, [])
    return entries[0]["adapter_version"] if entries else None


def leftovers(store: ModelStore, agent: str) -> list[str]:
    """Anything a crashed writer could leave behind: staging, trash, temp files, intents, empty claims."""
    agent_dir = store.root / agent
    found = [n for n in os.listdir(agent_dir) if n.startswith((".staging", ".trash", ".tmp", ".pending"))]
    found += [n for n in os.listdir(store.root) if n.startswith(".tmp")]
    found += [f"versions/{n}" for n in os.listdir(agent_dir / "versions") if not os.listdir(agent_dir / "versions" / n)]
    return found


def test_sixteen_publishers_at_once_lose_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    plan = ["alpha"] * 8 + ["beta"] * 4 + ["gamma"] * 4
    sources = [make_adapter(tmp_path / f"src{i}", seed=i) for i in range(len(plan))]
    stop = tmp_path / "stop"
    # The store exists before the watcher starts so it sees every step.
    store.publish("alpha", make_adapter(tmp_path / "seed", seed=99), version="seed")
    watcher = start("watch", str(store.root), str(stop))
    writers = [
        start("publish", str(store.root), agent, str(src), env=WRITER_ENV)
        for agent, src in zip(plan, sources, strict=True)
    ]
    results = []
    for writer in writers:
        out, err = writer.communicate(timeout=180)
        assert writer.returncode == 0, err
        results.append(json.loads(out))
    stop.write_text("stop")
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err  # the map was valid and `current` resolvable on every read
    assert json.loads(out)["reads"] > 0

    for agent in ("alpha", "beta", "gamma"):
        published = [r["version"] for r in results if r["agent"] == agent]
        assert len(published) == len(set(published)) == plan.count(agent)
        listed = store.version_labels(agent)
        assert sorted(listed) == sorted(published + (["seed"] if agent == "alpha" else []))
        for result in results:
            if result["agent"] == agent:
                assert store.manifest(agent, result["version"])["digest"] == result["digest"]
        entries = [e for e in read_entries(store.journal_path) if e["agent"] == agent]
        assert Counter(e["version"] for e in entries if e["action"] == "publish") == Counter(listed)
        # Writers were serialized: each line's `previous` is the line before's `current`.
        assert [e["previous"] for e in entries] == [None] + [e["current"] for e in entries[:-1]]
        assert store.current(agent) == entries[-1]["current"] == map_version(store, agent)
        assert leftovers(store, agent) == []
    assert len(read_entries(store.journal_path)) == len(plan) + 1
    assert store.verify().ok


# (crash point, is v2 visible afterwards, is v2 in service afterwards)
PUBLISH_CRASHES = [
    ("staged", False, False),
    ("claimed", False, False),
    ("renamed", True, False),
    ("before-current-swap", True, False),
    ("current-swap", True, False),
    ("map-write", True, True),
    ("before-journal", True, True),
]


def test_every_crash_point_is_exercised() -> None:
    tested = {p for p, _, _ in PUBLISH_CRASHES} | {"gc-moved"}
    assert tested == set(CRASH_POINTS)


@pytest.mark.parametrize("point, visible, served", PUBLISH_CRASHES)
def test_publish_killed_at_any_point_recovers(tmp_path: Path, point: str, visible: bool, served: bool) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s1", seed=1), version="v1")
    crashed = start(
        "publish",
        str(store.root),
        "critic",
        str(make_adapter(tmp_path / "s2", seed=2)),
        "--version",
        "v2",
        env={"JNREG_TEST_CRASH_AT": point},
    )
    crashed.communicate(timeout=60)
    assert crashed.returncode == -signal.SIGKILL

    # Right after the crash: nothing half-visible, verify passes, `current` and the map at the old or the new state.
    report = store.verify()
    assert report.ok, report.problems
    assert sorted(store.version_labels("critic")) == (["v1", "v2"] if visible else ["v1"])
    assert store.current("critic") in ({"v1", "v2"} if visible else {"v1"})
    assert map_version(store, "critic") in {"v1", store.current("critic")}
    assert store.resolve("critic").adapter_path.is_dir()

    # The next write finishes or undoes what the crash interrupted, and cleans up.
    store.gc("critic", keep=100)
    expected = "v2" if served else "v1"
    assert store.current("critic") == map_version(store, "critic") == expected
    publishes = [e for e in read_entries(store.journal_path) if e["action"] == "publish"]
    assert [(e["version"], e["current"]) for e in publishes] == [("v1", "v1")] + ([("v2", expected)] if visible else [])
    assert leftovers(store, "critic") == []
    report = store.verify()
    assert report.ok and report.notes == []

    store.publish("critic", make_adapter(tmp_path / "s3", seed=3), version="v3")
    assert store.current("critic") == map_version(store, "critic") == "v3"
    assert store.rollback("critic")["version"] == expected
    assert store.verify().ok


@pytest.mark.parametrize("point, served", [("current-swap", False), ("map-write", True), ("before-journal", True)])
def test_promote_killed_at_any_point_recovers(tmp_path: Path, point: str, served: bool) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s1", seed=1), version="v1")
    store.publish("critic", make_adapter(tmp_path / "s2", seed=2), version="v2", promote=False)
    crashed = start("promote", str(store.root), "critic", "v2", env={"JNREG_TEST_CRASH_AT": point})
    crashed.communicate(timeout=60)
    assert crashed.returncode == -signal.SIGKILL
    assert store.verify().ok
    assert store.current("critic") == ("v2" if served else "v1")

    store.gc("critic", keep=100)
    assert store.current("critic") == map_version(store, "critic") == ("v2" if served else "v1")
    promotes = [e["version"] for e in read_entries(store.journal_path) if e["action"] == "promote"]
    assert promotes == (["v2"] if served else [])
    assert leftovers(store, "critic") == []


def test_gc_killed_mid_removal_recovers(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for i in (1, 2, 3):
        store.publish("critic", make_adapter(tmp_path / f"s{i}", seed=i), version=f"v{i}")
    crashed = start("gc", str(store.root), "critic", "1", env={"JNREG_TEST_CRASH_AT": "gc-moved"})
    crashed.communicate(timeout=60)
    assert crashed.returncode == -signal.SIGKILL
    assert store.verify().ok
    assert sorted(store.version_labels("critic")) == ["v2", "v3"]  # v2 is the rollback target
    store.gc("critic", keep=100)
    assert [e["version"] for e in read_entries(store.journal_path) if e["action"] == "gc"] == ["v1"]
    assert leftovers(store, "critic") == []


def test_only_leftovers_of_dead_owners_are_removed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s1", seed=1), version="v1")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        agent_dir = store.root / "critic"
        live = agent_dir / f".staging-{host_tag()}-{sleeper.pid}-0123abcd"
        gone = agent_dir / f".staging-{host_tag()}-{int(dead.stdout)}-0123abcd"
        stale_tmp = store.root / f".tmp-{host_tag()}-{int(dead.stdout)}-0123abcd-AGENT_MODEL_MAP.json"
        for path in (live, gone):
            path.mkdir()
            (path / "adapter_model.safetensors").write_bytes(b"partial")
        stale_tmp.write_text("{")
        assert store.version_labels("critic") == ["v1"]
        store.publish("critic", make_adapter(tmp_path / "s2", seed=2), version="v2")
        assert live.exists() and not gone.exists() and not stale_tmp.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    store.gc("critic", keep=100)
    assert not live.exists()
    assert socket.gethostname()


def test_a_torn_journal_line_is_skipped_and_repaired(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s1", seed=1), version="v1")
    with open(store.journal_path, "ab") as handle:
        handle.write(b'{"schema_version": 1, "op": "abc')
    assert [e["version"] for e in store.history("critic")] == ["v1"]
    store.publish("critic", make_adapter(tmp_path / "s2", seed=2), version="v2")
    assert [e["version"] for e in store.history("critic")] == ["v1", "v2"]
    assert store.journal_path.read_bytes().count(b"\n") == 2
    with open(store.journal_path, "ab") as handle:
        handle.write(b"not json\n")
    assert not store.verify().ok
