"""The name mapper in front of vLLM, driven through the ASGI protocol with a real store."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

from jnreg.registry import ModelStore
from jnreg.serve.middleware import AgentNames, FreshReads
from tests.registry_helpers import make_adapter


async def _echo(scope, receive, send) -> None:
    """An ASGI app that answers with the body and content-length it was given."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    length = dict(scope["headers"]).get(b"content-length", b"").decode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    echoed = {"body": body.decode("latin-1"), "length": length}
    await send({"type": "http.response.body", "body": json.dumps(echoed).encode()})


def _call(app, path: str, body: bytes, method: str = "POST", chunks: int = 1) -> dict:
    sent: list[dict] = []
    size = max(1, len(body) // chunks + 1)
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(app(scope, receive, send))
    return json.loads(sent[-1]["body"])


def _store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    store.publish("synthesizer", make_adapter(tmp_path / "a", seed=1), version="v1")
    store.publish("synthesizer", make_adapter(tmp_path / "b", seed=2), version="v2", promote=False)
    return store


def test_a_bare_agent_name_becomes_the_version_in_service(tmp_path):
    store = _store(tmp_path)
    app = AgentNames(_echo, store)
    body = json.dumps({"model": "synthesizer", "prompt": "hi", "max_tokens": 3}).encode()
    answer = _call(app, "/v1/completions", body, chunks=3)
    sent = json.loads(answer["body"])
    assert sent == {"model": "synthesizer@v1", "prompt": "hi", "max_tokens": 3}
    assert answer["length"] == str(len(answer["body"].encode()))
    store.promote("synthesizer", "v2")
    answer = _call(app, "/v1/chat/completions", json.dumps({"model": "synthesizer", "messages": []}).encode())
    assert json.loads(answer["body"])["model"] == "synthesizer@v2"  # the next request after a promotion


def test_everything_else_passes_through_untouched(tmp_path):
    app = AgentNames(_echo, _store(tmp_path))
    for body in [
        json.dumps({"model": "synthesizer@v1", "prompt": "x"}).encode(),
        json.dumps({"model": "critic", "prompt": "x"}).encode(),  # no version in service: vLLM says not found
        json.dumps({"model": "../../etc/passwd"}).encode(),
        json.dumps({"model": "jnreg:tiny-mistral"}).encode(),
        json.dumps(["synthesizer"]).encode(),
        b"{not json",
        b"\xff\xfe",
        b"",
    ]:
        assert _call(app, "/v1/completions", body)["body"].encode("latin-1") == body
    raw = json.dumps({"model": "synthesizer"}).encode()
    assert _call(app, "/v1/embeddings", raw)["body"].encode("latin-1") == raw
    assert _call(app, "/v1/completions", raw, method="GET")["body"].encode("latin-1") == raw


def test_concurrent_requests_share_reads_that_started_after_they_arrived():
    reads: list[tuple[float, float]] = []
    lock = threading.Lock()

    def read(agent: str) -> str:
        began = time.monotonic()
        time.sleep(0.05)
        with lock:
            reads.append((began, time.monotonic()))
        return "v1"

    async def main() -> list[tuple[float, str]]:
        fresh = FreshReads(read)

        async def ask() -> tuple[float, str]:
            arrived = time.monotonic()
            return arrived, await fresh.get("synthesizer")

        return await asyncio.gather(*(ask() for _ in range(50)))

    asked = asyncio.run(main())
    assert all(version == "v1" for _, version in asked)
    assert len(reads) <= 2  # fifty callers, at most two reads of the store
    first_start = min(start for start, _ in reads)
    assert all(arrived <= first_start + 1 for arrived, _ in asked)
