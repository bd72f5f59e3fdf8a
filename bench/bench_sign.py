"""Signed versions: what signing costs a publish, and what a trust policy costs resolve and load.

Side by side in one run, on a local store: publishing a 200 MB adapter signed against unsigned
(signing reuses the sha256s the publish computes, so the goal is ≤ 1.1×); `jnreg store resolve`
with a trust policy against without (a fresh process each time, as an orchestrator runs it; goal
≤ 1.3×, and no torch import); and `load` of the built-in model's adapter with a policy against
without (goal: the check adds ≤ 5%).

    python bench/bench_sign.py [--repeat 5] [--size-mb 200] [--quick] [--out PATH]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

from tests.registry_helpers import adapter_source, random_lora  # noqa: E402

REPO = benchlib.BENCH_DIR.parent


def make_keys(where: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = where / "key.pem", where / "key.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def jnreg_resolve(root: Path, trusted: Path | None) -> float:
    argv = [sys.executable, "-m", "jnreg", "--store-root", str(root)]
    argv += ["--trusted-key", str(trusted)] if trusted else []
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    subprocess.run([*argv, "store", "resolve", "critic"], check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = benchlib.parser(__file__, __doc__, quick="a 20 MB adapter and 2 rounds")
    parser.add_argument("--repeat", type=int, default=None, help="rounds of each measurement (5; --quick: 2)")
    parser.add_argument("--size-mb", type=int, default=None, help="size of the published adapter (200; --quick: 20)")
    args = parser.parse_args()
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.size_mb = args.size_mb or (20 if args.quick else 200)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("JNREG_TRUSTED_KEYS", None)
    os.environ.pop("JNREG_SIGNING_KEY", None)
    warnings.filterwarnings("ignore")

    from jnreg.registry import ModelStore, load
    from jnreg.registry.signing import load_signer

    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        private, public = make_keys(work_dir)
        source = adapter_source(work_dir / "big", 0, args.size_mb << 20)
        store = ModelStore(work_dir / "store")
        signed_s, unsigned_s = [], []
        rounds = args.repeat * 2
        for round_ in range(rounds):  # interleaved, each order in turn, so a busy moment hits both alike
            for signed in (False, True) if round_ % 2 else (True, False):
                start = time.perf_counter()
                label, key = (f"s{round_}", private) if signed else (f"u{round_}", None)
                store.publish("critic", source, version=label, sign_key=key)
                (signed_s if signed else unsigned_s).append(time.perf_counter() - start)
        # What signing adds to a publish, alone: loading the key and building and signing the bundle.
        manifest = store.manifest("critic", "s0")
        signing_s = []
        for _ in range(50):
            start = time.perf_counter()
            load_signer(private).sign(manifest)
            signing_s.append(time.perf_counter() - start)

        store.promote("critic", f"s{rounds - 1}")
        jnreg_resolve(store.root, public)  # warm the file cache once
        with_policy, without_policy = [], []
        for _ in range(args.repeat * 2):
            without_policy.append(jnreg_resolve(store.root, None))
            with_policy.append(jnreg_resolve(store.root, public))
        heavy = subprocess.run(
            [sys.executable, "-c", "import sys; from jnreg.cli import cli\ntry:\n cli(sys.argv[1:])\nexcept SystemExit:"
             "\n pass\nprint('torch' in sys.modules, file=sys.stderr)",
             "--store-root", str(store.root), "--trusted-key", str(public), "store", "resolve", "critic"],
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True,
        ).stderr.strip().splitlines()[-1]  # fmt: skip

        tiny = ModelStore(work_dir / "tiny")
        tiny_source = random_lora(work_dir / "tiny_out", 0, r=4, targets=("q_proj", "v_proj"))
        tiny.publish(
            "analyst",
            tiny_source,
            version="v1",
            sign_key=private,
        )
        load("analyst", store_root=tiny.root, quantization=None)  # first load reads the model files into cache
        load("analyst", store_root=tiny.root, quantization=None, trusted_keys=[public])  # imports cryptography
        load_plain, load_checked = [], []
        # A load of the tiny model takes tens of milliseconds, so many rounds, each order in turn.
        for round_ in range(args.repeat * 8):
            for checked in (False, True) if round_ % 2 else (True, False):
                start = time.perf_counter()
                load("analyst", store_root=tiny.root, quantization=None, trusted_keys=[public] if checked else None)
                (load_checked if checked else load_plain).append(time.perf_counter() - start)

    publish_ratio = statistics.median(signed_s) / statistics.median(unsigned_s)
    resolve_ratio = statistics.median(with_policy) / statistics.median(without_policy)
    load_ratio = statistics.median(load_checked) / statistics.median(load_plain)
    figures = [
        benchlib.figure(
            f"publish of a {args.size_mb} MB adapter, signed, median",
            statistics.median(signed_s),
            "s",
            better="lower",
            alternative="the same publish unsigned",
            alternative_value=statistics.median(unsigned_s),
            target="≤ 1.1×",
            met=publish_ratio <= 1.1,
        ),
        benchlib.figure(
            "signing work within a signed publish (key load, statement, bundle), median",
            statistics.median(signing_s),
            "s",
            better="lower",
            alternative=f"a whole unsigned publish of the {args.size_mb} MB adapter",
            alternative_value=statistics.median(unsigned_s),
            target="≤ 0.1× (the publish's hashing is shared, not repeated)",
            met=statistics.median(signing_s) <= 0.1 * statistics.median(unsigned_s),
        ),
        benchlib.figure(
            "`jnreg store resolve` with a trust policy, median (fresh process)",
            statistics.median(with_policy),
            "s",
            better="lower",
            alternative="the same command without a policy",
            alternative_value=statistics.median(without_policy),
            target="≤ 1.3×, no torch import",
            met=resolve_ratio <= 1.3 and heavy == "False",
        ),
        benchlib.figure(
            "load of the built-in model's adapter with a trust policy, median",
            statistics.median(load_checked),
            "s",
            better="lower",
            alternative="the same load without a policy",
            alternative_value=statistics.median(load_plain),
            target="≤ 1.05×",
            met=load_ratio <= 1.05,
        ),
    ]
    benchlib.write(
        __file__,
        args.out,
        figures,
        settings={"repeat": args.repeat, "size_mb": args.size_mb, "key": "P-256"},
        resolve_imports_torch=heavy == "True",
        note="local store; the signature is built from the manifest's sha256s and checked with cryptography alone",
    )


if __name__ == "__main__":
    main()
