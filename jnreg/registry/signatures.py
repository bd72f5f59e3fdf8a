"""The store's rules for signed versions, once for both storages.

A version's signature (``<version>/model.sig``) lies beside its files and is not one of them: the
manifest and digest never list it, so a version published before signing was set up can be signed
later without changing what it is. Each storage reads and writes it (``read_signature``,
``write_signature``); everything else (the trust policy, refusing, verifying, signing) is here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.errors import IntegrityError, SignatureError, StoreConflict, StoreError
from jnreg.names import check_version
from jnreg.registry.manifests import Sealed
from jnreg.registry.signing import (
    SIGNATURE,
    Signer,
    TrustPolicy,
    load_signer,
    parse_bundle,
    policy_from,
    short,
    signer_of,
    statement_problems,
)

if TYPE_CHECKING:
    from jnreg.registry.storage.base import Storage


class SignedVersions:
    """Signing, and checking signatures against the host's trust policy, for a ModelStore."""

    storage: Storage  # the ModelStore's storage

    def _read_signature(self, agent: str, version: str) -> bytes | None:
        return self.storage.read_signature(agent, version)

    @property
    def trust(self) -> TrustPolicy | None:
        """The keys this host trusts: set in code, else $JNREG_TRUSTED_KEYS; None means no policy."""
        if not hasattr(self, "_trust"):
            self._trust = policy_from()
        return self._trust

    @trust.setter
    def trust(self, policy: TrustPolicy | None) -> None:
        self._trust = policy

    def trust_keys(self, paths: list[Path | str] | tuple[Path | str, ...]) -> None:
        """Trust exactly the public keys in ``paths`` (in place of $JNREG_TRUSTED_KEYS)."""
        self.trust = policy_from(list(paths))

    def signer(self, agent: str, version: str) -> str | None:
        """The fingerprint of the key ``model.sig`` names (not checked against any policy); None when unsigned."""
        return signer_of(self._read_signature(agent, check_version(version)))

    def require_trusted(self, agent: str, version: str, manifest: dict[str, Any]) -> str | None:
        """Under a trust policy: the signer's fingerprint, or SignatureError naming agent, version and reason."""
        policy = self.trust
        if policy is None:
            return None
        try:
            return policy.check(manifest, self._read_signature(agent, version))
        except IntegrityError as exc:
            raise SignatureError(f"refusing {agent} {version}: {exc}") from None

    def signature_problems(self, agent: str, version: str) -> list[str]:
        """What verify says of a version's signature: unsigned, untrusted or mismatched under a policy;
        without one, only a signature that does not match the version."""
        try:
            manifest = self.manifest(agent, version)  # type: ignore[attr-defined]
        except IntegrityError:
            return []  # reported with the version's files
        if self.trust is not None:
            try:
                self.require_trusted(agent, version, manifest)
            except SignatureError as exc:
                return [str(exc).replace("refusing ", "", 1)]
            return []
        data = self._read_signature(agent, version)
        if data is None:
            return []
        try:
            problems = statement_problems(parse_bundle(data).statement(), manifest)
        except IntegrityError as exc:
            problems = [str(exc)]
        return [f"{agent} {version}: {problem}" for problem in problems[:1]]

    def sign(self, agent: str, version: str, sign_key: Path | str | None = None, *, replace: bool = False) -> str:
        """Sign a published version with the key at ``sign_key`` (else $JNREG_SIGNING_KEY); its fingerprint.

        The version's files are checked first: a signature vouches for what is there now.
        """
        signer = load_signer(sign_key)
        if signer is None:
            raise StoreError("no signing key: give --sign-key FILE or set JNREG_SIGNING_KEY")
        agent = self.require_agent(agent)  # type: ignore[attr-defined]
        manifest = self.manifest(agent, check_version(version))  # type: ignore[attr-defined]
        problems = self.check_files(agent, version, manifest)  # type: ignore[attr-defined]
        if problems:
            raise IntegrityError(f"refusing to sign {agent} {version}: {problems[0]}")
        held = self.signer(agent, version)
        if held is not None and not replace:
            raise StoreConflict(f"{agent} {version} is already signed by key {short(held)}; --replace signs it anew")
        self.storage.write_signature(agent, version, signer.sign(manifest), replace=replace)
        return signer.fingerprint


def signed(sealed: Sealed, signer: Signer | None) -> Sealed:
    """``sealed`` with the version's signature among the files the storage writes, after the manifest listed
    its files (so it is never one of them); built from the manifest's sha256s, no file is read again."""
    if signer is None:
        return sealed
    return dataclasses.replace(sealed, extra={**sealed.extra, SIGNATURE: signer.sign(sealed.manifest)})
