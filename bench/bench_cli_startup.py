"""Start-up cost of ``jnreg --help`` and ``jnreg store list`` against an eager-import CLI.

jnreg imports torch, transformers, peft, bitsandbytes and datasets only inside the commands
that train. The alternative, a CLI that imports them at start-up, is timed side by side as
``python -c "import torch, transformers, peft, trl; ..."`` followed by the same help output.

    python bench/bench_cli_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(argv: list[str], repeat: int, env: dict[str, str]) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=env)
        samples.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed: {done.stderr.decode()[-500:]}")
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    help_code = "from jnreg.cli import cli; cli(['--help'], prog_name='jnreg')"
    eager = "import torch, transformers, peft, trl, datasets; " + help_code
    with tempfile.TemporaryDirectory() as root:
        runs = {
            "jnreg --help": [sys.executable, "-c", help_code],
            "jnreg store list": [sys.executable, "-m", "jnreg", "--store-root", root, "store", "list"],
            "eager imports + --help": [sys.executable, "-c", eager],
        }
        medians = {name: timed(argv, args.repeat, env) for name, argv in runs.items()}
    print(
        json.dumps(
            {
                "median_s": medians,
                "eager_over_lazy_help": medians["eager imports + --help"] / medians["jnreg --help"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
