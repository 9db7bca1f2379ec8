"""QuantizeLinear and DequantizeLinear: elementwise on x, with a per-axis scale and zero point that
follow the channels of ``axis``."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .registry import SlotGraph, register
from .tying import identity, rank

register("QuantizeLinear", "DequantizeLinear", one_to_one=True)


@register("QuantizeLinear", "DequantizeLinear").ties
def quantize(node: gs.Node, sg: SlotGraph) -> None:
    """Blocked quantisation (``block_size``) ties nothing, so it stays frozen."""
    x, y = node.inputs[0], node.outputs[0]
    x_rank = rank(sg, x)
    if x_rank < 0 or node.attrs.get("block_size", 0):
        return
    identity(sg, x, y)
    axis = node.attrs.get("axis", 1) % max(x_rank, 1)
    for param in node.inputs[1:3]:
        if param.name and rank(sg, param) == 1:
            sg.tie(param, 0, y, axis)


def dequantized_weight(tensor: gs.Tensor) -> gs.Node | None:
    """The DequantizeLinear that reads this tensor as its quantised data (input 0), if any: the
    tensor is then a layer's weight stored in INT8."""
    return next((n for n in tensor.outputs if n.op == "DequantizeLinear" and n.inputs[0] is tensor), None)


def quantized_source(tensor: gs.Tensor) -> gs.Constant | None:
    """The int constant a DequantizeLinear turns into this tensor (a QDQ model's weight), else None."""
    producer = tensor.inputs[0] if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 else None
    if producer is not None and producer.op == "DequantizeLinear" and isinstance(producer.inputs[0], gs.Constant):
        return producer.inputs[0]
    return None
