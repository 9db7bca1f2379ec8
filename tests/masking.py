"""The mask-equivalence oracle: a dense model whose removed channels are zeroed where they
are consumed (the input-channel axis of Conv/Gemm/MatMul weights) must compute exactly what
the pruned model computes, when no op normalises across channels."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.graph.load import to_graph, to_model
from onnxprune.structure.analyze import Analysis
from onnxprune.structure.slots import Slot


def reduction_axes(node: gs.Node) -> list[tuple[gs.Tensor, int]]:
    """(weight, axis) pairs that sum over the node's input channels (a grouped Conv's weight
    columns are positions within a group; whole groups removed leave them all)."""
    if node.op == "Conv":
        return [(node.inputs[1], 1)]
    if node.op == "Gemm":
        return [(node.inputs[1], 1 if node.attrs.get("transB", 0) else 0)]
    if node.op == "MatMul" and isinstance(node.inputs[1], gs.Constant):
        return [(node.inputs[1], len(node.inputs[1].shape) - 2)]
    return []


def zeroed_except(values: np.ndarray, axis: int, keep) -> np.ndarray:
    """A copy of ``values`` with every index along ``axis`` that is not in ``keep`` set to zero."""
    values = np.array(values, copy=True)
    mask = np.ones(values.shape[axis], dtype=bool)
    mask[keep] = False
    index = [slice(None)] * values.ndim
    index[axis] = mask
    values[tuple(index)] = 0
    return values


def masked_dense(analysis: Analysis, kept: dict[Slot, np.ndarray], like: onnx.ModelProto) -> onnx.ModelProto:
    return to_model(masked_graph(analysis, kept), like)


def masked_graph(analysis: Analysis, kept: dict[Slot, np.ndarray]) -> gs.Graph:
    """A copy of the dense graph with the removed channels zeroed where they are consumed (new
    arrays for those weights only; the others are the analysis graph's own)."""
    return _zero_removed(analysis.graph.copy(), lambda name, axis: kept.get(Slot(name, axis)))


def masked_by_plan(dense: onnx.ModelProto, plan: dict[str, dict[int, list[int]]]) -> onnx.ModelProto:
    """The same oracle from a ``PruneResult.plan`` ({initializer: {axis: kept indices}}) and the dense
    model alone: what ``prune`` wrote is checked without a second analysis of the model."""
    # folded as prune folds it, so the weights have the names the plan gives
    graph = _zero_removed(to_graph(dense), lambda name, axis: plan.get(name, {}).get(axis))
    return to_model(graph, dense)


def _zero_removed(graph: gs.Graph, kept_of) -> gs.Graph:
    for node in graph.nodes:
        for weight, axis in reduction_axes(node):
            keep = kept_of(weight.name, axis)
            if keep is not None and isinstance(weight, gs.Constant):
                weight.values = zeroed_except(weight.values, axis, keep)
    return graph
