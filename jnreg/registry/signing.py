"""Version signatures in the OpenSSF model signing (OMS) format, and the trust policy that checks them.

A signature is ``<version>/model.sig``: a Sigstore bundle whose DSSE envelope signs an in-toto
statement listing every file of the version with its sha256, ``manifest.json`` included. The
manifest names the agent, the version label and the base model, so signing it binds the files to
their place; the statement repeats those claims under ``predicate.jnreg``. ``model_signing verify
key <version dir> --signature <version dir>/model.sig --public_key PUB`` verifies a version as it
is stored. The bundle is built from the sha256s the manifest already holds, so signing reads no
file again, and it is checked with ``cryptography`` alone, so resolving stays light.

Trust comes only from the reading host: ``JNREG_TRUSTED_KEYS`` (PEM public key files separated by
``:``) or the keys given in code or on the command line; never from anything in the store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.errors import IntegrityError, SignatureError, StoreError
from jnreg.fsutil import dump_json
from jnreg.names import MANIFEST
from jnreg.schemas import errors as schema_errors

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

SIGNATURE = "model.sig"
SIGNING_KEY_ENV = "JNREG_SIGNING_KEY"
TRUSTED_KEYS_ENV = "JNREG_TRUSTED_KEYS"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# What model_signing itself leaves out of a directory's hash; the signature file must be among them.
IGNORED_PATHS = [".git", ".gitattributes", ".github", ".gitignore", SIGNATURE]
CURVES = {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521}
MAX_SIGNATURE_BYTES = 16 * 1024 * 1024


def _hash_for(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> hashes.HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    return {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}[CURVES[key.curve.name]]()


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the key's PEM SubjectPublicKeyInfo: the hint model_signing puts in the bundle."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def short(fp: str) -> str:
    """A fingerprint as people read it."""
    return f"sha256:{fp[:16]}"


def pae(payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature is over."""
    return b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload), payload)


def _curve_checked(key: PrivateKeyTypes | PublicKeyTypes, where: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name not in CURVES:
        raise StoreError(f"{where} is not an elliptic-curve key on P-256, P-384 or P-521 (as model_signing takes)")
    return key


@dataclass(frozen=True)
class Signer:
    """A loaded private key: signs versions. Its content is never printed, stored or put in an error."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    fingerprint: str
    where: str

    def sign(self, manifest: dict[str, Any]) -> bytes:
        """The bytes of ``model.sig`` for the version ``manifest`` describes (as stored, by ``dump_json``)."""
        from cryptography.hazmat.primitives.asymmetric import ec

        payload = json.dumps(statement_for(manifest), indent=2, sort_keys=True).encode("utf-8")
        signature = self.key.sign(pae(payload), ec.ECDSA(_hash_for(self.key)))
        bundle = {
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": self.fingerprint}, "tlogEntries": []},
            "dsseEnvelope": {
                "payload": base64.b64encode(payload).decode("ascii"),
                "payloadType": PAYLOAD_TYPE,
                "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
            },
        }
        return dump_json(bundle).encode("utf-8")


def _key_file(path: Path | str, where: str) -> bytes:
    """The bytes of the PEM file at ``path`` (``where`` names it in the error)."""
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read {where}: {exc.strerror or exc}") from None


def load_signer(path: Path | str | None = None) -> Signer | None:
    """The signing key at ``path``, else at $JNREG_SIGNING_KEY; None when neither names one."""
    given = str(path) if path else os.environ.get(SIGNING_KEY_ENV, "")
    if not given:
        return None
    where = f"signing key {given}"
    data = _key_file(given, where)
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise StoreError(f"{where} is encrypted; give an unencrypted PEM EC private key") from None
    except (ValueError, UnsupportedAlgorithm):
        # cryptography's message may quote the input; say only what is wrong, never what is in the file.
        raise StoreError(f"{where} is not a PEM private key") from None
    from jnreg.registry.no_secrets import remember_secret

    remember_secret(data, where)
    _curve_checked(key, where)
    return Signer(key=key, fingerprint=fingerprint(key.public_key()), where=where)


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """sha256 of ``manifest.json`` as the store writes it."""
    return hashlib.sha256(dump_json(manifest).encode("utf-8")).hexdigest()


def expected_resources(manifest: dict[str, Any]) -> dict[str, str]:
    """name -> sha256 of every file a signature of this version must list."""
    listed = {item["path"]: item["sha256"] for item in manifest["files"]}
    return {**listed, MANIFEST: manifest_sha256(manifest)}


def _root_digest(resources: list[dict[str, str]]) -> str:
    """The subject's digest: sha256 over the resources' raw digests, in their order (as model_signing does)."""
    hasher = hashlib.sha256()
    for item in resources:
        hasher.update(bytes.fromhex(item["digest"]))
    return hasher.hexdigest()


def statement_for(manifest: dict[str, Any]) -> dict[str, Any]:
    """The in-toto statement a signature of the version in ``manifest`` signs."""
    resources = [
        {"name": name, "algorithm": "sha256", "digest": sha}
        for name, sha in sorted(expected_resources(manifest).items())
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": manifest["version"], "digest": {"sha256": _root_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": IGNORED_PATHS,
            },
            "resources": resources,
            "jnreg": claims_of(manifest),
        },
    }


def claims_of(manifest: dict[str, Any]) -> dict[str, str]:
    return {
        "agent": manifest["agent"],
        "version": manifest["version"],
        "base_model": manifest["base_model"],
        "digest": manifest["digest"],
    }


@dataclass(frozen=True)
class Bundle:
    """A parsed ``model.sig``: the key it names, what was signed and the signature (not yet verified)."""

    hint: str | None
    payload: bytes
    signature: bytes

    def statement(self) -> dict[str, Any]:
        try:
            document = json.loads(self.payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise IntegrityError(f"{SIGNATURE} signs something that is not a JSON statement") from None
        problems = schema_errors("signature_statement", document)
        if problems:
            raise IntegrityError(f"{SIGNATURE} signs a statement that is not an OMS statement ({problems[0]})")
        return document


def parse_bundle(data: bytes) -> Bundle:
    """``model.sig``'s parts; IntegrityError when it is not an OMS bundle."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise IntegrityError(f"{SIGNATURE} is {len(data)} bytes, too large to be a signature")
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IntegrityError(f"{SIGNATURE} is not JSON (truncated or overwritten?)") from None
    problems = schema_errors("signature_bundle", document)
    if problems:
        raise IntegrityError(f"{SIGNATURE} is not a Sigstore bundle of an OMS signature ({problems[0]})")
    envelope = document["dsseEnvelope"]
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        signature = base64.b64decode(envelope["signatures"][0]["sig"], validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{SIGNATURE} holds a payload or signature that is not base64") from None
    return Bundle(hint=document["verificationMaterial"]["publicKey"].get("hint"), payload=payload, signature=signature)


def signer_of(data: bytes | None) -> str | None:
    """The fingerprint of the key a ``model.sig`` says signed it (unverified); None for no or unreadable signature."""
    if data is None:
        return None
    try:
        return parse_bundle(data).hint
    except IntegrityError:
        return None


def statement_problems(statement: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Every way the signed statement differs from the version as stored and where it was found."""
    problems = []
    resources = statement["predicate"]["resources"]
    signed = {item["name"]: item["digest"] for item in resources}
    expected = expected_resources(manifest)
    if len(signed) != len(resources):
        problems.append("the signed statement lists a file twice")
    for name in sorted(set(expected) | set(signed)):
        if name not in signed:
            problems.append(f"{name} is not in the signed statement")
        elif name not in expected:
            problems.append(f"the signed statement lists {name}, which the version does not have")
        elif signed[name] != expected[name]:
            what = "the manifest (agent, label, base model or file list)" if name == MANIFEST else name
            problems.append(f"{what} differs from what was signed")
    if statement["subject"][0]["digest"]["sha256"] != _root_digest(resources):
        problems.append("the signed statement's subject digest does not match its file list")
    claims = statement["predicate"].get("jnreg")
    if claims is not None:
        for name, value in claims_of(manifest).items():
            if claims.get(name) != value:
                problems.append(f"it was signed as {name} {claims.get(name)!r}, not {value!r}")
    return problems


@dataclass(frozen=True)
class TrustPolicy:
    """The public keys a host trusts, by fingerprint."""

    keys: dict[str, Any] = field(repr=False)
    sources: tuple[str, ...]

    def check(self, manifest: dict[str, Any], data: bytes | None) -> str:
        """The signer's fingerprint when ``data`` is a trusted signature matching the version; else SignatureError."""
        if data is None:
            raise SignatureError("it is unsigned (no model.sig) and this host trusts only signed versions")
        try:
            bundle = parse_bundle(data)
        except IntegrityError as exc:
            raise SignatureError(str(exc)) from None
        if bundle.hint:
            fp = bundle.hint
            if fp not in self.keys:
                raise SignatureError(f"it is signed by key {short(fp)}, which this host does not trust")
            if not _verifies(self.keys[fp], bundle):
                raise SignatureError(f"its signature does not verify with key {short(fp)} (altered or forged)")
        else:
            found = [f for f, key in self.keys.items() if _verifies(key, bundle)]
            if not found:
                raise SignatureError("its signature does not verify with any trusted key")
            fp = found[0]
        try:
            statement = bundle.statement()
        except IntegrityError as exc:
            raise SignatureError(str(exc)) from None
        problems = statement_problems(statement, manifest)
        if problems:
            raise SignatureError(f"its files or claims do not match its signature: {problems[0]}")
        return fp


def _verifies(key: ec.EllipticCurvePublicKey, bundle: Bundle) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key.verify(bundle.signature, pae(bundle.payload), ec.ECDSA(_hash_for(key)))
    except InvalidSignature:
        return False
    return True


def load_public_key(path: Path | str) -> ec.EllipticCurvePublicKey:
    where = f"trusted key {path}"
    data = _key_file(path, where)
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        if b"PRIVATE KEY" in data:
            raise StoreError(f"{where} is a private key; trust a public key (openssl ec -pubout)") from None
        raise StoreError(f"{where} is not a PEM public key") from None
    return _curve_checked(key, where)


def policy_from(paths: Sequence[Path | str] | None = None) -> TrustPolicy | None:
    """The trust policy of ``paths``, else of $JNREG_TRUSTED_KEYS; None (no policy) when neither names a key.

    A key that cannot be read stops here: a policy must never quietly become no policy.
    """
    if paths:
        sources = tuple(str(p) for p in paths)
    else:
        sources = tuple(p for p in os.environ.get(TRUSTED_KEYS_ENV, "").split(os.pathsep) if p)
    if not sources:
        return None
    keys = {}
    for source in sources:
        key = load_public_key(source)
        keys[fingerprint(key)] = key
    return TrustPolicy(keys=keys, sources=sources)
