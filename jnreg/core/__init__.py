"""What jnreg does with a model, one sub-package a job.

- ``host``: the plugin host (hook specifications, the plugin manager, agent specs, the plugin scaffold);
- ``data``: the data pipeline (reading and checking rows, rendering and tokenizing, the cache);
- ``models``: loading tokenizers and (quantized) base models, and the built-in tiny model;
- ``training``: the settings, the checks before a run, the engine, packing, progress and data parallelism;
- ``evaluation``: evaluating an adapter against its agent's schema, the gate's requirements, generation;
- ``export``: merging an adapter into its base.

The modules' earlier flat paths (``jnreg.core.spec``, ``jnreg.core.engine``, ...) still import, as
the same module objects, so plugins and scripts written against them keep working.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from types import ModuleType

# The flat layout's module names, and where each module lives now.
MOVED = {
    "config": "training.config",
    "data": "data.rows",
    "datacache": "data.cache",
    "dryrun": "training.dryrun",
    "engine": "training.engine",
    "evaluate": "evaluation.evaluate",
    "export": "export.merge",
    "gate": "evaluation.gate",
    "generation": "evaluation.generation",
    "hookspecs": "host.hookspecs",
    "launch": "training.launch",
    "models": "models.loading",
    "outputs": "training.outputs",
    "packed_trainer": "training.packed_trainer",
    "packing": "training.packing",
    "plugins": "host.plugins",
    "preflight": "training.preflight",
    "prepare": "data.prepare",
    "progress": "training.progress",
    "scaffold": "host.scaffold",
    "spec": "host.spec",
    "tiny_model": "models.tiny",
}

SUBPACKAGES = ("data", "export", "models")


class _Moved:
    """Imports ``jnreg.core.<old name>`` as the module at its new path (one module object under both names).

    A meta path finder and loader by protocol; importlib.abc would cost every command 10 ms of imports.
    """

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.rpartition(".")
        # ``data``, ``export`` and ``models`` are sub-packages now, which give their old modules' names themselves.
        if prefix != __name__ or name not in MOVED or name in SUBPACKAGES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its new name


if not any(isinstance(finder, _Moved) for finder in sys.meta_path):
    sys.meta_path.insert(0, _Moved())
