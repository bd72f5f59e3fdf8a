"""Publishing a trained output directory: jnreg's ModelStore vs copying the whole directory.

The first JustNews publisher copied ``--output_dir`` (checkpoints, optimizer state) into the
store with no checksums or locks. Both run here side by side on one real output directory
(the tiny model trained with checkpoints); the result is a ratio of bytes stored and of time.

    python bench/bench_publish.py [--repeat 5] [--checkpoints 3] [--quick] [--out PATH]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = benchlib.parser(__file__, __doc__)
    parser.add_argument("--repeat", type=int, default=None, help="publishes timed (5; --quick: 2)")
    parser.add_argument("--checkpoints", type=int, default=3)
    args = parser.parse_args()
    args.repeat = args.repeat or (2 if args.quick else 5)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    from jnreg.core.host.plugins import get_host
    from jnreg.core.training import engine
    from jnreg.core.training.config import build_config
    from jnreg.registry import ModelStore

    agent = get_host().get("fact_checker")
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        output = work_dir / "output"
        steps = 2 * args.checkpoints
        values = {
            "base_model": "jnreg:tiny-mistral",
            "output_dir": str(output),
            "max_steps": steps,
            "save_steps": 2,
            "save_total_limit": args.checkpoints,
            "eval_fraction": 0.0,
        }
        engine.train(build_config(agent.spec, {}, values), agent, echo=lambda _: None)

        store = ModelStore(work_dir / "store")
        jnreg_times, copy_times = [], []
        for round_ in range(args.repeat):
            start = time.perf_counter()
            result = store.publish("fact_checker", output, version=f"bench-{round_}")
            jnreg_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            shutil.copytree(output, work_dir / "copies" / f"bench-{round_}")
            copy_times.append(time.perf_counter() - start)
        stored = tree_bytes(result.path)
        copied = tree_bytes(work_dir / "copies" / "bench-0")
    jnreg_s, copy_s = statistics.median(jnreg_times), statistics.median(copy_times)
    figures = [
        benchlib.figure(
            "bytes stored per published version",
            stored,
            "bytes",
            better="lower",
            alternative="copying the whole output directory (checkpoints included)",
            alternative_value=copied,
        ),
        benchlib.figure(
            "publish time, median",
            jnreg_s,
            "s",
            better="lower",
            alternative="shutil.copytree of the output directory",
            alternative_value=copy_s,
        ),
    ]
    benchlib.write(
        __file__,
        args.out,
        figures,
        settings={"repeat": args.repeat, "checkpoints": args.checkpoints},
        note="jnreg publish also hashes, fsyncs, validates, locks, swaps current and rewrites the map",
    )


if __name__ == "__main__":
    main()
