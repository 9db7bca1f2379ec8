"""Run an ONNX graph in PyTorch, with chosen float initializers as trainable parameters.

``TorchGraph(model, learnable)`` is a ``torch.nn.Module`` that interprets the graph node by node
with torch operators (autograd flows through every op), so ``--distill`` can fine-tune the pruned
model's weights and write them back into the ONNX initializers *by name*
(``TorchGraph.named_weights``). It reads any exporter's graph as it is: the legacy exporter's
``Constant`` nodes, the dynamo exporter's opset 18+ forms (axes as inputs, ``Shape`` with
start/end), shapes computed at run time (``Shape`` -> ``Gather`` -> ``Concat`` -> ``Reshape``),
dynamic batch. float16/bfloat16 tensors are computed in float32 (``Cast`` to them too);
``named_weights`` hands values back in float32 and the caller casts to the initializer's type.

Why not onnx2torch (PyPI): measured on this project's test models (README, "Recovery"), its
1.5.15 release converts no dynamo export (no converter for ReduceMean-18, Shape-19) and no
unfolded legacy export (a Conv bias from a ``Constant`` node is a KeyError); and its modules
store weights under module paths, transposed for some ops, so writing them back by initializer
name would need a second mapping. An interpreter keeps every initializer as itself.

``unsupported(model)`` lists the ops (with the reason) this interpreter cannot run, so callers
refuse a model before any work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

try:
    import torch
    import torch.nn.functional as F  # noqa: N812
except ImportError:  # pragma: no cover - the caller checks torch first (distill.require_torch)
    torch = None  # type: ignore[assignment]
    F = None  # type: ignore[assignment]

# ---------------------------------------------------------------------------------------------
# dtypes

_ONNX_TO_TORCH = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.FLOAT16: "float32",
    onnx.TensorProto.BFLOAT16: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT16: "int16", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


def _dtype(onnx_type: int):
    name = _ONNX_TO_TORCH.get(onnx_type)
    if name is None:
        raise NotImplementedError(f"tensor type {onnx.TensorProto.DataType.Name(onnx_type)}")
    return getattr(torch, name)


def _tensor(array: np.ndarray, device=None):
    """A torch tensor of ``array``; half precision becomes float32, unsigned ints above 8 bits int64."""
    array = np.asarray(array)
    if array.dtype in (np.float16,) or array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    elif array.dtype in (np.uint16, np.uint32, np.uint64):
        array = array.astype(np.int64)
    return torch.from_numpy(np.array(array, order="C", copy=True)).to(device)  # 0-d stays 0-d


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH or a.type == onnx.AttributeProto.GRAPHS:
            out[a.name] = None
        elif a.type == onnx.AttributeProto.TENSOR:
            out[a.name] = numpy_helper.to_array(a.t)
        else:
            value = onnx.helper.get_attribute_value(a)
            out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if hasattr(t, "tolist") else t)] if t is not None else []


def _ints_of(t) -> list[int]:
    values = t.reshape(-1).tolist() if hasattr(t, "reshape") else list(t)
    return [int(v) for v in values]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------------------------------------
# ops: f(inputs, attrs, ctx) -> list of outputs; a missing optional input is None


class _Ctx:
    """What an op may need besides its inputs: the opset and how many outputs the node has."""

    def __init__(self, opset: int, outputs: int) -> None:
        self.opset = opset
        self.outputs = outputs


OPS: dict[str, Callable] = {}


def _op(*names: str):
    def register(fn):
        for name in names:
            OPS[name] = fn
        return fn
    return register


def _unary(name: str, fn) -> None:
    OPS[name] = lambda xs, a, c: [fn(xs[0])]


for _name, _fn in {
    "Relu": lambda x: torch.relu(x), "Sigmoid": lambda x: torch.sigmoid(x), "Tanh": lambda x: torch.tanh(x),
    "Erf": lambda x: torch.erf(x), "Sqrt": lambda x: torch.sqrt(x), "Exp": lambda x: torch.exp(x),
    "Log": lambda x: torch.log(x), "Neg": lambda x: torch.neg(x), "Abs": lambda x: torch.abs(x),
    "Reciprocal": lambda x: torch.reciprocal(x), "Floor": lambda x: torch.floor(x), "Ceil": lambda x: torch.ceil(x),
    "Round": lambda x: torch.round(x), "Sign": lambda x: torch.sign(x), "Sin": lambda x: torch.sin(x),
    "Cos": lambda x: torch.cos(x), "Not": lambda x: torch.logical_not(x), "IsNaN": lambda x: torch.isnan(x),
    "Softsign": lambda x: F.softsign(x), "Mish": lambda x: F.mish(x),
    "Identity": lambda x: x,
}.items():
    _unary(_name, _fn)


def _same(*xs):
    """Inputs of a binary op on one device (a 0-d tensor may stay where it is)."""
    devices = {x.device for x in xs if x is not None and x.dim() > 0}
    if len(devices) > 1:
        device = next(d for d in devices if d.type != "cpu")
        return [x.to(device) if x is not None else None for x in xs]
    return list(xs)


def _arith(fn):
    def run(xs, a, c):
        x, y = _same(*xs[:2])
        if x.dtype != y.dtype and x.is_floating_point() != y.is_floating_point():
            y = y.to(x.dtype) if x.is_floating_point() else y
            x = x.to(y.dtype) if y.is_floating_point() else x
        return [fn(x, y)]
    return run


OPS["Add"] = _arith(torch.add) if torch else None
OPS["Sub"] = _arith(torch.sub) if torch else None
OPS["Mul"] = _arith(torch.mul) if torch else None
OPS["Pow"] = _arith(lambda x, y: torch.pow(x, y.to(x.dtype) if x.is_floating_point() else y)) if torch else None
OPS["Equal"] = _arith(torch.eq) if torch else None
OPS["Less"] = _arith(torch.lt) if torch else None
OPS["LessOrEqual"] = _arith(torch.le) if torch else None
OPS["Greater"] = _arith(torch.gt) if torch else None
OPS["GreaterOrEqual"] = _arith(torch.ge) if torch else None
OPS["And"] = _arith(torch.logical_and) if torch else None
OPS["Or"] = _arith(torch.logical_or) if torch else None
OPS["Xor"] = _arith(torch.logical_xor) if torch else None


@_op("Div")
def _div(xs, a, c):
    x, y = _same(*xs)
    if not x.is_floating_point() and not y.is_floating_point():
        return [torch.div(x, y, rounding_mode="trunc")]
    return _arith(torch.div)([x, y], a, c)


@_op("Mod")
def _mod(xs, a, c):
    x, y = _same(*xs)
    return [torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y)]


@_op("Where")
def _where(xs, a, c):
    cond, x, y = _same(*xs)
    return [torch.where(cond.bool(), x, y)]


def _variadic(fn):
    def run(xs, a, c):
        xs = _same(*xs)
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return [out]
    return run


OPS["Max"] = _variadic(torch.maximum) if torch else None
OPS["Min"] = _variadic(torch.minimum) if torch else None
OPS["Sum"] = _variadic(torch.add) if torch else None


@_op("Mean")
def _mean(xs, a, c):
    return [_variadic(torch.add)(xs, a, c)[0] / len(xs)]


# activations with attributes

@_op("LeakyRelu")
def _leaky(xs, a, c):
    return [F.leaky_relu(xs[0], a.get("alpha", 0.01))]


@_op("Elu")
def _elu(xs, a, c):
    return [F.elu(xs[0], a.get("alpha", 1.0))]


@_op("Celu")
def _celu(xs, a, c):
    return [F.celu(xs[0], a.get("alpha", 1.0))]


@_op("Selu")
def _selu(xs, a, c):
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    x = xs[0]
    return [gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))]


@_op("ThresholdedRelu")
def _thresholded(xs, a, c):
    x = xs[0]
    return [torch.where(x > a.get("alpha", 1.0), x, torch.zeros_like(x))]


@_op("HardSigmoid")
def _hard_sigmoid(xs, a, c):
    return [torch.clamp(a.get("alpha", 0.2) * xs[0] + a.get("beta", 0.5), 0, 1)]


@_op("HardSwish")
def _hard_swish(xs, a, c):
    return [F.hardswish(xs[0])]


@_op("Softplus")
def _softplus(xs, a, c):
    return [F.softplus(xs[0])]


@_op("Gelu")
def _gelu(xs, a, c):
    return [F.gelu(xs[0], approximate=a.get("approximate", "none"))]


@_op("PRelu")
def _prelu(xs, a, c):
    x, slope = _same(*xs)
    return [torch.where(x >= 0, x, x * slope)]


@_op("Clip")
def _clip(xs, a, c):
    x = xs[0]
    if c.opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo = xs[1] if len(xs) > 1 and xs[1] is not None else None
        hi = xs[2] if len(xs) > 2 and xs[2] is not None else None
        lo = lo.item() if lo is not None else None
        hi = hi.item() if hi is not None else None
    return [torch.clamp(x, lo, hi)]


def _softmax_kind(log: bool):
    def run(xs, a, c):
        x = xs[0]
        fn = torch.log_softmax if log else torch.softmax
        if c.opset >= 13:
            return [fn(x, _axis(a.get("axis", -1), x.dim()))]
        axis = _axis(a.get("axis", 1), x.dim())  # opset < 13: over the flattened trailing dims
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return [fn(flat, -1).reshape(x.shape)]
    return run


OPS["Softmax"] = _softmax_kind(False)
OPS["LogSoftmax"] = _softmax_kind(True)


# ---------------------------------------------------------------------------------------------
# layers


def _pads(a, spatial: int, in_sizes, kernel, strides, dilations) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] for ``auto_pad`` too."""
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "") or auto is None:
        return _ints(a.get("pads")) or [0] * (2 * spatial)
    if auto == "VALID":
        return [0] * (2 * spatial)
    begins, ends = [], []
    for i in range(spatial):
        out = math.ceil(in_sizes[i] / strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sizes[i], 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, ..., bn, e1, ..., en] to F.pad's (bn, en, ..., b1, e1)."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _symmetric(pads: list[int]) -> list[int] | None:
    n = len(pads) // 2
    return pads[:n] if pads[:n] == pads[n:] else None


@_op("Conv")
def _conv(xs, a, c):
    x, w = _same(*xs[:2])
    b = xs[2].to(x.device) if len(xs) > 2 and xs[2] is not None else None
    spatial = w.dim() - 2
    kernel = _ints(a.get("kernel_shape")) or list(w.shape[2:])
    strides = _ints(a.get("strides")) or [1] * spatial
    dilations = _ints(a.get("dilations")) or [1] * spatial
    pads = _pads(a, spatial, x.shape[2:], kernel, strides, dilations)
    fn = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    padding = _symmetric(pads)
    if padding is None:
        x, padding = F.pad(x, _torch_pad(pads)), [0] * spatial
    return [fn(x, w, b, strides, padding, dilations, a.get("group", 1))]


@_op("ConvTranspose")
def _conv_transpose(xs, a, c):
    x, w = _same(*xs[:2])
    b = xs[2].to(x.device) if len(xs) > 2 and xs[2] is not None else None
    spatial = w.dim() - 2
    strides = _ints(a.get("strides")) or [1] * spatial
    dilations = _ints(a.get("dilations")) or [1] * spatial
    out_pad = _ints(a.get("output_padding")) or [0] * spatial
    pads = _ints(a.get("pads")) or [0] * (2 * spatial)
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    y = fn(x, w, b, strides, 0, out_pad, a.get("group", 1), dilations)
    index = [slice(None), slice(None)]
    for i in range(spatial):
        index.append(slice(pads[i], y.shape[2 + i] - pads[i + spatial]))
    return [y[tuple(index)]]


@_op("Gemm")
def _gemm(xs, a, c):
    x, w = _same(*xs[:2])
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


@_op("MatMul")
def _matmul(xs, a, c):
    x, y = _same(*xs)
    return [torch.matmul(x, y)]


@_op("Einsum")
def _einsum(xs, a, c):
    return [torch.einsum(a["equation"], *_same(*xs))]


@_op("BatchNormalization")
def _batch_norm(xs, a, c):
    x, scale, bias, mean, var = _same(*xs[:5])
    if c.opset < 7 and not a.get("spatial", 1):  # per-activation statistics
        shape = (1, *mean.shape)
        return [(x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + a.get("epsilon", 1e-5))
                * scale.reshape(shape) + bias.reshape(shape)]
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))]


@_op("LayerNormalization")
def _layer_norm(xs, a, c):
    x = xs[0]
    scale = xs[1].to(x.device)
    bias = xs[2].to(x.device) if len(xs) > 2 and xs[2] is not None else None
    axis = _axis(a.get("axis", -1), x.dim())
    eps = a.get("epsilon", 1e-5)
    shape = tuple(x.shape[axis:])
    if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return [F.layer_norm(x, shape, scale, bias, eps)]
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * scale
    return [y + bias if bias is not None else y]


@_op("InstanceNormalization")
def _instance_norm(xs, a, c):
    x, scale, bias = _same(*xs[:3])
    return [F.instance_norm(x, weight=scale, bias=bias, eps=a.get("epsilon", 1e-5))]


@_op("GroupNormalization")
def _group_norm(xs, a, c):
    x, scale, bias = _same(*xs[:3])
    groups = a["num_groups"]
    channels = x.shape[1]
    if scale.numel() != channels:  # opset 18: one scale per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    return [F.group_norm(x, groups, scale, bias, a.get("epsilon", 1e-5))]


@_op("GlobalAveragePool")
def _gap(xs, a, c):
    x = xs[0]
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


@_op("GlobalMaxPool")
def _gmp(xs, a, c):
    x = xs[0]
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


def _pool_geometry(x, a, kind: str):
    """(torch pooling function, kernel, strides, dilations, ONNX pads, ceil_mode, the symmetric padding
    torch can take itself or None)."""
    kernel = _ints(a["kernel_shape"])
    spatial = len(kernel)
    strides = _ints(a.get("strides")) or [1] * spatial
    dilations = _ints(a.get("dilations")) or [1] * spatial
    pads = _pads(a, spatial, x.shape[2:], kernel, strides, dilations)
    sym = _symmetric(pads)
    if sym is not None and any(p > k // 2 for p, k in zip(sym, kernel, strict=True)):
        sym = None
    fn = getattr(F, f"{kind}_pool{spatial}d")
    return fn, kernel, strides, dilations, pads, bool(a.get("ceil_mode", 0)), sym


@_op("AveragePool")
def _avg_pool(xs, a, c):
    x = xs[0]
    fn, kernel, strides, _, pads, ceil, sym = _pool_geometry(x, a, "avg")
    if not any(pads):
        return [fn(x, kernel, strides, 0, ceil)]
    if sym is not None:
        return [fn(x, kernel, strides, sym, ceil, bool(a.get("count_include_pad", 0)))]
    y = fn(F.pad(x, _torch_pad(pads)), kernel, strides, 0, ceil)
    if a.get("count_include_pad", 0):
        return [y]
    ones = F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device), _torch_pad(pads))
    return [y / fn(ones, kernel, strides, 0, ceil)]


@_op("MaxPool")
def _max_pool(xs, a, c):
    x = xs[0]
    fn, kernel, strides, dilations, pads, ceil, sym = _pool_geometry(x, a, "max")
    if sym is not None:
        return [fn(x, kernel, strides, sym, dilations, ceil)]
    padded = F.pad(x, _torch_pad(pads), value=-math.inf)
    return [fn(padded, kernel, strides, 0, dilations, ceil)]


def _reduce(fn):
    def run(xs, a, c, fn=fn):
        x = xs[0]
        axes = _ints(a.get("axes")) if "axes" in a else (_ints_of(xs[1]) if len(xs) > 1 and xs[1] is not None
                                                          else [])
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        axes = sorted(_axis(ax, x.dim()) for ax in axes)
        return [fn(x, axes, bool(a.get("keepdims", 1)))]
    return run


OPS["ReduceMean"] = _reduce(lambda x, d, k: x.mean(d, keepdim=k)) if torch else None
OPS["ReduceSum"] = _reduce(lambda x, d, k: x.sum(d, keepdim=k)) if torch else None
OPS["ReduceMax"] = _reduce(lambda x, d, k: x.amax(d, keepdim=k)) if torch else None
OPS["ReduceMin"] = _reduce(lambda x, d, k: x.amin(d, keepdim=k)) if torch else None
OPS["ReduceProd"] = _reduce(lambda x, d, k: _prod(x, d, k)) if torch else None
OPS["ReduceL1"] = _reduce(lambda x, d, k: x.abs().sum(d, keepdim=k)) if torch else None
OPS["ReduceL2"] = _reduce(lambda x, d, k: torch.sqrt((x * x).sum(d, keepdim=k))) if torch else None
OPS["ReduceSumSquare"] = _reduce(lambda x, d, k: (x * x).sum(d, keepdim=k)) if torch else None
OPS["ReduceLogSumExp"] = _reduce(lambda x, d, k: torch.logsumexp(x, d, keepdim=k)) if torch else None


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keep)
    return x


def _arg_kind(fn):
    def run(xs, a, c):
        x = xs[0]
        axis = _axis(a.get("axis", 0), x.dim())
        keep = bool(a.get("keepdims", 1))
        if a.get("select_last_index", 0):
            flipped = x.flip(axis)
            return [x.shape[axis] - 1 - fn(flipped, axis, keepdim=keep)]
        return [fn(x, axis, keepdim=keep)]
    return run


OPS["ArgMax"] = _arg_kind(torch.argmax) if torch else None
OPS["ArgMin"] = _arg_kind(torch.argmin) if torch else None


# ---------------------------------------------------------------------------------------------
# shapes and indexing


def _long(values: Iterable[int], like) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int64, device=like.device)


@_op("Shape")
def _shape(xs, a, c):
    dims = list(xs[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return [_long(dims[slice(start, end)], xs[0])]


@_op("Size")
def _size(xs, a, c):
    return [torch.tensor(xs[0].numel(), dtype=torch.int64, device=xs[0].device)]


@_op("Reshape")
def _reshape(xs, a, c):
    x = xs[0]
    shape = _ints_of(xs[1]) if c.opset >= 5 else _ints(a["shape"])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@_op("Flatten")
def _flatten(xs, a, c):
    x = xs[0]
    axis = _axis(a.get("axis", 1), x.dim())
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)]


@_op("Transpose")
def _transpose(xs, a, c):
    x = xs[0]
    perm = _ints(a.get("perm")) or list(reversed(range(x.dim())))
    return [x.permute(perm)]


def _axes_input(xs, a, c, since: int) -> list[int]:
    if c.opset < since:
        return _ints(a.get("axes"))
    return _ints_of(xs[1]) if len(xs) > 1 and xs[1] is not None else []


@_op("Squeeze")
def _squeeze(xs, a, c):
    x = xs[0]
    axes = _axes_input(xs, a, c, 13)
    if not axes:
        return [x.reshape([d for d in x.shape if d != 1])]
    axes = {_axis(ax, x.dim()) for ax in axes}
    return [x.reshape([d for i, d in enumerate(x.shape) if i not in axes])]


@_op("Unsqueeze")
def _unsqueeze(xs, a, c):
    x = xs[0]
    axes = _axes_input(xs, a, c, 13)
    rank = x.dim() + len(axes)
    shape = list(x.shape)
    for ax in sorted(_axis(ax, rank) for ax in axes):
        shape.insert(ax, 1)
    return [x.reshape(shape)]


@_op("Concat")
def _concat(xs, a, c):
    xs = [x for x in _same(*xs) if x is not None]
    if any(x.is_floating_point() for x in xs):
        dtype = next(x.dtype for x in xs if x.is_floating_point())
        xs = [x.to(dtype) for x in xs]
    return [torch.cat(xs, _axis(a["axis"], xs[0].dim()))]


@_op("Split")
def _split(xs, a, c):
    x = xs[0]
    axis = _axis(a.get("axis", 0), x.dim())
    if c.opset >= 13:
        sizes = _ints_of(xs[1]) if len(xs) > 1 and xs[1] is not None else []
    else:
        sizes = _ints(a.get("split"))
    if not sizes:
        parts = a.get("num_outputs", c.outputs)
        chunk = -(-x.shape[axis] // parts)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
    return list(torch.split(x, sizes, dim=axis))


@_op("Slice")
def _slice(xs, a, c):
    x = xs[0]
    if c.opset < 10:
        starts, ends = _ints(a["starts"]), _ints(a["ends"])
        axes = _ints(a.get("axes")) or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints_of(xs[1]), _ints_of(xs[2])
        axes = _ints_of(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = _ints_of(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = _axis(axis, x.dim())
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


@_op("Gather")
def _gather(xs, a, c):
    x, idx = xs[0], xs[1].to(xs[0].device).long()
    axis = _axis(a.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return [out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))]


@_op("GatherElements")
def _gather_elements(xs, a, c):
    x, idx = xs[0], xs[1].to(xs[0].device).long()
    axis = _axis(a.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return [torch.gather(x, axis, idx)]


@_op("ScatterND")
def _scatter_nd(xs, a, c):
    data, idx, updates = _same(*xs)
    if a.get("reduction", "none") not in ("none", None):
        raise NotImplementedError("ScatterND with a reduction")
    out = data.clone()
    idx = idx.long()
    out[tuple(idx[..., i] for i in range(idx.shape[-1]))] = updates.to(out.dtype)
    return [out]


@_op("Expand")
def _expand(xs, a, c):
    x = xs[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints_of(xs[1])))
    return [x.expand(shape)]


@_op("Tile")
def _tile(xs, a, c):
    return [xs[0].repeat(_ints_of(xs[1]))]


@_op("Pad")
def _pad(xs, a, c):
    x = xs[0]
    mode = a.get("mode", "constant")
    if c.opset < 11:
        pads, value = _ints(a["pads"]), a.get("value", 0.0)
        axes = list(range(x.dim()))
    else:
        pads = _ints_of(xs[1])
        value = xs[2].item() if len(xs) > 2 and xs[2] is not None and xs[2].numel() else 0.0
        axes = [_axis(ax, x.dim()) for ax in _ints_of(xs[3])] if len(xs) > 3 and xs[3] is not None \
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
        return [F.pad(x, _torch_pad(trimmed), value=value)]
    return [F.pad(x, _torch_pad(trimmed), mode=torch_mode)]


@_op("Resize", "Upsample")
def _resize(xs, a, c):
    x = xs[0]
    spatial = x.dim() - 2
    if c.opset >= 11:
        scales = xs[2] if len(xs) > 2 and xs[2] is not None and xs[2].numel() else None
        sizes = xs[3] if len(xs) > 3 and xs[3] is not None and xs[3].numel() else None
    else:
        scales = xs[1] if len(xs) > 1 and xs[1] is not None else (torch.tensor(a["scales"]) if "scales" in a else None)
        sizes = None
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel" if c.opset >= 11 else "asymmetric")
    if sizes is not None:
        out = _ints_of(sizes)[2:]
        kwargs = {"size": out}
    else:
        s = [float(v) for v in scales.reshape(-1).tolist()][2:]
        kwargs = {"size": [int(math.floor(d * f)) for d, f in zip(x.shape[2:], s, strict=True)]}
    if mode == "nearest":
        torch_mode = "nearest" if coord in ("asymmetric", "tf_half_pixel_for_nn") else "nearest-exact"
        return [F.interpolate(x, mode=torch_mode, **kwargs)]
    torch_mode = {"linear": ("linear", "bilinear", "trilinear")[spatial - 1], "cubic": "bicubic"}[mode]
    return [F.interpolate(x, mode=torch_mode, align_corners=coord == "align_corners", **kwargs)]


@_op("DepthToSpace")
def _depth_to_space(xs, a, c):
    x = xs[0]
    b = a["blocksize"]
    n, ch, h, w = x.shape
    if a.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, ch // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, ch // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, ch // (b * b), h * b, w * b)]


@_op("SpaceToDepth")
def _space_to_depth(xs, a, c):
    x = xs[0]
    b = a["blocksize"]
    n, ch, h, w = x.shape
    y = x.reshape(n, ch, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, ch * b * b, h // b, w // b)]


@_op("ConstantOfShape")
def _constant_of_shape(xs, a, c):
    value = a.get("value")
    fill = _tensor(value if value is not None else np.zeros(1, np.float32), xs[0].device).reshape(-1)
    return [fill.expand(_ints_of(xs[0])).clone() if _ints_of(xs[0]) else fill.reshape(())]


@_op("Range")
def _range(xs, a, c):
    start, limit, delta = (x.item() for x in xs)
    return [torch.arange(start, limit, delta, dtype=xs[0].dtype, device=xs[0].device)]


@_op("Cast")
def _cast(xs, a, c):
    return [xs[0].to(_dtype(a["to"]))]


@_op("CastLike")
def _cast_like(xs, a, c):
    return [xs[0].to(xs[1].dtype)]


@_op("Dropout")
def _dropout(xs, a, c):
    x = xs[0]
    return [x, torch.ones_like(x, dtype=torch.bool)][:c.outputs]


@_op("Trilu")
def _trilu(xs, a, c):
    k = int(xs[1].item()) if len(xs) > 1 and xs[1] is not None else 0
    return [torch.triu(xs[0], k) if a.get("upper", 1) else torch.tril(xs[0], k)]


@_op("CumSum")
def _cumsum(xs, a, c):
    x = xs[0]
    axis = _axis(int(xs[1].item()), x.dim())
    if a.get("reverse", 0):
        x = x.flip(axis)
    y = torch.cumsum(x, axis)
    if a.get("exclusive", 0):
        y = y - x
    return [y.flip(axis) if a.get("reverse", 0) else y]


def _constant_value(a: dict) -> np.ndarray:
    if "value" in a:
        return a["value"]
    if "value_float" in a:
        return np.array(a["value_float"], np.float32)
    if "value_floats" in a:
        return np.array(a["value_floats"], np.float32)
    if "value_int" in a:
        return np.array(a["value_int"], np.int64)
    if "value_ints" in a:
        return np.array(a["value_ints"], np.int64)
    raise NotImplementedError("Constant without a numeric value")


# ---------------------------------------------------------------------------------------------
# what cannot run


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _why_not(node: onnx.NodeProto, a: dict) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return f"{node.domain}.{node.op_type}"
    if node.op_type == "Constant":
        return None if any(k in a for k in ("value", "value_float", "value_floats", "value_int", "value_ints")) \
            else "Constant (non-numeric)"
    if node.op_type not in OPS:
        return node.op_type
    if any(v is None and k in ("then_branch", "else_branch", "body") for k, v in a.items()):
        return node.op_type
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        return "MaxPool (with indices)"
    if node.op_type in ("Resize", "Upsample"):
        mode = a.get("mode", "nearest")
        coord = a.get("coordinate_transformation_mode", "half_pixel")
        if mode not in ("nearest", "linear", "cubic") or coord not in (
                "half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"):
            return f"Resize ({mode}, {coord})"
        if mode != "nearest" and coord == "asymmetric":
            return f"Resize ({mode}, {coord})"
        if mode == "cubic" and a.get("cubic_coeff_a", -0.75) != -0.75:
            return "Resize (cubic_coeff_a)"
    if node.op_type == "ScatterND" and a.get("reduction", "none") != "none":
        return "ScatterND (reduction)"
    if node.op_type == "Pad" and a.get("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        return f"Pad ({a.get('mode')})"
    return None


def unsupported(model: onnx.ModelProto) -> list[str]:
    """The ops of ``model`` (sorted, each once) that ``TorchGraph`` cannot run; empty when it runs all."""
    bad = set()
    for node in model.graph.node:
        why = _why_not(node, _attrs(node))
        if why:
            bad.add(why)
    for tensor in model.graph.initializer:
        if tensor.data_type not in _ONNX_TO_TORCH:
            bad.add(f"initializer type {onnx.TensorProto.DataType.Name(tensor.data_type)}")
    return sorted(bad)


# ---------------------------------------------------------------------------------------------
# the module


class TorchGraph(torch.nn.Module if torch else object):
    """An ONNX graph as a torch module. ``learnable``: names of float initializers to hold as
    parameters (the rest are buffers, never trained). ``forward(feed)`` takes {input name: tensor}
    and returns the graph outputs in order."""

    def __init__(self, model: onnx.ModelProto, learnable: Iterable[str] = ()) -> None:
        super().__init__()
        self.opset = _default_opset(model)
        learnable = set(learnable)
        self._names: dict[str, str] = {}  # initializer name -> attribute name
        self.params = torch.nn.ParameterDict()
        for i, init in enumerate(model.graph.initializer):
            value = _tensor(numpy_helper.to_array(init))
            key = f"t{i}"
            self._names[init.name] = key
            if init.name in learnable and value.is_floating_point():
                self.params[key] = torch.nn.Parameter(value)
            else:
                self.register_buffer(key, value, persistent=False)
        self._nodes = []
        for j, node in enumerate(model.graph.node):
            a = _attrs(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                key = f"c{j}"
                self.register_buffer(key, _tensor(_constant_value(a)), persistent=False)
                self._names[node.output[0]] = key
                continue
            why = _why_not(node, a)
            if why:
                raise NotImplementedError(why)
            self._nodes.append((OPS[node.op_type], list(node.input), list(node.output), a,
                                _Ctx(self.opset, len(node.output))))
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = [v.name for v in model.graph.input if v.name not in initializers]
        self.outputs = [v.name for v in model.graph.output]
        self._last_use = self._lifetimes()

    def _lifetimes(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, (_, ins, _, _, _) in enumerate(self._nodes):
            for name in ins:
                last[name] = i
        for name in self.outputs:
            last[name] = len(self._nodes)
        return last

    def _value(self, name: str):
        key = self._names[name]
        return self.params[key] if key in self.params else getattr(self, key)

    def named_weights(self) -> dict[str, torch.nn.Parameter]:
        """The trainable parameters by initializer name."""
        return {name: self.params[key] for name, key in self._names.items() if key in self.params}

    def forward(self, feed: dict[str, torch.Tensor], taps: tuple[str, ...] = ()) -> list[torch.Tensor]:
        """The graph outputs, then the values of the intermediate tensors ``taps``."""
        env: dict[str, torch.Tensor] = dict(feed)
        tapped: dict[str, torch.Tensor] = {}
        keep = set(taps)
        for i, (fn, ins, outs, a, ctx) in enumerate(self._nodes):
            args = []
            for name in ins:
                if not name:
                    args.append(None)
                elif name in env:
                    args.append(env[name])
                else:
                    args.append(self._value(name))
            results = fn(args, a, ctx)
            for name, value in zip(outs, results, strict=False):
                if name:
                    env[name] = value
                    if name in keep:
                        tapped[name] = value
            for name in ins:
                if name in env and self._last_use.get(name) == i and name not in feed:
                    del env[name]
        return [env[name] if name in env else self._value(name) for name in self.outputs] + [tapped[t] for t in taps]
