"""Small helpers the tie rules of several families share."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .registry import SlotGraph


def rank(sg: SlotGraph, t: gs.Tensor) -> int:
    """The tensor's rank, -1 when its shape is unknown."""
    shape = sg.shape(t)
    return -1 if shape is None else len(shape)


def identity(sg: SlotGraph, a: gs.Tensor, b: gs.Tensor, axes: range | list[int] | None = None) -> None:
    """Tie each axis (all, or ``axes``) of ``a`` to the same axis of ``b`` where their sizes agree."""
    shape_a, shape_b = sg.shape(a), sg.shape(b)
    if shape_a is None or shape_b is None or len(shape_a) != len(shape_b):
        return
    for axis in axes if axes is not None else range(len(shape_a)):
        if shape_a[axis] == shape_b[axis]:
            sg.tie(a, axis, b, axis)


def has_input(node: gs.Node, port: int) -> bool:
    """Whether the node has a (non-empty) input at ``port``."""
    return len(node.inputs) > port and bool(node.inputs[port].name)


def same_shape_ties(node: gs.Node, sg: SlotGraph) -> None:
    """Every output has the first input's shape, element for element (unary elementwise ops; extra
    inputs such as Clip's bounds or Dropout's ratio are scalars)."""
    for out in node.outputs:
        identity(sg, node.inputs[0], out)
