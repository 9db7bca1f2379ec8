"""Layers with constant weights seen as matrices ``Y = X @ W.T``, for calibration-based solvers.

Conv inputs are unfolded (im2col) with the layer's real pads, strides, dilations and groups;
columns run (kh, kw, cin) with cin fastest, so 4 consecutive columns are 4 input channels at one
kernel position: the axis TensorRT's 2:4 sparsity runs along. MatMul/Gemm columns are K.

Weight layout (which axis of a weight holds the outputs and which the inputs, ``group``, how a
weight reads as a matrix) is each op's own knowledge, in ``onnxprune.ops``; the functions here ask
the op's spec, so scoring and re-fitting never read ``transB`` or ``group`` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .. import ops

# --- weight layout: each op's spec says it (onnxprune.ops.conv, ops.gemm) ------------------------


def group(node: gs.Node) -> int:
    """The ``group`` of a Conv or ConvTranspose (1 for every other op)."""
    fn = ops.spec(node.op, node.domain).group
    return fn(node) if fn is not None else 1


def weight_axes(node: gs.Node) -> tuple[int, int]:
    """(output axis, input axis) of the weight (input 1) of a Conv, ConvTranspose, Gemm or MatMul:
    Conv [Cout, Cin/group, k...] and Gemm with transB [N, K] are (0, 1); ConvTranspose
    [Cin, Cout/group, k...], Gemm without transB and MatMul [K, N] are (1, 0)."""
    fn = ops.spec(node.op, node.domain).weight_axes
    if fn is None:
        raise ValueError(f"{node.op} has no weight layout")
    return fn(node)


def reduction_length(node: gs.Node, shape: tuple[int, ...]) -> int:
    """How many inputs each output sums over at one kernel position, for a weight of ``shape``:
    input channels per group for a convolution, K for Gemm/MatMul (the axis N:M sparsity runs along).
    A Conv's weight holds Cin/group already; a ConvTranspose's holds all Cin."""
    in_axis = weight_axes(node)[1]
    k = int(shape[in_axis])
    return k if in_axis == 1 else k // group(node)


def weight_matrix(node: gs.Node, w: np.ndarray) -> np.ndarray:
    """A Conv (any rank), Gemm or MatMul weight as [outputs, columns]; a Conv's columns run
    (kernel..., cin) with cin fastest."""
    return ops.spec(node.op, node.domain).as_matrix(node, w)


def matrix_to_weight(node: gs.Node, m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``weight_matrix``: a [outputs, columns] matrix in the layout of a weight of ``shape``."""
    return ops.spec(node.op, node.domain).from_matrix(node, m, shape)


# --- layers as matrices ------------------------------------------------------------------------


@dataclass
class Layer:
    """A Conv (group 1), Gemm or MatMul whose weight is a constant; ``x`` is its input tensor."""

    node: gs.Node
    weight: gs.Constant
    x: gs.Tensor

    @property
    def name(self) -> str:
        """What reports call the layer: its node's name, else its weight's (node names may be empty)."""
        return self.node.name or self.weight.name

    @property
    def key(self) -> str:
        """The layer's identity in dicts and between copies of a graph: its output tensor's name, which
        ONNX requires to be unique, and which rewriting keeps (node names may be empty or shared)."""
        return self.node.outputs[0].name

    @property
    def unfolds(self) -> bool:
        """Whether its input is unfolded (im2col) into rows: a convolution's, at every kernel position."""
        return ops.spec(self.node.op, self.node.domain).unfolds

    @property
    def columns(self) -> int:
        """Reduction length: Cin*kh*kw for Conv, K for Gemm/MatMul."""
        return self.matrix().shape[1]

    @property
    def axes(self) -> tuple[int, int]:
        """(output axis, input axis) of the weight tensor (``weight_axes``)."""
        return weight_axes(self.node)

    @property
    def in_channels(self) -> int:
        """Input channels (Conv) or K (Gemm/MatMul): the length of the weight's input axis."""
        return int(np.asarray(self.weight.values).shape[self.axes[1]])

    @property
    def outputs(self) -> int:
        """Output channels (Conv) or N (Gemm/MatMul): the length of the weight's output axis."""
        return int(np.asarray(self.weight.values).shape[self.axes[0]])

    def matrix(self) -> np.ndarray:
        """The weight as [outputs, columns]."""
        return weight_matrix(self.node, np.asarray(self.weight.values))

    def set_matrix(self, m: np.ndarray) -> None:
        """Write a [outputs, columns] matrix back in the weight's own layout and dtype."""
        w = np.asarray(self.weight.values)
        new = matrix_to_weight(self.node, m, w.shape)
        self.weight.values = np.ascontiguousarray(new.astype(w.dtype))

    def columns_of(self, channels: np.ndarray) -> np.ndarray:
        """The matrix columns of these input channels (each at every kernel position of a Conv)."""
        if not self.unfolds:
            return channels
        shape = np.asarray(self.weight.values).shape
        positions = int(np.prod(shape[2:]))
        return (np.arange(positions)[:, None] * shape[1] + channels[None, :]).ravel()

    def per_channel(self, column_values: np.ndarray) -> np.ndarray:
        """Values per matrix column summed per input channel (over a Conv's kernel positions)."""
        if not self.unfolds:
            return column_values
        return column_values.reshape(-1, self.in_channels).sum(0)

    def rows_of(self, x: np.ndarray, limit: int | None = None) -> np.ndarray:
        """Calibration input batch -> [samples, columns] rows such that rows @ matrix().T = output;
        ``limit``: the rows ``subsample(rows, limit)`` keeps, without making the others."""
        if not self.unfolds:
            rows = x.reshape(-1, x.shape[-1])
            return rows if limit is None else subsample(rows, limit)
        return unfold(x, np.asarray(self.weight.values).shape[2:], self.node.attrs, limit)


MAX_ROWS = 32768  # rows of X per calibration batch and layer that enter a Hessian


def subsample(rows: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """At most ``limit`` rows, a fixed random subset: Hessians of early Conv layers are estimated
    from a sample of spatial positions instead of all of them (millions per batch)."""
    if len(rows) <= limit:
        return rows
    pick = np.random.default_rng(seed).choice(len(rows), limit, replace=False)
    return rows[np.sort(pick)]


def find_layers(graph: gs.Graph) -> list[Layer]:
    """The layers the calibration solvers can solve as matrices (``OpSpec.solvable``: Conv with
    group 1 and a 2-D kernel, Gemm without transA, MatMul with a 2-D weight), whose input is computed
    and whose weight is a constant, in graph order."""
    layers = []
    for node in graph.nodes:
        if len(node.inputs) < 2 or isinstance(node.inputs[0], gs.Constant):
            continue
        if not isinstance(node.inputs[1], gs.Constant):
            continue
        solvable = ops.spec(node.op, node.domain).solvable
        if solvable is not None and solvable(node):
            layers.append(Layer(node, node.inputs[1], node.inputs[0]))
    return layers


def _pads(attrs: dict, kernel: tuple[int, int], in_hw: tuple[int, int], strides, dilations) -> list[int]:
    auto = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for size, k, s, d in zip(in_hw, kernel, strides, dilations, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads_begin.append(small if auto == "SAME_UPPER" else big)
            pads_end.append(big if auto == "SAME_UPPER" else small)
        return pads_begin + pads_end
    if auto == "VALID":
        return [0, 0, 0, 0]
    return list(attrs.get("pads", [0, 0, 0, 0]))


def unfold(x: np.ndarray, kernel: tuple[int, int], attrs: dict, limit: int | None = None) -> np.ndarray:
    """im2col of an NCHW batch: [N*Ho*Wo, kh*kw*Cin] with columns (kh, kw, cin), cin fastest.
    ``limit``: only the rows ``subsample(rows, limit)`` keeps, gathered without unfolding the rest."""
    n, c, h, w = x.shape
    kh, kw = kernel
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    top, left, bottom, right = _pads(attrs, (kh, kw), (h, w), strides, dilations)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = (h + top + bottom - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    wo = (w + left + right - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    if limit is not None and n * ho * wo > limit:
        b, r, q = np.unravel_index(subsample(np.arange(n * ho * wo), limit), (n, ho, wo))
        picked = np.empty((len(b), kh, kw, c), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                picked[:, i, j, :] = xp[b, :, i * dilations[0] + r * strides[0], j * dilations[1] + q * strides[1]]
        return picked.reshape(len(b), kh * kw * c)
    cols = np.empty((n, ho, wo, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilations[0], j * dilations[1]
            patch = xp[:, :, r0:r0 + strides[0] * (ho - 1) + 1:strides[0], c0:c0 + strides[1] * (wo - 1) + 1:strides[1]]
            cols[:, :, :, i, j, :] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, kh * kw * c)
