"""The adapter registry: ModelStore (publish, promote, rollback, gc, verify) and resolve/load for orchestrators.

Importing this package never imports torch; only ``load`` does, when called.
"""

from __future__ import annotations

from jnreg.registry.loader import load, resolve
from jnreg.registry.results import GcResult, PublishResult, Recovery, Resolution, VerifyReport
from jnreg.registry.store import ModelStore

__all__ = ["GcResult", "ModelStore", "PublishResult", "Recovery", "Resolution", "VerifyReport", "load", "resolve"]
