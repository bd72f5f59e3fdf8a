"""What orchestrators call: ``resolve`` an agent's adapter without torch, or ``load`` it onto its base model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jnreg.errors import IntegrityError
from jnreg.registry.agent_map import entry_for, hf_id_of
from jnreg.registry.results import Resolution
from jnreg.registry.store import ModelStore

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase


def resolve(
    agent: str,
    version: str | None = None,
    *,
    store_root: Path | str | None = None,
    agent_map: Path | str | None = None,
    trusted_keys: Sequence[Path | str] | None = None,
) -> Resolution:
    """Where ``agent``'s adapter (``version``, default the one in service) is, and which base model it needs.

    ``trusted_keys`` (public key files, else $JNREG_TRUSTED_KEYS) makes it refuse any version not signed by one.
    """
    return _store(store_root, agent_map, trusted_keys).resolve(agent, version)


def _store(
    root: Path | str | None, agent_map: Path | str | None, trusted_keys: Sequence[Path | str] | None
) -> ModelStore:
    store = ModelStore(root, agent_map)
    if trusted_keys:
        store.trust_keys(list(trusted_keys))
    return store


def _check_base_model(store: ModelStore, resolution: Resolution) -> None:
    """The map must name the base model the adapter was trained on; a mismatch would load silently wrong."""
    document = store.read_map()
    entry = entry_for(document, resolution.agent, resolution.adapter_name)
    if entry is None or "base_ref" not in entry:
        return
    named = hf_id_of(document, entry["base_ref"])
    if named is None:
        raise IntegrityError(
            f"agent map {store.map_path}: {resolution.agent}'s base_ref {entry['base_ref']!r} is not in base_models"
        )
    if named != resolution.base_model:
        raise IntegrityError(
            f"{resolution.agent} {resolution.version} was trained on {resolution.base_model!r} "
            f"but agent map {store.map_path} names {named!r}"
        )


def load(
    agent: str,
    version: str | None = None,
    quantization: str | None = "nf4",
    *,
    store_root: Path | str | None = None,
    agent_map: Path | str | None = None,
    device_map: str | dict[str, int | str] | None = None,
    store: ModelStore | None = None,
    trusted_keys: Sequence[Path | str] | None = None,
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """(PeftModel, tokenizer) for ``agent``, after checking every file's checksum, its signature under a
    trust policy (``trusted_keys`` or $JNREG_TRUSTED_KEYS), and the base model.

    ``store``, when given, is the store to load from, in place of ``store_root`` and ``agent_map``.
    """
    store = store or _store(store_root, agent_map, trusted_keys)
    resolution = store.resolve(agent, version)
    problems = store.check_copy(resolution)
    if problems:
        raise IntegrityError(f"refusing to load {resolution.agent} {resolution.version}: {problems[0]}")
    _check_base_model(store, resolution)

    from peft import PeftModel

    from jnreg.core.models.loading import load_base_model, load_tokenizer

    revision = {"revision": resolution.base_model_revision} if resolution.base_model_revision else {}
    base = load_base_model(resolution.base_model, quantization, device_map=device_map, **revision)
    # Tokenizer files in the version are the ones the adapter was trained with (pad token, chat template).
    has_tokenizer = any((resolution.adapter_path / name).is_file() for name in ("tokenizer.json", "tokenizer.model"))
    tokenizer = (
        load_tokenizer(str(resolution.adapter_path))
        if has_tokenizer
        else load_tokenizer(resolution.base_model, **revision)
    )
    model = PeftModel.from_pretrained(base, str(resolution.adapter_path))
    model.eval()
    return model, tokenizer
