"""Per-layer sparsity for a model-wide target (``--allocate measured``): spend sparsity where it
costs least, as OBC/SPDY do for CNNs (and OWL for LLMs).

The target S is weights-weighted: the zeroed weights of all sparsified layers are S of those
layers' weights. Each layer's error is measured at the sparsities of ``GRID`` by the method that
will prune it (OBS by default), on the Hessian the pruning uses anyway, and normalised so that
layers compare (``layer_error``: the relative output error ||W X - W' X||^2 / ||W X||^2 of each
output channel, averaged over the channels). The allocation then minimises the summed layer
error: each error curve, as a function of the zeroed weights, is replaced by its lower convex
hull, and the hull segments of all layers are taken in order of increasing error per zeroed weight
until the target is met, the last one in part (``solve``). On the convex hulls this greedy choice
is optimal (a fractional knapsack); the target is met exactly, up to rounding within each layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .obs import damp, inverse_cholesky, obs_column

ALLOCATIONS = ("uniform", "measured")
GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # the sparsities each layer is measured at
NORMALISATIONS = ("channels", "layer")
NORMALISATION = "channels"  # the one ``sparsify`` uses (tools/bench_allocate.py compares both)


@dataclass
class Curve:
    """One layer's measured error at each sparsity of ``sparsities`` (errors[0] = 0 at sparsity 0)."""

    name: str
    weights: int
    sparsities: np.ndarray
    errors: np.ndarray


def layer_error(w_old: np.ndarray, w_new: np.ndarray, h: np.ndarray, how: str = "channels") -> float:
    """Normalised output error of replacing ``w_old`` by ``w_new`` on inputs whose Hessian is ``h``.

    ``channels``: ||(W - W') x||^2 / ||W x||^2 per output channel, averaged over the channels (each
    channel counts alike, whatever its scale; a normalisation or activation after the layer sees
    each channel on its own scale). ``layer``: the same ratio over the whole layer at once (channels
    of large outputs dominate)."""
    diff = (w_old - w_new).astype(np.float64)
    old = w_old.astype(np.float64)
    num = ((diff @ h) * diff).sum(1)
    den = ((old @ h) * old).sum(1)
    if how == "layer":
        return float(num.sum() / den.sum()) if den.sum() > 0 else 0.0
    live = den > 0
    return float(np.mean(num[live] / den[live])) if live.any() else 0.0


def measure_curve(name: str, w: np.ndarray, h: np.ndarray, prune: Callable[[np.ndarray, np.ndarray, float], np.ndarray],
                  grid: tuple[float, ...] = GRID, how: str = "channels") -> Curve:
    """The layer's error at each sparsity of ``grid``; ``prune(w, h, s)`` returns the pruned weights."""
    errors = [0.0 if s == 0 else layer_error(w, prune(w, h, s), h, how) for s in grid]
    return Curve(name, int(w.size), np.asarray(grid, dtype=np.float64), np.asarray(errors))


def obs_curve(name: str, w: np.ndarray, h: np.ndarray, grid: tuple[float, ...] = GRID, how: str = "channels", *,
              blocksize: int = 128, percdamp: float = 0.01, budget: float = 2.5e8) -> Curve:
    """``measure_curve`` of OBS (``obs.obs_prune``, unstructured), all sparsities in one sweep over the
    columns: the rows of ``w`` are repeated once per sparsity (rows are independent given H), each
    copy masked per block to its own sparsity; copies of at most ``budget`` bytes at a time."""
    rows, cols = w.shape
    w = w.astype(np.float64)
    h_damped, dead = damp(h, percdamp)
    start = w.copy()
    start[:, dead] = 0.0
    hinv = inverse_cholesky(h_damped)
    todo = [s for s in grid if s > 0]
    per = max(1, int(budget // (8 * w.size)))
    pruned: dict[float, np.ndarray] = {}
    for first in range(0, len(todo), per):
        batch = todo[first:first + per]
        out = _obs_copies(start, hinv, batch, blocksize)
        pruned.update({s: out[k * rows:(k + 1) * rows] for k, s in enumerate(batch)})
    errors = [0.0 if s == 0 else layer_error(w, pruned[s], h, how) for s in grid]
    return Curve(name, int(w.size), np.asarray(grid, dtype=np.float64), np.asarray(errors))


def _obs_copies(w: np.ndarray, hinv: np.ndarray, sparsities: list[float], blocksize: int) -> np.ndarray:
    """obs_prune's column sweep on ``len(sparsities)`` stacked copies of ``w``; the pruned copies."""
    rows, cols = w.shape
    g = len(sparsities)
    big = np.tile(w, (g, 1))
    mask = np.ones_like(big, dtype=bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = big[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = np.diag(hinv1)
        score = (w1**2 / d[None, :] ** 2).reshape(g, -1)  # copy k's block is one row
        prune1 = np.zeros_like(score, dtype=bool)
        for k, s in enumerate(sparsities):
            n = int(score.shape[1] * s)
            if n:
                prune1[k] = score[k] <= np.partition(score[k], n - 1)[n - 1]
        prune1 = prune1.reshape(g * rows, i2 - i1)
        for i in range(i2 - i1):
            obs_column(w1, err1, hinv1, d, np.where(prune1[:, i], 0.0, w1[:, i]), i)
        big[:, i1:i2] = w1
        mask[:, i1:i2] = ~prune1
        big[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return big * mask


def _lower_hull(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of the points (x increasing), first and last point included."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or above the line from a to i: not on the lower hull
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def solve(curves: list[Curve], target: float) -> list[float]:
    """Per-layer sparsities (in the order of ``curves``) whose zeroed weights are ``target`` of all
    the layers' weights, at the least summed error on the convex hulls of the curves. A target beyond
    what the curves reach gives every layer its largest measured sparsity."""
    total = sum(c.weights for c in curves)
    budget = target * total
    segments = []  # (error per zeroed weight, layer, zeroed weights the segment adds, sparsity it ends at)
    for k, c in enumerate(curves):
        x = c.sparsities * c.weights
        y = np.maximum.accumulate(c.errors)  # more zeros never cost less than fewer
        hull = _lower_hull(x, y)
        for a, b in zip(hull, hull[1:], strict=False):
            segments.append(((y[b] - y[a]) / (x[b] - x[a]), k, x[b] - x[a]))
    segments.sort(key=lambda s: s[0])  # stable: a layer's own segments keep their (convex) order
    zeroed = np.array([c.sparsities[0] * c.weights for c in curves], dtype=np.float64)
    left = budget - zeroed.sum()
    for _, k, dx in segments:
        if left <= 0:
            break
        take = min(dx, left)
        zeroed[k] += take
        left -= take
    return [float(z / c.weights) for z, c in zip(zeroed, curves, strict=True)]


def model_sparsity(sparsities: list[float], weights: list[int]) -> float:
    """Zeroed weights over all weights (weights-weighted mean of the layers' sparsities)."""
    total = sum(weights)
    return float(sum(s * n for s, n in zip(sparsities, weights, strict=True)) / total) if total else 0.0


__all__ = ["ALLOCATIONS", "GRID", "NORMALISATION", "NORMALISATIONS", "Curve", "layer_error", "measure_curve",
           "model_sparsity", "obs_curve", "solve"]
