"""Score stage: importance of every atom (removable unit) of every coupled group.

Magnitude criteria need no data: the L1 or squared-L2 norm of the group's weights along the
channel, summed over the weight slots of the group and averaged over them (as Torch-Pruning's
group magnitude importance does).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .analyze import Analysis, Slot
from .errors import UsageError

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
                values = np.asarray(tensors[slot.tensor].values)
                cache[slot] = _per_channel(values, slot.axis, criterion)
            total += cache[slot][group.members[slot]].sum(1)
        scores.append(total / max(len(group.weights), 1))
    return scores


def is_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant)
