"""The Python API; the command line is a thin shell over these functions."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from . import capture as capture_mod
from .analyze import Analysis, analyze_graph
from .cost import flops_terms, param_terms, total
from .errors import UsageError
from .load import read_model, save_model, to_graph, to_model, unshare_constants
from .rewrite import apply_plan
from .score import magnitude_scores
from .select import Plan, select
from .verify import verify

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class Costs:
    """Cost figures of one model: FLOPs (multiply-add = 2, batch 1) and float parameters."""

    flops: float
    params: float


@dataclass
class PruneResult:
    """What ``prune`` returns: the pruned model, its plan and the figures before/after."""

    model: onnx.ModelProto
    dense: Costs
    pruned: Costs
    plan: dict[str, dict[int, list[int]]]
    groups_found: int
    groups_pruned: int
    frozen: list[dict]
    ratio: float
    external_data: bool = False
    channels: list[dict] = field(default_factory=list)

    @property
    def flops_ratio(self) -> float:
        return self.pruned.flops / self.dense.flops if self.dense.flops else 1.0

    @property
    def params_ratio(self) -> float:
        return self.pruned.params / self.dense.params if self.dense.params else 1.0

    def save(self, path: str | os.PathLike) -> None:
        """Write the pruned model atomically, keeping external data if the input used it."""
        save_model(self.model, path, external=self.external_data or None)


def _load(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    if isinstance(model, onnx.ModelProto):
        return model, False
    return read_model(model)


def analyze(model: str | os.PathLike | onnx.ModelProto, progress: Progress | None = None) -> Analysis:
    """Find the coupled-channel groups of a model (path or ModelProto)."""
    proto, _ = _load(model)
    return _analyze(proto, progress)


def _analyze(proto: onnx.ModelProto, progress: Progress | None) -> Analysis:
    step = progress or (lambda _msg: None)
    step("folding constants")
    graph = to_graph(proto)
    shared = unshare_constants(graph)
    step("running the model once to read every shape")
    cap = capture_mod.capture(graph)
    step("finding coupled channel groups")
    analysis = analyze_graph(graph, cap)
    analysis.shared = shared
    return analysis


def model_costs(analysis: Analysis) -> Costs:
    """Dense FLOPs and params of an analysed model."""
    return _costs(analysis.graph, analysis.capture)


def _costs(graph, cap: capture_mod.Capture) -> Costs:
    import onnx_graphsurgeon as gs

    def shape(t):
        return tuple(t.shape) if isinstance(t, gs.Constant) else cap.shapes.get(t.name)
    return Costs(total(flops_terms(graph, shape)), total(param_terms(graph)))


def _shape_fn(analysis: Analysis):
    import onnx_graphsurgeon as gs

    def shape(t):
        return tuple(t.shape) if isinstance(t, gs.Constant) else analysis.capture.shapes.get(t.name)
    return shape


def prune(model: str | os.PathLike | onnx.ModelProto, *, flops: float | None = None,
          params: float | None = None, scope: str = "isomorphic", criterion: str = "l2",
          round_to: int = 1, progress: Progress | None = None) -> PruneResult:
    """Prune channels so the model keeps at most ``flops`` (or ``params``) of its dense cost.

    Returns a PruneResult whose ``model`` has passed onnx.checker and run in onnxruntime with
    the same input/output names, ranks and non-channel dims as the input.
    """
    _check_target(flops, params)
    step = progress or (lambda _msg: None)
    proto, external = _load(model)
    analysis = _analyze(proto, progress)
    dense = model_costs(analysis)
    step("scoring and selecting channels")
    plan = make_plan(analysis, flops=flops, params=params, scope=scope, criterion=criterion,
                     round_to=round_to)
    step("rewriting the graph")
    pruned_proto, kept = apply(analysis, plan, proto)
    step("verifying with onnx.checker and onnxruntime")
    pruned_graph, pruned_capture = verify(pruned_proto, analysis.capture, [t.name for t in analysis.graph.outputs])
    after = _costs(pruned_graph, pruned_capture)
    return PruneResult(
        model=pruned_proto, dense=dense, pruned=after, plan=_plan_report(analysis, kept),
        groups_found=len(analysis.groups), groups_pruned=int(sum(len(r) > 0 for r in plan.removed)),
        frozen=[{"channels": f.channels, "reasons": f.reasons,
                 "slots": [f"{s.tensor}[{s.axis}]" for s in f.slots[:4]]} for f in analysis.frozen],
        ratio=plan.ratio, external_data=external, channels=_channel_table(analysis, plan),
    )


def _check_target(flops: float | None, params: float | None) -> None:
    if (flops is None) == (params is None):
        raise UsageError("give exactly one target: flops or params")
    target = flops if flops is not None else params
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise UsageError(f"target must be a fraction in (0, 1], got {target}")


def make_plan(analysis: Analysis, *, flops: float | None = None, params: float | None = None,
              scope: str = "isomorphic", criterion: str = "l2", round_to: int = 1) -> Plan:
    """Score every group and choose the atoms to remove to meet the FLOPs or params target."""
    _check_target(flops, params)
    scores = magnitude_scores(analysis, criterion)
    terms = (flops_terms(analysis.graph, _shape_fn(analysis)) if flops is not None
             else param_terms(analysis.graph))
    return select(analysis, scores, terms, flops if flops is not None else params, scope=scope,
                  round_to=round_to, what="FLOPs" if flops is not None else "params")


def apply(analysis: Analysis, plan: Plan, like: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """The pruned ModelProto (opset, IR version, metadata of ``like``) and kept indices per slot."""
    graph, kept = apply_plan(analysis, plan)
    return to_model(graph, like), kept


def measure_costs(model: str | os.PathLike | onnx.ModelProto) -> Costs:
    """FLOPs and params read from a model itself (every shape from a real onnxruntime run)."""
    import onnx_graphsurgeon as gs

    proto, _ = _load(model)
    graph = gs.import_onnx(proto)
    return _costs(graph, capture_mod.capture(graph))


def _plan_report(analysis: Analysis, kept) -> dict[str, dict[int, list[int]]]:
    """Kept channel indices of every pruned initializer: {name: {axis: [indices]}}."""
    tensors = analysis.graph.tensors()
    import onnx_graphsurgeon as gs

    out: dict[str, dict[int, list[int]]] = {}
    for slot, idx in kept.items():
        if isinstance(tensors.get(slot.tensor), gs.Constant):
            out.setdefault(slot.tensor, {})[slot.axis] = idx.tolist()
    return out


def _channel_table(analysis: Analysis, plan: Plan) -> list[dict]:
    rows = []
    for group, removed in zip(analysis.groups, plan.removed, strict=True):
        first = group.weights[0] if group.weights else next(iter(group.members))
        rows.append({"group": first.tensor, "class": group.iso_class, "atoms": group.size,
                     "width": group.width, "removed": int(len(removed))})
    return rows


def default_output(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name[:-5] + ".pruned.onnx" if p.name.endswith(".onnx") else p.name + ".pruned.onnx")


__all__ = ["analyze", "apply", "make_plan", "prune", "PruneResult", "Costs", "measure_costs", "default_output"]


def group_flops_share(analysis: Analysis) -> list[float]:
    """For each group, the share of dense FLOPs in nodes whose cost scales with the group."""
    terms = flops_terms(analysis.graph, _shape_fn(analysis))
    dense = total(terms) or 1.0
    shares = []
    for group in analysis.groups:
        slots = set(group.members)
        shares.append(sum(t.dense for t in terms if slots.intersection(t.slots)) / dense)
    return shares
