"""Normalisation: BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization.

Each channel is normalised on its own (per-channel scale, bias and statistics follow their
channel), so the channel axis passes through one to one. GroupNormalization has no tie rule: its
groups mix channels, so it freezes what it touches.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .kernels import F, axis_of, same_device, torch
from .registry import KernelContext, SlotGraph, register
from .tying import identity, rank

register("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
         learned=(1, 2))  # scale, bias
register("BatchNormalization", "InstanceNormalization", "LayerNormalization", one_to_one=True)
register("BatchNormalization", not_trainable=frozenset({3, 4}))  # running statistics


@register("BatchNormalization", "InstanceNormalization").ties
def batch_norm(node: gs.Node, sg: SlotGraph) -> None:
    x, y = node.inputs[0], node.outputs[0]
    identity(sg, x, y)
    for param in node.inputs[1:]:
        if param.name and rank(sg, param) == 1:
            sg.tie(param, 0, y, 1)
    sg.weight(node.inputs[1], 0)
    for extra in node.outputs[1:]:  # training-mode running stats
        if extra.name and rank(sg, extra) == 1:
            sg.tie(extra, 0, y, 1)


@register("LayerNormalization").ties
def layer_norm(node: gs.Node, sg: SlotGraph) -> None:
    x, y = node.inputs[0], node.outputs[0]
    x_rank = rank(sg, x)
    start = node.attrs.get("axis", -1) % x_rank
    identity(sg, x, y)
    for param in node.inputs[1:3]:
        if param.name:
            prank = rank(sg, param)
            for axis in range(prank):
                sg.tie(param, axis, y, x_rank - prank + axis)
    sg.weight(node.inputs[1], rank(sg, node.inputs[1]) - 1)
    for stat in node.outputs[1:]:  # Mean / InvStdDev: normalised axes are 1
        if stat.name:
            identity(sg, x, stat, range(start))


@register("BatchNormalization").torch
def batch_norm_kernel(xs: list, a: dict, c: KernelContext) -> list:
    x, scale, bias, mean, var = same_device(*xs[:5])
    if c.opset < 7 and not a.get("spatial", 1):  # per-activation statistics
        shape = (1, *mean.shape)
        return [(x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + a.get("epsilon", 1e-5))
                * scale.reshape(shape) + bias.reshape(shape)]
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))]


@register("LayerNormalization").torch
def layer_norm_kernel(xs: list, a: dict, c: KernelContext) -> list:
    x = xs[0]
    scale = xs[1].to(x.device)
    bias = xs[2].to(x.device) if len(xs) > 2 and xs[2] is not None else None
    axis = axis_of(a.get("axis", -1), x.dim())
    eps = a.get("epsilon", 1e-5)
    shape = tuple(x.shape[axis:])
    if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return [F.layer_norm(x, shape, scale, bias, eps)]
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * scale
    return [y + bias if bias is not None else y]


@register("InstanceNormalization").torch
def instance_norm_kernel(xs: list, a: dict, c: KernelContext) -> list:
    x, scale, bias = same_device(*xs[:3])
    return [F.instance_norm(x, weight=scale, bias=bias, eps=a.get("epsilon", 1e-5))]


@register("GroupNormalization").torch
def group_norm_kernel(xs: list, a: dict, c: KernelContext) -> list:
    x, scale, bias = same_device(*xs[:3])
    groups = a["num_groups"]
    channels = x.shape[1]
    if scale.numel() != channels:  # opset 18: one scale per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    return [F.group_norm(x, groups, scale, bias, a.get("epsilon", 1e-5))]
