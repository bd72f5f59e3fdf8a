"""Start-up cost of ``jnreg --help`` and ``jnreg store list`` against an eager-import CLI.

jnreg imports torch, transformers, peft, bitsandbytes and datasets only inside the commands
that train. The alternative, a CLI that imports them at start-up, is timed side by side as
``python -c "import torch, transformers, peft, trl; ..."`` followed by the same help output.

    python bench/bench_cli_startup.py [--repeat 5] [--quick] [--out PATH]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


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
    parser = benchlib.parser(__file__, __doc__)
    parser.add_argument("--repeat", type=int, default=None, help="runs of each command (5; --quick: 2)")
    args = parser.parse_args()
    repeat = args.repeat or (2 if args.quick else 5)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    help_code = "from jnreg.cli import cli; cli(['--help'], prog_name='jnreg')"
    eager = "import torch, transformers, peft, trl, datasets; " + help_code
    with tempfile.TemporaryDirectory() as root:
        runs = {
            "jnreg --help": [sys.executable, "-c", help_code],
            "jnreg store list": [sys.executable, "-m", "jnreg", "--store-root", root, "store", "list"],
            "eager imports + --help": [sys.executable, "-c", eager],
        }
        medians = {name: timed(argv, repeat, env) for name, argv in runs.items()}
    eager_s = medians["eager imports + --help"]
    figures = [
        benchlib.figure(
            "jnreg --help, wall clock (median)",
            medians["jnreg --help"],
            "s",
            better="lower",
            alternative="a CLI importing torch, transformers, peft, trl, datasets first",
            alternative_value=eager_s,
        ),
        benchlib.figure(
            "jnreg store list, empty store, wall clock (median)",
            medians["jnreg store list"],
            "s",
            better="lower",
            alternative="a CLI importing torch, transformers, peft, trl, datasets first",
            alternative_value=eager_s,
        ),
    ]
    benchlib.write(__file__, args.out, figures, settings={"repeat": repeat}, median_s=medians)


if __name__ == "__main__":
    main()
