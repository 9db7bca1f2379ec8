"""Rewrite stage: apply a plan to a copy of the graph.

Initializers are sliced along every pruned axis; ops that store channel counts (Conv group,
Reshape targets, Split sizes, Slice bounds, Gather indices) are fixed by their rule in
each op's ``fix`` rule (``onnxprune.ops``) (they read a ``slots.RewriteContext``); intermediate shapes are cleared so
onnxruntime infers the new ones. The ``Plan`` type (made by ``ranking.select`` and the latency
search) is defined here, with what applies it, so structure never imports ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .. import ops
from ..graph.load import reshare_constants
from .analyze import Analysis
from .slots import RewriteContext, Slot


@dataclass
class Plan:
    """Atoms removed from each group (indices into the group's atoms), and the predicted cost."""

    removed: list[np.ndarray]
    ratio: float
    predicted: float
    round_to: int = 1  # channel counts kept multiples of this (groups of single channels)

    def removed_channels(self, analysis: Analysis) -> dict[Slot, np.ndarray]:
        """Indices removed from each slot."""
        out: dict[Slot, list[np.ndarray]] = {}
        for group, atoms in zip(analysis.groups, self.removed, strict=True):
            if len(atoms):
                for slot, members in group.members.items():
                    out.setdefault(slot, []).append(members[atoms].ravel())
        return {slot: np.unique(np.concatenate(parts)) for slot, parts in out.items()}


def kept_indices(analysis: Analysis, plan: Plan) -> dict[Slot, np.ndarray]:
    """Kept indices of every slot that loses channels."""
    kept = {}
    for slot, removed in plan.removed_channels(analysis).items():
        kept[slot] = np.setdiff1d(np.arange(analysis.slot_sizes[slot]), removed)
    return kept


def apply_plan(analysis: Analysis, plan: Plan) -> tuple[gs.Graph, dict[Slot, np.ndarray]]:
    """A pruned copy of the analysed graph, and the kept indices per changed slot."""
    kept = kept_indices(analysis, plan)
    graph = analysis.graph.copy()
    ctx = RewriteContext(analysis.capture, kept)
    tensors = graph.tensors()
    by_tensor: dict[str, list[Slot]] = {}
    for slot in kept:
        by_tensor.setdefault(slot.tensor, []).append(slot)
    for name, slots in by_tensor.items():
        tensor = tensors[name]
        if isinstance(tensor, gs.Constant):
            values = np.asarray(tensor.values)
            for slot in slots:
                values = np.take(values, kept[slot], axis=slot.axis)
            tensor.values = np.ascontiguousarray(values)
    _freeze_values(graph, analysis)
    for node in graph.nodes:
        fix = ops.spec(node.op, node.domain).fix
        if fix is not None:
            fix(node, ctx)
    reshare_constants(graph, analysis.shared, {s.tensor for s in kept})
    boundary = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in boundary:
            tensor.shape = None  # stale intermediate shapes; onnxruntime infers the new ones
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph, kept


def _freeze_values(graph: gs.Graph, analysis: Analysis) -> None:
    """Replace computed scalars the analysis marked (sizes turned into scales) by their dense values."""
    tensors = graph.tensors()
    for name in sorted(analysis.frozen_values):
        tensor = tensors.get(name)
        value = analysis.capture.values.get(name)
        if tensor is None or value is None:
            continue
        const = gs.Constant(f"{name}_dense_value", np.asarray(value))
        for node in list(tensor.outputs):
            for port, t in enumerate(node.inputs):
                if t is tensor:
                    node.inputs[port] = const
