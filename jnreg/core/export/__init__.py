"""Exporting an adapter: dequantized and merged into its base in fp32."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # ``jnreg.core.export`` was one module before this folder; its names still import from here.
    try:
        return getattr(importlib.import_module("jnreg.core.export.merge"), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
