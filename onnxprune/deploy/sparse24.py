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

The N:M axis is the one the pruner itself uses: ``layers.weight_matrix`` (``layers.py`` owns the
weight layouts) puts input channels (or K) last and fastest, and ``Pattern(n=2, m=4)`` says how
many of every four must be zero.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..calib.obs import Pattern
from ..graph.layers import group as layer_group
from ..graph.layers import reduction_length, weight_matrix
from ..graph.load import to_graph

SPARSE_24 = Pattern(n=2, m=4)  # two zeros in every four consecutive weights along K
SPARSE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


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
    return [_CHECKS[node.op](node) for node in graph.nodes if node.op in _CHECKS]


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


def _weight_problem(weight: gs.Tensor | None) -> str | None:
    """Why the weight input cannot be checked at all (None when it is a float constant)."""
    if weight is None:
        return "no weight input"
    if not isinstance(weight, gs.Constant):
        return f"weight not a constant ({weight.name} is computed at run time)"
    dtype = np.asarray(weight.values).dtype
    if not np.issubdtype(dtype, np.floating):
        return f"weight not floating point ({dtype})"
    return None


def _input(node: gs.Node, i: int) -> gs.Tensor | None:
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None


def _matrix(node: gs.Node, weight: gs.Constant) -> np.ndarray:
    """The weight as [outputs, K] with K (input channels at each kernel position) fastest: the
    pruner's own reading (``layers.weight_matrix``, any convolution rank)."""
    return weight_matrix(node, np.asarray(weight.values))


def _result(node: gs.Node, k: int, why: str, matrix: np.ndarray | None) -> SparseLayer:
    carries = matrix is not None and carries_pattern(matrix)
    return SparseLayer(_name(node), node.op, k, not why, why, carries)


def _check_conv(node: gs.Node) -> SparseLayer:
    weight = _input(node, 1)
    problem = _weight_problem(weight)
    if problem:
        return _result(node, 0, problem, None)
    w = np.asarray(weight.values)
    if w.ndim < 3:
        return _result(node, 0, f"weight rank {w.ndim} (expected [Cout, Cin, kernel...])", None)
    k = reduction_length(node, w.shape)  # input channels per group
    group = layer_group(node)
    matrix = _matrix(node, weight) if k % 4 == 0 else None
    if group > 1 and k == 1:
        return _result(node, k, f"depthwise convolution (group={group}: TensorRT has no sparse grouped convs)", None)
    if group > 1:
        return _result(node, k, f"grouped convolution (group={group}: TensorRT has no sparse grouped convs)", matrix)
    if k % 4:
        return _result(node, k, f"input channels not a multiple of 4 ({k})", None)
    return _result(node, k, "", matrix)


def _check_conv_transpose(node: gs.Node) -> SparseLayer:
    weight = _input(node, 1)
    k = 0
    if isinstance(weight, gs.Constant) and np.asarray(weight.values).ndim >= 3:
        k = reduction_length(node, np.asarray(weight.values).shape)
    return _result(node, k, "ConvTranspose (TensorRT's sparse kernels cover convolution and MatMul/Gemm)", None)


def _check_matmul(node: gs.Node) -> SparseLayer:
    a, b = _input(node, 0), _input(node, 1)
    if isinstance(a, gs.Constant) and not isinstance(b, gs.Constant):
        return _result(node, 0, "constant on the left (W @ x: only x @ W weights are checked)", None)
    return _check_2d_weight(node, b, "a 2-D [K, N] weight")


def _check_gemm(node: gs.Node) -> SparseLayer:
    return _check_2d_weight(node, _input(node, 1), "a 2-D weight")


def _check_2d_weight(node: gs.Node, b, expected: str) -> SparseLayer:
    """MatMul and Gemm: a constant 2-D weight whose reduction length K is a multiple of 4."""
    problem = _weight_problem(b)
    if problem:
        return _result(node, 0, problem, None)
    w = np.asarray(b.values)
    if w.ndim != 2:
        return _result(node, 0, f"weight rank {w.ndim} (expected {expected})", None)
    k = reduction_length(node, w.shape)
    matrix = _matrix(node, b) if k % 4 == 0 else None
    return _result(node, k, "" if k % 4 == 0 else f"K not a multiple of 4 ({k})", matrix)


_CHECKS = {"Conv": _check_conv, "ConvTranspose": _check_conv_transpose, "MatMul": _check_matmul,
           "Gemm": _check_gemm}

__all__ = ["SPARSE_24", "SparseLayer", "carries_24", "carries_pattern", "reason_counts", "sparse_eligibility"]
