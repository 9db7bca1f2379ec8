"""Resize and Upsample (and the kernels of DepthToSpace, SpaceToDepth).

Batch and channel axes pass through a resize whose scale on them is 1.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from .kernels import F, ints_of, torch
from .registry import RewriteContext, SlotGraph, register

register("Resize", not_trainable=frozenset({1, 2, 3}))  # roi, scales, sizes
register("Upsample", not_trainable=frozenset({1}))


@register("Resize", "Upsample").ties
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


@register("Resize").fix
def resize_fix(node: gs.Node, ctx: RewriteContext) -> None:
    sizes = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
    y = node.outputs[0]
    if sizes is None or not ctx.changed(y):
        return
    new = ctx.new_shape(y)
    axes = node.attrs.get("axes")  # opset 18: sizes lists only these axes
    values = [new[a % len(new)] for a in axes] if axes else new
    node.inputs[3] = gs.Constant(f"{y.name}_pruned_sizes", np.array(values, dtype=np.int64))



# --- PyTorch kernels ---------------------------------------------------------------------------------

@register("Resize", "Upsample").torch
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
        out = ints_of(sizes)[2:]
        kwargs = {"size": out}
    else:
        s = [float(v) for v in scales.reshape(-1).tolist()][2:]
        kwargs = {"size": [int(math.floor(d * f)) for d, f in zip(x.shape[2:], s, strict=True)]}
    if mode == "nearest":
        torch_mode = "nearest" if coord in ("asymmetric", "tf_half_pixel_for_nn") else "nearest-exact"
        return [F.interpolate(x, mode=torch_mode, **kwargs)]
    torch_mode = {"linear": ("linear", "bilinear", "trilinear")[spatial - 1], "cubic": "bicubic"}[mode]
    return [F.interpolate(x, mode=torch_mode, align_corners=coord == "align_corners", **kwargs)]


@register("DepthToSpace").torch
def _depth_to_space(xs, a, c):
    x = xs[0]
    b = a["blocksize"]
    n, ch, h, w = x.shape
    if a.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, ch // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, ch // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, ch // (b * b), h * b, w * b)]


@register("SpaceToDepth").torch
def _space_to_depth(xs, a, c):
    x = xs[0]
    b = a["blocksize"]
    n, ch, h, w = x.shape
    y = x.reshape(n, ch, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, ch * b * b, h // b, w // b)]


_COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn")


@register("Resize", "Upsample").torch_refuses
def resize_refuses(a: dict, outputs: list) -> str | None:
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear", "cubic") or coord not in _COORDINATES:
        return f"Resize ({mode}, {coord})"
    if mode != "nearest" and coord == "asymmetric":
        return f"Resize ({mode}, {coord})"
    if mode == "cubic" and a.get("cubic_coeff_a", -0.75) != -0.75:
        return "Resize (cubic_coeff_a)"
    return None
