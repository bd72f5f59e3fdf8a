"""The ModelStore in object storage, against a real S3-API server (moto's server mode) on 127.0.0.1.

The server runs as a subprocess for the whole session; each test gets a bucket of its own. Writers run in
separate processes, crashes are real SIGKILLs.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from jnreg.errors import IntegrityError, StoreConflict, StoreError
from jnreg.registry import ModelStore, resolve
from jnreg.registry.pull import pull
from jnreg.registry.storage.bucket import Bucket
from jnreg.registry.storage.object_layout import CRASH_POINTS as OBJECT_CRASH_POINTS
from jnreg.registry.storage.objects import ObjectStorage
from jnreg.schemas import errors as schema_errors
from tests.conftest import S3_SECRET
from tests.registry_helpers import make_adapter, safetensors_bytes, start, summary_for

SECRET = S3_SECRET


@pytest.fixture
def root(s3_env: str) -> str:
    """A fresh bucket; the store lives under a prefix in it."""
    bucket = f"jnreg-{uuid.uuid4().hex[:16]}"
    urllib.request.urlopen(urllib.request.Request(f"{s3_env}/{bucket}", method="PUT"), timeout=10).read()
    return f"s3://{bucket}/team/store"


def keys(root: str, prefix: str = "") -> list[str]:
    return sorted(entry.key for entry in Bucket(root).list(prefix))


def leftovers(root: str, agent: str) -> list[str]:
    """What a dead writer could leave: pending records, and files of labels that never became versions."""
    found = [k for k in keys(root, f"{agent}/pending/")]
    by_label: dict[str, set[str]] = {}
    for key in keys(root, f"{agent}/versions/"):
        label, name = key.split("/")[2:4]
        by_label.setdefault(label, set()).add(name)
    for label, names in by_label.items():
        if "manifest.json" not in names and names != {"claim.json"}:
            found.append(f"{label}: {sorted(names)}")
    return found


def map_version(store: ModelStore, agent: str) -> str | None:
    entries = (store.read_map() or {}).get("agents", {}).get(agent, [])
    return entries[0]["adapter_version"] if entries else None


def test_the_store_rules_hold_in_object_storage(root: str, tmp_path: Path) -> None:
    store = ModelStore(root)
    assert isinstance(store.storage, ObjectStorage)
    first = store.publish("critic", make_adapter(tmp_path / "s1", seed=1, summary=summary_for("critic")), version="a")
    assert first.promoted and first.manifest["training_summary"]["adapter_version"] == "a"
    store.publish("critic", make_adapter(tmp_path / "s2", seed=2), version="b")
    store.publish("critic", make_adapter(tmp_path / "s3", seed=3), version="c", promote=False)
    assert store.version_labels("critic") == ["a", "b", "c"]
    assert store.current("critic") == map_version(store, "critic") == "b"
    assert store.promote("critic", "c")["previous"] == "b"
    assert store.rollback("critic")["version"] == "b"
    assert store.rollback("critic")["version"] == "a"
    assert store.current("critic") == map_version(store, "critic") == "a"
    with pytest.raises(StoreConflict, match="already has a version 'b'"):
        store.publish("critic", make_adapter(tmp_path / "s9", seed=9), version="b")

    store.promote("critic", "c")
    assert store.gc("critic", keep=1).removed == ["b"]  # a is the rollback target, c in service
    assert store.version_labels("critic") == ["a", "c"]
    with pytest.raises(StoreConflict, match="had a version 'b' before"):
        store.publish("critic", make_adapter(tmp_path / "s8", seed=8), version="b")
    assert keys(root, "critic/versions/b/") == ["critic/versions/b/claim.json"]  # the label stays taken
    actions = [(e["action"], e["version"], e["previous"], e["current"]) for e in store.history("critic")]
    assert actions == [
        ("publish", "a", None, "a"),
        ("publish", "b", "a", "b"),
        ("publish", "c", "b", "b"),
        ("promote", "c", "b", "c"),
        ("rollback", "b", "c", "b"),
        ("rollback", "a", "b", "a"),
        ("promote", "c", "a", "c"),
        ("gc", "b", "c", "c"),
    ]
    report = store.verify()
    assert report.ok and report.notes == [] and report.checked == ["critic a", "critic c"]

    found = resolve("critic", store_root=root)
    assert found.adapter_path == tmp_path / "cache" / "store" / found.digest  # a local copy keyed by digest
    assert found.adapter_path.is_dir() and store.check_copy(found) == []
    assert json.loads((found.adapter_path / "manifest.json").read_text())["version"] == "c"
    # Every JSON object jnreg wrote matches its schema, and credentials are written nowhere in the store.
    schema_of = {"claim.json": "object_intent", "current": "object_current", "manifest.json": "manifest"}
    for key in keys(root):
        data = Bucket(root).get(key)[0]
        assert SECRET.encode() not in data
        name = key.rsplit("/", 1)[-1]
        schema = schema_of.get(name) or ("journal_entry" if "/journal/" in key else None)
        schema = schema or ("agent_model_map" if name == "AGENT_MODEL_MAP.json" else None)
        if schema:
            assert schema_errors(schema, json.loads(data)) == [], key


def _evaluation(digest: str) -> tuple[dict, list[dict]]:
    record = {
        "schema_version": 1,
        "digest": digest,
        "rows_source": {"kind": "files", "files": ["eval.jsonl"], "sha256": "0" * 64, "rows": 1},
        "settings": {"max_new_tokens": 8, "temperature": 0.0, "seed": 0, "limit": None, "quantization": "nf4"},
        "metrics": {
            "rows": 1,
            "eval_loss": 1.5,
            "json_rate": 1.0,
            "schema_valid": 0.0,
            "exact_match": 0.0,
            "tokens_per_second": 9.0,
        },
        "details": {"answered_rows": 1, "new_tokens": 8, "generation_s": 0.5, "stopped_at_eos": 1.0},
    }
    row = {
        "index": 0,
        "where": "eval.jsonl:1",
        "prompt": "Claim: x",
        "reference": "{}",
        "loss": 1.5,
        "answer": "{}",
        "new_tokens": 8,
        "stopped_at_eos": True,
        "json": True,
        "schema_valid": False,
        "schema_error": "missing verdict",
        "exact_match": {},
    }
    return record, [row]


def test_evaluations_are_kept_beside_the_version_in_object_storage(root: str, tmp_path: Path) -> None:
    store = ModelStore(root)
    published = store.publish("critic", make_adapter(tmp_path / "s1", seed=1), version="a")
    record, rows = _evaluation(published.digest)
    with pytest.raises(IntegrityError, match="not of critic a"):
        store.record_evaluation("critic", "a", {**record, "digest": "f" * 64}, rows)
    kept = store.record_evaluation("critic", "a", record, rows)
    assert [e["id"] for e in store.evaluations("critic", "a")] == [kept["id"]]
    assert store.evaluations("critic", "a")[0]["metrics"]["schema_valid"] == 0.0
    rows_key = f"critic/evaluations/a/{kept['rows_file']}"
    assert json.loads(Bucket(root).get(rows_key)[0]) == rows[0]
    # The version itself is untouched: same digest, still verified, still the only version.
    assert store.manifest("critic", "a")["digest"] == published.digest
    assert store.verify().ok and store.version_labels("critic") == ["a"]


def test_every_command_takes_an_s3_root(root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = make_adapter(tmp_path / "src", seed=4)
    runner = CliRunner()

    def run(*args: str) -> dict:
        done = runner.invoke(cli, ["--store-root", root, "store", *args, "--json"])
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)

    published = run("publish", "analyst", str(source), "--adapter-version", "v1")
    assert published["path"] == f"{root}/analyst/versions/v1"
    assert run("list")["agents"] == [{"agent": "analyst", "current": "v1", "versions": 1, "problem": None}]
    assert run("show", "analyst")["manifest"]["version"] == "v1"
    assert run("resolve", "analyst")["digest"] == published["digest"]
    assert run("verify")["ok"]
    assert [e["action"] for e in run("history", "analyst")["entries"]] == ["publish"]
    monkeypatch.setenv("MODEL_STORE_ROOT", root)
    done = runner.invoke(cli, ["store", "list", "analyst", "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["current"] == "v1"
    assert not os.path.exists(tmp_path / "s3:")  # no local directory named after the URL
    # An http endpoint needs AWS_ALLOW_HTTP=true; the error is one line.
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    done = runner.invoke(cli, ["store", "list"])
    assert done.exit_code == 1 and "AWS_ALLOW_HTTP=true" in done.output and "Traceback" not in done.output


def test_concurrent_publishers_lose_nothing(root: str, tmp_path: Path) -> None:
    plan = ["alpha"] * 6 + ["beta"] * 3
    writers = [
        start("publish", root, agent, str(make_adapter(tmp_path / f"s{i}", seed=i))) for i, agent in enumerate(plan)
    ]
    results = []
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        results.append(json.loads(out))
    store = ModelStore(root)
    for agent in ("alpha", "beta"):
        published = [r["version"] for r in results if r["agent"] == agent]
        assert len(published) == len(set(published)) == plan.count(agent)  # no label twice
        assert store.version_labels(agent) == sorted(published)
        for result in results:
            if result["agent"] == agent:
                assert store.manifest(agent, result["version"])["digest"] == result["digest"]
        entries = store.history(agent)
        assert Counter(e["version"] for e in entries if e["action"] == "publish") == Counter(published)
        assert [e["previous"] for e in entries] == [None] + [e["current"] for e in entries[:-1]]
        assert store.current(agent) == entries[-1]["current"] == map_version(store, agent)
        assert leftovers(root, agent) == []
    assert store.verify().ok


@pytest.mark.parametrize("point", OBJECT_CRASH_POINTS[:-1])
def test_a_publisher_killed_at_any_point_leaves_no_half_version(root: str, tmp_path: Path, point: str) -> None:
    store = ModelStore(root)
    store.publish("critic", make_adapter(tmp_path / "s1", seed=1), version="v1")
    crashed = start(
        "publish", root, "critic", str(make_adapter(tmp_path / "s2", seed=2)), "--version", "v2",
        env={"JNREG_TEST_CRASH_AT": point},
    )  # fmt: skip
    crashed.communicate(timeout=60)
    assert crashed.returncode == -signal.SIGKILL
    visible = point in ("visible", "journaled")
    report = store.verify()
    assert report.ok, report.problems
    assert store.version_labels("critic") == (["v1", "v2"] if visible else ["v1"])
    assert store.current("critic") in ({"v1", "v2"} if point == "journaled" else {"v1"})
    assert store.resolve("critic").adapter_path.is_dir()

    # The next write finishes or undoes what the dead writer left.
    store.publish("critic", make_adapter(tmp_path / "s3", seed=3), version="v3")
    assert leftovers(root, "critic") == []
    publishes = [e["version"] for e in store.history("critic") if e["action"] == "publish"]
    assert publishes == (["v1", "v2", "v3"] if visible else ["v1", "v3"])
    assert store.current("critic") == map_version(store, "critic") == "v3"
    report = store.verify()
    assert report.ok and report.notes == [], report
    if not visible:
        with pytest.raises(StoreConflict, match="had a version 'v2' before"):
            store.publish("critic", make_adapter(tmp_path / "s4", seed=4), version="v2")


def test_a_publish_taken_for_abandoned_never_becomes_visible(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer too slow for the stale limit loses its pending record to another's clean-up: it must not go on."""
    import jnreg.registry.storage.objects as object_store

    store = ModelStore(root)

    def cleaned_by_another_writer(name: str) -> None:
        if name == "uploaded":  # what another host's tidy-up does to a record it finds too old
            Bucket(root).delete([key for key in keys(root) if "/pending/" in key])

    monkeypatch.setattr(object_store, "crash_point", cleaned_by_another_writer)
    with pytest.raises(StoreConflict, match="taken for abandoned"):
        store.publish("critic", make_adapter(tmp_path / "slow", seed=1), version="a")
    assert store.version_labels("critic") == [] and store.current("critic") is None
    assert keys(root, "critic/versions/") == ["critic/versions/a/claim.json"]  # the label stays taken, nothing else
    assert store.verify().ok


def test_a_gc_killed_after_its_record_is_finished(root: str, tmp_path: Path) -> None:
    store = ModelStore(root)
    for i in (1, 2, 3):
        store.publish("critic", make_adapter(tmp_path / f"s{i}", seed=i), version=f"v{i}")
    crashed = start("gc", root, "critic", "1", env={"JNREG_TEST_CRASH_AT": "gc-journaled"})
    crashed.communicate(timeout=60)
    assert crashed.returncode == -signal.SIGKILL
    # The gc is recorded, so it happens: the next write (here recover) hides v1 and removes its files.
    report = store.verify()
    assert report.ok and any("being moved" in note for note in report.notes)
    assert store.recover("critic")
    assert store.version_labels("critic") == ["v2", "v3"]
    assert leftovers(root, "critic") == [] and store.verify().notes == []
    assert [e["version"] for e in store.history("critic") if e["action"] == "gc"] == ["v1"]


def test_promote_and_rollback_races_keep_one_history(root: str, tmp_path: Path) -> None:
    store = ModelStore(root)
    for i in range(1, 8):
        store.publish("critic", make_adapter(tmp_path / f"s{i}", seed=i), version=f"v{i}", promote=i <= 4)
    flippers = [start("flip", root, "critic", f"v{i}") for i in (5, 6, 7)]
    promoters = [start("promote", root, "critic", f"v{i}") for i in (1, 2, 3)]
    for writer in flippers + promoters:
        _, err = writer.communicate(timeout=120)
        # A rollback may find nothing left to undo when another writer undid it first; that is its answer.
        assert writer.returncode == 0 or "nothing to roll back to" in err, err
    entries = store.history("critic")
    assert [e["previous"] for e in entries] == [None] + [e["current"] for e in entries[:-1]]
    assert store.current("critic") == entries[-1]["current"] == map_version(store, "critic")
    report = store.verify()
    assert report.ok and report.notes == [], report


def test_verify_names_tampered_objects(root: str, tmp_path: Path) -> None:
    store = ModelStore(root)
    store.publish("critic", make_adapter(tmp_path / "s1", seed=1), version="v1")
    bucket = Bucket(root)
    bucket.put("critic/versions/v1/adapter_config.json", b'{"peft_type": "LORA", "r": 64}')
    bucket.put("critic/versions/v1/extra.bin", b"smuggled")
    report = store.verify()
    assert not report.ok
    assert any("adapter_config.json has" in p for p in report.problems)
    assert any("extra.bin is not in the manifest" in p for p in report.problems)
    with pytest.raises(IntegrityError, match="adapter_config.json in .* is corrupt|adapter_config.json .*corrupt"):
        resolve("critic", store_root=root)
    with pytest.raises(IntegrityError, match="refusing to promote"):
        store.publish("critic", make_adapter(tmp_path / "s2", seed=2), version="v2")
        store.promote("critic", "v1")


def test_a_200_mb_adapter_round_trips(root: str, tmp_path: Path) -> None:
    source = make_adapter(tmp_path / "big", seed=1, junk=False)
    header = safetensors_bytes({"w": [0.0]})
    size = 200 * 1024 * 1024
    # One F32 tensor of 50 M values: random at the ends, zeros in between, written sparse.
    text = json.dumps({"w": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}}).encode()
    text += b" " * (-len(text) % 8)
    with open(source / "adapter_model.safetensors", "wb") as handle:
        handle.write(len(text).to_bytes(8, "little") + text + os.urandom(1 << 20))
        handle.truncate(8 + len(text) + size - (1 << 20))
        handle.seek(0, os.SEEK_END)
        handle.write(os.urandom(1 << 20))
    assert header  # the helper's format, written by hand above for a tensor this large
    store = ModelStore(root)
    published = store.publish("synthesizer", source, version="big")
    weights = next(f for f in published.manifest["files"] if f["path"] == "adapter_model.safetensors")
    assert weights["size"] == (source / "adapter_model.safetensors").stat().st_size
    local = ModelStore(tmp_path / "mirror")
    done = pull(store, local, ["synthesizer"])
    assert done.fetched == ["synthesizer big"]
    assert local.check_files("synthesizer", "big") == []


def test_pull_mirrors_what_is_in_service_and_fetches_only_changes(root: str, tmp_path: Path) -> None:
    store = ModelStore(root)
    store.publish("critic", make_adapter(tmp_path / "c1", seed=1), version="c1")
    store.publish("critic", make_adapter(tmp_path / "c2", seed=2), version="c2")
    store.publish("analyst", make_adapter(tmp_path / "a1", seed=3), version="a1")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "AGENT_MODEL_MAP.json").write_text(json.dumps({"base_models": {}, "agents": {}, "vllm_agents": {"x": 1}}))
    runner = CliRunner()
    done = runner.invoke(cli, ["store", "pull", root, str(mirror), "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert sorted(result["fetched"]) == ["analyst a1", "critic c2"] and result["kept"] == []
    local = ModelStore(mirror)
    assert local.current("critic") == map_version(local, "critic") == "c2"
    assert local.version_labels("critic") == ["c2"]
    assert local.read_map()["vllm_agents"] == {"x": 1}  # what jnreg did not write stays
    assert local.verify().ok
    document = local.read_map()
    for entries in document["agents"].values():
        assert (mirror / entries[0]["adapter_model_store_path"] / "adapter_model.safetensors").is_file()

    again = json.loads(runner.invoke(cli, ["store", "pull", root, str(mirror), "--json"]).stdout)
    assert again["fetched"] == [] and sorted(again["kept"]) == ["analyst a1", "critic c2"]
    store.publish("critic", make_adapter(tmp_path / "c3", seed=4), version="c3")
    again = json.loads(runner.invoke(cli, ["store", "pull", root, str(mirror), "critic", "--json"]).stdout)
    assert again["fetched"] == ["critic c3"] and again["kept"] == []
    assert local.current("critic") == map_version(local, "critic") == "c3"

    # A tampered object stops the pull before the local store or its map change.
    store.publish("analyst", make_adapter(tmp_path / "a2", seed=5), version="a2", promote=False)
    store.promote("analyst", "a2")
    Bucket(root).put("analyst/versions/a2/tokenizer.json", b'{"tampered": true}')
    before = (mirror / "AGENT_MODEL_MAP.json").read_bytes()
    done = runner.invoke(cli, ["store", "pull", root, str(mirror), "analyst", "--all"])
    assert done.exit_code == 1 and "corrupt" in done.output and "Traceback" not in done.output
    assert (mirror / "AGENT_MODEL_MAP.json").read_bytes() == before
    assert local.version_labels("analyst") == ["a1"] and local.current("analyst") == "a1"
    assert local.verify().ok
    assert not [n for n in os.listdir(mirror / "analyst") if n.startswith(".staging")]


def test_a_root_that_is_not_an_object_store_url_is_refused(s3_env: str) -> None:
    with pytest.raises(StoreError, match="invalid object store root"):
        ModelStore("s3://")
    with pytest.raises(StoreError, match="keeps its map"):
        ModelStore("s3://bucket/x", "/tmp/map.json")
    for mangled in (Path("s3://bucket/x"), "gs://bucket/x"):
        with pytest.raises(StoreError, match="object stores are given as a string s3://"):
            ModelStore(mangled)


def test_rollback_and_promote_read_no_journal_record_and_history_pages(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What rollback needs is kept beside `current`, so its cost does not grow with the history."""
    store = ModelStore(root)
    for i in range(1, 9):
        store.publish("critic", make_adapter(tmp_path / f"s{i}", seed=i), version=f"v{i}")
    reads: list[str] = []
    original = Bucket.get

    def counted(self: Bucket, key: str):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(Bucket, "get", counted)
    assert store.rollback("critic")["version"] == "v7"
    assert store.promote("critic", "v2")["previous"] == "v7"
    assert store.rollback("critic")["version"] == "v7"
    # Only the record each write creates is looked for (and found absent); none of the history is read.
    looked_for = [k for k in reads if "/journal/" in k]
    assert sorted(looked_for) == sorted([f"critic/journal/{n:010d}.json" for n in (9, 10, 11)] * 2)
    reads.clear()
    newest = store.history("critic", limit=3)
    assert [(e["action"], e["version"]) for e in newest] == [("rollback", "v7"), ("promote", "v2"), ("rollback", "v7")]
    assert len([k for k in reads if "/journal/" in k]) == 3
    monkeypatch.setattr(Bucket, "get", original)
    done = CliRunner().invoke(cli, ["--store-root", root, "store", "history", "critic", "--limit", "2", "--json"])
    assert done.exit_code == 0, done.output
    assert [e["action"] for e in json.loads(done.stdout)["entries"]] == ["promote", "rollback"]
    assert store.verify().ok


def test_a_store_without_service_records_still_rolls_back(root: str, tmp_path: Path) -> None:
    """Stores written before the service records existed fall back to the journal, then gain them."""
    store = ModelStore(root)
    for i in range(1, 5):
        store.publish("critic", make_adapter(tmp_path / f"s{i}", seed=i), version=f"v{i}")
    store.promote("critic", "v2")
    bucket = Bucket(root)
    bucket.delete(keys(root, "critic/service/"))
    assert store.gc("critic", keep=0).removed == ["v3", "v1"]  # v4 is the rollback target, v2 in service
    assert store.rollback("critic")["version"] == "v4"
    with pytest.raises(StoreError, match="cannot roll back 'critic' to 'v3': that version is no longer"):
        store.rollback("critic")  # the undo stack came from the journal: v3 was in service before v4
    assert keys(root, "critic/service/")  # written again by the writes since
    assert store.verify().ok
