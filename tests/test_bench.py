"""The bench scripts' shared contract and the runner's summary (the benchmarks themselves run outside the suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import run as runner  # noqa: E402


def test_every_script_takes_out_and_quick():
    scripts = sorted(BENCH.glob("bench_*.py"))
    assert {p.stem for p in scripts} >= {"bench_data", "bench_padding", "bench_cli_startup", "bench_publish"}
    assert runner.scripts() == scripts
    for script in scripts:
        done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "--out" in done.stdout and "--quick" in done.stdout, script.name


def test_written_result_follows_the_contract_and_the_summary_shows_it(tmp_path, monkeypatch, capsys):
    child = benchlib.run_child([sys.executable, "-c", "b = bytearray(64 * 2**20); print('done')"])
    assert child["stdout"].strip() == "done" and child["peak_rss_bytes"] > 64 * 2**20
    figures = [
        benchlib.figure(
            "step", 2.0, "s", better="lower", alternative="peer", alternative_value=4.0, target="≤ 0.6×", met=False
        ),
        benchlib.figure("memory", 300, "MB", better="lower"),
    ]
    assert figures[0]["ratio"] == 0.5 and figures[1]["ratio"] is None
    with pytest.raises(ValueError):
        benchlib.figure("x", 1.0, "s", better="faster")
    out = tmp_path / "bench_example.json"
    result = benchlib.write("bench/bench_example.py", out, figures, settings={"rows": 3})
    assert json.loads(out.read_text()) == result
    assert runner.contract_problems(result, "bench_example") == []
    assert runner.contract_problems({**result, "figures": [{"name": "x"}]}, "bench_example")

    text = runner.render(
        [result], [{"script": "bench_example.py", "status": "ok", "seconds": 1.0}], "python bench/run.py"
    )
    assert "## bench_example" in text and "0.5×" in text and "1 of 1 targets" not in text
    assert "0 of 1 targets met" in text and "bench_example: step: 2.00 s, target ≤ 0.6×" in text


def test_runner_names_scripts_and_refuses_unknown_ones():
    assert runner.pick(["data", "bench_padding.py"]) == [BENCH / "bench_data.py", BENCH / "bench_padding.py"]
    with pytest.raises(SystemExit, match="no benchmark called nope"):
        runner.pick(["nope"])
