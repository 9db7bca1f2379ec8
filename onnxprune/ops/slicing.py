"""Concatenation, splitting and indexing: Concat, Split, Slice, Gather, Pad (and the kernels of
GatherElements, ScatterND, Trilu, CumSum).

Each maps input channels to output channels by position, so its tie rule ties them index by index,
and its fix rule rewrites the positions it stores (split sizes, slice bounds, gather indices) for
the channels that were kept.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from .kernels import F, axis_of, ints, ints_of, same_device, torch, torch_pad
from .registry import RewriteContext, SlotGraph, register
from .tying import identity
from .tying import rank as tensor_rank

register("Pad", not_trainable=frozenset({1, 2, 3}))  # pads, value, axes
register("Slice", not_trainable=frozenset({1, 2, 3, 4}))
register("Split", "Gather", "GatherElements", "ScatterND", "Trilu", "CumSum", not_trainable=frozenset({1}))


@register("Concat").ties
def concat(node: gs.Node, sg: SlotGraph) -> None:
    y = node.outputs[0]
    rank = tensor_rank(sg, y)
    axis = node.attrs["axis"] % rank
    offset = 0
    for x in node.inputs:
        xs = sg.shape(x)
        identity(sg, x, y, [a for a in range(rank) if a != axis])
        sg.tie(x, axis, y, axis, np.arange(xs[axis]), offset + np.arange(xs[axis]))
        offset += xs[axis]


@register("Split").ties
def split(node: gs.Node, sg: SlotGraph) -> None:
    x = node.inputs[0]
    rank = tensor_rank(sg, x)
    axis = node.attrs.get("axis", 0) % rank
    offset = 0
    for y in node.outputs:
        ys = sg.shape(y)
        identity(sg, x, y, [a for a in range(rank) if a != axis])
        sg.tie(x, axis, y, axis, offset + np.arange(ys[axis]), np.arange(ys[axis]))
        offset += ys[axis]


@register("Split").fix
def split_fix(node: gs.Node, ctx: RewriteContext) -> None:
    rank = len(ctx.old_shape(node.inputs[0]))
    axis = node.attrs.get("axis", 0) % rank
    sizes = np.array([ctx.new_shape(y)[axis] for y in node.outputs], dtype=np.int64)
    if len(node.inputs) > 1 and node.inputs[1].name:
        node.inputs[1] = gs.Constant(f"{node.outputs[0].name}_pruned_split", sizes)
    elif "split" in node.attrs:
        node.attrs["split"] = sizes.tolist()
    elif ctx.changed(node.inputs[0]):
        node.attrs.pop("num_outputs", None)  # opset 18: equal parts no longer; give sizes
        node.inputs.append(gs.Constant(f"{node.outputs[0].name}_pruned_split", sizes))


def slice_params(node: gs.Node, value_of: Callable, rank: int):
    """(starts, ends, axes, steps) of a Slice, read from constants or batch-independent
    computed values (``value_of``); None when any of them depends on the batch."""
    if len(node.inputs) == 1:  # opset < 10: attributes
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes = node.attrs.get("axes", list(range(len(starts))))
        return list(starts), list(ends), [a % rank for a in axes], [1] * len(starts)
    vals = []
    for i in range(1, 5):
        t = node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None
        if t is None:
            vals.append(None)
            continue
        value = value_of(t)
        if value is None:
            return None
        vals.append([int(v) for v in np.ravel(value)])
    starts, ends, axes, steps = vals
    axes = [a % rank for a in axes] if axes is not None else list(range(len(starts)))
    return starts, ends, axes, steps or [1] * len(starts)


def _clamp(index: int, size: int) -> int:
    return min(max(index + size if index < 0 else index, 0), size)


@register("Slice").ties
def slice_(node: gs.Node, sg: SlotGraph) -> None:
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = sg.shape(x), sg.shape(y)
    params = slice_params(node, sg.fixed, len(xs))
    if params is None:
        return
    starts, ends, axes, steps = params
    identity(sg, x, y, [a for a in range(len(xs)) if a not in axes])
    for start, axis, step in zip(starts, axes, steps, strict=True):
        if step == 1:  # other steps stay frozen: the kept set would have to stay strided
            first = _clamp(start, xs[axis])
            sg.tie(x, axis, y, axis, first + np.arange(ys[axis]), np.arange(ys[axis]))


@register("Slice").fix
def slice_fix(node: gs.Node, ctx: RewriteContext) -> None:
    """Recompute bounds on pruned axes; computed bounds become constants (their values did
    not depend on the batch, and may have been computed from a pruned size)."""
    x = node.inputs[0]
    computed = any(t.name and not isinstance(t, gs.Constant) for t in node.inputs[1:])
    if not ctx.changed(x) and not computed:
        return
    xs = ctx.old_shape(x)
    params = slice_params(node, ctx.fixed, len(xs))
    if params is None:
        return
    starts, ends, axes, steps = params
    for i, axis in enumerate(axes):
        kept = ctx.kept(x, axis)
        if kept is None:
            continue
        new_start = int(np.searchsorted(kept, _clamp(starts[i], xs[axis])))
        starts[i], ends[i] = new_start, new_start + ctx.new_shape(node.outputs[0])[axis]
    if len(node.inputs) == 1:
        node.attrs["starts"], node.attrs["ends"] = starts, ends
        return
    name = node.outputs[0].name
    for port, values in ((1, starts), (2, ends), (3, axes), (4, steps)):
        if port < len(node.inputs) and node.inputs[port].name:
            node.inputs[port] = gs.Constant(f"{name}_pruned_{port}", np.array(values, dtype=np.int64))


@register("Pad").ties
def pad(node: gs.Node, sg: SlotGraph) -> None:
    """Axes padded by zero on both sides keep their channels one to one."""
    x, y = node.inputs[0], node.outputs[0]
    rank = tensor_rank(sg, x)
    pads = node.attrs.get("pads") if len(node.inputs) < 2 else sg.fixed(node.inputs[1])
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3].name:
        given = sg.fixed(node.inputs[3])
        axes = None if given is None else [int(a) % rank for a in np.ravel(given)]
    if pads is None or axes is None:
        return
    pads = [int(p) for p in np.ravel(pads)]
    padded = {axis for i, axis in enumerate(axes) if pads[i] != 0 or pads[i + len(axes)] != 0}
    for axis in range(rank):  # axes not listed (opset 18 ``axes``) are not padded
        if axis not in padded:
            sg.tie(x, axis, y, axis)


@register("Pad").fix
def pad_fix(node: gs.Node, ctx: RewriteContext) -> None:
    for port in (1, 3):  # computed pads/axes: freeze their (batch-independent) values
        if port < len(node.inputs) and node.inputs[port].name and not isinstance(node.inputs[port], gs.Constant):
            value = ctx.fixed(node.inputs[port])
            if value is not None:
                node.inputs[port] = gs.Constant(f"{node.outputs[0].name}_pruned_{port}", np.asarray(value))


@register("Gather").ties
def gather(node: gs.Node, sg: SlotGraph) -> None:
    x, idx_t, y = node.inputs[0], node.inputs[1], node.outputs[0]
    xs = sg.shape(x)
    idx = sg.const(idx_t)
    if xs is None or idx is None or idx.ndim > 1:
        return
    axis = node.attrs.get("axis", 0) % len(xs)
    idx = np.where(idx < 0, idx + xs[axis], idx).astype(np.int64)
    out_axis = 0
    for a in range(len(xs)):
        if a == axis:
            if idx.ndim == 1:
                sg.tie(x, axis, y, out_axis, idx, np.arange(len(idx)))
                out_axis += 1
            else:  # a scalar index drops the axis: the picked element itself must stay
                sg.claim(x, axis)
                sg.freeze(x, axis, "Gather (scalar index)", np.atleast_1d(idx))
        else:
            sg.tie(x, a, y, out_axis)
            out_axis += 1


@register("Gather").fix
def gather_fix(node: gs.Node, ctx: RewriteContext) -> None:
    x = node.inputs[0]
    axis = node.attrs.get("axis", 0) % len(ctx.old_shape(x))
    kept = ctx.kept(x, axis)
    if kept is None:
        return
    idx = np.asarray(node.inputs[1].values)
    idx = np.where(idx < 0, idx + ctx.old_shape(x)[axis], idx)
    new_idx = np.searchsorted(kept, idx).astype(idx.dtype)
    if idx.ndim == 1:
        new_idx = new_idx[np.isin(idx, kept)]
    node.inputs[1] = gs.Constant(f"{node.outputs[0].name}_pruned_idx", new_idx)



# --- PyTorch kernels ---------------------------------------------------------------------------------

@register("Concat").torch
def _concat(xs, a, c):
    xs = [x for x in same_device(*xs) if x is not None]
    if any(x.is_floating_point() for x in xs):
        dtype = next(x.dtype for x in xs if x.is_floating_point())
        xs = [x.to(dtype) for x in xs]
    return [torch.cat(xs, axis_of(a["axis"], xs[0].dim()))]


@register("Split").torch
def _split(xs, a, c):
    x = xs[0]
    axis = axis_of(a.get("axis", 0), x.dim())
    if c.opset >= 13:
        sizes = ints_of(xs[1]) if len(xs) > 1 and xs[1] is not None else []
    else:
        sizes = ints(a.get("split"))
    if not sizes:
        parts = a.get("num_outputs", c.outputs)
        chunk = -(-x.shape[axis] // parts)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
    return list(torch.split(x, sizes, dim=axis))


@register("Slice").torch
def _slice(xs, a, c):
    x = xs[0]
    if c.opset < 10:
        starts, ends = ints(a["starts"]), ints(a["ends"])
        axes = ints(a.get("axes")) or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = ints_of(xs[1]), ints_of(xs[2])
        axes = ints_of(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = ints_of(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = axis_of(axis, x.dim())
        size = x.shape[axis]
        if step > 0:
            start = min(max(start + size if start < 0 else start, 0), size)
            end = min(max(end + size if end < 0 else end, 0), size)
            index = [slice(None)] * x.dim()
            index[axis] = slice(start, end, step)
            x = x[tuple(index)]
        else:
            start = min(max(start + size if start < 0 else start, -1), size - 1)
            end = min(max(end + size if end < 0 else end, -1), size - 1)
            idx = torch.arange(start, end, step, device=x.device)
            x = x.index_select(axis, idx)
    return [x]


@register("Gather").torch
def _gather(xs, a, c):
    x, idx = xs[0], xs[1].to(xs[0].device).long()
    axis = axis_of(a.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return [out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))]


@register("GatherElements").torch
def _gather_elements(xs, a, c):
    x, idx = xs[0], xs[1].to(xs[0].device).long()
    axis = axis_of(a.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return [torch.gather(x, axis, idx)]


@register("ScatterND").torch
def _scatter_nd(xs, a, c):
    data, idx, updates = same_device(*xs)
    if a.get("reduction", "none") not in ("none", None):
        raise NotImplementedError("ScatterND with a reduction")
    out = data.clone()
    idx = idx.long()
    out[tuple(idx[..., i] for i in range(idx.shape[-1]))] = updates.to(out.dtype)
    return [out]


@register("Pad").torch
def _pad(xs, a, c):
    x = xs[0]
    mode = a.get("mode", "constant")
    if c.opset < 11:
        pads, value = ints(a["pads"]), a.get("value", 0.0)
        axes = list(range(x.dim()))
    else:
        pads = ints_of(xs[1])
        value = xs[2].item() if len(xs) > 2 and xs[2] is not None and xs[2].numel() else 0.0
        axes = [axis_of(ax, x.dim()) for ax in ints_of(xs[3])] if len(xs) > 3 and xs[3] is not None \
            else list(range(x.dim()))
    full = [0] * (2 * x.dim())
    for i, ax in enumerate(axes):
        full[ax], full[ax + x.dim()] = pads[i], pads[i + len(axes)]
    # F.pad pads trailing dims only: drop leading all-zero axes
    first = next((i for i in range(x.dim()) if full[i] or full[i + x.dim()]), x.dim())
    trimmed = full[first:x.dim()] + full[x.dim() + first:]
    if not trimmed:
        return [x]
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    if torch_mode == "constant":
        return [F.pad(x, torch_pad(trimmed), value=value)]
    return [F.pad(x, torch_pad(trimmed), mode=torch_mode)]


@register("Trilu").torch
def _trilu(xs, a, c):
    k = int(xs[1].item()) if len(xs) > 1 and xs[1] is not None else 0
    return [torch.triu(xs[0], k) if a.get("upper", 1) else torch.tril(xs[0], k)]


@register("CumSum").torch
def _cumsum(xs, a, c):
    x = xs[0]
    axis = axis_of(int(xs[1].item()), x.dim())
    if a.get("reverse", 0):
        x = x.flip(axis)
    y = torch.cumsum(x, axis)
    if a.get("exclusive", 0):
        y = y - x
    return [y.flip(axis) if a.get("reverse", 0) else y]


def _slice_bounds_rewritten(node: gs.Node, sg: SlotGraph) -> bool:
    """slice_fix writes bounds that do not depend on the batch as constants."""
    x_rank = tensor_rank(sg, node.inputs[0])
    return x_rank > 0 and slice_params(node, sg.fixed, x_rank) is not None


def _pads_rewritten(node: gs.Node, sg: SlotGraph) -> bool:
    """pad_fix writes computed pads/axes as constants."""
    return all(sg.fixed(t) is not None for t in node.inputs[1:4:2] if t.name)


register("Slice", rewrites_inputs=_slice_bounds_rewritten)
register("Pad", rewrites_inputs=_pads_rewritten)


@register("ScatterND").torch_refuses
def scatter_nd_refuses(a: dict, outputs: list) -> str | None:
    return "ScatterND (reduction)" if a.get("reduction", "none") != "none" else None


@register("Pad").torch_refuses
def pad_refuses(a: dict, outputs: list) -> str | None:
    mode = a.get("mode", "constant")
    return None if mode in ("constant", "reflect", "edge", "wrap") else f"Pad ({mode})"
