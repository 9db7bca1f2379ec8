"""Conv and ConvTranspose: weight layout, channel ties, FLOPs, the PyTorch kernels, TensorRT 2:4
eligibility and the latency probe.

Weights: Conv [Cout, Cin/group, k...], ConvTranspose [Cin, Cout/group, k...]. A Conv's weight reads
as a matrix [Cout, (k..., cin)] with cin fastest, so 4 consecutive columns are 4 input channels at
one kernel position: the axis TensorRT's 2:4 sparsity runs along.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .kernels import F, geometry, ints, onnx_pads, same_device, symmetric, torch_pad
from .registry import KernelContext, RewriteContext, Shapes, SlotGraph, register
from .tying import has_input
from .weights import input_at, weight_problem


def group(node: gs.Node) -> int:
    return int(node.attrs.get("group", 1))


def conv_axes(node: gs.Node) -> tuple[int, int]:
    return 0, 1


def conv_transpose_axes(node: gs.Node) -> tuple[int, int]:
    return 1, 0


def conv_matrix(node: gs.Node, w: np.ndarray) -> np.ndarray:
    """[Cout, Cin, k...] as [Cout, (k..., cin)], cin fastest."""
    return np.moveaxis(w, 1, -1).reshape(w.shape[0], -1)


def conv_weight(node: gs.Node, m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    cout, cin, *kernel = shape
    return np.moveaxis(m.reshape(cout, *kernel, cin), -1, 1)


def solvable(node: gs.Node) -> bool:
    """A 2-D Conv with group 1: the solvers unfold its input and solve it as a matrix."""
    return group(node) == 1 and len(node.inputs[1].shape or ()) == 4


register("Conv", "ConvTranspose", layer=True, group=group, probe_weights=(1, 2))
register("Conv", weight_axes=conv_axes, solvable=solvable, as_matrix=conv_matrix, from_matrix=conv_weight,
         unfolds=True)
register("ConvTranspose", weight_axes=conv_transpose_axes)


def new_group(x_channels: int, w_columns: int) -> int:
    """A Conv's ``group`` = input channels / weight columns: fewer groups where whole groups went,
    the same where every group lost the same positions (depthwise: one group per channel)."""
    return max(x_channels // max(w_columns, 1), 1)


# --- channel ties ---------------------------------------------------------------------------------

@register("Conv").ties
def conv(node: gs.Node, sg: SlotGraph) -> None:
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    groups = group(node)
    w_out, w_in = conv_axes(node)
    wshape, xshape = sg.shape(w), sg.shape(x)
    if wshape is None or xshape is None:
        return
    sg.tie(x, 0, y, 0)
    sg.tie(w, w_out, y, 1)
    if has_input(node, 2):
        sg.tie(node.inputs[2], 0, y, 1)
    sg.weight(w, w_out)
    if groups == 1:
        sg.tie(x, 1, w, w_in)
        sg.weight(w, w_in)
        return
    per_in, per_out = xshape[1] // groups, wshape[w_out] // groups
    if per_in > 1 and sg.choice(2) == 1:
        # Same position in every group: ``group`` stays and every group shrinks alike. Input
        # channel g*per_in + j is the weight's column j in every group; output channel
        # g*per_out + j goes with the same channel of every other group.
        sg.tie(x, 1, w, w_in, np.arange(xshape[1]), np.arange(xshape[1]) % per_in)
        sg.tie(y, 1, y, 1, np.arange(wshape[w_out]), np.arange(wshape[w_out]) % per_out)
        sg.weight(w, w_in)
        return
    # Whole groups (depthwise: single channels): every kept group keeps its shape and only
    # ``group`` changes. Tie each group's inputs and outputs into one atom. Where the rest of
    # the graph ties all the groups together anyway (a channel shuffle between grouped
    # convolutions), analyze_graph moves the Conv to the rule above.
    gid_in, gid_out = np.arange(xshape[1]) // per_in, np.arange(wshape[w_out]) // per_out
    sg.tie(x, 1, y, 1, np.arange(xshape[1]), gid_in * per_out)
    sg.tie(y, 1, y, 1, np.arange(wshape[w_out]), gid_out * per_out)
    if per_in > 1:
        sg.keep_apart(y, 1, np.arange(groups) * per_out)


@register("Conv").fix
def conv_fix(node: gs.Node, ctx: RewriteContext) -> None:
    x, w = node.inputs[0], node.inputs[1]
    if group(node) > 1 and ctx.changed(x):
        node.attrs["group"] = new_group(ctx.new_shape(x)[1], ctx.new_shape(w)[conv_axes(node)[1]])


@register("ConvTranspose").ties
def conv_transpose(node: gs.Node, sg: SlotGraph) -> None:
    """Group 1 only: a grouped ConvTranspose ties nothing, so it stays whole (and its ``group``
    never changes)."""
    if group(node) != 1:
        return
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    w_out, w_in = conv_transpose_axes(node)
    sg.tie(x, 0, y, 0)
    sg.tie(x, 1, w, w_in)
    sg.tie(w, w_out, y, 1)
    if has_input(node, 2):
        sg.tie(node.inputs[2], 0, y, 1)
    sg.weight(w, w_in)
    sg.weight(w, w_out)


# --- FLOPs: a multiply-add counts 2 ------------------------------------------------------------------

@register("Conv").flops
def conv_flops(node: gs.Node, shape: Shapes) -> tuple[float, list[tuple[str, int]]]:
    """Each output element: Cin/group * kernel multiply-adds (a grouped Conv that loses the same
    positions of every group loses columns of its weight)."""
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    xs, ws, ys = shape(x), shape(w), shape(y)
    if xs is None or ws is None or ys is None:
        return 0.0, []
    flops = 2.0 * np.prod(ys, dtype=np.float64) * np.prod(ws[1:], dtype=np.float64)
    scales = [(y.name, a) for a in range(len(ys))]
    return flops, scales + [(x.name, 1) if group(node) == 1 else (w.name, conv_axes(node)[1])]


@register("ConvTranspose").flops
def conv_transpose_flops(node: gs.Node, shape: Shapes) -> tuple[float, list[tuple[str, int]]]:
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    xs, ws, ys = shape(x), shape(w), shape(y)
    if xs is None or ws is None or ys is None:
        return 0.0, []
    flops = 2.0 * np.prod(xs, dtype=np.float64) * np.prod(ws[1:], dtype=np.float64)
    return flops, [(x.name, a) for a in range(len(xs))] + ([(y.name, 1)] if group(node) == 1 else [])


# --- PyTorch kernels ---------------------------------------------------------------------------------

@register("Conv").torch
def conv_kernel(xs: list, a: dict, c: KernelContext) -> list:
    x, w = same_device(*xs[:2])
    b = xs[2].to(x.device) if len(xs) > 2 and xs[2] is not None else None
    spatial = w.dim() - 2
    kernel = ints(a.get("kernel_shape")) or list(w.shape[2:])
    strides, dilations = geometry(a, spatial)
    pads = onnx_pads(a, spatial, x.shape[2:], kernel, strides, dilations)
    fn = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    padding = symmetric(pads)
    if padding is None:
        x, padding = F.pad(x, torch_pad(pads)), [0] * spatial
    return [fn(x, w, b, strides, padding, dilations, a.get("group", 1))]


@register("ConvTranspose").torch
def conv_transpose_kernel(xs: list, a: dict, c: KernelContext) -> list:
    x, w = same_device(*xs[:2])
    b = xs[2].to(x.device) if len(xs) > 2 and xs[2] is not None else None
    spatial = w.dim() - 2
    strides, dilations = geometry(a, spatial)
    out_pad = ints(a.get("output_padding")) or [0] * spatial
    pads = ints(a.get("pads")) or [0] * (2 * spatial)
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    y = fn(x, w, b, strides, 0, out_pad, a.get("group", 1), dilations)
    index = [slice(None), slice(None)]
    for i in range(spatial):
        index.append(slice(pads[i], y.shape[2 + i] - pads[i + spatial]))
    return [y[tuple(index)]]


# --- TensorRT 2:4 sparsity ----------------------------------------------------------------------------

@register("Conv").sparse24
def conv_sparse24(node: gs.Node) -> tuple[int, str, np.ndarray | None]:
    weight = input_at(node, 1)
    problem = weight_problem(weight)
    if problem:
        return 0, problem, None
    w = np.asarray(weight.values)
    if w.ndim < 3:
        return 0, f"weight rank {w.ndim} (expected [Cout, Cin, kernel...])", None
    k = int(w.shape[1])  # input channels per group
    groups = group(node)
    matrix = conv_matrix(node, w) if k % 4 == 0 else None
    if groups > 1 and k == 1:
        return k, f"depthwise convolution (group={groups}: TensorRT has no sparse grouped convs)", None
    if groups > 1:
        return k, f"grouped convolution (group={groups}: TensorRT has no sparse grouped convs)", matrix
    if k % 4:
        return k, f"input channels not a multiple of 4 ({k})", None
    return k, "", matrix


@register("ConvTranspose").sparse24
def conv_transpose_sparse24(node: gs.Node) -> tuple[int, str, np.ndarray | None]:
    weight = input_at(node, 1)
    k = 0
    if isinstance(weight, gs.Constant) and np.asarray(weight.values).ndim >= 3:
        k = int(np.asarray(weight.values).shape[0]) // group(node)  # input channels per group
    return k, "ConvTranspose (TensorRT's sparse kernels cover convolution and MatMul/Gemm)", None


# --- latency probe --------------------------------------------------------------------------------------

@register("Conv").probe
def conv_probe(node: gs.Node, attrs: dict, shapes: list) -> dict:
    """A grouped Conv's ``group`` at the probe's shapes, as ``conv_fix`` writes it."""
    if group(node) > 1 and shapes and shapes[0] and len(shapes) > 1 and shapes[1]:
        attrs = {**attrs, "group": new_group(shapes[0][1], shapes[1][conv_axes(node)[1]])}
    return attrs
