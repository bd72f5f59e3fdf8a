"""The adapter registry: ModelStore (publish, promote, rollback, gc, verify) and resolve/load for orchestrators.

Importing this package never imports torch; only ``load`` does, when called.
"""

from __future__ import annotations

from jnreg.registry.loader import load, resolve
from jnreg.registry.store import GcResult, ModelStore, PublishResult, Resolution, VerifyReport

__all__ = ["GcResult", "ModelStore", "PublishResult", "Resolution", "VerifyReport", "load", "resolve"]
