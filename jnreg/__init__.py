"""jnreg: the adapter registry and QLoRA trainer for the JustNews agents."""

from __future__ import annotations

__version__ = "0.1.0"
