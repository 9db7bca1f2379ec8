"""Layer Hessians from calibration data, within a memory budget.

For a layer ``Y = X @ W.T`` (``layers.Layer``), H = 2 X^T X / rows over its input rows
(``Layer.rows_of``). One pass over the calibration batches accumulates the Hessians of a chunk of
layers: at most ``layers.MAX_ROWS`` rows per batch and layer (a fixed random subset), float32
products summed in float64. A Hessian holds 8 * columns^2 bytes, so layers go in chunks that fit
a memory budget (``chunks``). Weight sparsity (``sparsify.py``) and the calibrated channel
criteria (``score.py``) take their Hessians from here; ``obs.py`` solves with them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.layers import MAX_ROWS, Layer, subsample
from .activations import layer_inputs

SPARSIFY_BUDGET = 1e9  # bytes of Hessians one pass accumulates for weight sparsity
SCORING_BUDGET = 5e8  # and for the calibrated criteria (``score.calibrated_scores``)


def hessian(rows: np.ndarray) -> np.ndarray:
    """2 X^T X of a batch of layer-input rows (float64); sum over batches, divide by the row count."""
    x = rows.astype(np.float64, copy=False)
    return 2.0 * (x.T @ x)


def from_sums(gram: np.ndarray, rows: int) -> np.ndarray:
    """2 X^T X / rows from a sum X^T X over ``rows`` rows (or a cross term X_p^T X, as
    ``reconstruct.Sums`` and sparsify's sequential re-fit accumulate them)."""
    return 2.0 * gram / max(rows, 1)


def hessian_bytes(layer: Layer) -> float:
    """Memory a layer's Hessian takes (float64, columns x columns)."""
    return 8.0 * layer.columns**2


def chunks(layers: list[Layer], budget: float, *, size: int | None = None, fill: bool = False) -> list[list[Layer]]:
    """The layers, in order, in chunks whose Hessians fit ``budget`` bytes (a layer over it alone
    gets a chunk of its own) and of at most ``size`` layers. ``fill``: a chunk instead takes layers
    until it reaches the budget, the one that reaches it included."""
    out, current, used = [], [], 0.0
    for layer in layers:
        cost = hessian_bytes(layer)
        if current and ((size and len(current) >= size) or (not fill and used + cost > budget)):
            out.append(current)
            current, used = [], 0.0
        current.append(layer)
        used += cost
        if fill and used >= budget:
            out.append(current)
            current, used = [], 0.0
    return out + ([current] if current else [])


def layer_hessians(graph: gs.Graph, layers: list[Layer], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """H = 2 X^T X / rows for each layer, by ``Layer.key``, one pass over the calibration batches."""
    return _layer_means(graph, layers, feeds, lambda rows: rows.T @ rows, lambda c: (c, c))  # float32 BLAS


def layer_hessian_diagonals(graph: gs.Graph, layers: list[Layer], feeds: list[dict[str, np.ndarray]]
                            ) -> dict[str, np.ndarray]:
    """diag(H) = 2 E[x^2] per column for each layer, by ``Layer.key``: what the act criterion reads,
    for every layer in one pass (a vector a layer, where the matrices need a pass per chunk)."""
    return _layer_means(graph, layers, feeds, lambda rows: np.einsum("ij,ij->j", rows, rows, dtype=np.float64),
                        lambda c: (c,))


def _layer_means(graph: gs.Graph, layers: list[Layer], feeds: list[dict[str, np.ndarray]],
                 term: Callable[[np.ndarray], np.ndarray], shape: Callable[[int], tuple[int, ...]]
                 ) -> dict[str, np.ndarray]:
    """2 * sum of ``term(rows)`` / rows over each layer's input rows (sampled, float32; summed in
    float64 arrays of ``shape(columns)``), one pass over the calibration batches."""
    names = sorted({layer.x.name for layer in layers})
    sums = {layer.key: np.zeros(shape(layer.columns)) for layer in layers}
    counts = dict.fromkeys(sums, 0)
    for values in layer_inputs(graph, names, feeds):
        for layer in layers:
            rows = subsample(layer.rows_of(values[layer.x.name]), MAX_ROWS).astype(np.float32, copy=False)
            sums[layer.key] += 2.0 * term(rows)
            counts[layer.key] += rows.shape[0]
    return {name: total / max(counts[name], 1) for name, total in sums.items()}


__all__ = ["SCORING_BUDGET", "SPARSIFY_BUDGET", "chunks", "from_sums", "hessian", "hessian_bytes",
           "layer_hessian_diagonals", "layer_hessians"]
