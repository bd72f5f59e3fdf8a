"""Registry costs against history and against the alternatives, side by side in one run.

- `ModelStore.publish` into a store of 1,000 versions against the same publish into an empty store;
- `jnreg store resolve` and `jnreg store list` (50 agents x 20 versions) against `python -c "import click"`;
- publishing a 200 MB adapter against `cp -r` + `sync` of the same directory;
- 32 publishers in separate processes at once: versions per second, and that none is lost;
- on an object store (a local moto S3 server), `rollback` and `history` of an agent with 150 versions against
  one with 5: rollback reads one service record, not the journal, so it costs the same; history pages.

Large stores are built by cloning one published version (manifest relabelled, one journal line each), so
building them costs seconds; what is measured is real publishing and resolving on them.
Short commands are measured in CPU time (user + system, median of several runs), which other work on a
shared machine does not inflate the way it inflates wall-clock time; they run with Python's bytecode caches
written (as an installed package has them) even where PYTHONDONTWRITEBYTECODE is set.

    python bench/bench_registry.py [--out bench/results/bench_registry.json] [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import benchlib  # noqa: E402

from jnreg.registry import ModelStore  # noqa: E402
from jnreg.registry import journal as journal_module  # noqa: E402
from jnreg.registry.store import MANIFEST  # noqa: E402
from tests.registry_helpers import adapter_source as source_dir  # noqa: E402


def figure(
    name: str,
    value: float,
    unit: str,
    alternative: str | None,
    alternative_value: float | None,
    better: str,
    target: str | None,
    limit: float | None,
) -> dict[str, Any]:
    """One figure; ``limit`` is the most (or, for 'higher', the least) ratio that meets the target."""
    met = None
    if limit is not None and alternative_value:
        ratio = round(value / alternative_value, 3)
        met = ratio <= limit if better == "lower" else ratio >= limit
    return benchlib.figure(
        name,
        value,
        unit,
        better=better,
        alternative=alternative,
        alternative_value=alternative_value,
        target=target,
        met=met,
    )


def clone_versions(store: ModelStore, agent: str, count: int, work: Path) -> None:
    """Give ``agent`` ``count`` versions: one published, then cloned with relabelled manifests and journal lines."""
    first = store.publish(agent, source_dir(work / f"{agent}-src", seed=1), version="v0000")
    manifest = first.manifest
    versions = store.root / agent / "versions"
    lines = []
    for n in range(1, count):
        label = f"v{n:04d}"
        target = versions / label
        shutil.copytree(first.path, target)
        os.chmod(target / MANIFEST, 0o644)
        (target / MANIFEST).write_text(json.dumps({**manifest, "version": label}, indent=2, sort_keys=True))
        entry = journal_module.make_entry(
            "publish", agent, label, previous="v0000", current="v0000", digest=manifest["digest"],
            adapter_name=manifest["adapter_name"],
        )  # fmt: skip
        lines.append(json.dumps(entry, sort_keys=True))
    with open(store.journal_path, "a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


def timed(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# Commands run as installed: with bytecode caches (as click's are, from its install), after one warm-up run.
CACHED_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def cpu_time(command: list[str], runs: int) -> float:
    """Median user + system CPU seconds of ``command``: what it costs, whatever else the machine is doing."""
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=CACHED_ENV)
    used = []
    for _ in range(runs):
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=CACHED_ENV)
        _, status, usage = os.wait4(child.pid, 0)
        if status != 0:
            raise RuntimeError(f"{command} failed")
        used.append(usage.ru_utime + usage.ru_stime)
    return statistics.median(used)


def bench_publish_history(work: Path, samples: int) -> dict[str, Any]:
    src = source_dir(work / "pub-src", seed=7)
    empty_times = []
    for n in range(samples):
        store = ModelStore(work / f"empty-{n}")
        empty_times.append(timed(lambda store=store: store.publish("critic", src)))
    full = ModelStore(work / "full")
    clone_versions(full, "critic", 1000, work)
    full_times = [timed(lambda: full.publish("critic", src)) for _ in range(samples)]
    assert len(full.version_labels("critic")) == 1000 + samples
    return figure(
        "store publish into a store of 1,000 versions (median, in process)",
        statistics.median(full_times),
        "s",
        "the same publish into an empty store",
        statistics.median(empty_times),
        "lower",
        "≤ 1.2×",
        1.2,
    )


def bench_cli(work: Path, runs: int) -> list[dict[str, Any]]:
    store = ModelStore(work / "cli")
    for a in range(50):
        clone_versions(store, f"agent{a:02d}", 20, work)
    click = cpu_time([sys.executable, "-c", "import click"], runs)
    jnreg = [sys.executable, "-m", "jnreg", "--store-root", str(store.root), "store"]
    resolve = cpu_time([*jnreg, "resolve", "agent00"], runs)
    listing = cpu_time([*jnreg, "list"], runs)
    listing_one = cpu_time([*jnreg, "list", "agent00", "--json"], runs)
    alternative = 'python -c "import click"'
    return [
        figure("jnreg store resolve (CPU time, median)", resolve, "s CPU", alternative, click, "lower", "≤ 2×", 2.0),
        figure(
            "jnreg store list, 50 agents × 20 versions (CPU time, median)", listing, "s CPU", alternative, click,
            "lower", "≤ 3×", 3.0,
        ),
        figure(
            "jnreg store list AGENT --json, 20 versions (CPU time, median)", listing_one, "s CPU", alternative, click,
            "lower", None, None,
        ),
    ]  # fmt: skip


def bench_large(work: Path, size: int) -> dict[str, Any]:
    src = source_dir(work / "large-src", seed=3, weights_bytes=size)
    copy_target = work / "large-copy"

    def copy() -> None:
        subprocess.run(["cp", "-r", str(src), str(copy_target)], check=True)
        subprocess.run(["sync"], check=True)

    subprocess.run(["sync"], check=True)
    copy_time = timed(copy)
    store = ModelStore(work / "large-store")
    subprocess.run(["sync"], check=True)
    publish_time = timed(lambda: store.publish("synthesizer", src))
    megabytes = size // (1024 * 1024)
    return figure(
        f"store publish of a {megabytes} MB adapter",
        publish_time,
        "s",
        "cp -r + sync of the same directory",
        copy_time,
        "lower",
        "≤ 1.5×",
        1.5,
    )


def bench_concurrent(work: Path, writers: int) -> list[dict[str, Any]]:
    store = ModelStore(work / "concurrent")
    sources = [source_dir(work / f"c-src{i}", seed=i) for i in range(writers)]
    env = {**os.environ, "JNREG_LOCK_TIMEOUT": "300", "PYTHONPATH": str(REPO)}
    code = (
        "import sys, json; from jnreg.registry import ModelStore; "
        "r = ModelStore(sys.argv[1]).publish(sys.argv[2], sys.argv[3]); print(r.version)"
    )
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(store.root), "critic", str(src)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for src in sources
    ]  # fmt: skip
    labels = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(err)
        labels.append(out.strip())
    elapsed = time.perf_counter() - start
    stored = store.version_labels("critic")
    journaled = [e["version"] for e in store.history("critic") if e["action"] == "publish"]
    lost = writers - len(set(labels) & set(stored) & set(journaled))
    assert len(set(labels)) == writers, "a label was given twice"
    sequential_store = ModelStore(work / "sequential")
    seq_time = timed(lambda: [sequential_store.publish("critic", src) for src in sources])
    rate = writers / elapsed
    return [
        figure(
            f"{writers} concurrent publishers (separate processes), versions per second",
            rate, "versions/s", f"{writers} publishes one after another in one process", writers / seq_time,
            "higher", None, None,
        ),
        benchlib.figure(
            f"versions lost by {writers} concurrent publishers", lost, "versions", better="lower", target="0",
            met=lost == 0,
        ),
    ]  # fmt: skip


@contextmanager
def moto_server(work: Path) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 and the AWS variables that point at it; a fresh bucket's store root."""
    from jnreg.testing import s3_server

    saved = dict(os.environ)
    with s3_server() as endpoint:
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret-0123456789",
            AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true", JNREG_CACHE=str(work / "cache"),
        )  # fmt: skip
        bucket = f"jnreg-bench-{uuid.uuid4().hex[:12]}"
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT"), timeout=10).read()
        try:
            yield f"s3://{bucket}/store"
        finally:
            os.environ.clear()
            os.environ.update(saved)


def bench_object_history(work: Path, small: int, large: int, runs: int) -> list[dict[str, Any]]:
    """rollback and history on an object store: an agent of ``large`` versions against one of ``small``."""
    src = source_dir(work / "obj-src", seed=5)
    with moto_server(work) as root:
        store = ModelStore(root)
        for agent, count in (("few", small), ("many", large)):
            for n in range(count):
                store.publish(agent, src, version=f"v{n:04d}")

        def rollback_time(agent: str) -> float:
            times = []
            for _ in range(runs):
                back = store.current(agent)
                times.append(timed(lambda: store.rollback(agent)))
                store.promote(agent, back)
            return statistics.median(times)

        def history_time(agent: str, limit: int | None) -> float:
            return statistics.median(timed(lambda: store.history(agent, limit=limit)) for _ in range(runs))

        rollback = {agent: rollback_time(agent) for agent in ("few", "many")}
        history = {agent: history_time(agent, None) for agent in ("few", "many")}
        paged = {agent: history_time(agent, 20) for agent in ("few", "many")}
    same = f"the same on an agent with {small} versions"
    return [
        figure(
            f"object store rollback, agent with {large} versions (median, moto S3 server)", rollback["many"], "s",
            same, rollback["few"], "lower", "≤ 1.5×", 1.5,
        ),
        figure(
            f"object store history --limit 20, agent with {large} versions (median, moto S3 server)", paged["many"],
            "s", same, paged["few"], "lower", "≤ 1.5×", 1.5,
        ),
        figure(
            f"object store history (every entry), agent with {large} versions (median, moto S3 server)",
            history["many"], "s", same, history["few"], "lower", None, None,
        ),
    ]  # fmt: skip


def main() -> None:
    parser = benchlib.parser(__file__, __doc__, quick="Fewer runs and a 50 MB adapter, for a smoke test.")
    args = parser.parse_args()
    samples, runs, size = (3, 5, 50 << 20) if args.quick else (7, 9, 200 << 20)
    with tempfile.TemporaryDirectory(prefix="jnreg-bench-registry-") as tmp:
        work = Path(tmp)
        figures = [bench_publish_history(work, samples)]
        figures += bench_cli(work, runs)
        figures.append(bench_large(work, size))
        figures += bench_concurrent(work, 32)
        figures += bench_object_history(work, 5, 50 if args.quick else 150, runs)
    benchlib.write(__file__, args.out, figures)


if __name__ == "__main__":
    main()
