"""Signed versions: an attacker who can write to the store cannot get an adapter past a host's trust policy.

Every attack runs on a local store and on the object store (moto's S3 server), and is refused by resolve,
load, the CLI, verify and (from object storage) pull, while what is in service stays as it was.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from jnreg.errors import SignatureError, StoreConflict, StoreError
from jnreg.registry import ModelStore, load, resolve
from jnreg.registry.pull import pull
from jnreg.registry.signing import SIGNATURE, TRUSTED_KEYS_ENV, policy_from
from jnreg.registry.storage.bucket import Bucket
from jnreg.schemas import errors as schema_errors
from jnreg.serve.copies import served_copy
from tests.helpers import heavy_imports_after
from tests.registry_helpers import make_adapter, safetensors_bytes, summary_for

KINDS = ("local", "s3")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (private key PEM, public key PEM): the publisher's keys a and b, an attacker's, a retired one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    where = tmp_path_factory.mktemp("keys")
    found = {}
    for name in ("a", "b", "attacker", "retired"):
        key = ec.generate_private_key(ec.SECP256R1())
        private, public = where / f"{name}.pem", where / f"{name}.pub"
        # The format `openssl ecparam -name prime256v1 -genkey` writes.
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        found[name] = (private, public)
    return found


@pytest.fixture(params=KINDS)
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store root: a local directory, or a fresh bucket on the test S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_env")
    bucket = f"jnreg-{uuid.uuid4().hex[:16]}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT"), timeout=10).read()
    return f"s3://{bucket}/store"


@pytest.fixture(autouse=True)
def _no_policy_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (TRUSTED_KEYS_ENV, "JNREG_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)


# What an attacker with write access to the store's files or bucket does, through the storage itself.


def _read(root: str, key: str) -> bytes | None:
    if root.startswith("s3://"):
        got = Bucket(root).get(key)
        return got[0] if got else None
    path = Path(root) / key
    return path.read_bytes() if path.exists() else None


def _write(root: str, key: str, data: bytes) -> None:
    if root.startswith("s3://"):
        Bucket(root).put(key, data)
        return
    path = Path(root) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    if path.exists():
        os.chmod(path, 0o644)
    path.write_bytes(data)


def _delete(root: str, key: str) -> None:
    if root.startswith("s3://"):
        Bucket(root).delete([key])
    else:
        os.chmod((Path(root) / key).parent, 0o755)
        (Path(root) / key).unlink()


def _digest(files: list[dict]) -> str:
    text = "\n".join(f"{f['path']}\t{f['sha256']}" for f in sorted(files, key=lambda f: f["path"]))
    return hashlib.sha256(text.encode()).hexdigest()


def _dump(document: dict) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _copy_version(root: str, agent: str, label: str, to_agent: str, to_label: str) -> None:
    """Copy a version with its signature elsewhere, its manifest rewritten to match and its digest recomputed."""
    manifest = json.loads(_read(root, f"{agent}/versions/{label}/manifest.json"))
    for item in manifest["files"]:
        _write(
            root,
            f"{to_agent}/versions/{to_label}/{item['path']}",
            _read(root, f"{agent}/versions/{label}/{item['path']}"),
        )
    _write(root, f"{to_agent}/versions/{to_label}/{SIGNATURE}", _read(root, f"{agent}/versions/{label}/{SIGNATURE}"))
    manifest.update(agent=to_agent, version=to_label)
    if manifest["training_summary"] is not None:
        manifest["training_summary"].update(agent=to_agent, adapter_version=to_label)
    manifest["digest"] = _digest(manifest["files"])
    _write(root, f"{to_agent}/versions/{to_label}/manifest.json", _dump(manifest))


def swap_file(root: str, keys: dict) -> tuple[str, str]:
    weights = safetensors_bytes({"base_model.model.q_proj.lora_A.weight": [6.66] * 16})
    manifest = json.loads(_read(root, "critic/versions/v2/manifest.json"))
    for item in manifest["files"]:
        if item["path"] == "adapter_model.safetensors":
            item.update(size=len(weights), sha256=hashlib.sha256(weights).hexdigest())
    manifest["digest"] = _digest(manifest["files"])
    _write(root, "critic/versions/v2/adapter_model.safetensors", weights)
    _write(root, "critic/versions/v2/manifest.json", _dump(manifest))
    return "critic", "v2"


def edit_base_model(root: str, keys: dict) -> tuple[str, str]:
    manifest = json.loads(_read(root, "critic/versions/v2/manifest.json"))
    manifest["base_model"] = "evil/base-model"
    manifest["digest"] = _digest(manifest["files"])
    _write(root, "critic/versions/v2/manifest.json", _dump(manifest))
    return "critic", "v2"


def copy_to_other_agent(root: str, keys: dict) -> tuple[str, str]:
    _copy_version(root, "critic", "v2", "analyst", "v2")
    return "analyst", "v2"


def copy_to_other_label(root: str, keys: dict) -> tuple[str, str]:
    _copy_version(root, "critic", "v2", "critic", "v9")
    return "critic", "v9"


def untrusted_key(root: str, keys: dict) -> tuple[str, str]:
    # The attacker signs the version exactly as jnreg would, with a key of their own.
    ModelStore(root).sign("critic", "v2", keys["attacker"][0], replace=True)
    return "critic", "v2"


def signature_deleted(root: str, keys: dict) -> tuple[str, str]:
    _delete(root, f"critic/versions/v2/{SIGNATURE}")
    return "critic", "v2"


def signature_truncated(root: str, keys: dict) -> tuple[str, str]:
    data = _read(root, f"critic/versions/v2/{SIGNATURE}")
    _write(root, f"critic/versions/v2/{SIGNATURE}", data[: len(data) // 2])
    return "critic", "v2"


def signature_not_json(root: str, keys: dict) -> tuple[str, str]:
    _write(root, f"critic/versions/v2/{SIGNATURE}", b"\x00not a signature at all")
    return "critic", "v2"


def signed_by_revoked_key(root: str, keys: dict) -> tuple[str, str]:
    ModelStore(root).sign("critic", "v2", keys["retired"][0], replace=True)
    return "critic", "v2"  # the policy no longer lists the retired key


def forged_statement(root: str, keys: dict) -> tuple[str, str]:
    """The statement rewritten to match swapped files, the old signature kept."""
    swap_file(root, keys)
    bundle = json.loads(_read(root, f"critic/versions/v2/{SIGNATURE}"))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    manifest = _read(root, "critic/versions/v2/manifest.json")
    for item in statement["predicate"]["resources"]:
        if item["name"] == "manifest.json":
            item["digest"] = hashlib.sha256(manifest).hexdigest()
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    _write(root, f"critic/versions/v2/{SIGNATURE}", json.dumps(bundle).encode())
    return "critic", "v2"


ATTACKS = [
    swap_file,
    edit_base_model,
    copy_to_other_agent,
    copy_to_other_label,
    untrusted_key,
    signature_deleted,
    signature_truncated,
    signature_not_json,
    signed_by_revoked_key,
    forged_statement,
]


def _publish_two(root: str, tmp_path: Path, key: Path) -> ModelStore:
    """critic v1 in service and v2 beside it, both signed with ``key``."""
    store = ModelStore(root)
    for seed, label in ((1, "v1"), (2, "v2")):
        source = make_adapter(tmp_path / label, seed=seed, summary=summary_for("critic"))
        store.publish("critic", source, version=label, promote=label == "v1", sign_key=key)
    return store


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda f: f.__name__)
def test_every_attack_is_refused_and_nothing_in_service_changes(root: str, tmp_path: Path, keys, attack) -> None:
    trusted = [keys["a"][1]]
    store = _publish_two(root, tmp_path, keys["a"][0])
    mirror = ModelStore(tmp_path / "mirror")
    if root.startswith("s3://"):
        pull(store, mirror, ["critic"])
    assert resolve("critic", "v2", store_root=root, trusted_keys=trusted).version == "v2"
    serving = ModelStore(root)  # what the vLLM resolver reads through, with the host's policy
    serving.trust_keys(trusted)
    assert served_copy(serving, "critic", "v2").version == "v2"  # a verified copy now exists for v2's digest

    agent, label = attack(root, keys)

    with pytest.raises(SignatureError, match=rf"^refusing {agent} {label}: "):
        served_copy(serving, agent, label)

    with pytest.raises(SignatureError, match=rf"^refusing {agent} {label}: "):
        resolve(agent, label, store_root=root, trusted_keys=trusted)
    with pytest.raises(SignatureError, match=rf"^refusing {agent} {label}: "):
        load(agent, label, store_root=root, trusted_keys=trusted, quantization=None)
    done = CliRunner().invoke(
        cli, ["--store-root", root, "--trusted-key", str(trusted[0]), "store", "resolve", agent, "--version", label]
    )
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert done.output.strip().count("\n") == 0 and f"refusing {agent} {label}: " in done.output
    report = ModelStore(root)
    report.trust_keys(trusted)
    problems = report.verify(agent).problems
    assert any(p.startswith(f"{agent} {label}: ") for p in problems), problems

    # The version in service is untouched and still resolves under the policy.
    assert store.current("critic") == "v1"
    assert resolve("critic", store_root=root, trusted_keys=trusted).version == "v1"
    if root.startswith("s3://"):
        before = (mirror.root / "AGENT_MODEL_MAP.json").read_bytes()
        source = ModelStore(root)
        source.trust_keys(trusted)
        with pytest.raises(SignatureError, match=rf"refusing {agent} {label}: "):
            pull(source, mirror, [agent], every=True)
        flags = ["--trusted-key", str(trusted[0]), "store", "pull", root, str(mirror.root), agent, "--all"]
        done = CliRunner().invoke(cli, flags)
        assert done.exit_code == 1 and f"refusing {agent} {label}: " in done.output
        assert (mirror.root / "AGENT_MODEL_MAP.json").read_bytes() == before
        assert mirror.current("critic") == "v1" and label not in mirror.version_labels(agent)
        mirror.trust_keys(trusted)
        assert mirror.resolve("critic").version == "v1" and mirror.verify().ok


@pytest.mark.parametrize("attack", [swap_file, copy_to_other_label], ids=lambda f: f.__name__)
def test_the_digest_alone_does_not_catch_a_hostile_copy(root: str, tmp_path: Path, keys, attack) -> None:
    """Why signatures: without a policy the same rewritten version is accepted."""
    _publish_two(root, tmp_path, keys["a"][0])
    agent, label = attack(root, keys)
    assert resolve(agent, label, store_root=root).version == label


def test_rotation_two_keys_at_once_and_revocation(root: str, tmp_path: Path, keys, monkeypatch) -> None:
    store = ModelStore(root)
    for seed, label, key in ((1, "v1", "a"), (2, "v2", "b")):
        store.publish("critic", make_adapter(tmp_path / label, seed=seed), version=label, sign_key=keys[key][0])
    both = f"{keys['a'][1]}{os.pathsep}{keys['b'][1]}"
    monkeypatch.setenv(TRUSTED_KEYS_ENV, both)
    assert resolve("critic", "v1", store_root=root).version == "v1"
    assert resolve("critic", "v2", store_root=root).version == "v2"
    assert ModelStore(root).verify().ok

    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(keys["b"][1]))  # key a revoked
    with pytest.raises(SignatureError, match=r"refusing critic v1: it is signed by key sha256:\w+, which this host"):
        resolve("critic", "v1", store_root=root)
    assert resolve("critic", store_root=root).version == "v2"
    done = CliRunner().invoke(cli, ["--store-root", root, "store", "verify", "critic"])
    assert done.exit_code == 1 and "critic v1: it is signed by key" in done.output
    assert "problem: critic v2" not in done.output

    fingerprints = {n: next(iter(policy_from([keys[n][1]]).keys)) for n in ("a", "b")}
    done = CliRunner().invoke(cli, ["--store-root", root, "store", "list", "critic", "--json"])
    rows = {row["version"]: row["signer"] for row in json.loads(done.stdout)["versions"]}
    assert rows == {"v1": fingerprints["a"], "v2": fingerprints["b"]}


def test_store_sign_adds_a_signature_without_changing_the_version(root: str, tmp_path: Path, keys) -> None:
    store = ModelStore(root)
    published = store.publish("critic", make_adapter(tmp_path / "s", summary=summary_for("critic")), version="v1")
    assert published.signer is None
    names = [item["path"] for item in published.manifest["files"]] + ["manifest.json"]
    before = {name: _read(root, f"critic/versions/v1/{name}") for name in names}
    trusted = [keys["a"][1]]
    with pytest.raises(SignatureError, match="refusing critic v1: it is unsigned"):
        resolve("critic", store_root=root, trusted_keys=trusted)

    runner = CliRunner()
    done = runner.invoke(cli, ["--store-root", root, "store", "sign", "critic", "v1", "--sign-key", str(keys["a"][0])])
    assert done.exit_code == 0, done.output
    assert {name: _read(root, f"critic/versions/v1/{name}") for name in names} == before
    assert resolve("critic", store_root=root, trusted_keys=trusted).digest == published.digest
    assert ModelStore(root).verify().ok

    done = runner.invoke(cli, ["--store-root", root, "store", "sign", "critic", "v1", "--sign-key", str(keys["b"][0])])
    assert done.exit_code == 1 and "already signed by key" in done.output
    with pytest.raises(StoreConflict):
        store.sign("critic", "v1", keys["b"][0])
    store.sign("critic", "v1", keys["b"][0], replace=True)
    assert resolve("critic", store_root=root, trusted_keys=[keys["b"][1]]).version == "v1"
    with pytest.raises(SignatureError):
        resolve("critic", store_root=root, trusted_keys=trusted)
    if not root.startswith("s3://"):
        assert not [n for n in os.listdir(Path(root) / "critic") if n.startswith(".tmp")]
        assert oct(os.stat(Path(root) / "critic/versions/v1").st_mode & 0o777) == "0o555"


def test_a_tampered_version_is_not_signed(root: str, tmp_path: Path, keys) -> None:
    store = ModelStore(root)
    store.publish("critic", make_adapter(tmp_path / "s"), version="v1")
    _write(root, "critic/versions/v1/tokenizer.json", b'{"tampered": true}')
    with pytest.raises(StoreError, match="refusing to sign critic v1: .*tokenizer.json"):
        store.sign("critic", "v1", keys["a"][0])
    assert store.signer("critic", "v1") is None


def test_without_a_policy_everything_works_and_show_names_the_signer(root: str, tmp_path: Path, keys) -> None:
    store = ModelStore(root)
    store.publish("critic", make_adapter(tmp_path / "u", seed=1), version="v1")
    store.publish("critic", make_adapter(tmp_path / "s", seed=2), version="v2", sign_key=keys["a"][0])
    assert resolve("critic", "v1", store_root=root).version == "v1"
    runner = CliRunner()
    unsigned = runner.invoke(cli, ["--store-root", root, "store", "show", "critic", "v1"])
    signed = runner.invoke(cli, ["--store-root", root, "store", "show", "critic", "v2", "--json"])
    assert "signature:   unsigned" in unsigned.output
    fingerprint = next(iter(policy_from([keys["a"][1]]).keys))
    assert json.loads(signed.stdout)["signer"] == fingerprint
    assert "no trust policy" in json.loads(signed.stdout)["signature"]
    assert store.verify().ok

    # A signature that no longer matches its version is a problem even with no policy to judge its key.
    edit_manifest = json.loads(_read(root, "critic/versions/v2/manifest.json"))
    edit_manifest["base_model"] = "evil/base-model"
    _write(root, "critic/versions/v2/manifest.json", _dump(edit_manifest))
    problems = ModelStore(root).verify().problems
    assert problems == ["critic v2: the manifest (agent, label, base model or file list) differs from what was signed"]


def test_the_bundle_is_an_oms_signature_the_library_verifies(tmp_path: Path, keys, s3_env) -> None:
    """model_signing's own command verifies a version where it is stored, in a pull's mirror and in the cache."""
    tool = Path(sys.executable).with_name("model_signing")
    assert tool.exists(), "model-signing is a dev dependency"
    store = ModelStore(tmp_path / "store")
    published = store.publish(
        "critic", make_adapter(tmp_path / "s", summary=summary_for("critic")), version="v1", sign_key=keys["a"][0]
    )
    bundle = json.loads((published.path / SIGNATURE).read_bytes())
    assert schema_errors("signature_bundle", bundle) == []
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert schema_errors("signature_statement", statement) == []
    assert statement["predicate"]["jnreg"]["agent"] == "critic" and statement["predicate"]["jnreg"]["version"] == "v1"

    def verify(directory: Path) -> subprocess.CompletedProcess:
        command = ["verify", "key", str(directory), "--signature", str(directory / SIGNATURE)]
        return subprocess.run(
            [str(tool), *command, "--public_key", str(keys["a"][1])], capture_output=True, text=True, timeout=120
        )

    done = verify(published.path)
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stdout + done.stderr

    bucket = f"jnreg-{uuid.uuid4().hex[:16]}"
    urllib.request.urlopen(urllib.request.Request(f"{s3_env}/{bucket}", method="PUT"), timeout=10).read()
    remote = ModelStore(f"s3://{bucket}/store")
    remote.publish("critic", make_adapter(tmp_path / "r", seed=3), version="r1", sign_key=keys["a"][0])
    mirror = ModelStore(tmp_path / "mirror")
    pull(remote, mirror, ["critic"])
    assert verify(mirror.version_dir("critic", "r1")).returncode == 0
    assert verify(remote.resolve("critic").adapter_path).returncode == 0  # the cache copy a loader reads

    # A one-byte change fails the library's check too, naming the file.
    copy = tmp_path / "copy"
    shutil.copytree(published.path, copy)
    os.chmod(copy, 0o755)
    target = copy / "tokenizer.json"
    os.chmod(target, 0o644)
    target.write_bytes(target.read_bytes()[:-1] + b" ")
    done = verify(copy)
    assert done.returncode == 1 and "tokenizer.json" in done.stdout + done.stderr

    # And the other way round: a version signed with the library's own command passes jnreg's policy.
    theirs = tmp_path / "theirs"
    shutil.copytree(published.path, theirs, ignore=shutil.ignore_patterns(SIGNATURE))
    command = ["sign", "key", str(theirs), "--private_key", str(keys["b"][0]), "--signature", str(tmp_path / "b.sig")]
    assert subprocess.run([str(tool), *command], capture_output=True, timeout=120).returncode == 0
    _write(str(store.root), f"critic/versions/v1/{SIGNATURE}", (tmp_path / "b.sig").read_bytes())
    assert resolve("critic", store_root=store.root, trusted_keys=[keys["b"][1]]).version == "v1"


def test_no_private_key_content_is_stored_or_shown(tmp_path: Path, keys, monkeypatch) -> None:
    private = keys["a"][0]
    body = [line for line in private.read_bytes().splitlines() if line and not line.startswith(b"-----")]
    monkeypatch.setenv("JNREG_SIGNING_KEY", str(private))
    store = ModelStore(tmp_path / "store")
    published = store.publish("critic", make_adapter(tmp_path / "s", summary=summary_for("critic")), version="v1")
    assert published.signer is not None
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():
            assert not any(line in path.read_bytes() for line in body), path

    # A model card that carries the key is refused.
    leaky = make_adapter(tmp_path / "leaky", seed=2)
    (leaky / "README.md").write_bytes(b"# notes\n" + private.read_bytes())
    with pytest.raises(StoreError, match=r"refusing to store a secret: \S*README.md contains part of the private key"):
        store.publish("critic", leaky, version="v2")
    assert "v2" not in store.version_labels("critic")

    # Keys that cannot be used are named by path only, never by content.
    broken = tmp_path / "broken.pem"
    broken.write_bytes(private.read_bytes()[:-60])
    runner = CliRunner()
    for flags, expected in (
        (["--sign-key", str(broken)], f"signing key {broken} is not a PEM private key"),
        (["--sign-key", str(keys["a"][1])], "is not a PEM private key"),
    ):
        done = runner.invoke(cli, ["--store-root", str(tmp_path / "store"), "store", "publish", "critic",
                                   str(tmp_path / "s"), *flags])  # fmt: skip
        assert done.exit_code == 1 and expected in done.output, done.output
        assert not any(line.decode() in done.output for line in body)
    done = runner.invoke(cli, ["--store-root", str(tmp_path / "store"), "--trusted-key", str(private),
                               "store", "resolve", "critic"])  # fmt: skip
    assert done.exit_code == 1 and "is a private key; trust a public key" in done.output
    assert not any(line.decode() in done.output for line in body)


def test_a_missing_trusted_key_is_an_error_not_an_open_door(tmp_path: Path, keys, monkeypatch) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s"), version="v1")
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(tmp_path / "gone.pub"))
    with pytest.raises(StoreError, match="cannot read trusted key .*gone.pub"):
        resolve("critic", store_root=tmp_path / "store")


def test_resolve_under_a_policy_imports_no_torch(tmp_path: Path, keys) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s"), version="v1", sign_key=keys["a"][0])
    argv = ["--store-root", str(tmp_path / "store"), "--trusted-key", str(keys["a"][1]), "store", "resolve", "critic"]
    assert heavy_imports_after(argv) == []


def test_train_publish_with_a_bad_key_stops_before_training(builtin_agents, tmp_path: Path, keys) -> None:
    """A signed train --publish, over two processes, is tested with the data-parallel launch."""
    out = tmp_path / "out"
    done = CliRunner().invoke(
        cli,
        ["--store-root", str(tmp_path / "store"), "train", "fact_checker", "--model_name_or_path", "jnreg:tiny-mistral",
         "--output-dir", str(out), "--max-steps", "1", "--publish", "--sign-key", str(keys["a"][1])],
    )  # fmt: skip
    assert done.exit_code == 1 and "is not a PEM private key" in done.output
    assert not (out / "adapter_model.safetensors").exists()
    done = CliRunner().invoke(cli, ["train", "fact_checker", "--sign-key", str(keys["a"][0]), "--dry-run"])
    assert done.exit_code == 1 and "--sign-key signs what is published: add --publish" in done.output


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "critic", "--quantization", "none"],
        ["export", "critic", "--merged", "{tmp}/merged"],
        ["generate", "critic", "A claim.", "--quantization", "none"],
        ["store", "show", "critic"],
    ],
    ids=lambda c: c[0] if c[0] != "store" else "store-show",
)
def test_commands_that_read_an_adapter_refuse_under_the_policy(
    builtin_agents, tmp_path: Path, keys, command, monkeypatch
) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "s", summary=summary_for("critic")), version="v1")
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(keys["a"][1]))
    argv = ["--store-root", str(tmp_path / "store"), *(a.replace("{tmp}", str(tmp_path)) for a in command)]
    done = CliRunner().invoke(cli, argv)
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert done.output.strip().splitlines()[-1] == (
        "Error: refusing critic v1: it is unsigned (no model.sig) and this host trusts only signed versions"
    )
    assert not (tmp_path / "merged").exists()


def test_load_under_a_policy_returns_the_signed_adapter(tmp_path: Path, keys) -> None:
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from jnreg.core.models.loading import load_base_model, load_tokenizer

    base = load_base_model("jnreg:tiny-mistral", None)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    out = tmp_path / "out"
    get_peft_model(base, config).save_pretrained(out)
    load_tokenizer("jnreg:tiny-mistral").save_pretrained(out)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = "jnreg:tiny-mistral"
    (out / "adapter_config.json").write_text(json.dumps(adapter_config))
    ModelStore(tmp_path / "store").publish("analyst", out, version="v1", sign_key=keys["a"][0])

    model, _ = load("analyst", store_root=tmp_path / "store", quantization=None, trusted_keys=[keys["a"][1]])
    assert type(model).__name__.startswith("PeftModel")
    with pytest.raises(SignatureError, match="refusing analyst v1: it is signed by key"):
        load("analyst", store_root=tmp_path / "store", quantization=None, trusted_keys=[keys["b"][1]])
