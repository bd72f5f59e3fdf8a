"""A damaged store is reported and repaired, on local files and on object storage alike.

Damage is done as a person or a broken tool would do it (a deleted `current`, a version removed by hand,
a publish SIGKILLed mid-copy); what is checked is what `jnreg store` then says and does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.request
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from jnreg.errors import IntegrityError
from jnreg.registry import ModelStore
from jnreg.registry.storage.bucket import Bucket
from tests.registry_helpers import make_adapter, start

AGENT = "critic"


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store root: a local directory, or a fresh bucket on the test S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return new_bucket(request.getfixturevalue("s3_env"))


def new_bucket(endpoint: str) -> str:
    bucket = f"jnreg-{uuid.uuid4().hex[:16]}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT"), timeout=10).read()
    return f"s3://{bucket}/store"


def published(root: str, tmp_path: Path, labels: tuple[str, ...] = ("a", "b", "c")) -> ModelStore:
    store = ModelStore(root)
    for n, label in enumerate(labels, start=1):
        store.publish(AGENT, make_adapter(tmp_path / f"s{n}", seed=n), version=label)
    return store


def delete_current(store: ModelStore) -> None:
    if isinstance(store.root, Path):
        (store.root / AGENT / "current").unlink()
    else:
        Bucket(store.root).delete([f"{AGENT}/current"])


def remove_version(store: ModelStore, label: str) -> None:
    """Remove a version's files by hand, as `rm -rf` or a bucket console would, leaving no journal record."""
    if isinstance(store.root, Path):
        path = store.root / AGENT / "versions" / label
        os.chmod(path, 0o755)
        shutil.rmtree(path)
    else:
        bucket = Bucket(store.root)
        bucket.delete([e.key for e in bucket.list(f"{AGENT}/versions/{label}/")])


def run(root: str, *args: str):
    return CliRunner().invoke(cli, ["--store-root", root, "store", *args])


def served_by_map(store: ModelStore) -> str:
    return store.read_map()["agents"][AGENT][0]["adapter_version"]


def test_a_deleted_current_is_reported_and_rebuilt_from_the_journal(root: str, tmp_path: Path) -> None:
    store = published(root, tmp_path)
    delete_current(store)

    report = store.verify()
    assert not report.ok
    assert any("journal" in p and "says c is in service" in p for p in report.problems), report.problems
    checked = run(root, "verify")
    assert checked.exit_code == 1 and "Traceback" not in checked.output
    assert "problem:" in checked.output and "ok:" not in checked.output
    with pytest.raises(IntegrityError, match="store recover critic"):
        store.resolve(AGENT)

    done = run(root, "recover", AGENT)
    assert done.exit_code == 0, done.output
    assert "nothing to recover" not in done.output and "journal" in done.output
    assert store.current(AGENT) == served_by_map(store) == "c"
    assert store.resolve(AGENT).version == "c"
    assert store.verify().ok
    assert "nothing to recover" in run(root, "recover", AGENT).output  # and once repaired, there is nothing left


def test_current_naming_a_removed_version_is_listed_reported_and_promotable(root: str, tmp_path: Path) -> None:
    store = published(root, tmp_path)
    remove_version(store, "c")

    listed = run(root, "list", "--json")
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)["agents"]
    assert row["versions"] == 2 and "'c'" in row["problem"]
    versions = run(root, "list", AGENT, "--json")
    assert versions.exit_code == 0, versions.output
    document = json.loads(versions.stdout)
    assert [v["version"] for v in document["versions"]] == ["a", "b"]
    assert document["current"] is None and "'c'" in document["problem"]
    plain = run(root, "list", AGENT)
    assert plain.exit_code == 0 and "problem:" in plain.output and "  a  " in plain.output

    dry = run(root, "gc", AGENT, "--keep", "0", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["removed"] == ["a"]  # b is the rollback target, c what the journal serves
    assert run(root, "gc", AGENT, "--keep", "0").exit_code == 1  # nothing is removed from a damaged agent

    report = store.verify()
    assert any("points at version 'c'" in p for p in report.problems)
    assert any("agent map entry" in p and "missing version c" in p for p in report.problems)
    assert run(root, "verify").exit_code == 1

    # The journal serves c, which is gone: recover says so and names what could be promoted instead.
    done = run(root, "recover", AGENT)
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert "no longer in the store" in done.output and "a, b" in done.output
    assert run(root, "promote", AGENT, "b").exit_code == 0
    assert store.current(AGENT) == served_by_map(store) == "b"
    assert store.verify().ok


def test_current_disagreeing_with_the_journal_is_named(tmp_path: Path) -> None:
    store = published(str(tmp_path / "store"), tmp_path)
    link = store.root / AGENT / "current"
    link.unlink()
    link.symlink_to("versions/a")  # moved by hand: neither the journal nor the map saw it
    problems = store.verify().problems
    assert any("names a, but the journal says c is in service" in p for p in problems)
    assert any("does not serve critic's current version a first" in p for p in problems)
    done = run(str(store.root), "recover", AGENT)
    assert done.exit_code == 0 and "as the journal says" in done.output
    assert store.current(AGENT) == "c" and store.verify().ok


def test_staging_left_by_a_killed_publish_is_reported_and_removed_with_its_size(tmp_path: Path) -> None:
    store = published(str(tmp_path / "store"), tmp_path, ("a",))
    source = make_adapter(tmp_path / "s9", seed=9)
    crashed = start("publish", str(store.root), AGENT, str(source), env={"JNREG_TEST_CRASH_AT": "staged"})
    crashed.communicate(timeout=60)
    assert crashed.returncode == -signal.SIGKILL
    (staging,) = [n for n in os.listdir(store.root / AGENT) if n.startswith(".staging")]

    checked = run(str(store.root), "verify")
    assert checked.exit_code == 0  # litter, not damage: every version is whole and in line
    assert "staging" in checked.output and staging in checked.output and "recover" in checked.output

    done = run(str(store.root), "recover", AGENT)
    assert done.exit_code == 0, done.output
    assert f"removed {staging}" in done.output and "bytes" in done.output
    assert "nothing to recover" not in done.output
    assert not [n for n in os.listdir(store.root / AGENT) if n.startswith(".staging")]
    assert "staging" not in run(str(store.root), "verify").output


def test_files_left_by_a_killed_upload_are_reported_and_removed(s3_env: str, tmp_path: Path) -> None:
    """The object store's staging is the uploaded files of a label that never got its manifest."""
    root = new_bucket(s3_env)
    store = published(root, tmp_path, ("a",))
    crashed = start(
        "publish", root, AGENT, str(make_adapter(tmp_path / "s9", seed=9)), "--version", "b",
        env={"JNREG_TEST_CRASH_AT": "uploaded"},
    )  # fmt: skip
    crashed.communicate(timeout=60)
    assert crashed.returncode == -signal.SIGKILL
    assert any("critic b: files of an unfinished publish" in n and "bytes" in n for n in store.verify().notes)
    done = run(root, "recover", AGENT)
    assert done.exit_code == 0, done.output
    assert "removed the" in done.output and "bytes a killed publish of critic b had uploaded" in done.output
    assert store.verify().notes == []
