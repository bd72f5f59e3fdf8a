"""Loading tokenizers and base models (``loading``), and the built-in tiny Mistral model (``tiny``)."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # ``jnreg.core.models`` was one module before this folder; its names still import from here.
    try:
        return getattr(importlib.import_module("jnreg.core.models.loading"), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
