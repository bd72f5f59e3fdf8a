"""Shared test helpers: the real console script, what it imported, and fast training settings for the tiny model."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from jnreg.core.host.hookspecs import hookimpl
from jnreg.core.host.plugins import Host
from jnreg.core.host.spec import AgentSpec, Serving
from jnreg.core.training.config import TrainConfig, build_config

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


TINY = "jnreg:tiny-mistral"
# Settings that make the tiny model learn visibly in a few seconds on two CPU cores.
FAST = {
    "base_model": TINY,
    "learning_rate": 3e-3,
    "gradient_accumulation": 1,
    "train_batch_size": 4,
    "eval_batch_size": 4,
    "epochs": 2.0,
    "max_train_samples": 16,
    "eval_fraction": 0.25,
    "logging_steps": 2,
}


def config_for(agent, output_dir: Path, **overrides) -> TrainConfig:
    return build_config(agent.spec, {}, {**FAST, "output_dir": str(output_dir), **overrides})


def quiet(_line: str) -> None:
    pass


AGENT = "fact_checker"
# fact_checker as its built-in plugin defines it, answering in a few greedy tokens so a test takes seconds,
# and with a default requirement no untrained tiny model meets.
DEFAULT_REQUIREMENT = "schema_valid>=0.5"


def quick_spec() -> AgentSpec:
    from jnreg.plugins import fact_checker

    host = Host(autoload=False)
    host.register(fact_checker, name="fact_checker")
    spec = host.get(AGENT).spec
    return dataclasses.replace(
        spec, serving=Serving(max_new_tokens=6, temperature=0.0), requirements=(DEFAULT_REQUIREMENT,)
    )


class QuickFactChecker:
    @hookimpl
    def jnreg_register_agents(self, register):
        register(quick_spec())
