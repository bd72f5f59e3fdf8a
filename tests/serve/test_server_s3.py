"""vLLM's own server, started by hand, answering for an s3:// store (the moto server): publish, promote and
rollback reach it."""

from __future__ import annotations

import os
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from jnreg.registry import ModelStore
from tests.conftest import S3_SECRET
from tests.serve.conftest import Server, publish, start_server, stop_server

PROMOTION_S = 10.0


@pytest.fixture(scope="module")
def s3_server(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    aws = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    bucket = f"jnreg-serve-{uuid.uuid4().hex[:12]}"
    urllib.request.urlopen(urllib.request.Request(f"{s3_endpoint}/{bucket}", method="PUT"), timeout=10).read()
    root = f"s3://{bucket}/store"
    work = tmp_path_factory.mktemp("s3-serve")
    saved = {name: os.environ.get(name) for name in aws}
    os.environ.update(aws)
    try:
        publish(root, "fact_checker", 11, work, version="v1", promote=True)
        publish(root, "fact_checker", 12, work, version="v2", promote=False)
        # vLLM's own server, started by hand as docs/serving.md says, finds jnreg's resolver and middleware.
        extra = {**aws, "JNREG_SERVE_CACHE": str(work / "copies")}
        running = start_server(root, work / "server.log", extra, by_hand=True)
        try:
            yield running
        finally:
            stop_server(running)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _version(server: Server, name: str) -> str:
    status, answer = server.complete(name, "the claim", 4)
    assert status == 200, answer
    return answer["model"].split("@")[1]


def _reaches(server: Server, version: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < PROMOTION_S + 5:
        if _version(server, "fact_checker") == version:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"fact_checker {version} was not served within {PROMOTION_S + 5} s")


def test_publish_promote_and_rollback_on_an_object_store_reach_the_server(s3_server, tmp_path):
    store = ModelStore(s3_server.root)
    assert _version(s3_server, "fact_checker") == "v1"
    pinned = s3_server.complete("fact_checker@v1", "the claim", 8)[1]["choices"][0]["text"]
    store.promote("fact_checker", "v2")
    assert _reaches(s3_server, "v2") <= PROMOTION_S
    publish(s3_server.root, "fact_checker", 13, tmp_path, version="v3", promote=True)
    assert _reaches(s3_server, "v3") <= PROMOTION_S
    store.rollback("fact_checker")
    assert _reaches(s3_server, "v2") <= PROMOTION_S
    assert s3_server.complete("fact_checker@v1", "the claim", 8)[1]["choices"][0]["text"] == pinned
    assert 400 <= s3_server.complete("fact_checker@v9", "the claim")[0] < 500
