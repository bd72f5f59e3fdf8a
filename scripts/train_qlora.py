#!/usr/bin/env python3
"""The QLoRA guide's entry point: ``python scripts/train_qlora.py …`` runs ``jnreg train …``."""

from __future__ import annotations

import sys

from jnreg.cli import cli

if __name__ == "__main__":
    cli(["train", *sys.argv[1:]], prog_name="train_qlora.py")
