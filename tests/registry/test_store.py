"""ModelStore through its Python API: publish, the map, promote/rollback/gc, verify, and refusing bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from jnreg.errors import IntegrityError, StoreConflict, StoreError, StoreNotFound
from jnreg.registry import ModelStore, resolve
from jnreg.registry import store as store_module
from jnreg.registry.store import compute_digest
from jnreg.schemas import errors as schema_errors
from tests.registry_helpers import (
    LOADER_FILES,
    MISTRAL,
    TINY,
    make_adapter,
    snapshot,
    start,
    summary_for,
)

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store", lock_timeout=5)


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeze the clock so default labels cannot straddle a minute."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001, ANN206 - datetime's own signature
            return datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=timezone.utc)

    monkeypatch.setattr(store_module, "datetime", Frozen)


def adapter(tmp_path: Path, seed: int = 0, **kwargs) -> Path:
    return make_adapter(tmp_path / f"src{seed}-{len(kwargs)}", seed=seed, **kwargs)


def test_publish_stores_only_what_a_loader_needs(store: ModelStore, tmp_path: Path, fixed_clock: None) -> None:
    source = adapter(tmp_path, summary=summary_for("synthesizer", "synth_lora"))
    result = store.publish("synthesizer", source)

    assert result.version == "v20250304-0506" and result.promoted
    assert result.path == store.root / "synthesizer" / "versions" / "v20250304-0506"
    assert set(os.listdir(result.path)) == LOADER_FILES  # no checkpoint, optimizer.pt, *.bin, trainer_state
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert schema_errors("manifest", manifest) == []
    assert manifest["adapter_name"] == "synth_lora" and manifest["base_model"] == TINY
    assert (manifest["peft_type"], manifest["r"], manifest["alpha"]) == ("LORA", 8, 16)
    assert [f["path"] for f in manifest["files"]] == sorted(LOADER_FILES - {"manifest.json"})
    # The digest is sha256 over "path\tsha256" lines of the files sorted by path, and matches the bytes on disk.
    import hashlib

    lines = "\n".join(
        f"{f['path']}\t{hashlib.sha256((result.path / f['path']).read_bytes()).hexdigest()}" for f in manifest["files"]
    )
    assert manifest["digest"] == hashlib.sha256(lines.encode()).hexdigest() == result.digest
    stored_summary = json.loads((result.path / "training_summary.json").read_text())
    assert stored_summary["adapter_version"] == result.version == manifest["training_summary"]["adapter_version"]
    assert schema_errors("training_summary", stored_summary) == []
    assert "synth_lora" in (result.path / "README.md").read_text()  # generated model card
    assert (result.path / "adapter_config.json").read_bytes() == (source / "adapter_config.json").read_bytes()
    # Immutable: read-only files and directory.
    assert all(os.stat(result.path / name).st_mode & 0o222 == 0 for name in LOADER_FILES)
    assert os.stat(result.path).st_mode & 0o222 == 0
    assert os.readlink(store.root / "synthesizer" / "current") == "versions/v20250304-0506"
    # A JustNews loader finds the adapter from the map alone.
    document = json.loads((store.root / "AGENT_MODEL_MAP.json").read_text())
    assert schema_errors("agent_model_map", document) == []
    entry = document["agents"]["synthesizer"][0]
    assert document["base_models"][entry["base_ref"]] == {"hf_id": TINY, "peft_support": True}
    assert entry["base_ref"] == "tiny-mistral"
    assert (store.root / entry["adapter_model_store_path"] / "adapter_config.json").is_file()
    assert entry["adapter_version"] == result.version and entry["digest"] == result.digest
    history = store.history("synthesizer")
    assert [(e["action"], e["version"], e["previous"], e["current"]) for e in history] == [
        ("publish", result.version, None, result.version)
    ]
    assert store.verify().ok


def test_default_labels_get_a_suffix_and_an_explicit_taken_label_changes_nothing(
    store: ModelStore, tmp_path: Path, fixed_clock: None
) -> None:
    labels = [store.publish("critic", adapter(tmp_path, seed)).version for seed in range(3)]
    assert labels == ["v20250304-0506", "v20250304-0506-2", "v20250304-0506-3"]
    assert store.publish("critic", adapter(tmp_path, 5), version="release-1.0").version == "release-1.0"
    before = snapshot(store.root)
    with pytest.raises(StoreConflict, match="already has a version 'release-1.0'"):
        store.publish("critic", adapter(tmp_path, 6), version="release-1.0")
    with pytest.raises(StoreConflict):
        store.publish("critic", adapter(tmp_path, 7), version="v20250304-0506-2")
    assert snapshot(store.root) == before


def test_adapter_name_and_base_model_sources(store: ModelStore, tmp_path: Path) -> None:
    plain = store.publish("analyst", adapter(tmp_path, 1, base_model=MISTRAL))
    assert plain.manifest["adapter_name"] == "analyst_adapter" and plain.manifest["base_model"] == MISTRAL
    assert plain.manifest["training_summary"] is None
    named = store.publish("analyst", adapter(tmp_path, 2), adapter_name="explicit")
    assert named.manifest["adapter_name"] == "explicit"
    summary = summary_for("analyst", "from_summary", base_model=MISTRAL)
    from_summary = store.publish("analyst", adapter(tmp_path, 3, base_model="ignored/local-path", summary=summary))
    assert from_summary.manifest["adapter_name"] == "from_summary"
    assert from_summary.manifest["base_model"] == MISTRAL  # the summary's base model wins
    document = store.read_map()
    assert document["base_models"]["mistral-7b-v0.3"]["hf_id"] == MISTRAL


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "adapter_config.json").unlink(), "has no adapter_config.json"),
        (lambda d: (d / "adapter_config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "adapter_config.json").write_text('{"peft_type": "LORA", "lora_alpha": 16}'), "no positive"),
        (lambda d: (d / "adapter_config.json").write_text('{"r": 8}'), "has no peft_type"),
        (
            lambda d: (d / "adapter_config.json").write_text(
                json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]})
            ),
            "names no base model",
        ),
        (lambda d: (d / "adapter_model.safetensors").unlink(), "only adapter_model.bin"),
        (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}"), "safetensors"),
        (
            lambda d: (d / "adapter_model.safetensors").write_bytes(
                (d / "adapter_model.safetensors").read_bytes()[:-10]
            ),
            "truncated",
        ),
        (lambda d: (d / "tokenizer.json").unlink() or (d / "tokenizer.json").symlink_to("/etc/hostname"), "outside"),
        (lambda d: (d / "training_summary.json").write_text(json.dumps(summary_for("critic"))), "not 'analyst'"),
        (lambda d: (d / "training_summary.json").write_text('{"agent": "analyst"}'), "training_summary schema"),
        (lambda d: (d / "training_summary.json").write_text("[1"), "not valid JSON"),
        (
            lambda d: (d / "training_summary.json").write_text(json.dumps(summary_for("analyst") | {"dry_run": True})),
            "is a dry run's report",
        ),
    ],
)
def test_publish_refuses_what_is_not_a_valid_adapter(store: ModelStore, tmp_path: Path, damage, message: str) -> None:
    store.publish("analyst", adapter(tmp_path, 1), version="good")
    source = adapter(tmp_path, 2)
    damage(source)
    before = snapshot(store.root)
    with pytest.raises(StoreError, match=message):
        store.publish("analyst", source)
    assert snapshot(store.root) == before


def test_a_symlink_inside_the_source_is_followed(store: ModelStore, tmp_path: Path) -> None:
    source = adapter(tmp_path, 1)
    (source / "tokenizer.json").rename(source / "real-tokenizer.json")
    (source / "tokenizer.json").symlink_to("real-tokenizer.json")
    result = store.publish("analyst", source)
    assert not (result.path / "tokenizer.json").is_symlink()
    assert (result.path / "tokenizer.json").read_bytes() == (source / "real-tokenizer.json").read_bytes()


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/b", "", ".", "..", "a..b", "-x", "x" * 129, "é"])
def test_bad_version_labels_are_refused(store: ModelStore, tmp_path: Path, bad: str) -> None:
    source = adapter(tmp_path)
    with pytest.raises(StoreError, match="invalid version label"):
        store.publish("analyst", source, version=bad)
    with pytest.raises(StoreError, match="invalid adapter name"):
        store.publish("analyst", source, adapter_name=bad or "..")
    assert not store.root.exists()


@pytest.mark.parametrize("bad", ["../x", "/abs", "Upper", "a/b", "", "1abc", "a" * 64])
def test_bad_agent_names_are_refused(store: ModelStore, tmp_path: Path, bad: str) -> None:
    with pytest.raises(StoreError, match="invalid agent name"):
        store.publish(bad, adapter(tmp_path))
    with pytest.raises(StoreError, match="invalid agent name"):
        store.resolve(bad)
    assert not store.root.exists()


def test_map_keeps_foreign_sections_agents_and_entries(store: ModelStore, tmp_path: Path) -> None:
    store.root.mkdir()
    foreign = {
        "base_models": {"mistral-7b-v0.3": {"hf_id": MISTRAL, "peft_support": True, "note": "hand kept"}},
        "agents": {
            "synthesizer": [
                {
                    "base_ref": "mistral-7b-v0.3",
                    "adapter_name": "mistral_synth_v1",
                    "adapter_model_store_path": "synthesizer/adapters/mistral_synth_v1",
                    "max_new_tokens": 512,
                }
            ],
            "scout": [{"base_ref": "llama", "adapter_name": "scout_v1", "adapter_model_store_path": "scout/x"}],
        },
        "vllm_agents": {"scout": {"url": "http://vllm:8000", "models": ["b", "a"]}},
        "comment": "kept by ops",
    }
    map_path = store.root / "AGENT_MODEL_MAP.json"
    map_path.write_text(json.dumps(foreign))

    first = store.publish("synthesizer", adapter(tmp_path, 1, base_model=MISTRAL), adapter_name="synth_a")
    document = store.read_map()
    for key in ("vllm_agents", "comment"):
        assert document[key] == foreign[key]
    assert document["agents"]["scout"] == foreign["agents"]["scout"]
    assert document["base_models"] == foreign["base_models"]  # the existing key for this hf_id is reused
    names = [e["adapter_name"] for e in document["agents"]["synthesizer"]]
    assert names == ["synth_a", "mistral_synth_v1"]
    assert document["agents"]["synthesizer"][1] == foreign["agents"]["synthesizer"][0]
    assert document["agents"]["synthesizer"][0]["base_ref"] == "mistral-7b-v0.3"

    second = store.publish("synthesizer", adapter(tmp_path, 2, base_model=MISTRAL), adapter_name="synth_a")
    entries = store.read_map()["agents"]["synthesizer"]
    assert [e["adapter_version"] for e in entries if e["adapter_name"] == "synth_a"] == [second.version]
    assert len(entries) == 2

    other = store.publish("synthesizer", adapter(tmp_path, 3), adapter_name="synth_b", promote=False)
    assert store.read_map()["agents"]["synthesizer"] == entries  # not promoted: the map is unchanged
    store.promote("synthesizer", other.version)
    document = store.read_map()
    assert [e["adapter_name"] for e in document["agents"]["synthesizer"]] == ["synth_b", "synth_a", "mistral_synth_v1"]
    assert document["base_models"]["tiny-mistral"] == {"hf_id": TINY, "peft_support": True}
    store.rollback("synthesizer")
    document = store.read_map()
    assert [e["adapter_name"] for e in document["agents"]["synthesizer"]] == ["synth_a", "synth_b", "mistral_synth_v1"]
    assert document["agents"]["synthesizer"][0]["adapter_version"] == second.version
    assert first.version != second.version
    assert store.verify().ok


def test_promote_rollback_history(store: ModelStore, tmp_path: Path) -> None:
    v = [store.publish("critic", adapter(tmp_path, i), version=f"v{i}").version for i in (1, 2, 3)]
    assert store.current("critic") == "v3"
    assert store.rollback("critic")["version"] == "v2"
    assert store.rollback("critic")["version"] == "v1"  # an undo stack, not a toggle
    with pytest.raises(StoreNotFound, match="nothing to roll back to"):
        store.rollback("critic")
    assert store.promote("critic", "v3")["previous"] == "v1"
    assert store.promote("critic", "v3") is None  # already in service: no journal line
    assert store.rollback("critic")["version"] == "v1"
    with pytest.raises(StoreNotFound, match="no version 'v9'"):
        store.promote("critic", "v9")
    actions = [(e["action"], e["version"], e["previous"], e["current"]) for e in store.history("critic")]
    assert actions == [
        ("publish", "v1", None, "v1"),
        ("publish", "v2", "v1", "v2"),
        ("publish", "v3", "v2", "v3"),
        ("rollback", "v2", "v3", "v2"),
        ("rollback", "v1", "v2", "v1"),
        ("promote", "v3", "v1", "v3"),
        ("rollback", "v1", "v3", "v1"),
    ]
    assert v == ["v1", "v2", "v3"]
    assert store.read_map()["agents"]["critic"][0]["adapter_version"] == "v1"


def test_no_promote_leaves_current_and_map(store: ModelStore, tmp_path: Path) -> None:
    store.publish("critic", adapter(tmp_path, 1), version="v1")
    before = store.read_map()
    result = store.publish("critic", adapter(tmp_path, 2), version="v2", promote=False)
    assert not result.promoted and store.current("critic") == "v1" and store.read_map() == before
    assert store.history("critic")[-1]["current"] == "v1"
    with pytest.raises(StoreNotFound, match="nothing to roll back to"):
        store.rollback("critic")


def test_gc_keeps_current_rollback_target_and_mapped_versions(store: ModelStore, tmp_path: Path) -> None:
    for i in range(1, 6):
        store.publish("critic", adapter(tmp_path, i), version=f"v{i}", adapter_name="main")
    store.publish("critic", adapter(tmp_path, 9), version="other", adapter_name="side", promote=False)
    store.promote("critic", "other")
    store.promote("critic", "v5")  # map now: main->v5 first, side->other second; rollback target: other
    planned = store.gc("critic", keep=1, dry_run=True)
    assert planned.dry_run and sorted(planned.removed) == ["v1", "v2", "v3", "v4"]
    assert {"v5", "other"} <= set(planned.kept)
    assert len(store.version_labels("critic")) == 6
    done = store.gc("critic", keep=1)
    assert sorted(done.removed) == ["v1", "v2", "v3", "v4"]
    assert sorted(store.version_labels("critic")) == ["other", "v5"]
    assert [e["version"] for e in store.history("critic") if e["action"] == "gc"] == done.removed
    assert store.verify().ok
    assert store.rollback("critic")["version"] == "other"
    assert [p for p in os.listdir(store.root / "critic") if p.startswith(".trash")] == []


def test_verify_names_each_bad_file(store: ModelStore, tmp_path: Path) -> None:
    good = store.publish("critic", adapter(tmp_path, 1), version="good").path
    bad = store.publish("critic", adapter(tmp_path, 2), version="bad").path
    os.chmod(bad, 0o755)
    for name in ("adapter_model.safetensors", "tokenizer.json"):
        os.chmod(bad / name, 0o644)
    with open(bad / "adapter_model.safetensors", "r+b") as handle:
        handle.seek(40)
        handle.write(b"X")
    (bad / "tokenizer.json").unlink()
    (bad / "optimizer.pt").write_bytes(b"sneaked in")
    report = store.verify()
    assert not report.ok
    text = "\n".join(report.problems)
    assert "adapter_model.safetensors is corrupt" in text and "tokenizer.json is missing" in text
    assert "optimizer.pt is not in the manifest" in text
    assert "critic good" not in text
    assert store.verify("critic", "good").ok
    store.promote("critic", "good")
    with pytest.raises(IntegrityError, match="refusing to promote critic to bad"):
        store.promote("critic", "bad")
    assert good.exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda m: m.write_text("{broken"), "not valid JSON"),
        (lambda m: m.write_text(json.dumps({**json.loads(m.read_text()), "r": "eight"})), "manifest schema"),
        (lambda m: m.write_text(json.dumps({**json.loads(m.read_text()), "version": "other"})), "not critic v1"),
    ],
)
def test_a_damaged_manifest_is_an_integrity_error(store: ModelStore, tmp_path: Path, damage, message: str) -> None:
    path = store.publish("critic", adapter(tmp_path, 1), version="v1").path
    os.chmod(path / "manifest.json", 0o644)
    damage(path / "manifest.json")
    with pytest.raises(IntegrityError, match=message):
        store.resolve("critic")
    with pytest.raises(IntegrityError, match=message):
        store.versions("critic")
    assert any(message in p for p in store.verify().problems)


def test_a_version_without_manifest_is_invisible(store: ModelStore, tmp_path: Path) -> None:
    store.publish("critic", adapter(tmp_path, 1), version="v1")
    (store.root / "critic" / "versions" / "half").mkdir()
    (store.root / "critic" / "versions" / "half" / "adapter_config.json").write_text("{}")
    (store.root / "critic" / "versions" / "empty").mkdir()
    assert store.version_labels("critic") == ["v1"]
    with pytest.raises(IntegrityError, match="no manifest.json"):
        store.manifest("critic", "half")
    with pytest.raises(StoreNotFound):
        store.manifest("critic", "empty")
    report = store.verify()
    assert any("half" in p for p in report.problems) and not any("empty" in p for p in report.problems)


def test_symlinks_never_lead_out_of_the_store(store: ModelStore, tmp_path: Path) -> None:
    store.publish("critic", adapter(tmp_path, 1), version="v1")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    versions = store.root / "critic" / "versions"
    (versions / "evil").symlink_to(outside)
    assert store.version_labels("critic") == ["v1"]
    with pytest.raises(IntegrityError, match="symlink"):
        store.manifest("critic", "evil")
    assert any("evil" in p and "symlink" in p for p in store.verify().problems)
    current = store.root / "critic" / "current"
    current.unlink()
    current.symlink_to(outside)
    with pytest.raises(IntegrityError, match="outside critic/versions"):
        store.resolve("critic")
    current.unlink()
    current.symlink_to("versions/../../..")
    with pytest.raises(IntegrityError, match="refusing to follow"):
        store.current("critic")


def test_no_secret_is_ever_stored(store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue123")
    monkeypatch.setenv("MY_API_KEY", "key-value-987654")
    store.publish("critic", adapter(tmp_path, 1, summary=summary_for("critic")))
    store.publish("critic", adapter(tmp_path, 2), promote=False)
    for path in store.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"hf_secretvalue123" not in data and b"key-value-987654" not in data, path
    leaky = summary_for("critic")
    leaky["device"] = "cpu hf_secretvalue123"
    before = snapshot(store.root)
    with pytest.raises(StoreError, match=r"secret.*\$HF_TOKEN"):
        store.publish("critic", adapter(tmp_path, 3, summary=leaky))
    assert snapshot(store.root) == before


def test_a_broken_map_stops_every_write_before_anything_changes(store: ModelStore, tmp_path: Path) -> None:
    store.publish("critic", adapter(tmp_path, 1), version="v1")
    store.publish("critic", adapter(tmp_path, 2), version="v2")
    map_path = store.root / "AGENT_MODEL_MAP.json"
    for broken, message in (('{"agents": ', "not valid JSON"), ('{"agents": {"x": "no"}}', "agent_model_map schema")):
        map_path.write_text(broken)
        before = snapshot(store.root)
        with pytest.raises(IntegrityError, match=message):
            store.publish("critic", adapter(tmp_path, 3))
        with pytest.raises(IntegrityError, match=message):
            store.rollback("critic")
        with pytest.raises(IntegrityError, match=message):
            store.resolve("critic")
        assert snapshot(store.root) == before
        assert any(message in p for p in store.verify().problems)


def test_an_unwritable_root_is_a_store_error(tmp_path: Path) -> None:
    source = adapter(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for root in (a_file, a_file / "store", Path("/proc/jnreg-store")):
        with pytest.raises(StoreError, match="cannot create the store"):
            ModelStore(root).publish("critic", source)
    assert a_file.read_text() == "not a directory"
    with pytest.raises(StoreError, match="not a directory"):
        ModelStore(a_file).agents()


def test_a_lock_held_too_long_is_a_conflict(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store", lock_timeout=0.3)
    store.publish("critic", adapter(tmp_path, 1), version="v1")
    ready = tmp_path / "ready"
    holder = start("hold-lock", str(store.root / "critic" / ".lock"), str(ready), "20")
    try:
        while not ready.exists():
            assert holder.poll() is None, holder.communicate()
        before = snapshot(store.root)
        with pytest.raises(StoreConflict, match=r"locked by another process for more than 0.3 s"):
            store.publish("critic", adapter(tmp_path, 2))
        with pytest.raises(StoreConflict, match="locked"):
            store.rollback("critic")
        assert snapshot(store.root) == before
        assert store.resolve("critic").version == "v1"  # readers never wait for writers
    finally:
        holder.kill()
        holder.communicate()
    store.publish("critic", adapter(tmp_path, 3), version="v3")
    assert store.current("critic") == "v3"


def test_lock_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JNREG_LOCK_TIMEOUT", "2.5")
    assert ModelStore(tmp_path).lock_timeout == 2.5
    assert ModelStore(tmp_path, lock_timeout=1).lock_timeout == 1
    monkeypatch.setenv("JNREG_LOCK_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="JNREG_LOCK_TIMEOUT"):
        ModelStore(tmp_path)


def test_reading_creates_nothing(store: ModelStore, tmp_path: Path) -> None:
    for call in (store.agents, lambda: store.version_labels("critic"), store.read_map):
        call()
    for call in (lambda: store.resolve("critic"), lambda: store.history("critic"), store.verify):
        with pytest.raises(StoreNotFound):
            call()
    assert not store.root.exists()
    store.publish("critic", adapter(tmp_path, 1), version="v1")
    (store.root / "critic" / ".lock").unlink()
    before = snapshot(store.root)
    store.resolve("critic")
    store.versions("critic")
    store.verify()
    store.history("critic")
    store.gc("critic", keep=0, dry_run=True)
    assert snapshot(store.root) == before


def test_resolve_is_absolute_and_torch_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = ModelStore("relative-store")
    store.publish("critic", adapter(tmp_path, 1, base_model=MISTRAL), version="v1")
    found = resolve("critic", store_root="relative-store")
    assert found.adapter_path.is_absolute() and found.adapter_path == tmp_path / "relative-store/critic/versions/v1"
    assert (found.base_model, found.base_ref, found.version) == (MISTRAL, "mistral-7b-v0.3", "v1")
    assert found.digest == compute_digest(found.manifest["files"])
    monkeypatch.setenv("MODEL_STORE_ROOT", str(tmp_path / "relative-store"))
    assert resolve("critic").adapter_path == found.adapter_path
    code = (
        "import sys; from jnreg.registry import resolve; "
        f"resolve('critic', store_root={str(tmp_path / 'relative-store')!r}); "
        "print(','.join(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_agent_map_path_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "etc" / "map.json"
    elsewhere.parent.mkdir()
    store = ModelStore(tmp_path / "store", elsewhere)
    store.publish("critic", adapter(tmp_path, 1), version="v1")
    assert not (store.root / "AGENT_MODEL_MAP.json").exists()
    assert json.loads(elsewhere.read_text())["agents"]["critic"][0]["adapter_version"] == "v1"
    monkeypatch.setenv("AGENT_MODEL_MAP", str(elsewhere))
    assert ModelStore(tmp_path / "store").map_path == elsewhere
    assert ModelStore(tmp_path / "store").verify().ok


def test_foreign_entries_of_other_shapes_do_not_block_publishing(store: ModelStore, tmp_path: Path) -> None:
    store.root.mkdir()
    foreign = {
        "base_models": {},
        "agents": {
            "scout": [{"model": "llama-3-8b", "served_by": "vllm"}],
            "synthesizer": [{"adapter_name": "legacy_notes", "note": "kept by hand"}],
        },
    }
    (store.root / "AGENT_MODEL_MAP.json").write_text(json.dumps(foreign))
    published = store.publish("synthesizer", adapter(tmp_path, 3), adapter_name="synth_b")
    document = store.read_map()
    assert document["agents"]["scout"] == foreign["agents"]["scout"]
    assert document["agents"]["synthesizer"][1] == foreign["agents"]["synthesizer"][0]
    assert document["agents"]["synthesizer"][0]["adapter_version"] == published.version
    assert store.verify().ok, store.verify().problems
    assert store.resolve("synthesizer").version == published.version
    store.gc("synthesizer", keep=1, dry_run=True)


def test_an_entry_jnreg_wrote_must_keep_its_shape(store: ModelStore, tmp_path: Path) -> None:
    store.publish("critic", adapter(tmp_path, 4))
    document = json.loads(store.map_path.read_text())
    del document["agents"]["critic"][0]["adapter_model_store_path"]
    store.map_path.write_text(json.dumps(document))
    with pytest.raises(IntegrityError, match="adapter_model_store_path"):
        store.read_map()


def test_history_pages_from_the_newest(store: ModelStore, tmp_path: Path) -> None:
    for n in (1, 2, 3):
        store.publish("critic", adapter(tmp_path, n), version=f"v{n}")
    store.rollback("critic")
    assert [e["version"] for e in store.history("critic", limit=2)] == ["v3", "v2"]
    assert len(store.history("critic", limit=10)) == 4
    with pytest.raises(StoreError, match="--limit must be 1 or more"):
        store.history("critic", limit=0)
    from click.testing import CliRunner

    from jnreg.cli import cli

    done = CliRunner().invoke(cli, ["--store-root", str(store.root), "store", "history", "critic", "--limit", "1"])
    assert done.exit_code == 0 and done.output.count("\n") == 1 and "rollback" in done.output
    refused = CliRunner().invoke(cli, ["--store-root", str(store.root), "store", "history", "critic", "--limit", "0"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
