"""The docs' commands run as written: every block marked ``<!-- runs -->`` in README.md and docs/*.md.

A block is marked by an HTML comment on the line before its fence, so the marker does not show
on a rendered page:

- ``<!-- runs -->``: the block must succeed;
- ``<!-- runs: fails -->``: the block must fail with a one-line error and no traceback (a gate
  that keeps a version out of service, say).

Only ``bash`` and ``python`` blocks can be marked. Each page's marked blocks run in order, as a
reader pasting them into one shell would: in a directory where the quick start's ``jnreg``
commands have run (trained once per module, then copied for each page), with the variables a
block exports passed on to the next. The one liberty taken is time: every ``jnreg ... train``
that is not a dry run gets ``--max-steps 2`` appended, so a page that trains costs seconds; the
flags, files and outputs are the ones written. ``JNREG_DOCS_FULL_TRAINING=1`` trains in full, as a
reader would (minutes, not seconds).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
INDEX = REPO / "docs" / "README.md"

MARKER = re.compile(r"^<!--\s*runs(?::\s*(?P<mode>[a-z]+))?\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
MODES = {None: "succeeds", "fails": "fails"}
LANGUAGES = ("bash", "python")

# Bash runs each block; training is cut to two steps, everything else is the command as written.
SHORTEN_TRAINING = """\
jnreg() {
  case " $* " in
    *" train "*) case " $* " in *" --dry-run "* | *" --help "* | *" -h "*) ;; *) set -- "$@" --max-steps 2 ;; esac ;;
  esac
  command jnreg "$@"
}
"""
PRELUDE = "set -euo pipefail\n" + ("" if os.environ.get("JNREG_DOCS_FULL_TRAINING") == "1" else SHORTEN_TRAINING)
# Variables a shell sets by itself; the rest of what a block leaves exported goes on to the next block.
SHELL_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the fence
    lang: str
    mode: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def fenced_blocks(page: Path) -> list[tuple[int, str, str, str | None]]:
    """(fence line, language, text, marker mode or None when unmarked) of every fenced block of ``page``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[tuple[int, str, str, str | None]] = []
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        previous = lines[index - 1] if index > 0 else ""
        marker = MARKER.match(previous)
        mode = MODES.get(marker.group("mode"), f"unknown {marker.group('mode')!r}") if marker else None
        found.append((index + 1, fence.group("lang"), "\n".join(lines[index + 1 : end]) + "\n", mode))
        index = end + 1
    return found


def runnable_blocks(page: Path) -> list[Block]:
    return [Block(page, line, lang, mode, text) for line, lang, text, mode in fenced_blocks(page) if mode is not None]


def quick_start_commands() -> list[str]:
    """The ``jnreg`` commands of the README's first set-up command (the ones after the installs)."""
    for _, lang, text, _ in fenced_blocks(REPO / "README.md"):
        if lang == "bash" and "pip install -e ." in text:
            return [part.strip() for part in text.strip().split(" && ") if part.strip().startswith("jnreg ")]
    raise AssertionError("README.md has no quick start command")


def user_env() -> dict[str, str]:
    """The environment of a user with jnreg installed: the test run's, less the settings tests make for themselves."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"MODEL_STORE_ROOT", "AGENT_MODEL_MAP", "JNREG_DISABLE_PLUGIN_AUTOLOAD"}
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """Run ``block`` in ``cwd``; the result and the environment it leaves for the next block."""
    dump = cwd / ".docs-env"
    if block.lang == "python":
        script = cwd / ".docs-block.py"
        script.write_text(block.text, encoding="utf-8")
        argv = ["bash", "-c", f'{PRELUDE}python {script.name}\nenv -0 > "{dump}"']
    else:
        argv = ["bash", "-c", f'{PRELUDE}{block.text}\nenv -0 > "{dump}"']
    dump.unlink(missing_ok=True)
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    after = dict(env)
    if dump.is_file():
        pairs = (item.split("=", 1) for item in dump.read_text(encoding="utf-8").split("\0") if "=" in item)
        after = {name: value for name, value in pairs if name not in SHELL_OWN}
        dump.unlink()
    return done, after


def report(block: Block, done: subprocess.CompletedProcess) -> str:
    head = f"{block.where} ({block.lang}) exited {done.returncode}\n{block.text}"
    return f"{head}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def after_quick_start(tmp_path_factory) -> Path:
    """A directory where the quick start's jnreg commands have run, training cut to two steps."""
    work = tmp_path_factory.mktemp("quickstart")
    commands = quick_start_commands()
    assert any(" train " in c for c in commands), commands
    block = Block(REPO / "README.md", 0, "bash", "succeeds", "\n".join(commands) + "\n")
    done, _ = run_block(block, work, user_env())
    assert done.returncode == 0, report(block, done)
    assert "published synthesizer v" in done.stdout
    page = (work / "synthesizer.html").read_text(encoding="utf-8")  # the quick start ends with the version's page
    assert "<svg" in page and "synthesizer" in page
    return work


PAGES_THAT_RUN = [page for page in PAGES if runnable_blocks(page)]


@pytest.mark.parametrize("page", PAGES_THAT_RUN, ids=lambda page: str(page.relative_to(REPO)))
def test_page_commands_run_as_written(page, after_quick_start, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(after_quick_start, work, symlinks=True)
    env = user_env()
    for block in runnable_blocks(page):
        done, env = run_block(block, work, env)
        if block.mode == "fails":
            assert done.returncode != 0, report(block, done)
            errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
            assert len(errors) == 1 and "Traceback" not in done.stderr, report(block, done)
        else:
            assert done.returncode == 0, report(block, done)
            assert "Traceback" not in done.stderr, report(block, done)


def test_the_readme_keeps_its_two_set_up_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    install = (
        "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && "
        "jnreg --store-root ./model_store train synthesizer --model_name_or_path jnreg:tiny-mistral --publish && "
        "jnreg --store-root ./model_store store resolve synthesizer && "
        "jnreg --store-root ./model_store report synthesizer --out synthesizer.html"
    )
    tests = (
        "<!-- test-command -->\n```bash\npython3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 "
        "&& pip install -e '.[dev]' && python -m pytest -q\n```"
    )
    assert f"```bash\n{install}\n```" in text
    assert tests in text


def test_markers_sit_on_bash_or_python_blocks():
    problems = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        marked = {line for line, _, _, mode in fenced_blocks(page) if mode is not None}
        for number, line in enumerate(lines, start=1):
            if line.lstrip().startswith("<!-- runs") and number + 1 not in marked:
                problems.append(f"{page.relative_to(REPO)}:{number}: a runs marker must be the line before a fence")
        for block in runnable_blocks(page):
            if block.lang not in LANGUAGES:
                problems.append(f"{block.where}: only {', '.join(LANGUAGES)} blocks run, not {block.lang!r}")
            if block.mode not in MODES.values():
                problems.append(f"{block.where}: {block.mode} marker (use <!-- runs --> or <!-- runs: fails -->)")
    assert not problems, "\n".join(problems)


def test_every_page_is_in_the_index_and_every_link_leads_somewhere():
    index = INDEX.read_text(encoding="utf-8")
    unlisted = [p.name for p in PAGES if p.parent == INDEX.parent and p != INDEX and f"({p.name})" not in index]
    assert not unlisted, f"docs/README.md does not link {unlisted}"
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "links to nothing: " + ", ".join(broken)
