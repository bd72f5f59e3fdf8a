from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# No test may reach a model hub, and entry-point plugins load only in tests about them.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
os.environ.setdefault("JNREG_CACHE", str(Path(tempfile.gettempdir()) / "jnreg-test-cache"))

pytest_plugins = ["jnreg.testing"]


@pytest.fixture(autouse=True)
def _no_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JNREG_DISABLE_PLUGIN_AUTOLOAD", "1")


# The secret the test S3 server is given; tests check it never reaches the store or the output.
S3_SECRET = "moto-secret-" + "k" * 20


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free port of 127.0.0.1, stopped when the session ends."""
    from jnreg.testing import s3_server

    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The standard AWS variables pointing at the test server, and a cache of this test's own."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "JNREG_CACHE": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MODEL_STORE_ROOT", raising=False)
    monkeypatch.delenv("AGENT_MODEL_MAP", raising=False)
    return s3_endpoint


@pytest.fixture
def quick_host():
    """A host with only fact_checker, answering in a few greedy tokens (tests.helpers.QuickFactChecker)."""
    from jnreg.core.host.plugins import Host, reset_host
    from tests.helpers import QuickFactChecker

    host = Host(autoload=False)
    host.register(QuickFactChecker(), name="quick_fact_checker")
    previous = reset_host(host)
    try:
        yield host
    finally:
        reset_host(previous)
