"""Pooling and reductions: MaxPool, AveragePool, LpPool and their global forms; Reduce*; ArgMax/ArgMin.

Pooling works within each channel, so batch and channel axes pass through. A reduction over an
axis claims it: a mean over fewer channels is still a mean, so that axis may shrink freely.
"""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from .kernels import F, axis_of, geometry, ints, ints_of, onnx_pads, symmetric, torch, torch_pad
from .registry import KernelContext, SlotGraph, register
from .tying import identity, rank

POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSumExp")

register(*POOLS, *REDUCE, one_to_one=True)
register(*REDUCE, not_trainable=frozenset({1}))  # axes


@register(*POOLS).ties
def pool(node: gs.Node, sg: SlotGraph) -> None:
    for out in node.outputs:
        if out.name:
            identity(sg, node.inputs[0], out, [0, 1])


@register(*REDUCE).ties
def reduce(node: gs.Node, sg: SlotGraph) -> None:
    x, y = node.inputs[0], node.outputs[0]
    x_rank = rank(sg, x)
    if len(node.inputs) > 1 and node.inputs[1].name:
        axes = sg.const(node.inputs[1])
        if axes is None:
            return
    else:
        axes = node.attrs.get("axes")
    axes = sorted({int(a) % x_rank for a in axes}) if axes is not None and len(axes) else list(range(x_rank))
    keep = node.attrs.get("keepdims", 1)
    out_axis = 0
    for axis in range(x_rank):
        if axis in axes:
            sg.claim(x, axis)  # a mean over fewer channels is still a mean: the axis may shrink
            out_axis += keep
        else:
            sg.tie(x, axis, y, out_axis)
            out_axis += 1


# --- PyTorch kernels ---------------------------------------------------------------------------------

register("GlobalAveragePool").torch(lambda xs, a, c: [xs[0].mean(dim=tuple(range(2, xs[0].dim())), keepdim=True)])
register("GlobalMaxPool").torch(lambda xs, a, c: [xs[0].amax(dim=tuple(range(2, xs[0].dim())), keepdim=True)])


def _pool_geometry(x, a: dict, kind: str):
    """(torch pooling function, kernel, strides, dilations, ONNX pads, ceil_mode, the symmetric padding
    torch can take itself or None)."""
    kernel = ints(a["kernel_shape"])
    spatial = len(kernel)
    strides, dilations = geometry(a, spatial)
    pads = onnx_pads(a, spatial, x.shape[2:], kernel, strides, dilations)
    sym = symmetric(pads)
    if sym is not None and any(p > k // 2 for p, k in zip(sym, kernel, strict=True)):
        sym = None
    fn = getattr(F, f"{kind}_pool{spatial}d")
    return fn, kernel, strides, dilations, pads, bool(a.get("ceil_mode", 0)), sym


@register("AveragePool").torch
def average_pool(xs: list, a: dict, c: KernelContext) -> list:
    x = xs[0]
    fn, kernel, strides, _, pads, ceil, sym = _pool_geometry(x, a, "avg")
    if not any(pads):
        return [fn(x, kernel, strides, 0, ceil)]
    if sym is not None:
        return [fn(x, kernel, strides, sym, ceil, bool(a.get("count_include_pad", 0)))]
    y = fn(F.pad(x, torch_pad(pads)), kernel, strides, 0, ceil)
    if a.get("count_include_pad", 0):
        return [y]
    ones = F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device), torch_pad(pads))
    return [y / fn(ones, kernel, strides, 0, ceil)]


@register("MaxPool").torch
def max_pool(xs: list, a: dict, c: KernelContext) -> list:
    x = xs[0]
    fn, kernel, strides, dilations, pads, ceil, sym = _pool_geometry(x, a, "max")
    if sym is not None:
        return [fn(x, kernel, strides, sym, dilations, ceil)]
    padded = F.pad(x, torch_pad(pads), value=-math.inf)
    return [fn(padded, kernel, strides, 0, dilations, ceil)]


@register("MaxPool").torch_refuses
def max_pool_refuses(a: dict, outputs: list) -> str | None:
    return "MaxPool (with indices)" if len(outputs) > 1 and outputs[1] else None


def _reduce(fn):
    def run(xs, a, c):
        x = xs[0]
        if "axes" in a:
            axes = ints(a.get("axes"))
        else:
            axes = ints_of(xs[1]) if len(xs) > 1 and xs[1] is not None else []
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        axes = sorted(axis_of(ax, x.dim()) for ax in axes)
        return [fn(x, axes, bool(a.get("keepdims", 1)))]
    return run


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keep)
    return x


register("ReduceMean").torch(_reduce(lambda x, d, k: x.mean(d, keepdim=k)))
register("ReduceSum").torch(_reduce(lambda x, d, k: x.sum(d, keepdim=k)))
register("ReduceMax").torch(_reduce(lambda x, d, k: x.amax(d, keepdim=k)))
register("ReduceMin").torch(_reduce(lambda x, d, k: x.amin(d, keepdim=k)))
register("ReduceProd").torch(_reduce(_prod))
register("ReduceL1").torch(_reduce(lambda x, d, k: x.abs().sum(d, keepdim=k)))
register("ReduceL2").torch(_reduce(lambda x, d, k: torch.sqrt((x * x).sum(d, keepdim=k))))
register("ReduceSumSquare").torch(_reduce(lambda x, d, k: (x * x).sum(d, keepdim=k)))
register("ReduceLogSumExp").torch(_reduce(lambda x, d, k: torch.logsumexp(x, d, keepdim=k)))


def _arg(name: str):
    def run(xs, a, c):
        fn = getattr(torch, name)
        x = xs[0]
        axis = axis_of(a.get("axis", 0), x.dim())
        keep = bool(a.get("keepdims", 1))
        if a.get("select_last_index", 0):
            return [x.shape[axis] - 1 - fn(x.flip(axis), axis, keepdim=keep)]
        return [fn(x, axis, keepdim=keep)]
    return run


register("ArgMax").torch(_arg("argmax"))
register("ArgMin").torch(_arg("argmin"))
