"""Per-op channel rules: one small function per op type.

A *tie* rule says which channel elements of a node's inputs and outputs must be removed
together (``SlotGraph.tie``) and which axes may shrink freely (``claim``). Any axis of a
tensor that a touching op does not tie or claim is frozen, so an op without a rule freezes
what it touches and can never be broken by pruning.

A *fix* rule updates what the node itself stores about channel counts after the tensors
shrink (Conv ``group``, Reshape/Split/Slice/Gather constants). Adding an op is adding a tie
rule, a fix rule when it stores sizes, and a test.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.layers import gemm_k_axis, group, weight_axes
from .slots import RewriteContext, SlotGraph

TieRule = Callable[[gs.Node, SlotGraph], None]
RULES: dict[str, TieRule] = {}
FIXES: dict[str, Callable] = {}


def ties(*ops: str) -> Callable[[TieRule], TieRule]:
    def register(fn: TieRule) -> TieRule:
        for op in ops:
            RULES[op] = fn
        return fn
    return register


def fixes(*ops: str) -> Callable:
    def register(fn):
        for op in ops:
            FIXES[op] = fn
        return fn
    return register


def _rank(sg: SlotGraph, t: gs.Tensor) -> int:
    shape = sg.shape(t)
    return -1 if shape is None else len(shape)


def _identity(sg: SlotGraph, a: gs.Tensor, b: gs.Tensor, axes: range | list[int] | None = None) -> None:
    shape_a, shape_b = sg.shape(a), sg.shape(b)
    if shape_a is None or shape_b is None or len(shape_a) != len(shape_b):
        return
    for axis in axes if axes is not None else range(len(shape_a)):
        if shape_a[axis] == shape_b[axis]:
            sg.tie(a, axis, b, axis)


# --- elementwise -------------------------------------------------------------------------------

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Exp", "Log",
    "Sqrt", "Reciprocal", "Neg", "Abs", "Cast", "Identity", "Softplus", "Softsign", "Elu", "Selu",
    "Celu", "Mish", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "Sin", "Cos",
    "Softmax", "LogSoftmax", "Dropout", "ThresholdedRelu", "Shrink",
)


@ties(*UNARY)
def unary(node: gs.Node, sg: SlotGraph) -> None:
    # Extra inputs (Clip min/max, Dropout ratio) are scalars; every output has the input's shape.
    for out in node.outputs:
        _identity(sg, node.inputs[0], out)


BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Equal",
             "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "PRelu",
             "Clip", "BitwiseAnd", "BitwiseOr")


@ties(*BROADCAST)
def broadcast(node: gs.Node, sg: SlotGraph) -> None:
    out = node.outputs[0]
    out_shape = sg.shape(out)
    if out_shape is None:
        return
    for x in node.inputs:
        shape = sg.shape(x) if x.name else None
        if shape is None:
            continue
        shift = len(out_shape) - len(shape)
        for axis, dim in enumerate(shape):
            if dim == out_shape[axis + shift]:
                sg.tie(x, axis, out, axis + shift)


# --- normalisation ---------------------------------------------------------------------------------

@ties("BatchNormalization", "InstanceNormalization")
def batch_norm(node: gs.Node, sg: SlotGraph) -> None:
    x, y = node.inputs[0], node.outputs[0]
    _identity(sg, x, y)
    for param in node.inputs[1:]:
        if param.name and _rank(sg, param) == 1:
            sg.tie(param, 0, y, 1)
    sg.weight(node.inputs[1], 0)
    for extra in node.outputs[1:]:  # training-mode running stats
        if extra.name and _rank(sg, extra) == 1:
            sg.tie(extra, 0, y, 1)


@ties("LayerNormalization")
def layer_norm(node: gs.Node, sg: SlotGraph) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rank = _rank(sg, x)
    start = node.attrs.get("axis", -1) % rank
    _identity(sg, x, y)
    for param in node.inputs[1:3]:
        if param.name:
            prank = _rank(sg, param)
            for axis in range(prank):
                sg.tie(param, axis, y, rank - prank + axis)
    sg.weight(node.inputs[1], _rank(sg, node.inputs[1]) - 1)
    for stat in node.outputs[1:]:  # Mean / InvStdDev: normalised axes are 1
        if stat.name:
            _identity(sg, x, stat, range(start))


# --- quantisation ----------------------------------------------------------------------------------

@ties("QuantizeLinear", "DequantizeLinear")
def quantize(node: gs.Node, sg: SlotGraph) -> None:
    """Elementwise on x; a per-axis scale and zero point (rank 1) follow the channels of ``axis``.
    Blocked quantisation (``block_size``) ties nothing, so it stays frozen."""
    x, y = node.inputs[0], node.outputs[0]
    rank = _rank(sg, x)
    if rank < 0 or node.attrs.get("block_size", 0):
        return
    _identity(sg, x, y)
    axis = node.attrs.get("axis", 1) % max(rank, 1)
    for param in node.inputs[1:3]:
        if param.name and _rank(sg, param) == 1:
            sg.tie(param, 0, y, axis)


# --- convolution and linear layers ---------------------------------------------------------------

@ties("Conv")
def conv(node: gs.Node, sg: SlotGraph) -> None:
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    groups = group(node)
    w_out, w_in = weight_axes(node)
    wshape, xshape = sg.shape(w), sg.shape(x)
    if wshape is None or xshape is None:
        return
    sg.tie(x, 0, y, 0)
    sg.tie(w, w_out, y, 1)
    if len(node.inputs) > 2 and node.inputs[2].name:
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


@fixes("Conv")
def conv_fix(node: gs.Node, ctx: RewriteContext) -> None:
    """``group`` = input channels / weight columns: fewer groups where whole groups went, the
    same where every group lost the same positions (depthwise: one group per channel)."""
    x, w = node.inputs[0], node.inputs[1]
    if group(node) > 1 and ctx.changed(x):
        node.attrs["group"] = ctx.new_shape(x)[1] // ctx.new_shape(w)[weight_axes(node)[1]]


@ties("ConvTranspose")
def conv_transpose(node: gs.Node, sg: SlotGraph) -> None:
    if group(node) != 1:
        return
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    w_out, w_in = weight_axes(node)
    sg.tie(x, 0, y, 0)
    sg.tie(x, 1, w, w_in)
    sg.tie(w, w_out, y, 1)
    if len(node.inputs) > 2 and node.inputs[2].name:
        sg.tie(node.inputs[2], 0, y, 1)
    sg.weight(w, w_in)
    sg.weight(w, w_out)


@ties("Gemm")
def gemm(node: gs.Node, sg: SlotGraph) -> None:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    a_k = gemm_k_axis(node)
    a_m = 1 - a_k
    b_n, b_k = weight_axes(node)
    sg.tie(a, a_m, y, 0)
    sg.tie(a, a_k, b, b_k)
    sg.tie(b, b_n, y, 1)
    for t in (a, b):
        sg.weight(t, 0)
        sg.weight(t, 1)
    if len(node.inputs) > 2 and node.inputs[2].name:
        broadcast(gs.Node("Add", inputs=[node.inputs[2]], outputs=[y]), sg)


@ties("MatMul")
def matmul(node: gs.Node, sg: SlotGraph) -> None:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    ra, rb, ry = _rank(sg, a), _rank(sg, b), _rank(sg, y)
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


# --- pooling and reductions ----------------------------------------------------------------------

@ties("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def pool(node: gs.Node, sg: SlotGraph) -> None:
    for out in node.outputs:
        if out.name:
            _identity(sg, node.inputs[0], out, [0, 1])


REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSumExp")


@ties(*REDUCE)
def reduce(node: gs.Node, sg: SlotGraph) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rank = _rank(sg, x)
    if len(node.inputs) > 1 and node.inputs[1].name:
        axes = sg.const(node.inputs[1])
        if axes is None:
            return
    else:
        axes = node.attrs.get("axes")
    axes = sorted({int(a) % rank for a in axes}) if axes is not None and len(axes) else list(range(rank))
    keep = node.attrs.get("keepdims", 1)
    out_axis = 0
    for axis in range(rank):
        if axis in axes:
            sg.claim(x, axis)  # a mean over fewer channels is still a mean: the axis may shrink
            out_axis += keep
        else:
            sg.tie(x, axis, y, out_axis)
            out_axis += 1


# --- layout ops ----------------------------------------------------------------------------------

@ties("Transpose")
def transpose(node: gs.Node, sg: SlotGraph) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rank = _rank(sg, x)
    perm = node.attrs.get("perm") or list(reversed(range(rank)))
    for out_axis, in_axis in enumerate(perm):
        sg.tie(x, in_axis, y, out_axis)


def _axes_input(node: gs.Node, sg: SlotGraph, rank: int) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1].name:
        axes = sg.const(node.inputs[1])
        return None if axes is None else [int(a) % rank for a in np.ravel(axes)]
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) % rank for a in axes]


@ties("Squeeze", "Unsqueeze", "Flatten", "Reshape")
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


@fixes("Reshape")
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


@ties("Concat")
def concat(node: gs.Node, sg: SlotGraph) -> None:
    y = node.outputs[0]
    rank = _rank(sg, y)
    axis = node.attrs["axis"] % rank
    offset = 0
    for x in node.inputs:
        xs = sg.shape(x)
        _identity(sg, x, y, [a for a in range(rank) if a != axis])
        sg.tie(x, axis, y, axis, np.arange(xs[axis]), offset + np.arange(xs[axis]))
        offset += xs[axis]


@ties("Split")
def split(node: gs.Node, sg: SlotGraph) -> None:
    x = node.inputs[0]
    rank = _rank(sg, x)
    axis = node.attrs.get("axis", 0) % rank
    offset = 0
    for y in node.outputs:
        ys = sg.shape(y)
        _identity(sg, x, y, [a for a in range(rank) if a != axis])
        sg.tie(x, axis, y, axis, offset + np.arange(ys[axis]), np.arange(ys[axis]))
        offset += ys[axis]


@fixes("Split")
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


def _slice_params(node: gs.Node, value_of: Callable, rank: int):
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


@ties("Slice")
def slice_(node: gs.Node, sg: SlotGraph) -> None:
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = sg.shape(x), sg.shape(y)
    params = _slice_params(node, sg.fixed, len(xs))
    if params is None:
        return
    starts, ends, axes, steps = params
    _identity(sg, x, y, [a for a in range(len(xs)) if a not in axes])
    for start, axis, step in zip(starts, axes, steps, strict=True):
        if step == 1:  # other steps stay frozen: the kept set would have to stay strided
            first = _clamp(start, xs[axis])
            sg.tie(x, axis, y, axis, first + np.arange(ys[axis]), np.arange(ys[axis]))


@fixes("Slice")
def slice_fix(node: gs.Node, ctx: RewriteContext) -> None:
    """Recompute bounds on pruned axes; computed bounds become constants (their values did
    not depend on the batch, and may have been computed from a pruned size)."""
    x = node.inputs[0]
    computed = any(t.name and not isinstance(t, gs.Constant) for t in node.inputs[1:])
    if not ctx.changed(x) and not computed:
        return
    xs = ctx.old_shape(x)
    params = _slice_params(node, ctx.fixed, len(xs))
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


@ties("Pad")
def pad(node: gs.Node, sg: SlotGraph) -> None:
    """Axes padded by zero on both sides keep their channels one to one."""
    x, y = node.inputs[0], node.outputs[0]
    rank = _rank(sg, x)
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


@fixes("Pad")
def pad_fix(node: gs.Node, ctx: RewriteContext) -> None:
    for port in (1, 3):  # computed pads/axes: freeze their (batch-independent) values
        if port < len(node.inputs) and node.inputs[port].name and not isinstance(node.inputs[port], gs.Constant):
            value = ctx.fixed(node.inputs[port])
            if value is not None:
                node.inputs[port] = gs.Constant(f"{node.outputs[0].name}_pruned_{port}", np.asarray(value))


@ties("Resize", "Upsample")
def resize(node: gs.Node, sg: SlotGraph) -> None:
    """Batch and channel axes pass through a resize whose scale on them is 1 (given as
    scales, or as sizes equal to the input's)."""
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = sg.shape(x), sg.shape(y)
    if xs is None or ys is None:
        return
    sizes = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
    if sizes is not None and sg.fixed(sizes) is None:
        return
    for axis in range(len(xs)):
        if xs[axis] == ys[axis]:
            sg.tie(x, axis, y, axis)


@fixes("Resize")
def resize_fix(node: gs.Node, ctx: RewriteContext) -> None:
    sizes = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
    y = node.outputs[0]
    if sizes is None or not ctx.changed(y):
        return
    new = ctx.new_shape(y)
    axes = node.attrs.get("axes")  # opset 18: sizes lists only these axes
    values = [new[a % len(new)] for a in axes] if axes else new
    node.inputs[3] = gs.Constant(f"{y.name}_pruned_sizes", np.array(values, dtype=np.int64))


@ties("Gather")
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


@fixes("Gather")
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


@ties("Expand")
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


@fixes("Expand")
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


@ties("Shape")
def shape_(node: gs.Node, sg: SlotGraph) -> None:
    """Shape reads sizes. An axis may shrink when its size only flows into Reshape targets
    (the rewrite replaces those with constants); an axis whose size escapes anywhere else
    (a Range, a float scale, an output) stays frozen."""
    x = node.inputs[0]
    rank = _rank(sg, x)
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
    if user.op == "Reshape":
        return _can_write_shape(user, sg)
    if user.op == "Slice":
        rank = _rank(sg, user.inputs[0])
        return rank > 0 and _slice_params(user, sg.fixed, rank) is not None
    if user.op == "Pad":  # pad_fix writes computed pads/axes as constants
        return all(sg.fixed(t) is not None for t in user.inputs[1:4:2] if t.name)
    return False


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
        params = _slice_params(node, sg.fixed, 1)
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
