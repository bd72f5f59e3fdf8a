"""pytest fixtures for agent plugin authors: ``pytest_plugins = ["jnreg.testing"]`` in a conftest.

Each fixture gives a fresh plugin host with entry-point autoload off, so a test sees exactly the
plugins it registers, and unregisters them afterwards whatever the test did.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from jnreg.core.host.plugins import ENTRY_POINT_GROUP, Host, get_host, reset_host

BUILTIN_PLUGINS = (
    "synthesizer",
    "journalist",
    "chief_editor",
    "reasoning",
    "analyst",
    "critic",
    "fact_checker",
    "re_ranker",
)


@pytest.fixture
def jnreg_host() -> Iterator[Host]:
    """An empty host (no entry points loaded), installed as the one the CLI and library use."""
    host = Host(autoload=False)
    previous = reset_host(host)
    try:
        yield host
    finally:
        reset_host(previous)


@pytest.fixture
def register_plugin(jnreg_host: Host) -> Iterator[Callable[..., str]]:
    """``register_plugin(obj, name=None)`` registers an in-memory plugin for this test only."""
    names: list[str] = []

    def register(plugin: object, name: str | None = None) -> str:
        registered = jnreg_host.register(plugin, name=name)
        names.append(registered)
        return registered

    try:
        yield register
    finally:
        for name in reversed(names):
            if jnreg_host.pm.get_plugin(name) is not None:
                jnreg_host.unregister(name)


@pytest.fixture
def builtin_agents(register_plugin: Callable[..., str]) -> Host:
    """A host holding the eight built-in JustNews agents, registered in memory."""
    for name in BUILTIN_PLUGINS:
        register_plugin(importlib.import_module(f"jnreg.plugins.{name}"), name=name)
    return get_host()


__all__ = ["BUILTIN_PLUGINS", "ENTRY_POINT_GROUP", "builtin_agents", "jnreg_host", "register_plugin"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now, for a test server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def s3_server(start_timeout_s: float = 30) -> Iterator[str]:
    """moto's S3 API server on a free port of 127.0.0.1 (needs ``moto[server]``): its URL, until the block ends."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
