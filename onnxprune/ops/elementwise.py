"""Elementwise ops: unary math and activations, broadcasting binary ops, casts.

Their channel rule is the simplest there is: an output element goes with the input elements at
the same index (after broadcasting), so every axis whose size matches is tied one to one.
Elementwise work is not counted as FLOPs (as in fvcore/thop and Torch-Pruning).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .kernels import F, axis_of, optional, same_device, torch, torch_dtype
from .registry import KernelContext, SlotGraph, register
from .tying import same_shape_ties

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Exp", "Log",
    "Sqrt", "Reciprocal", "Neg", "Abs", "Cast", "Identity", "Softplus", "Softsign", "Elu", "Selu",
    "Celu", "Mish", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "Sin", "Cos",
    "Softmax", "LogSoftmax", "Dropout", "ThresholdedRelu", "Shrink",
)
BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Equal",
             "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "PRelu",
             "Clip", "BitwiseAnd", "BitwiseOr")

register(*UNARY, one_to_one=True, ties=same_shape_ties)
register(*BROADCAST, one_to_one=True)
register("Clip", not_trainable=frozenset({1, 2}))  # bounds
register("Pow", not_trainable=frozenset({1}))  # exponent


@register(*BROADCAST).ties
def broadcast(node: gs.Node, sg: SlotGraph) -> None:
    """Tie each input axis to the output axis it broadcasts to, where their sizes match."""
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


# --- torch kernels: f(inputs, attributes, context) -> outputs ----------------------------------------

def _unary(*ops: str, fn) -> None:
    register(*ops).torch(lambda xs, a, c: [fn(xs[0])])


_unary("Relu", fn=lambda x: torch.relu(x))
_unary("Sigmoid", fn=lambda x: torch.sigmoid(x))
_unary("Tanh", fn=lambda x: torch.tanh(x))
_unary("Erf", fn=lambda x: torch.erf(x))
_unary("Sqrt", fn=lambda x: torch.sqrt(x))
_unary("Exp", fn=lambda x: torch.exp(x))
_unary("Log", fn=lambda x: torch.log(x))
_unary("Neg", fn=lambda x: torch.neg(x))
_unary("Abs", fn=lambda x: torch.abs(x))
_unary("Reciprocal", fn=lambda x: torch.reciprocal(x))
_unary("Floor", fn=lambda x: torch.floor(x))
_unary("Ceil", fn=lambda x: torch.ceil(x))
_unary("Round", fn=lambda x: torch.round(x))
_unary("Sign", fn=lambda x: torch.sign(x))
_unary("Sin", fn=lambda x: torch.sin(x))
_unary("Cos", fn=lambda x: torch.cos(x))
_unary("Not", fn=lambda x: torch.logical_not(x))
_unary("IsNaN", fn=lambda x: torch.isnan(x))
_unary("Softsign", fn=lambda x: F.softsign(x))
_unary("Mish", fn=lambda x: F.mish(x))
_unary("HardSwish", fn=lambda x: F.hardswish(x))
_unary("Softplus", fn=lambda x: F.softplus(x))
_unary("Identity", fn=lambda x: x)


def _arith(fn):
    """A binary kernel: both inputs on one device; an int and a float operand meet as floats."""
    def run(xs, a, c):
        x, y = same_device(*xs[:2])
        if x.dtype != y.dtype and x.is_floating_point() != y.is_floating_point():
            y = y.to(x.dtype) if x.is_floating_point() else y
            x = x.to(y.dtype) if y.is_floating_point() else x
        return [fn(x, y)]
    return run


register("Add").torch(_arith(lambda x, y: torch.add(x, y)))
register("Sub").torch(_arith(lambda x, y: torch.sub(x, y)))
register("Mul").torch(_arith(lambda x, y: torch.mul(x, y)))
register("Pow").torch(_arith(lambda x, y: torch.pow(x, y.to(x.dtype) if x.is_floating_point() else y)))
register("Equal").torch(_arith(lambda x, y: torch.eq(x, y)))
register("Less").torch(_arith(lambda x, y: torch.lt(x, y)))
register("LessOrEqual").torch(_arith(lambda x, y: torch.le(x, y)))
register("Greater").torch(_arith(lambda x, y: torch.gt(x, y)))
register("GreaterOrEqual").torch(_arith(lambda x, y: torch.ge(x, y)))
register("And").torch(_arith(lambda x, y: torch.logical_and(x, y)))
register("Or").torch(_arith(lambda x, y: torch.logical_or(x, y)))
register("Xor").torch(_arith(lambda x, y: torch.logical_xor(x, y)))


@register("Div").torch
def div(xs: list, a: dict, c: KernelContext) -> list:
    x, y = same_device(*xs)
    if not x.is_floating_point() and not y.is_floating_point():
        return [torch.div(x, y, rounding_mode="trunc")]
    return _arith(lambda p, q: torch.div(p, q))([x, y], a, c)


@register("Mod").torch
def mod(xs: list, a: dict, c: KernelContext) -> list:
    x, y = same_device(*xs)
    return [torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y)]


@register("Where").torch
def where(xs: list, a: dict, c: KernelContext) -> list:
    cond, x, y = same_device(*xs)
    return [torch.where(cond.bool(), x, y)]


def _variadic(fn):
    def run(xs, a, c):
        xs = same_device(*xs)
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return [out]
    return run


register("Max").torch(_variadic(lambda x, y: torch.maximum(x, y)))
register("Min").torch(_variadic(lambda x, y: torch.minimum(x, y)))
register("Sum").torch(_variadic(lambda x, y: torch.add(x, y)))


@register("Mean").torch
def mean(xs: list, a: dict, c: KernelContext) -> list:
    return [_variadic(lambda x, y: torch.add(x, y))(xs, a, c)[0] / len(xs)]


# activations with attributes

register("LeakyRelu").torch(lambda xs, a, c: [F.leaky_relu(xs[0], a.get("alpha", 0.01))])
register("Elu").torch(lambda xs, a, c: [F.elu(xs[0], a.get("alpha", 1.0))])
register("Celu").torch(lambda xs, a, c: [F.celu(xs[0], a.get("alpha", 1.0))])
register("Gelu").torch(lambda xs, a, c: [F.gelu(xs[0], approximate=a.get("approximate", "none"))])
register("HardSigmoid").torch(lambda xs, a, c: [torch.clamp(a.get("alpha", 0.2) * xs[0] + a.get("beta", 0.5), 0, 1)])


@register("Selu").torch
def selu(xs: list, a: dict, c: KernelContext) -> list:
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    x = xs[0]
    return [gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))]


@register("ThresholdedRelu").torch
def thresholded_relu(xs: list, a: dict, c: KernelContext) -> list:
    x = xs[0]
    return [torch.where(x > a.get("alpha", 1.0), x, torch.zeros_like(x))]


@register("PRelu").torch
def prelu(xs: list, a: dict, c: KernelContext) -> list:
    x, slope = same_device(*xs)
    return [torch.where(x >= 0, x, x * slope)]


@register("Clip").torch
def clip(xs: list, a: dict, c: KernelContext) -> list:
    if c.opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo, hi = optional(xs, 1), optional(xs, 2)
        lo = lo.item() if lo is not None else None
        hi = hi.item() if hi is not None else None
    return [torch.clamp(xs[0], lo, hi)]


def _softmax(log: bool):
    def run(xs, a, c):
        x = xs[0]
        fn = torch.log_softmax if log else torch.softmax
        if c.opset >= 13:
            return [fn(x, axis_of(a.get("axis", -1), x.dim()))]
        axis = axis_of(a.get("axis", 1), x.dim())  # opset < 13: over the flattened trailing dims
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return [fn(flat, -1).reshape(x.shape)]
    return run


register("Softmax").torch(_softmax(False))
register("LogSoftmax").torch(_softmax(True))
register("Cast").torch(lambda xs, a, c: [xs[0].to(torch_dtype(a["to"]))])
register("CastLike").torch(lambda xs, a, c: [xs[0].to(xs[1].dtype)])
register("Dropout").torch(lambda xs, a, c: [xs[0], torch.ones_like(xs[0], dtype=torch.bool)][:c.outputs])
