"""Which layers TensorRT can run with 2:4 sparse kernels, read from the ONNX side.

TensorRT's structured sparsity (developer guide, "Structured Sparsity"; BuilderFlag.SPARSE_WEIGHTS)
applies to convolution and fully connected / matrix-multiply layers with constant weights. For a
convolution with weights [K, C, R, S] it needs C % 4 == 0 and, for every output channel and
every kernel position, at least two zeros in each group of four consecutive input channels;
for MatMul/Gemm the groups of four run along the reduction axis K of the constant weight
(mind Gemm's transB). The builder only considers FP16/INT8 kernels for it. NVIDIA's own
checker, polygraphy's sparsity tool (polygraphy/tools/sparse.py), reads the same axes: Conv
weight axis 1, MatMul B axis 0, Gemm B axis 1 with transB else 0, skipping lengths not a
multiple of 4.

Grouped and depthwise convolutions are not eligible: TensorRT "does not consider sparse conv
kernels for group convs" (NVIDIA/TensorRT issue #4054, answer by an NVIDIA engineer,
2024-08-06). Deconvolution (ConvTranspose) is not among the layer kinds the guide lists.
Sparse kernels pay off only for wide layers: NVIDIA's engineers quote C_in and C_out of about
256 or more (NVIDIA/TensorRT issues #3849 and #4065); narrower eligible layers usually stay dense.

Each op's check lives with the op (``OpSpec.sparse24`` in ``onnxprune.ops.conv`` and ``ops.gemm``).
The N:M axis is the one the pruner itself uses: the op's ``as_matrix`` puts input channels (or K)
last and fastest, and ``Pattern(n=2, m=4)`` says how
many of every four must be zero.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import ops
from ..calib.obs import Pattern
from ..graph.load import to_graph

SPARSE_24 = Pattern(n=2, m=4)  # two zeros in every four consecutive weights along K


@dataclass
class SparseLayer:
    """One Conv/ConvTranspose/MatMul/Gemm node: can TensorRT run it 2:4 sparse, and do its weights
    already carry the pattern.

    ``k`` is the reduction length the pattern runs along (input channels per group for a
    convolution, K for MatMul/Gemm; 0 when unknown). ``why`` says why a layer is not eligible
    ("" when it is), as a category followed by details in parentheses.
    """

    layer: str
    op: str
    k: int
    eligible: bool
    why: str
    carries_24: bool


def carries_pattern(matrix: np.ndarray, pattern: Pattern = SPARSE_24) -> bool:
    """Whether every row of a [outputs, K] weight matrix has at least ``pattern.n`` zeros in each
    group of ``pattern.m`` consecutive columns (K must be a multiple of ``pattern.m``)."""
    rows, cols = matrix.shape
    if cols == 0 or cols % pattern.m:
        return False
    groups = matrix.reshape(rows, cols // pattern.m, pattern.m)
    return bool(((groups == 0).sum(axis=2) >= pattern.n).all())


def sparse_eligibility(model: onnx.ModelProto | gs.Graph) -> list[SparseLayer]:
    """Every Conv/ConvTranspose/MatMul/Gemm node of a model (constants folded first) or of an
    already imported graph, in graph order, with TensorRT's 2:4 eligibility and whether its
    weights carry the 2:4 pattern."""
    graph = model if isinstance(model, gs.Graph) else to_graph(model)
    layers = []
    for node in graph.nodes:
        check = ops.spec(node.op, node.domain).sparse24
        if check is not None:
            k, why, matrix = check(node)
            carries = matrix is not None and carries_pattern(matrix)
            layers.append(SparseLayer(_name(node), node.op, k, not why, why, carries))
    return layers


def carries_24(model: onnx.ModelProto | gs.Graph | list[SparseLayer]) -> bool:
    """Whether any layer TensorRT could run sparse already has 2:4 weights (then the sparse
    builder flag is worth setting)."""
    layers = model if isinstance(model, list) else sparse_eligibility(model)
    return any(layer.eligible and layer.carries_24 for layer in layers)


def reason_counts(layers: list[SparseLayer]) -> dict[str, int]:
    """How many layers are not eligible for each reason category (the text before its details)."""
    return dict(Counter(layer.why.split(" (")[0] for layer in layers if not layer.eligible))


# --- one check per op -----------------------------------------------------------------------


def _name(node: gs.Node) -> str:
    return node.name or f"{node.op}({node.outputs[0].name if node.outputs else '?'})"


__all__ = ["SPARSE_24", "SparseLayer", "carries_24", "carries_pattern", "reason_counts", "sparse_eligibility"]
