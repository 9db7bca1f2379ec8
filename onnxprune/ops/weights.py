"""Helpers for ops whose inputs hold a layer's weights (2:4 checks of several families)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def input_at(node: gs.Node, port: int) -> gs.Tensor | None:
    """Input ``port``, or None when the node has no (non-empty) input there."""
    return node.inputs[port] if len(node.inputs) > port and node.inputs[port].name else None


def weight_problem(weight: gs.Tensor | None) -> str | None:
    """Why a weight input cannot be checked at all (None when it is a float constant)."""
    if weight is None:
        return "no weight input"
    if not isinstance(weight, gs.Constant):
        return f"weight not a constant ({weight.name} is computed at run time)"
    dtype = np.asarray(weight.values).dtype
    if not np.issubdtype(dtype, np.floating):
        return f"weight not floating point ({dtype})"
    return None


def k_major(axes: tuple[int, int], w: np.ndarray) -> np.ndarray:
    """A 2-D weight as [outputs, K], given its (output axis, input axis)."""
    return w if axes[0] == 0 else w.T
