"""Gemm and MatMul (and Einsum's kernel): weight layout, channel ties, FLOPs, the PyTorch kernels
and TensorRT 2:4 eligibility.

Weights: Gemm with transB [N, K], without it [K, N]; MatMul's right operand [K, N]. Read as a
matrix they are [N, K]: K (the reduction) is the axis N:M sparsity runs along.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .elementwise import broadcast
from .kernels import same_device, torch
from .registry import KernelContext, Shapes, SlotGraph, register
from .tying import has_input, rank
from .weights import input_at, k_major, weight_problem


def gemm_axes(node: gs.Node) -> tuple[int, int]:
    return (0, 1) if node.attrs.get("transB", 0) else (1, 0)


def matmul_axes(node: gs.Node) -> tuple[int, int]:
    return 1, 0


def gemm_k_axis(node: gs.Node) -> int:
    """The axis of a Gemm's input A that is reduced (K): 0 with transA, else 1."""
    return 0 if node.attrs.get("transA", 0) else 1


def _matrix_of(axes):
    return lambda node, w: k_major(axes(node), w)


def _weight_of(axes):
    return lambda node, m, shape: k_major(axes(node), m)


register("Gemm", "MatMul", layer=True)
register("Gemm", weight_axes=gemm_axes, probe_weights=(1, 2), as_matrix=_matrix_of(gemm_axes),
         from_matrix=_weight_of(gemm_axes),
         solvable=lambda node: gemm_k_axis(node) == 1 and len(node.inputs[1].shape or ()) == 2)
register("MatMul", weight_axes=matmul_axes, as_matrix=_matrix_of(matmul_axes), from_matrix=_weight_of(matmul_axes),
         solvable=lambda node: len(node.inputs[1].shape or ()) == 2)


@register("Gemm").ties
def gemm(node: gs.Node, sg: SlotGraph) -> None:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    a_k = gemm_k_axis(node)
    a_m = 1 - a_k
    b_n, b_k = gemm_axes(node)
    sg.tie(a, a_m, y, 0)
    sg.tie(a, a_k, b, b_k)
    sg.tie(b, b_n, y, 1)
    for t in (a, b):
        sg.weight(t, 0)
        sg.weight(t, 1)
    if has_input(node, 2):  # C broadcasts onto Y like an Add
        broadcast(gs.Node("Add", inputs=[node.inputs[2]], outputs=[y]), sg)


@register("MatMul").ties
def matmul(node: gs.Node, sg: SlotGraph) -> None:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    ra, rb, ry = rank(sg, a), rank(sg, b), rank(sg, y)
    if min(ra, rb) < 2:
        return  # vector products: leave frozen
    sg.tie(a, ra - 1, b, rb - 2)
    sg.tie(a, ra - 2, y, ry - 2)
    sg.tie(b, rb - 1, y, ry - 1)
    ya = sg.shape(y)
    for t, r in ((a, ra), (b, rb)):
        shape = sg.shape(t)
        for axis in range(r - 2):
            if shape[axis] == ya[axis + ry - r]:
                sg.tie(t, axis, y, axis + ry - r)
        sg.weight(t, r - 1)
        sg.weight(t, r - 2)


@register("MatMul").flops
def matmul_flops(node: gs.Node, shape: Shapes) -> tuple[float, list[tuple[str, int]]]:
    a, y = node.inputs[0], node.outputs[0]
    as_, ys = shape(a), shape(y)
    if as_ is None or ys is None or len(as_) < 1:
        return 0.0, []
    scales = [(y.name, i) for i in range(len(ys))] + [(a.name, len(as_) - 1)]
    return 2.0 * np.prod(ys, dtype=np.float64) * as_[-1], scales


@register("Gemm").flops
def gemm_flops(node: gs.Node, shape: Shapes) -> tuple[float, list[tuple[str, int]]]:
    a, y = node.inputs[0], node.outputs[0]
    as_, ys = shape(a), shape(y)
    if as_ is None or ys is None:
        return 0.0, []
    k_axis = gemm_k_axis(node)
    scales = [(y.name, i) for i in range(len(ys))] + [(a.name, k_axis)]
    return 2.0 * np.prod(ys, dtype=np.float64) * as_[k_axis], scales


@register("Gemm").torch
def gemm_kernel(xs: list, a: dict, c: KernelContext) -> list:
    x, w = same_device(*xs[:2])
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = torch.matmul(x, w)
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if len(xs) > 2 and xs[2] is not None:
        y = y + (xs[2].to(y.device) * beta if beta != 1.0 else xs[2].to(y.device))
    return [y]


register("MatMul").torch(lambda xs, a, c: [torch.matmul(*same_device(*xs))])
register("Einsum").torch(lambda xs, a, c: [torch.einsum(a["equation"], *same_device(*xs))])


@register("MatMul").sparse24
def matmul_sparse24(node: gs.Node) -> tuple[int, str, np.ndarray | None]:
    a, b = input_at(node, 0), input_at(node, 1)
    if isinstance(a, gs.Constant) and not isinstance(b, gs.Constant):
        return 0, "constant on the left (W @ x: only x @ W weights are checked)", None
    return _sparse24_2d(node, b, matmul_axes(node), "a 2-D [K, N] weight")


@register("Gemm").sparse24
def gemm_sparse24(node: gs.Node) -> tuple[int, str, np.ndarray | None]:
    return _sparse24_2d(node, input_at(node, 1), gemm_axes(node), "a 2-D weight")


def _sparse24_2d(node: gs.Node, b: gs.Tensor | None, axes: tuple[int, int],
                 expected: str) -> tuple[int, str, np.ndarray | None]:
    """MatMul and Gemm: a constant 2-D weight whose reduction length K is a multiple of 4."""
    problem = weight_problem(b)
    if problem:
        return 0, problem, None
    w = np.asarray(b.values)
    if w.ndim != 2:
        return 0, f"weight rank {w.ndim} (expected {expected})", None
    k = int(w.shape[axes[1]])
    matrix = k_major(axes, w) if k % 4 == 0 else None
    return k, "" if k % 4 == 0 else f"K not a multiple of 4 ({k})", matrix
