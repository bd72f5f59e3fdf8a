"""Served copies: one verified directory per digest, from a local or an s3:// store; nothing unverified served."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from jnreg.errors import IntegrityError, StoreError, StoreNotFound
from jnreg.registry import ModelStore
from jnreg.serve import names
from jnreg.serve.copies import served_copy, verify_copy
from tests.registry_helpers import make_adapter


@pytest.fixture
def copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JNREG_SERVE_CACHE", str(tmp_path / "copies"))
    return tmp_path / "copies"


def _published(store: ModelStore, tmp_path: Path, agent: str = "synthesizer", seed: int = 0, **kw):
    return store.publish(agent, make_adapter(tmp_path / f"src-{agent}-{seed}", seed=seed), **kw)


def test_a_local_version_is_served_from_a_verified_copy_named_by_its_digest(tmp_path, copies):
    store = ModelStore(tmp_path / "store")
    result = _published(store, tmp_path)
    served = served_copy(store, "synthesizer", result.version)
    assert served.path == copies / result.digest and served.digest == result.digest
    assert served.rank == 8 and served.base_model == "jnreg:tiny-mistral"
    assert verify_copy(served.path, result.manifest) == []
    assert sorted(os.listdir(served.path)) == sorted([f["path"] for f in result.manifest["files"]] + ["manifest.json"])
    assert not os.access(served.path, os.W_OK) or os.geteuid() == 0
    assert served_copy(store, "synthesizer", result.version) == served  # kept, checked again


def test_a_tampered_or_partial_store_version_is_refused_and_leaves_no_copy(tmp_path, copies):
    store = ModelStore(tmp_path / "store")
    result = _published(store, tmp_path)
    weights = result.path / "adapter_model.safetensors"
    os.chmod(result.path, 0o755)
    os.chmod(weights, 0o644)
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        served_copy(store, "synthesizer", result.version)
    weights.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        served_copy(store, "synthesizer", result.version)
    assert not (copies / result.digest).exists()
    assert [p.name for p in copies.iterdir() if not p.name.endswith(".lock")] == []


def test_a_copy_changed_after_it_was_made_is_replaced_not_served(tmp_path, copies):
    store = ModelStore(tmp_path / "store")
    result = _published(store, tmp_path)
    served = served_copy(store, "synthesizer", result.version)
    os.chmod(served.path, 0o755)
    (served.path / "extra.bin").write_bytes(b"planted")
    assert any("not in the manifest" in p for p in verify_copy(served.path, result.manifest))
    again = served_copy(store, "synthesizer", result.version)
    assert verify_copy(again.path, result.manifest) == [] and not (again.path / "extra.bin").exists()


def test_unknown_names_raise_store_errors_never_reach_the_filesystem(tmp_path, copies):
    store = ModelStore(tmp_path / "store")
    _published(store, tmp_path)
    with pytest.raises(StoreNotFound):
        served_copy(store, "synthesizer", "v999")
    with pytest.raises(StoreNotFound):
        served_copy(store, "critic", "v1")
    for agent, version in [("synthesizer", "../x"), ("../etc", "v1"), ("synthesizer", "a/b"), ("x\x00", "v1")]:
        with pytest.raises(StoreError):
            served_copy(store, agent, version)


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("synthesizer", ("synthesizer", None)),
        ("synthesizer@v20261201-1200", ("synthesizer", "v20261201-1200")),
        ("fact_checker@1.2_rc-3", ("fact_checker", "1.2_rc-3")),
        ("../../etc/passwd", None),
        ("/etc/passwd", None),
        ("synthesizer@..", None),
        ("synthesizer@a..b", None),
        ("synthesizer@v1/x", None),
        ("synthesizer@", None),
        ("syn\x00thesizer", None),
        ("s" * 300, None),
        ("Synthesizer", None),
        (None, None),
        (7, None),
    ],
)
def test_served_names(name, parsed):
    assert names.parse(name) == parsed


def test_adapter_ids_come_from_digests():
    first, second = "ab" * 32, "ab" * 7 + "cd" * 25
    assert names.adapter_id(first) == names.adapter_id(first) > 0
    assert names.adapter_id(first) != names.adapter_id("0" * 64)
    assert names.adapter_id("0" * 64) == 1 and names.adapter_id(second) != names.adapter_id("cd" * 32)


class CountingStore(ModelStore):
    """A store that counts how often a version's files are fetched (downloaded, on an object store)."""

    fetches = 0

    def resolve(self, agent, version=None):
        type(self).fetches += 1
        return super().resolve(agent, version)


def test_an_object_store_version_is_downloaded_once_however_many_ask_at_once(s3_root, tmp_path, copies):
    store = CountingStore(s3_root)
    result = _published(store, tmp_path)
    CountingStore.fetches = 0
    found, errors = [], []

    def ask() -> None:
        try:
            found.append(served_copy(store, "synthesizer", result.version))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(found) == 8 and len({f.path for f in found}) == 1
    assert CountingStore.fetches == 1
    assert found[0].path == copies / result.digest and verify_copy(found[0].path, result.manifest) == []


def test_a_corrupt_object_is_refused(s3_root, tmp_path, copies):
    from jnreg.registry.storage.bucket import Bucket
    from jnreg.registry.storage.object_layout import version_key

    store = ModelStore(s3_root)
    result = _published(store, tmp_path)
    Bucket(s3_root).put(version_key("synthesizer", result.version, "adapter_model.safetensors"), b"not the weights")
    with pytest.raises(IntegrityError):
        served_copy(store, "synthesizer", result.version)
    assert not (copies / result.digest).exists()
