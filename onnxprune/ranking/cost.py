"""Cost model: FLOPs and parameters as a function of the channel counts of each slot.

FLOPs count a multiply-add as 2, for the ops whose spec has a ``flops`` rule (``onnxprune.ops``:
Conv, ConvTranspose, Gemm, MatMul; activations, normalisation and elementwise ops are not
counted, as in fvcore/thop and Torch-Pruning).
Each node's FLOPs are ``dense * prod(kept_fraction(slot))`` over the slots its cost scales
with, which makes evaluating a candidate plan a cheap product, not a graph rebuild.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .. import ops
from ..structure.slots import Slot

Shapes = Callable[[gs.Tensor], tuple[int, ...] | None]


@dataclass
class CostTerm:
    """One node's (or one weight's) dense cost and the slots it scales with."""

    name: str
    dense: float
    slots: list[Slot]


def flops_of(node: gs.Node, shape: Shapes) -> tuple[float, list[Slot]]:
    """FLOPs of one node at batch 1 and the slots they scale with (0 for ops whose spec counts none)."""
    rule = ops.spec(node.op, node.domain).flops
    if rule is None or not node.outputs:
        return 0.0, []
    flops, scales = rule(node, shape)
    return flops, [Slot(name, axis) for name, axis in scales]


def flops_terms(graph: gs.Graph, shape: Shapes) -> list[CostTerm]:
    """One cost term per FLOPs-bearing node with the slots it scales with."""
    terms = []
    for node in graph.nodes:
        dense, slots = flops_of(node, shape)
        if dense:
            terms.append(CostTerm(node.name, dense, slots))
    return terms


def param_terms(graph: gs.Graph, skip: set[str] = frozenset()) -> list[CostTerm]:
    """Floating-point and quantized (DequantizeLinear input) weights reachable from the graph, each
    counted once (``skip``: names not to count, such as per-use copies of one shared initializer)."""
    terms, seen = [], set(skip)
    for node in graph.nodes:
        for port, t in enumerate(node.inputs):
            quantized = node.op == "DequantizeLinear" and port == 0
            if isinstance(t, gs.Constant) and t.name not in seen and (np.issubdtype(t.dtype, np.floating) or quantized):
                seen.add(t.name)
                terms.append(CostTerm(t.name, float(np.prod(t.shape, dtype=np.float64)),
                                      [Slot(t.name, a) for a in range(len(t.shape))]))
    return terms


def total(terms: list[CostTerm], kept_fraction: dict[Slot, float] | None = None) -> float:
    """Sum of the terms with each slot scaled by its kept fraction (1 where absent)."""
    if not kept_fraction:
        return float(sum(t.dense for t in terms))
    out = 0.0
    for t in terms:
        f = t.dense
        for s in t.slots:
            f *= kept_fraction.get(s, 1.0)
        out += f
    return out
