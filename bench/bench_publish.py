"""Publishing a trained output directory: jnreg's ModelStore vs copying the whole directory.

The first JustNews publisher copied ``--output_dir`` (checkpoints, optimizer state) into the
store with no checksums or locks. Both run here side by side on one real output directory
(the tiny model trained with checkpoints); the result is a ratio of bytes stored and of time.

    python bench/bench_publish.py [--repeat 5] [--checkpoints 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--checkpoints", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    from jnreg.core import engine
    from jnreg.core.config import build_config
    from jnreg.core.plugins import get_host
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
    report = {
        "output_dir_bytes": copied,
        "jnreg_stored_bytes": stored,
        "bytes_ratio_copy_over_jnreg": copied / stored,
        "median_s": {"jnreg publish": statistics.median(jnreg_times), "copytree": statistics.median(copy_times)},
        "time_ratio_jnreg_over_copy": statistics.median(jnreg_times) / statistics.median(copy_times),
        "note": "jnreg publish also hashes, fsyncs, validates, locks, swaps current and rewrites the map",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
