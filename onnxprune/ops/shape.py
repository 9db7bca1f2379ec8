"""Layout and shape ops: Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Expand, Shape (and the
kernels of Size, Tile, ConstantOfShape, Range).

A reshape aligns input and output axes into blocks of equal size; a block that splits or merges a
channel axis ties it to one factor (heads, not head_dim). Shape reads sizes: an axis may shrink
only when its size flows into inputs the rewrite writes afresh (``OpSpec.rewrites_inputs``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .elementwise import BROADCAST
from .kernels import axis_of, ints, ints_of, to_torch, torch
from .registry import RewriteContext, SlotGraph, register, spec
from .slicing import slice_params
from .tying import rank as tensor_rank

register("Flatten", one_to_one=True)
register("Reshape", "Expand", "Tile", "Squeeze", "Unsqueeze", not_trainable=frozenset({1}))  # shapes, axes
register("ConstantOfShape", not_trainable=frozenset({0}))
register("Range", not_trainable=frozenset({0, 1, 2}))


@register("Transpose").ties
def transpose(node: gs.Node, sg: SlotGraph) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rank = tensor_rank(sg, x)
    perm = node.attrs.get("perm") or list(reversed(range(rank)))
    for out_axis, in_axis in enumerate(perm):
        sg.tie(x, in_axis, y, out_axis)


@register("Squeeze", "Unsqueeze", "Flatten", "Reshape").ties
def reshape(node: gs.Node, sg: SlotGraph) -> None:
    """Align input and output dims into blocks of equal product; a block that splits or merges
    a channel axis ties it to one factor (heads, not head_dim), chosen by ``sg.choice``."""
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = sg.shape(x), sg.shape(y)
    if xs is None or ys is None:
        return
    if node.op == "Reshape" and not _can_write_shape(node, sg):
        return
    for in_axes, out_axes in _blocks(xs, ys):
        if len(in_axes) == 1 and len(out_axes) == 1:
            sg.tie(x, in_axes[0], y, out_axes[0])
        elif len(in_axes) == 1 or len(out_axes) == 1:
            whole, factors, whole_t, parts_t = ((in_axes[0], out_axes, x, y) if len(in_axes) == 1
                                                else (out_axes[0], in_axes, y, x))
            dims = [sg.shape(parts_t)[a] for a in factors]
            # A merge keeps its outer factor (heads before head_dim, channels before a
            # shuffle's groups). A split keeps the outermost factor that its consumers do
            # not freeze (qkv's 3 and a shuffle's groups are frozen): analyze() finds it in a
            # probe pass where splits tie nothing and only claim their axes.
            if parts_t is y and sg.probe:
                sg.claim(whole_t, whole)
                for factor in factors:
                    sg.claim(parts_t, factor)
                    sg.factor_slot(parts_t, factor)
                continue
            pick = sg.choice(len(factors)) if parts_t is y else 0
            stride = int(np.prod(dims[pick + 1:]))
            idx = np.arange(int(np.prod(dims)))
            sg.tie(whole_t, whole, parts_t, factors[pick], idx, (idx // stride) % dims[pick])


def _blocks(xs: tuple[int, ...], ys: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair up runs of input and output axes whose sizes multiply to the same number.
    Size-1 axes are skipped (they carry no channels)."""
    xi = [a for a, d in enumerate(xs) if d != 1]
    yi = [a for a, d in enumerate(ys) if d != 1]
    blocks, i, j = [], 0, 0
    while i < len(xi) and j < len(yi):
        ins, outs = [xi[i]], [yi[j]]
        px, py = xs[xi[i]], ys[yi[j]]
        i, j = i + 1, j + 1
        while px != py:
            if px < py and i < len(xi):
                px *= xs[xi[i]]
                ins.append(xi[i])
                i += 1
            elif py < px and j < len(yi):
                py *= ys[yi[j]]
                outs.append(yi[j])
                j += 1
            else:
                return blocks
        blocks.append((ins, outs))
    return blocks


def synth_shape(node: gs.Node, new_out: list[int], static: list[bool], old_in: tuple[int, ...],
                old_in2: tuple[int, ...], old_out: tuple[int, ...], old_out2: tuple[int, ...],
                new_in: list[int]) -> list[int] | None:
    """A constant Reshape target giving ``new_out``: static axes literal, a dynamic axis as 0
    (copy the input's dim at that index) where that holds in both captured runs, else -1 once."""
    allow_zero = node.attrs.get("allowzero", 0)
    shape, free = [], 0
    for axis, dim in enumerate(new_out):
        if static[axis]:
            shape.append(dim)
        elif (not allow_zero and axis < len(old_in) and old_in[axis] == old_out[axis]
              and old_in2[axis] == old_out2[axis] and new_in[axis] == dim):
            shape.append(0)
        else:
            shape.append(-1)
            free += 1
    return shape if free <= 1 else None


def _can_write_shape(node: gs.Node, sg: SlotGraph) -> bool:
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = sg.shape(x), sg.shape(y)
    cap = sg.capture
    xs2, ys2 = cap.shapes2.get(x.name, xs), cap.shapes2.get(y.name, ys)
    static = [sg.static(y, a) for a in range(len(ys))]
    return synth_shape(node, list(ys), static, xs, xs2, ys, ys2, list(xs)) is not None


register("Reshape", rewrites_inputs=_can_write_shape)


@register("Reshape").fix
def reshape_fix(node: gs.Node, ctx: RewriteContext) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not ctx.changed(y) and isinstance(node.inputs[1], gs.Constant):
        return
    static = [ctx.static(y, a) for a in range(len(ctx.old_shape(y)))]
    shape = synth_shape(node, ctx.new_shape(y), static, ctx.old_shape(x), ctx.old_shape2(x),
                        ctx.old_shape(y), ctx.old_shape2(y), ctx.new_shape(x))
    if shape is None:  # the tie rule froze this Reshape, so its sizes did not change
        return
    node.inputs[1] = gs.Constant(f"{y.name}_pruned_shape", np.array(shape, dtype=np.int64))



@register("Expand").ties
def expand(node: gs.Node, sg: SlotGraph) -> None:
    """Tie axes the target shape does not pin: entry 1 (keep the input's size), or a constant
    entry the fix rule can rewrite."""
    x, target, y = node.inputs[0], node.inputs[1], node.outputs[0]
    xs, ys = sg.shape(x), sg.shape(y)
    values = sg.const(target)
    if values is None:
        values = sg.capture.values.get(target.name)
    if xs is None or ys is None or values is None:
        return
    constant = isinstance(target, gs.Constant)
    shift = len(ys) - len(xs)
    for axis, dim in enumerate(xs):
        entry_axis = axis + shift - (len(ys) - len(values))
        entry = values[entry_axis] if 0 <= entry_axis < len(values) else 1
        if dim == ys[axis + shift] and (entry == 1 or constant):
            sg.tie(x, axis, y, axis + shift)


@register("Expand").fix
def expand_fix(node: gs.Node, ctx: RewriteContext) -> None:
    y = node.outputs[0]
    if not ctx.changed(y) or not isinstance(node.inputs[1], gs.Constant):
        return  # a computed target only holds 1 (keep the input's size) on tied axes
    shape = np.asarray(node.inputs[1].values).copy()
    new = ctx.new_shape(y)
    for axis in range(len(shape)):
        target = axis + len(new) - len(shape)
        if shape[axis] not in (1, -1) and ctx.kept(y, target) is not None:
            shape[axis] = new[target]
    node.inputs[1] = gs.Constant(f"{y.name}_pruned_shape", shape)


@register("Shape").ties
def shape_(node: gs.Node, sg: SlotGraph) -> None:
    """Shape reads sizes. An axis may shrink when its size only flows into Reshape targets
    (the rewrite replaces those with constants); an axis whose size escapes anywhere else
    (a Range, a float scale, an output) stays frozen."""
    x = node.inputs[0]
    rank = tensor_rank(sg, x)
    if rank < 0:
        return
    start, end = node.attrs.get("start", 0), node.attrs.get("end", rank)
    start = max(start + rank if start < 0 else start, 0)
    end = min(end + rank if end < 0 else end, rank)
    read = _escaping_axes(node.outputs[0], [{a} for a in range(start, end)], sg)
    for axis in range(rank):
        if axis not in read:
            sg.claim(x, axis)


SHAPE_MATH = {"Gather", "Slice", "Concat", "Div", "Mul", "Add", "Sub", "Cast", "Squeeze", "Unsqueeze",
              "Floor", "Ceil", "Identity"}


def _escaping_axes(tensor: gs.Tensor, sources: list[set[int]], sg: SlotGraph, depth: int = 0) -> set[int]:
    """Axes (of the tensor a Shape read) whose sizes reach anything the rewrite does not replace
    by a constant. ``sources[i]`` holds the axes element i of this int vector was computed from.
    Small int tensors (shape arithmetic of any op) are followed; a large tensor (data built from a
    size, such as a mask) or a graph output means the size escapes."""
    everything = set().union(*sources) if sources else set()
    if tensor in sg.graph.outputs or tensor.name in sg.body_reads:  # no fix rule runs inside a body
        return everything
    if depth > 24 or not tensor.outputs:
        return set()
    read: set[int] = set()
    for user in tensor.outputs:
        if _replaced_input(user, tensor, sg):
            continue
        if not all(_small(out, sg) for out in user.outputs if out.name):
            out_sources = None  # the size reaches data (a mask, a scaled activation)
        elif user.op in SHAPE_MATH:
            out_sources = _propagate_sources(user, tensor, sources, sg)
        else:
            out_sources = [everything]  # other arithmetic on sizes: each result may use every input
        if out_sources is None:
            if user.op in BROADCAST and _small(tensor, sg) and int(np.prod(sg.shape(tensor))) == 1 \
                    and tensor.name in sg.capture.stable:
                # A scalar computed from sizes (an attention scale from head_dim) entering
                # elementwise math: the rewrite freezes it at its dense value.
                sg.frozen_values.add(tensor.name)
                continue
            read |= everything
            continue
        for out in user.outputs:
            if out.name:
                read |= _escaping_axes(out, out_sources, sg, depth + 1)
    return read


def _small(tensor: gs.Tensor, sg: SlotGraph) -> bool:
    shape = sg.shape(tensor)
    return shape is not None and int(np.prod(shape)) <= 64


def _replaced_input(user: gs.Node, tensor: gs.Tensor, sg: SlotGraph) -> bool:
    """Whether the rewrite replaces this input of ``user`` by a constant computed afresh."""
    if user.inputs[0] is tensor:
        return False
    rewrites = spec(user.op, user.domain).rewrites_inputs
    return rewrites is not None and rewrites(user, sg)


def _propagate_sources(node: gs.Node, tensor: gs.Tensor, sources: list[set[int]],
                       sg: SlotGraph) -> list[set[int]] | None:
    """Which source axes each element of the node's output depends on (None: unknown)."""
    everything = set().union(*sources) if sources else set()
    if node.op in ("Gather", "Slice") and node.inputs[0] is not tensor:
        return [everything]  # the vector is used as indices
    if node.op == "Gather":
        idx = sg.const(node.inputs[1])
        if idx is None or node.attrs.get("axis", 0) != 0:
            return None
        return [sources[int(i)] for i in np.atleast_1d(idx).ravel()]
    if node.op == "Slice":
        params = slice_params(node, sg.fixed, 1)
        if params is None or params[2] != [0]:
            return None
        (start,), (end,), _, (step,) = params
        return sources[slice(start, end, step)]
    if node.op == "Concat":
        out: list[set[int]] = []
        for t in node.inputs:
            if t is tensor:
                out.extend(sources)
            else:
                size = int(np.prod(sg.shape(t) or (1,)))
                out.extend([set()] * size)
        return out
    if node.op in ("Cast", "Squeeze", "Unsqueeze", "Identity", "Floor", "Ceil"):
        return sources
    return [everything] * max(len(sources), 1)  # elementwise arithmetic with other sizes


# --- PyTorch kernels ---------------------------------------------------------------------------------

def long_tensor(values: Iterable[int], like: Any) -> Any:
    return torch.tensor(list(values), dtype=torch.int64, device=like.device)


@register("Shape").torch
def _shape(xs, a, c):
    dims = list(xs[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return [long_tensor(dims[slice(start, end)], xs[0])]


@register("Size").torch
def _size(xs, a, c):
    return [torch.tensor(xs[0].numel(), dtype=torch.int64, device=xs[0].device)]


@register("Reshape").torch
def _reshape(xs, a, c):
    x = xs[0]
    shape = ints_of(xs[1]) if c.opset >= 5 else ints(a["shape"])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@register("Flatten").torch
def _flatten(xs, a, c):
    x = xs[0]
    axis = axis_of(a.get("axis", 1), x.dim())
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)]


@register("Transpose").torch
def _transpose(xs, a, c):
    x = xs[0]
    perm = ints(a.get("perm")) or list(reversed(range(x.dim())))
    return [x.permute(perm)]


def _axes_input(xs, a, c, since: int) -> list[int]:
    if c.opset < since:
        return ints(a.get("axes"))
    return ints_of(xs[1]) if len(xs) > 1 and xs[1] is not None else []


@register("Squeeze").torch
def _squeeze(xs, a, c):
    x = xs[0]
    axes = _axes_input(xs, a, c, 13)
    if not axes:
        return [x.reshape([d for d in x.shape if d != 1])]
    axes = {axis_of(ax, x.dim()) for ax in axes}
    return [x.reshape([d for i, d in enumerate(x.shape) if i not in axes])]


@register("Unsqueeze").torch
def _unsqueeze(xs, a, c):
    x = xs[0]
    axes = _axes_input(xs, a, c, 13)
    rank = x.dim() + len(axes)
    shape = list(x.shape)
    for ax in sorted(axis_of(ax, rank) for ax in axes):
        shape.insert(ax, 1)
    return [x.reshape(shape)]


@register("Expand").torch
def _expand(xs, a, c):
    x = xs[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(ints_of(xs[1])))
    return [x.expand(shape)]


@register("Tile").torch
def _tile(xs, a, c):
    return [xs[0].repeat(ints_of(xs[1]))]


@register("ConstantOfShape").torch
def _constant_of_shape(xs, a, c):
    value = a.get("value")
    fill = to_torch(value if value is not None else np.zeros(1, np.float32), xs[0].device).reshape(-1)
    return [fill.expand(ints_of(xs[0])).clone() if ints_of(xs[0]) else fill.reshape(())]


@register("Range").torch
def _range(xs, a, c):
    start, limit, delta = (x.item() for x in xs)
    return [torch.arange(start, limit, delta, dtype=xs[0].dtype, device=xs[0].device)]
