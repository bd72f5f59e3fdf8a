"""Start-up cost of ``jnreg --help`` and ``jnreg store list`` against an eager-import CLI, and of schema checks.

jnreg imports torch, transformers, peft, bitsandbytes and datasets only inside the commands
that train. The alternative, a CLI that imports them at start-up, is timed side by side as
``python -c "import torch, transformers, peft, trl; ..."`` followed by the same help output.

Every registry command validates what it reads (a manifest, the map, evaluations) against jnreg's
schemas with jsonschema-rs; a fresh process imports it, compiles the manifest schema and validates a
published manifest, timed in CPU seconds against the same with jsonschema (Python).

    python bench/bench_cli_startup.py [--repeat 5] [--quick] [--out PATH]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(1, str(REPO))
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


# Run in a fresh process, so the import is paid as a command pays it; CPU time, so other work does not count.
VALIDATE = """
import json, sys, time
from importlib import resources
manifest = json.loads(open(sys.argv[1], encoding="utf-8").read())
schema = json.loads(resources.files("jnreg.schemas").joinpath("manifest.schema.json").read_text())
start = time.process_time()
{imports}
imported = time.process_time()
{compile}
problems = list(validator.iter_errors(manifest))
done = time.process_time()
assert not problems, problems
print(json.dumps({{"import": imported - start, "validate": done - imported}}))
"""
VALIDATORS = {
    "jsonschema-rs": (
        "import jsonschema_rs",
        "validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True, offline=True)",
    ),
    "jsonschema": (
        "from jsonschema import Draft202012Validator, FormatChecker",
        # jsonschema-rs checks the schema against the meta-schema as it compiles; this does the same.
        "Draft202012Validator.check_schema(schema)\n"
        "validator = Draft202012Validator(schema, format_checker=FormatChecker())",
    ),
}


def validation_costs(manifest: Path, repeat: int, env: dict[str, str]) -> dict[str, dict[str, float]]:
    """Median CPU seconds to import each validator, and to compile the manifest schema and validate one manifest."""
    found = {}
    for name, (imports, compile_) in VALIDATORS.items():
        code = VALIDATE.format(imports=imports, compile=compile_)
        runs = []
        for _ in range(repeat):
            done = subprocess.run([sys.executable, "-c", code, str(manifest)], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f"{name} validation failed: {done.stderr[-500:]}")
            runs.append(json.loads(done.stdout))
        found[name] = {part: statistics.median(run[part] for run in runs) for part in ("import", "validate")}
    return found


def published_manifest(root: Path) -> Path:
    """A manifest as the store writes it, of a small adapter published into ``root``."""
    from jnreg.registry import ModelStore
    from tests.registry_helpers import make_adapter

    return ModelStore(root / "store").publish("critic", make_adapter(root / "adapter", seed=1)).path / "manifest.json"


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
        validation = validation_costs(published_manifest(Path(root)), max(repeat, 5), env)
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
    rust, python = validation["jsonschema-rs"], validation["jsonschema"]
    figures += [
        benchlib.figure(
            "import jsonschema-rs (CPU time, median)",
            rust["import"],
            "s CPU",
            better="lower",
            alternative="import jsonschema",
            alternative_value=python["import"],
        ),
        benchlib.figure(
            "compile the manifest schema and validate a manifest, first time in a process (CPU time, median)",
            rust["validate"],
            "s CPU",
            better="lower",
            alternative="the same with jsonschema",
            alternative_value=python["validate"],
        ),
    ]
    benchlib.write(
        __file__, args.out, figures, settings={"repeat": repeat}, median_s=medians, validation_cpu_s=validation
    )


if __name__ == "__main__":
    main()
