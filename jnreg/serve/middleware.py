"""ASGI middleware for vLLM's server (``--middleware jnreg.serve.middleware.AgentNames``): names the version.

vLLM asks its LoRA resolvers only about a name it has not loaded yet, so a bare ``<agent>`` loaded once would
be served from that adapter forever. This middleware rewrites the ``model`` of every completion request for a
bare agent name into ``<agent>@<version in service>``, read from the store after the request arrived; vLLM then
loads each version once under its own name and id, a promotion shows on the next request, and a request in
flight keeps the version it was given. Anything else passes through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from jnreg.errors import first_line
from jnreg.serve import names
from jnreg.serve.environment import STORE_ENV, store_root

if TYPE_CHECKING:
    from jnreg.registry.store import ModelStore

REWRITTEN_PATHS = ("/v1/completions", "/v1/chat/completions")
# A request body larger than this is no completion request jnreg would rewrite; it goes through unread.
MAX_BODY = 16 * 1024 * 1024

# Under vLLM's logger, so the lines go where and how vLLM writes its own.
log = logging.getLogger("vllm.jnreg")


class FreshReads:
    """Reads shared by concurrent callers, where each caller gets a read that started after it asked.

    While one read of a key runs, callers that arrive join the next one, which starts when the running one
    ends; so a store serving many requests is read at most twice at once per agent, and no answer predates
    its request.
    """

    def __init__(self, read: Callable[[str], Any]) -> None:
        self._read = read
        self._slots: dict[str, list[asyncio.Task | None]] = {}

    async def get(self, key: str) -> Any:
        slot = self._slots.setdefault(key, [None, None])
        if slot[1] is None:
            slot[1] = asyncio.ensure_future(self._run(key, slot, slot[0]))
        return await asyncio.shield(slot[1])

    async def _run(self, key: str, slot: list[asyncio.Task | None], previous: asyncio.Task | None) -> Any:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        slot[0], slot[1] = asyncio.current_task(), None
        return await asyncio.to_thread(self._read, key)


class AgentNames:
    """Maps a bare agent name in a completion request to ``<agent>@<version in service>`` before vLLM sees it."""

    def __init__(self, app: Callable[..., Awaitable[None]], store: ModelStore | None = None) -> None:
        self.app = app
        self._store = store
        self._reads = FreshReads(self._current)

    def _current(self, agent: str) -> str | None:
        if self._store is None:
            from jnreg.registry import ModelStore

            root = store_root()
            if root is None:
                log.warning("jnreg: no store to serve (set %s)", STORE_ENV)
                return None
            self._store = ModelStore(root)
        try:
            return self._store.current(agent)
        except Exception as exc:  # an unknown agent or a store in trouble: leave the name for vLLM to refuse
            log.warning("jnreg: no version in service for %r: %s", agent, first_line(exc))
            return None

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in REWRITTEN_PATHS:
            await self.app(scope, receive, send)
            return
        messages = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body") or len(body) > MAX_BODY:
                break
        if messages[-1]["type"] == "http.request" and not messages[-1].get("more_body"):
            rewritten = await self._rewrite(body)
            if rewritten is not None:
                scope = {**scope, "headers": _with_length(scope.get("headers", []), len(rewritten))}
                messages = [{"type": "http.request", "body": rewritten, "more_body": False}]
        await self.app(scope, _replay(messages, receive), send)

    async def _rewrite(self, body: bytes) -> bytes | None:
        """The body with the bare agent name replaced by the pinned name of its version in service, or None."""
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(document, dict):
            return None
        parsed = names.parse(document.get("model"))
        if parsed is None or parsed[1] is not None:
            return None
        agent = parsed[0]
        version = await self._reads.get(agent)
        if version is None:
            return None
        document["model"] = names.pinned(agent, version)
        return json.dumps(document).encode("utf-8")


def _with_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return [*kept, (b"content-length", str(length).encode("ascii"))]


def _replay(messages: list[dict[str, Any]], receive: Callable) -> Callable:
    """A ``receive`` that gives back what was read, then reads on (a client that leaves is still seen)."""
    pending = list(messages)

    async def replayed() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
