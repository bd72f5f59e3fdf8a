"""The data pipeline: rows read and checked (``rows``), tokenized into the cache (``cache``), prepared (``prepare``)."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # ``jnreg.core.data`` was one module before this folder; its names still import from here.
    try:
        return getattr(importlib.import_module("jnreg.core.data.rows"), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
