"""A version's page: written in ≤ 2 s and ≤ 5 MB for 10,000 logging steps and a 1,000-row evaluation.

The version is published into a temporary store with a training log of that many steps and one
recorded evaluation of that many rows (a third of them failing), then ``jnreg.report`` reads the
store's documents and writes the page beside the version, as ``jnreg report`` does.

    python bench/bench_report.py [--steps 10000] [--rows 1000] [--repeat 3] [--quick] [--out PATH]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests.report_helpers
import benchlib  # noqa: E402

TARGET_SECONDS = 2.0
TARGET_BYTES = 5 * 10**6


def main() -> None:
    parser = benchlib.parser(__file__, __doc__, quick="1,000 steps and 100 rows")
    parser.add_argument("--steps", type=int, default=None, help="logging steps in the training log (10000)")
    parser.add_argument("--rows", type=int, default=None, help="rows in the evaluation (1000)")
    parser.add_argument("--repeat", type=int, default=3, help="pages written and timed")
    args = parser.parse_args()
    steps = args.steps or (1000 if args.quick else 10000)
    rows = args.rows or (100 if args.quick else 1000)

    from jnreg.registry import ModelStore
    from jnreg.report import write_version_page
    from tests.report_helpers import publish_version

    with tempfile.TemporaryDirectory() as work:
        store = ModelStore(Path(work) / "store")
        version = publish_version(store, Path(work), steps=steps, rows=rows)
        times = []
        for _ in range(args.repeat):
            clock = time.perf_counter()
            where = write_version_page(store, "synthesizer", version)
            times.append(time.perf_counter() - clock)
        size = Path(where).stat().st_size
    seconds = statistics.median(times)
    full = steps >= 10000 and rows >= 1000
    figures = [
        benchlib.figure(
            "page written (read the store, render, write), median",
            round(seconds, 3),
            "s",
            better="lower",
            target=f"≤ {TARGET_SECONDS:g} s",
            met=seconds <= TARGET_SECONDS if full else None,
        ),
        benchlib.figure(
            "page size",
            size,
            "bytes",
            better="lower",
            target="≤ 5 MB",
            met=size <= TARGET_BYTES if full else None,
        ),
    ]
    benchlib.write(__file__, args.out, figures, settings={"steps": steps, "rows": rows, "repeat": args.repeat})


if __name__ == "__main__":
    main()
