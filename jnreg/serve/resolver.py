"""jnreg's LoRA resolver for vLLM, registered through vLLM's ``vllm.general_plugins`` entry-point group.

vLLM asks it about a name it has not loaded. It answers ``<agent>@<version>`` with that version's verified
local copy (``jnreg.serve.copies``) and an adapter id from its digest, and answers every other name, and every
version that cannot be served, with None: vLLM then gives the client its not-found answer (404). It never
raises, since a resolver that raises turns into a 500 and keeps vLLM from asking the others. Bare agent names
are mapped to pinned ones by ``jnreg.serve.middleware`` before vLLM looks them up.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from jnreg.errors import first_line
from jnreg.serve import names
from jnreg.serve.copies import ServedVersion, served_copy
from jnreg.serve.environment import BASE_ENV, store_root

if TYPE_CHECKING:
    from jnreg.registry.store import ModelStore

RESOLVER_NAME = "jnreg"

# Under vLLM's logger, so the lines go where and how vLLM writes its own.
log = logging.getLogger("vllm.jnreg")


class VersionRequest(LoRARequest, array_like=True, omit_defaults=True):  # type: ignore[call-arg]
    """A LoRARequest whose adapter id stays the one derived from its version's digest.

    vLLM renumbers what a resolver returns from a counter of its own process; keeping the digest's id means
    every process and every restart gives a version the same id, and two versions never share one.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "lora_int_id":
            return
        super().__setattr__(name, value)


class RegistryResolver(LoRAResolver):
    """Resolves pinned names against one ModelStore."""

    def __init__(self, store: ModelStore | None = None, base_model: str | None = None) -> None:
        self._store = store
        self._base_model = base_model

    @property
    def store(self) -> ModelStore:
        if self._store is None:
            from jnreg.registry import ModelStore

            self._store = ModelStore(store_root())
        return self._store

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        parsed = names.parse(lora_name)
        if parsed is None:
            return None
        agent, version = parsed
        if version is None:
            log.warning(
                "jnreg: %r is a bare agent name; serve with --middleware jnreg.serve.middleware.AgentNames", agent
            )
            return None
        try:
            served = await asyncio.to_thread(served_copy, self.store, agent, version)
        except Exception as exc:  # unknown, tampered or unreadable: refused, and the server goes on serving
            log.warning("jnreg: not serving %s: %s", lora_name, first_line(exc))
            return None
        if served.prompt_template is not None:
            # Chat requests reach the version through the base's chat template, not the one it learned.
            log.warning(
                "jnreg: not serving %s: trained with --prompt-template %r, not the chat template requests use",
                lora_name,
                served.prompt_template,
            )
            return None
        expected = self._base_model or os.environ.get(BASE_ENV) or base_model_name
        if served.base_model != expected:
            log.warning(
                "jnreg: not serving %s: trained on %r, this server serves %r", lora_name, served.base_model, expected
            )
            return None
        return request_for(served)


def request_for(served: ServedVersion) -> LoRARequest:
    """The LoRARequest vLLM loads ``served`` from: its pinned name, its digest's id and its verified copy."""
    return VersionRequest(
        lora_name=names.pinned(served.agent, served.version),
        lora_int_id=names.adapter_id(served.digest),
        lora_path=str(served.path),
    )


def register() -> None:
    """vLLM's plugin hook: called in every vLLM process, so registering again is harmless."""
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, RegistryResolver())
