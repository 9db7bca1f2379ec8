"""onnxprune: structured pruning of exported ONNX vision models."""

from .analyze import Analysis, CoupledGroup, FrozenGroup, Slot
from .api import Costs, PruneResult, analyze, bench, measure_costs, prune
from .deploy import BenchResult, Latency
from .errors import ModelError, OnnxPruneError, UsageError
from .sweep import SweepPoint, SweepResult, sweep

__version__ = "0.1.0"

__all__ = ["Analysis", "BenchResult", "CoupledGroup", "Costs", "FrozenGroup", "Latency", "ModelError",
           "OnnxPruneError", "PruneResult", "Slot", "SweepPoint", "SweepResult", "UsageError", "analyze", "bench",
           "measure_costs", "prune", "sweep", "__version__"]
