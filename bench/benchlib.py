"""What every bench/bench_*.py shares: the command-line contract, machine facts, figures, the JSON, child RSS.

Each script takes ``--out PATH`` (default ``bench/results/<script stem>.json``) and writes and
prints one JSON object: benchmark, command, date, machine and a list of figures, each a jnreg
number against its alternative measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


def parser(script: str, doc: str | None, *, quick: str = "smaller sizes, for a fast look") -> argparse.ArgumentParser:
    """An argument parser with the contract's ``--out`` and ``--quick`` options; ``quick`` says what it shrinks."""
    stem = Path(script).stem
    first = (doc or stem).strip().splitlines()[0]
    parse = argparse.ArgumentParser(prog=f"bench/{stem}.py", description=first)
    parse.add_argument("--out", type=Path, default=RESULTS_DIR / f"{stem}.json", help="where the JSON goes")
    parse.add_argument("--quick", action="store_true", help=quick)
    return parse


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }
    if hasattr(os, "getloadavg"):
        # Timings from a machine busy with other work are slower; say how busy it was.
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def figure(
    name: str,
    value: float,
    unit: str,
    *,
    better: str,
    alternative: str | None = None,
    alternative_value: float | None = None,
    target: str | None = None,
    met: bool | None = None,
) -> dict[str, Any]:
    """One figure; ``ratio`` is jnreg over the alternative, both measured in this run."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    ratio = None
    if alternative_value not in (None, 0):
        ratio = round(value / alternative_value, 4)
    return {
        "name": name,
        "jnreg": _rounded(value),
        "unit": unit,
        "alternative": alternative,
        "alternative_value": _rounded(alternative_value),
        "ratio": ratio,
        "better": better,
        "target": target,
        "met": met,
    }


def _rounded(value: float | None) -> float | None:
    if value is None or isinstance(value, int):
        return value
    return float(f"{value:.6g}")


def write(script: str, out: Path, figures: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Write and print the script's JSON object; ``extra`` keys (settings, notes) ride along."""
    result = {
        "benchmark": Path(script).stem,
        "command": " ".join([f"python bench/{Path(script).name}", *(shlex.quote(a) for a in sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "machine": machine(),
        "figures": figures,
        **extra,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(json.dumps(result, indent=2))
    return result


def run_child(argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None) -> dict[str, Any]:
    """Run ``argv`` to completion: wall seconds, that process's own peak RSS in bytes, stdout and stderr.

    The peak comes from ``wait4`` on the one child, so neither this process's memory nor other
    children's counts. A failing child stops the benchmark with its last output.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if child.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({child.returncode}):\n{(stdout + stderr)[-2000:]}")
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * scale, "stdout": stdout, "stderr": stderr}
