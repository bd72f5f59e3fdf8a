from __future__ import annotations

import os
import tempfile
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
