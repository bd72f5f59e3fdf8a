"""The ``jnreg`` command line, on top of every other part; nothing in jnreg imports it."""

from __future__ import annotations

from jnreg.cli.main import cli, main

__all__ = ["cli", "main"]
