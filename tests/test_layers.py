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
    "plugin": {"ground", "core", "plugin"},
    "plugins": {"ground", "plugin", "plugins"},
    "testing": {"ground", "core"},
    "release": {"ground", "core", "registry", "serve", "release"},
    "serve": {"ground", "core", "registry", "serve"},
    # Pages made from the store's documents, read through the store's methods; it imports no store.
    "report": {"ground", "report"},
    "cli": {"ground", "core", "registry", "release", "report", "serve", "plugin", "cli"},
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


def module_name(path: Path, package: Path | None = None) -> str:
    parts = path.relative_to((package or PACKAGE).parent).with_suffix("").parts
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


def module_paths(package: Path) -> dict[str, Path]:
    return {module_name(path, package): path for path in sorted(package.rglob("*.py"))}


def import_graph(package: Path) -> dict[str, set[str]]:
    """Each jnreg module and the jnreg modules it imports, at module level or inside functions.

    ``from a.b import c`` names module ``a.b.c`` when there is one, else the module ``a.b``; a module's
    parent packages, which Python imports on the way, are not counted as what the module imports.
    """
    paths = module_paths(package)
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets = set()
        for imported, _function in jnreg_imports(ast.parse(path.read_text(encoding="utf-8")), module):
            while imported not in paths and "." in imported:
                imported = imported.rpartition(".")[0]
            if imported in paths and imported != module:
                targets.add(imported)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or round a circle (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_circles_anywhere():
    assert circles(import_graph(PACKAGE)) == []


def test_the_circle_check_catches_circles_at_module_level_and_inside_functions(tmp_path):
    fake = tmp_path / "jnreg"
    (fake / "cli").mkdir(parents=True)
    (fake / "core").mkdir()
    for init in (fake / "__init__.py", fake / "cli" / "__init__.py", fake / "core" / "__init__.py"):
        init.write_text("")
    (fake / "cli" / "evaluate.py").write_text("from jnreg.cli.train import options\n")
    (fake / "cli" / "train.py").write_text("def run():\n    from jnreg.cli import gate\n")
    (fake / "cli" / "gate.py").write_text("def check():\n    from jnreg.cli.evaluate import evaluate_version\n")
    (fake / "core" / "a.py").write_text("import jnreg.core.b\n")
    (fake / "core" / "b.py").write_text("from jnreg.core.a import thing\n")
    (fake / "core" / "c.py").write_text("from jnreg.core import a\n")  # imports into a circle, is not in one
    assert circles(import_graph(fake)) == [
        ["jnreg.cli.evaluate", "jnreg.cli.gate", "jnreg.cli.train"],
        ["jnreg.core.a", "jnreg.core.b"],
    ]


# Where a module usually holds two ideas; a longer one is split by what it does.
MAX_MODULE_LINES = 600


def test_no_module_is_longer_than_about_600_lines():
    long = {
        module: lines
        for module, path in module_paths(PACKAGE).items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


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
    (fake / "registry" / "store.py").write_text("from jnreg.core.models.loading import load_base_model\n")
    (fake / "core" / "engine.py").write_text("def f():\n    from jnreg.registry.store import ModelStore\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert crossings() == [
        "jnreg.core.engine inside f() imports jnreg.registry.store.ModelStore (core -> registry)",
        "jnreg.registry.store imports jnreg.core.models.loading.load_base_model (registry -> core)",
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "from jnreg.registry import ModelStore, load, resolve, Resolution, PublishResult, GcResult, VerifyReport",
        "from jnreg.core.host.hookspecs import hookimpl, hookspec",
        "from jnreg.core.host.spec import AgentSpec, Hyperparameters, PromptTemplate, Serving, DataOptions, Record",
        "import jnreg.testing",
        "from jnreg.release import evaluate_version, publish, promote, requirements_for, check",
        "from jnreg.cli import cli, main",
        "from jnreg.errors import JnregError, StoreError, ConfigError, DataError, IntegrityError",
    ],
)
def test_public_names_still_import(statement):
    subprocess.run([sys.executable, "-c", statement], check=True)


def test_core_loads_without_registry_or_cli():
    code = (
        "import sys\n"
        "import jnreg.core.training.engine, jnreg.core.training.dryrun, jnreg.core.evaluation.generation\n"
        "import jnreg.core.host.plugins, jnreg.plugin, jnreg.testing\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('jnreg.registry', 'jnreg.cli')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
