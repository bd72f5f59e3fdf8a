"""What a user sees while training: a live bar on a terminal, plain lines in a log."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

from tests.helpers import run_jnreg

TINY = "jnreg:tiny-mistral"
RUN = ("train", "fact_checker", "--model_name_or_path", TINY, "--max-steps", "4", "--logging-steps", "2")
LOSS_LINE = re.compile(r"step (\d+)/4  loss \d+\.\d{4}  lr \S+  [\d,]+ tok/s  elapsed \d+:\d\d( {2}left \d+:\d\d)?")


def visible_rows(output: str) -> list[str]:
    """What stays on each terminal row: the text after the last carriage return of each line."""
    return [line.rstrip("\r").split("\r")[-1] for line in output.split("\n")]


def test_log_output_is_plain_lines_one_per_logging_step(tmp_path: Path):
    done = run_jnreg(*RUN, "--output_dir", str(tmp_path / "out"), "--eval-steps", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    everything = done.stdout + done.stderr
    assert "\r" not in everything and "\x1b" not in everything
    lines = done.stdout.splitlines()
    steps = [int(m.group(1)) for m in map(LOSS_LINE.fullmatch, lines) if m]
    assert steps == [1, 2, 4], done.stdout  # transformers logs the first step, then every 2
    evals = [line for line in lines if re.fullmatch(r"step [24]/4  eval_loss \d+\.\d{4}", line)]
    assert len(evals) == 2, done.stdout


def test_terminal_shows_one_live_bar_with_loss_lines_above_it(tmp_path: Path):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "JNREG_DISABLE_PLUGIN_AUTOLOAD"}
    script = Path(sys.executable).with_name("jnreg")
    process = subprocess.Popen(
        [str(script), *RUN, "--output_dir", str(tmp_path / "out")],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=tmp_path,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the last writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0
    output = b"".join(chunks).decode("utf-8", "replace")
    rows = visible_rows(output)
    assert [int(m.group(1)) for m in map(LOSS_LINE.fullmatch, rows) if m] == [1, 2, 4], output[-3000:]
    bars = [row for row in rows if re.match(r"training \d+/\d+ \|", row)]
    assert len(bars) == 1, bars  # one bar, left on screen when training ends
    assert re.match(r"training 4/4 \|.*\| loss \d+\.\d{4}  lr \S+  [\d,]+ tok/s \[\d\d:\d\d<\d\d:\d\d\]", bars[0])
    # The bar is redrawn in place, with each loss line printed above it: it was drawn more than once.
    assert len(re.findall(r"training \d+/4 \|", output)) > 1
