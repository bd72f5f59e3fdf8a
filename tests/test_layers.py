"""The package's layers: ground, then core and registry side by side, then the command line on top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jnreg"
# What every part shares: ``jnreg`` itself (its version), the errors, the crash-safe file helpers, the names
# the store accepts, and the JSON Schemas with their validation.
GROUND = {"__version__", "errors", "fsutil", "names", "schemas"}
# Which layers each layer may import, at module level and inside functions.
ALLOWED = {
    "ground": {"ground"},
    "core": {"ground", "core"},
    "registry": {"ground", "registry"},
    "plugins": {"ground", "core", "plugins"},
    "testing": {"ground", "core"},
    "cli": {"ground", "core", "registry", "cli"},
    "main": {"cli"},
}
# The one reach across: ``load()`` builds a model with core's loaders, inside the function.
EXCEPTIONS = {("jnreg.registry.loader", "load", "core")}


def layer_of(name: str) -> str:
    """The layer of a jnreg module, or of a name imported from one."""
    parts = name.split(".")
    if len(parts) == 1 or parts[1] in GROUND:
        return "ground"
    return {"__main__": "main"}.get(parts[1], parts[1])


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def jnreg_imports(tree: ast.AST, module: str) -> list[tuple[str, str | None]]:
    """(imported jnreg module, enclosing function or None) for every import in the file."""
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, function or child.name)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, function) for alias in child.names if alias.name.startswith("jnreg"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module.startswith("jnreg"):
                    # ``from jnreg.core import engine`` imports jnreg.core.engine.
                    found.extend((f"{child.module}.{alias.name}", function) for alias in child.names)
            visit(child, function)

    visit(tree, None)
    return found


def crossings() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        source = layer_of(module)
        for imported, function in jnreg_imports(ast.parse(path.read_text(encoding="utf-8")), module):
            target = layer_of(imported)
            if target in ALLOWED[source] or (module, function, target) in EXCEPTIONS:
                continue
            where = f" inside {function}()" if function else ""
            bad.append(f"{module}{where} imports {imported} ({source} -> {target})")
    return bad


def test_no_module_imports_across_the_layers():
    assert crossings() == []


def test_the_layer_check_catches_a_crossing(tmp_path, monkeypatch):
    """A core module that imports the registry is reported, so the check above can fail."""
    fake = tmp_path / "jnreg"
    (fake / "core").mkdir(parents=True)
    (fake / "registry").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "core" / "__init__.py").write_text("")
    (fake / "registry" / "__init__.py").write_text("")
    (fake / "registry" / "store.py").write_text("from jnreg.core.models import load_base_model\n")
    (fake / "core" / "engine.py").write_text("def f():\n    from jnreg.registry.store import ModelStore\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert crossings() == [
        "jnreg.core.engine inside f() imports jnreg.registry.store.ModelStore (core -> registry)",
        "jnreg.registry.store imports jnreg.core.models.load_base_model (registry -> core)",
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "from jnreg.registry import ModelStore, load, resolve, Resolution, PublishResult, GcResult, VerifyReport",
        "from jnreg.core.hookspecs import hookimpl, hookspec",
        "from jnreg.core.spec import AgentSpec, Hyperparameters, PromptTemplate, Serving, DataOptions, Record",
        "import jnreg.testing",
        "from jnreg.cli import cli, main",
        "from jnreg.errors import JnregError, StoreError, ConfigError, DataError, IntegrityError",
    ],
)
def test_public_names_still_import(statement):
    subprocess.run([sys.executable, "-c", statement], check=True)


def test_core_loads_without_registry_or_cli():
    code = (
        "import sys\n"
        "import jnreg.core.engine, jnreg.core.dryrun, jnreg.core.generation, jnreg.core.plugins, jnreg.testing\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('jnreg.registry', 'jnreg.cli')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
