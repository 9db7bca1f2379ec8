"""Score stage: importance of every atom (removable unit) of every coupled group.

Magnitude criteria need no data: the L1 or squared-L2 norm of the group's weights along the
channel, summed over the weight slots of the group and averaged over them (as Torch-Pruning's
group magnitude importance does). Calibrated criteria read the layer Hessians (``hessian.py``)
where a channel enters a layer.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import ModelError, UsageError
from ..ops.quantize import dequantized_weight
from ..structure.analyze import Analysis
from ..structure.slots import Slot

CRITERIA = ("l1", "l2")


def _per_channel(values: np.ndarray, axis: int, criterion: str) -> np.ndarray:
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    if not np.issubdtype(moved.dtype, np.floating) or moved.dtype.itemsize < 4:
        moved = moved.astype(np.float32)
    if criterion == "l1":
        return np.abs(moved).sum(1, dtype=np.float64)
    return np.einsum("ij,ij->i", moved, moved, dtype=np.float64)


def magnitude_scores(analysis: Analysis, criterion: str = "l2") -> list[np.ndarray]:
    """One score per atom for each group (higher = more important)."""
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    tensors = analysis.graph.tensors()
    cache: dict[Slot, np.ndarray] = {}
    scores = []
    for group in analysis.groups:
        total = np.zeros(group.size)
        for slot in group.weights:
            if slot not in cache:
                values = weight_values(tensors[slot.tensor])
                cache[slot] = _per_channel(values, slot.axis, criterion)
                if not np.isfinite(cache[slot]).all():
                    cache[slot] = _finite_scores(cache[slot], slot, analysis)
            total += cache[slot][group.members[slot]].sum(1)
        scores.append(total / max(len(group.weights), 1))
    return scores


def _finite_scores(scores: np.ndarray, slot: Slot, analysis: Analysis) -> np.ndarray:
    """A layer weight with NaN/Inf is refused (ranking its channels would be meaningless); another
    constant a group carries (an attention mask of -inf) ranks its infinite channels first to keep."""
    if slot in analysis.weight_slots:
        name = analysis.shared.get(slot.tensor, slot.tensor)
        raise ModelError(f"weight {name} has NaN or infinite values: its channels cannot be ranked "
                         "(fix the weights, or export the model again)")
    return np.nan_to_num(scores, nan=0.0, posinf=np.finfo(np.float32).max)


def weight_values(tensor: gs.Constant) -> np.ndarray:
    """A weight's values; a quantized weight (input 0 of a per-tensor or per-axis DequantizeLinear)
    dequantized, so channels with different scales compare fairly."""
    values = np.asarray(tensor.values)
    dq = dequantized_weight(tensor)
    if dq is None or np.issubdtype(values.dtype, np.floating) or not isinstance(dq.inputs[1], gs.Constant):
        return values
    scale = np.asarray(dq.inputs[1].values, dtype=np.float32)
    zero = dq.inputs[2] if len(dq.inputs) > 2 and isinstance(dq.inputs[2], gs.Constant) else None
    zero = np.asarray(zero.values, dtype=np.float32) if zero is not None else np.zeros_like(scale)
    if scale.ndim == 1 and values.ndim > 0:  # per axis: broadcast along the node's axis
        shape = [1] * values.ndim
        shape[dq.attrs.get("axis", 1) % values.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    elif scale.ndim > 0:  # blocked quantisation: rank by the raw integers
        return values
    return (values.astype(np.float32) - zero) * scale


def is_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant)


CALIBRATED = ("act", "obs")
ACT_PIXELS = 4 * 224 * 224  # act captures every layer's input at once: batches of 4 images at 224


def calibrated_scores(analysis: Analysis, samples: dict[str, np.ndarray], criterion: str = "act",
                      batch_size: int = 16) -> list[np.ndarray]:
    """Channel scores from calibration data, read where a channel enters a layer.

    ``act`` (activation-weighted, as Wanda): sum over the channel's weight columns of
    w^2 * E[x^2]. ``obs`` (second order, the OBS saliency): sum of w^2 / [H^-1]_jj with the
    dampened layer Hessian. A group no layer reads (it only feeds outputs) falls back to L2.
    """
    from ..calib.activations import batch_size_for, batched
    from ..calib.hessian import SCORING_BUDGET, chunks, layer_hessian_diagonals, layer_hessians
    from ..calib.obs import damp
    from ..graph.layers import find_layers

    if criterion not in CALIBRATED:
        raise UsageError(f"unknown calibrated criterion {criterion!r}; choose one of {', '.join(CALIBRATED)}")
    layers = find_layers(analysis.graph)
    feeds = batched(samples, batch_size_for(analysis.graph, batch_size, samples))
    per_channel: dict[Slot, np.ndarray] = {}
    if criterion == "act":  # the diagonals only: every layer in one pass, smaller batches (all inputs at once)
        feeds = batched(samples, batch_size_for(analysis.graph, batch_size, samples, pixels=ACT_PIXELS))
        diagonals = layer_hessian_diagonals(analysis.graph, layers, feeds)
        for lay in layers:
            col = (lay.matrix().astype(np.float64) ** 2 * diagonals[lay.key][None, :]).sum(0)
            per_channel[Slot(lay.weight.name, lay.axes[1])] = lay.per_channel(col)
    for chunk in chunks(layers, SCORING_BUDGET, fill=True) if criterion == "obs" else []:
        hessians = layer_hessians(analysis.graph, chunk, feeds)
        for lay in chunk:
            w = lay.matrix().astype(np.float64)
            damped, _ = damp(hessians[lay.key])
            col = (w**2 / np.diag(np.linalg.inv(damped))[None, :]).sum(0)
            per_channel[Slot(lay.weight.name, lay.axes[1])] = lay.per_channel(col)
    fallback = magnitude_scores(analysis, "l2")
    scores = []
    for group, default in zip(analysis.groups, fallback, strict=True):
        total = np.zeros(group.size)
        used = False
        for slot, members in group.members.items():
            if slot in per_channel:
                total += per_channel[slot][members].sum(1)
                used = True
        scores.append(total if used else default)
    return scores
