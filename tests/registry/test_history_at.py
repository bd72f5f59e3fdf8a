"""What was in service when: ``store history --at`` and ``store resolve --at`` from the journal, on both stores."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from jnreg.registry import ModelStore
from tests.registry_helpers import make_adapter, summary_for

AGENT = "critic"


def run(root: str, *args: str):
    return CliRunner().invoke(cli, ["--store-root", root, "store", *args])


def moments(store: ModelStore, tmp_path: Path) -> dict[str, str]:
    """v1 published, v2 published, v2 rolled back to v1, v3 published without service: each step's time."""
    when = {}
    for seed, version in enumerate(("v1", "v2")):
        store.publish(AGENT, make_adapter(tmp_path / version, seed=seed, summary=summary_for(AGENT)), version=version)
        when[version] = store.history(AGENT)[-1]["when"]
        time.sleep(0.01)
    store.rollback(AGENT)
    when["rollback"] = store.history(AGENT)[-1]["when"]
    time.sleep(0.01)
    source = make_adapter(tmp_path / "v3", seed=3, summary=summary_for(AGENT))
    store.publish(AGENT, source, version="v3", promote=False)
    return when


def in_service_at(root: str, at: str) -> str | None:
    done = run(root, "history", AGENT, "--at", at, "--json")
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)["in_service"]


def check_answers(root: str, when: dict[str, str]) -> None:
    assert in_service_at(root, "2000-01-01T00:00:00Z") is None
    assert in_service_at(root, when["v1"]) == "v1"
    assert in_service_at(root, "v2") == "v2"  # a version's publish time
    assert in_service_at(root, when["rollback"]) == "v1"
    assert in_service_at(root, "v3") == "v1"  # published out of service
    history = json.loads(run(root, "history", AGENT, "--at", when["v2"], "--json").stdout)
    assert [e["version"] for e in history["entries"]] == ["v1", "v2"]
    resolved = json.loads(run(root, "resolve", AGENT, "--at", "v2", "--json").stdout)
    assert resolved["version"] == "v2" and resolved["digest"] == ModelStore(root).manifest(AGENT, "v2")["digest"]
    # A time without a zone is UTC, like the journal's.
    naive = when["rollback"].rstrip("Z")
    assert json.loads(run(root, "resolve", AGENT, "--at", naive, "--json").stdout)["version"] == "v1"
    text = run(root, "history", AGENT, "--at", "v2").stdout
    assert text.strip().endswith(f"in service at v2: {AGENT} v2")


def check_errors(root: str) -> None:
    early = run(root, "resolve", AGENT, "--at", "2000-01-01")
    assert early.exit_code != 0 and "no version of critic was in service at 2000-01-01" in early.output
    bad = run(root, "resolve", AGENT, "--at", "yesterday")
    assert bad.exit_code != 0 and "'yesterday' is neither an ISO 8601 time" in bad.output
    assert "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1
    both = run(root, "resolve", AGENT, "--at", "v1", "--version", "v1")
    assert both.exit_code != 0 and "not both" in both.output


def test_in_service_at_a_time_on_a_local_store(tmp_path):
    root = str(tmp_path / "store")
    when = moments(ModelStore(root), tmp_path)
    check_answers(root, when)
    check_errors(root)
    # A version gc removed was still in service then; resolving it says so in one line.
    ModelStore(root).gc(AGENT, keep=1)
    gone = run(root, "resolve", AGENT, "--at", "v2")
    assert gone.exit_code != 0 and "critic v2 was in service at v2 but has since been removed" in gone.output


def test_in_service_at_a_time_on_an_object_store(s3_env, tmp_path):
    bucket = f"jnreg-{uuid.uuid4().hex[:16]}"
    urllib.request.urlopen(urllib.request.Request(f"{s3_env}/{bucket}", method="PUT"), timeout=10).read()
    root = f"s3://{bucket}/store"
    when = moments(ModelStore(root), tmp_path)
    check_answers(root, when)
    check_errors(root)
    # A page beside a version is no part of it: verify still finds every version whole.
    ModelStore(root).write_report(AGENT, "v1", b"<!doctype html><p>v1</p>")
    assert ModelStore(root).read_report(AGENT, "v1") == b"<!doctype html><p>v1</p>" and ModelStore(root).verify().ok


@pytest.mark.parametrize("text", ["2026-11-25T12:00:00+01:00", "2026-11-25T11:00:00Z", "2026-11-25 11:00:00"])
def test_times_are_compared_in_utc(text):
    from jnreg.registry.journal import parse_time

    assert parse_time(text).isoformat() == "2026-11-25T11:00:00+00:00"
