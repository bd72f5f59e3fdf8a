"""The environment a vLLM server reads jnreg's settings from (``jnreg serve`` sets it; a hand-started server can)."""

from __future__ import annotations

import os

# The store whose versions the server serves; MODEL_STORE_ROOT when unset.
STORE_ENV = "JNREG_SERVE_STORE"
# The base model the served versions must name (a manifest's base_model). vLLM's own name for the model being
# served is a directory for the built-in model, so `jnreg serve` says which id that directory is.
BASE_ENV = "JNREG_SERVE_BASE_MODEL"


def store_root() -> str | None:
    """The store a server serves: $JNREG_SERVE_STORE, else $MODEL_STORE_ROOT."""
    return os.environ.get(STORE_ENV) or os.environ.get("MODEL_STORE_ROOT") or None
