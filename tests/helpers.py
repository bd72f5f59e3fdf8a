"""Shared test helpers: running the real console script, and what it imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "trl", "accelerate")


def run_jnreg(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 300):
    """Run the installed ``jnreg`` console script with plugin autoload on, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if k != "JNREG_DISABLE_PLUGIN_AUTOLOAD"}
    full_env.update(env or {})
    script = Path(sys.executable).with_name("jnreg")
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


def heavy_imports_after(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """Which heavy libraries a CLI invocation imports, checked in a fresh interpreter."""
    code = (
        "import sys\n"
        "from jnreg.cli import cli\n"
        "try:\n"
        f"    cli({argv!r}, prog_name='jnreg')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    full_env = {k: v for k, v in os.environ.items() if k != "JNREG_DISABLE_PLUGIN_AUTOLOAD"}
    full_env.update(env or {})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)
    marker = [line for line in done.stderr.splitlines() if line.startswith("HEAVY=")]
    assert marker, done.stderr
    return [m for m in marker[-1][len("HEAVY=") :].split(",") if m]
