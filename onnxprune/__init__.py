"""onnxprune: structured pruning of exported ONNX vision models.

The public names load on first use (PEP 562), so ``import onnxprune.cli`` is quick and a Ctrl-C
while the command starts is caught by the command, not shown as a traceback.
"""

import sys
import types
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_PUBLIC = {
    "Analysis": "structure.analyze", "CoupledGroup": "structure.analyze", "FrozenGroup": "structure.analyze",
    "Slot": "structure.slots",
    "analyze": "api", "bench": "api", "measure_costs": "api", "prune": "api",
    "BenchOptions": "options", "CalibOptions": "options", "ShapeOptions": "options", "SolverOptions": "options",
    "TargetOptions": "options",
    "Latency": "deploy.timing",
    "Criterion": "ranking.criteria",
    "ModelError": "errors", "OnnxPruneError": "errors", "UsageError": "errors",
    "Pipeline": "pipeline",
    "plot_sweep": "report.plots", "to_html": "report.html",
    "BenchResult": "results", "Costs": "results", "PruneResult": "results", "SweepPoint": "results",
    "SweepResult": "results",
    "sweep": "sweep",
    "BatchResult": "jobs.batch", "batch": "jobs.batch", "JobOptions": "jobs.tasks",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")
    value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(types.ModuleType):
    """``analyze`` and ``sweep`` name both a submodule and a public function. Importing a submodule
    sets the package attribute of that name to the module; the function must win, as it did when
    this file imported everything eagerly (the modules stay in sys.modules for ``from ... import``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
