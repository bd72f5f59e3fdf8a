"""Run every bench/bench_*.py on the CPU, collect their JSON under bench/results/, write docs/PERFORMANCE.md.

    python bench/run.py                    # everything, full sizes
    python bench/run.py --quick            # everything, smaller sizes
    python bench/run.py data padding       # only bench_data.py and bench_padding.py
    python bench/run.py --report-only      # rewrite docs/PERFORMANCE.md from the JSON already there

Each script runs in its own process with ``--out bench/results/<stem>.json`` (and ``--quick``);
its output goes to ``bench/results/<stem>.log``. A script that fails is reported as failed and
the others still run. The summary shows every script's latest results, each with its own
command, date and machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

REPO = benchlib.BENCH_DIR.parent
DOC = REPO / "docs" / "PERFORMANCE.md"


def scripts() -> list[Path]:
    return sorted(benchlib.BENCH_DIR.glob("bench_*.py"))


def pick(names: list[str]) -> list[Path]:
    """The scripts named (``data``, ``bench_data``, ``bench_data.py``), or all of them."""
    found = scripts()
    if not names:
        return found
    by_name = {}
    for path in found:
        for alias in (path.stem, path.stem.removeprefix("bench_"), path.name):
            by_name[alias] = path
    unknown = [n for n in names if n not in by_name]
    if unknown:
        choices = ", ".join(p.stem.removeprefix("bench_") for p in found)
        raise SystemExit(f"no benchmark called {', '.join(unknown)}; there are: {choices}")
    return [by_name[n] for n in dict.fromkeys(names)]


def run_one(script: Path, quick: bool, timeout: float) -> dict[str, Any]:
    out = benchlib.RESULTS_DIR / f"{script.stem}.json"
    log = benchlib.RESULTS_DIR / f"{script.stem}.log"
    # Paths relative to the repository (the scripts run there), so the recorded commands are portable.
    argv = [sys.executable, str(script.relative_to(REPO)), "--out", str(out.relative_to(REPO))]
    argv += ["--quick"] if quick else []
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    print(f"running {script.name}{' --quick' if quick else ''} ...", flush=True)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        try:
            done = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=timeout)
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"stopped after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    problems = []
    if status == "ok":
        try:
            problems = contract_problems(json.loads(out.read_text(encoding="utf-8")), script.stem)
        except (OSError, ValueError) as exc:
            problems = [f"no readable {out.name}: {exc}"]
        if problems:
            status = "broke the JSON contract: " + "; ".join(problems[:3])
    print(f"  {status} in {seconds:.0f} s (log: {log.relative_to(REPO)})", flush=True)
    return {"script": script.name, "status": status, "seconds": round(seconds, 1)}


def contract_problems(result: Any, stem: str) -> list[str]:
    """How ``result`` departs from the contract every bench script follows; empty when it does not."""
    if not isinstance(result, dict):
        return ["not a JSON object"]
    problems = [f"missing {k!r}" for k in ("benchmark", "command", "date", "machine", "figures") if k not in result]
    if result.get("benchmark") != stem:
        problems.append(f"benchmark is {result.get('benchmark')!r}, not {stem!r}")
    machine = result.get("machine")
    if not isinstance(machine, dict) or not {"cpu", "cores"} <= set(machine):
        problems.append("machine lacks cpu or cores")
    figures = result.get("figures")
    if not isinstance(figures, list) or not figures:
        return [*problems, "figures is not a non-empty list"]
    number = (int, float)
    for i, fig in enumerate(figures):
        where = f"figures[{i}]"
        if not isinstance(fig, dict):
            problems.append(f"{where} is not an object")
            continue
        if not isinstance(fig.get("name"), str) or not isinstance(fig.get("unit"), str):
            problems.append(f"{where} needs a name and a unit")
        if not isinstance(fig.get("jnreg"), number):
            problems.append(f"{where}.jnreg is not a number")
        if fig.get("better") not in ("lower", "higher"):
            problems.append(f"{where}.better is not 'lower' or 'higher'")
        for key, kinds in (
            ("alternative", (str,)),
            ("alternative_value", number),
            ("ratio", number),
            ("target", (str,)),
            ("met", (bool,)),
        ):
            if key not in fig or not (fig[key] is None or isinstance(fig[key], kinds)):
                problems.append(f"{where}.{key} is missing or of the wrong type")
    return problems


# ---------------------------------------------------------------- docs/PERFORMANCE.md


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(results: list[dict[str, Any]], runs: list[dict[str, Any]], command: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    machine = benchlib.machine()
    lines = [
        "# Performance",
        "",
        "Every figure is measured by a script in `bench/`, side by side with its alternative in the same",
        "run; **ratio** is jnreg's value over the alternative's (below 1 is better where lower is better,",
        "above 1 where higher is). Rerun everything with one command:",
        "",
        "```bash",
        "python bench/run.py            # full sizes; --quick for smaller ones; name scripts to run only those",
        "```",
        "",
        f"This file was written by `{command}` on {now}, on {machine['cpu']} "
        f"({machine['cores']} cores{', ' + str(machine['memory_gib']) + ' GiB' if 'memory_gib' in machine else ''}, "
        f"{machine['system']}, Python {machine['python']}). The JSON behind each table is in `bench/results/`.",
        "",
    ]
    if "--quick" in command:
        lines += [
            "These are `--quick` sizes, smaller than the ones the targets name (bench_data: 2,000 and 20,000",
            "rows instead of 20,000 and 200,000); `python bench/run.py` without it measures those.",
            "",
        ]
    if runs:
        lines += ["| script | result | seconds |", "|---|---|---|"]
        lines += [f"| {r['script']} | {_cell(r['status'])} | {r['seconds']} |" for r in runs]
        lines.append("")
    targets = [(res, fig) for res in results for fig in res["figures"] if fig.get("target")]
    missed = [(res, fig) for res, fig in targets if fig.get("met") is False]
    lines += ["## Targets", ""]
    if not targets:
        lines += ["No figure has a target.", ""]
    else:
        lines.append(f"{len(targets) - len(missed)} of {len(targets)} targets met.")
        if missed:
            lines += ["", "Not met:", ""]
            lines += [
                f"- {res['benchmark']}: {fig['name']}: {_number(fig['jnreg'])} {fig['unit']}, target {fig['target']}"
                for res, fig in missed
            ]
        lines.append("")
    for res in results:
        m = res.get("machine", {})
        lines += [
            f"## {res['benchmark']}",
            "",
            f"`{res['command']}`, {res['date']}, {m.get('cpu', '?')} ({m.get('cores', '?')} cores"
            + (f", load average {m['load_average_1m']} when it finished" if "load_average_1m" in m else "")
            + ").",
            "",
            "| figure | jnreg | unit | alternative | alternative's | ratio | better | target | met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for fig in res["figures"]:
            lines.append(
                "| "
                + " | ".join(
                    [
                        _cell(fig["name"]),
                        _number(fig["jnreg"]),
                        _cell(fig["unit"]),
                        _cell(fig["alternative"] or "–"),
                        _number(fig["alternative_value"]),
                        f"{fig['ratio']:.3g}×" if fig.get("ratio") is not None else "–",
                        fig["better"],
                        _cell(fig["target"] or "–"),
                        _number(fig["met"]) if fig.get("met") is not None else "–",
                    ]
                )
                + " |"
            )
        for key in ("note", "notes"):
            if res.get(key):
                notes = res[key] if isinstance(res[key], list) else [res[key]]
                lines.append("")
                lines += [f"- {_cell(n)}" for n in notes]
        lines.append("")
    return "\n".join(lines)


def collect() -> list[dict[str, Any]]:
    """The latest JSON of every script that still exists, in script order."""
    results = []
    for script in scripts():
        path = benchlib.RESULTS_DIR / f"{script.stem}.json"
        if not path.is_file():
            continue
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if not contract_problems(result, script.stem):
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="scripts to run: data, padding, ... (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    parser.add_argument("--report-only", action="store_true", help="only rewrite docs/PERFORMANCE.md")
    parser.add_argument("--list", action="store_true", help="list the scripts and stop")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one script may take (3600)")
    args = parser.parse_args(argv)
    chosen = pick(args.names)
    if args.list:
        for script in chosen:
            print(script.stem.removeprefix("bench_"))
        return 0
    benchlib.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python bench/run.py", *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    last_run = benchlib.RESULTS_DIR / "run.json"
    if args.report_only:
        # Keep the last run's command and table: this only redraws the summary.
        try:
            previous = json.loads(last_run.read_text(encoding="utf-8"))
            runs, command = previous["runs"], f"{previous['command']}` and redrawn by `{command}"
        except (OSError, ValueError, KeyError):
            runs = []
    else:
        runs = [run_one(script, args.quick, args.timeout) for script in chosen]
        last_run.write_text(json.dumps({"command": command, "runs": runs}, indent=2) + "\n", encoding="utf-8")
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render(collect(), runs, command) + "\n", encoding="utf-8")
    print(f"wrote {DOC.relative_to(REPO)}")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
