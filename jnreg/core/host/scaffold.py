"""Writing a new agent plugin package that a team can install, test and extend."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from jnreg.errors import ConfigError
from jnreg.names import AGENT_PATTERN, is_agent

SAMPLE_ROWS = [
    (
        "The city council approved a new bus route linking the hospital and the university.",
        "A new bus route will connect the hospital and the university after council approval.",
        0.9,
    ),
    (
        "Rainfall in the region was 40 percent below average for the third month running.",
        "The region has had three straight months of rainfall well below average.",
        0.85,
    ),
    (
        "A local bakery says flour prices have doubled since spring and it may raise bread prices.",
        "A bakery reports doubled flour costs and may raise prices.",
        0.8,
    ),
    (
        "The museum will open late on Fridays through August, officials said on Monday.",
        "The museum extends Friday opening hours through August.",
        0.9,
    ),
]


def _render(template: str, **values: str) -> str:
    text = resources.files("jnreg.core.host").joinpath("templates", "plugin", template).read_text(encoding="utf-8")
    return text.format(**values)


def write_plugin(name: str, directory: Path, description: str | None = None) -> list[Path]:
    """Write the plugin package for agent ``name`` into ``directory``; returns the files written."""
    if not is_agent(name):
        raise ConfigError(f"agent name {name!r} must match {AGENT_PATTERN.pattern}")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"{directory} exists and is not an empty directory")
    package = f"jnreg_{name}"
    values = {
        "name": name,
        "package": package,
        "dist_name": f"jnreg-{name.replace('_', '-')}",
        "description": (description or f"The {name} agent.").replace('"', "'"),
    }
    rows = "".join(
        json.dumps({"prompt": p, "response": json.dumps({"answer": a, "confidence": c})}) + "\n"
        for p, a, c in SAMPLE_ROWS
    )
    files = {
        "pyproject.toml": _render("pyproject.toml.tmpl", **values),
        "README.md": _render("README.md.tmpl", **values),
        f"src/{package}/__init__.py": f'"""jnreg plugin for the {name} agent."""\n',
        f"src/{package}/plugin.py": _render("plugin.py.tmpl", **values),
        f"src/{package}/response.schema.json": _render("response.schema.json.tmpl", **values),
        f"src/{package}/data/{name}.jsonl": rows,
        "tests/test_plugin.py": _render("test_plugin.py.tmpl", **values),
    }
    written = []
    for relative, content in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written
