"""Layer-wise Optimal Brain Surgeon: the correlation-aware pruner (CAP, Kuznedelev et al. 2023)
in its calibration-data form (OBC / SparseGPT).

For a layer ``Y = X @ W.T`` and H = 2 X^T X, removing weight w_qj costs w_qj^2 / [H^-1]_jj and is
best compensated by shifting the rest of row q along -w_qj [H^-1]_j: / [H^-1]_jj. Columns are
walked left to right with the upper Cholesky factor of H^-1 (each column's update then only
touches the columns after it); masks are chosen per block of columns (unstructured) or per
group of M columns (N:M), and the updated weights are kept. The Hessians come from ``hessian.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Pattern:
    """What to prune: a fraction of weights (unstructured), or ``n`` of every ``m`` consecutive columns."""

    sparsity: float = 0.0
    n: int = 0  # pruned per group (2 for 2:4: keep 2 of 4)
    m: int = 0

    @property
    def structured_nm(self) -> bool:
        return self.m > 0

    def __str__(self) -> str:
        return f"{self.m - self.n}:{self.m}" if self.m else f"{self.sparsity:.0%} unstructured"


def damp(h: np.ndarray, percdamp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Dampened copy of H; columns never seen (all-zero inputs) get a unit diagonal. Returns (H, dead)."""
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += percdamp * np.mean(np.diag(h))
    return h, dead


def inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U)."""
    lower = np.linalg.cholesky(h)
    inv = np.linalg.inv(lower)
    hinv = inv.T @ inv
    return np.linalg.cholesky(hinv).T


def obs_column(w1: np.ndarray, err1: np.ndarray, hinv1: np.ndarray, d: np.ndarray, q: np.ndarray, i: int) -> None:
    """One OBS step inside a block, in place: set column ``i`` of ``w1`` to ``q`` (pruned: zeros
    where dropped; rounded: on the grid), spread the error over the later columns through the
    inverse Hessian's Cholesky factor ``hinv1`` (diagonal ``d``), and record it in ``err1`` for
    the update of the columns after the block."""
    err = (w1[:, i] - q) / d[i]
    w1[:, i:] -= np.outer(err, hinv1[i, i:])
    w1[:, i] = q
    err1[:, i] = err


def obs_prune(w: np.ndarray, h: np.ndarray, pattern: Pattern, *, blocksize: int = 128,
              percdamp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Prune ``w`` [rows, cols] given its Hessian; returns (updated weights, kept mask)."""
    if pattern.structured_nm:  # groups of M must not straddle blocks
        blocksize = max(pattern.m, blocksize // pattern.m * pattern.m)
    w = w.astype(np.float64, copy=True)
    h, dead = damp(h, percdamp)
    w[:, dead] = 0.0
    hinv = inverse_cholesky(h)
    rows, cols = w.shape
    mask = np.ones_like(w, dtype=bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = np.diag(hinv1)
        prune1 = np.zeros_like(w1, dtype=bool)
        if not pattern.structured_nm:
            score = w1**2 / d[None, :] ** 2
            k = int(score.size * pattern.sparsity)
            if k:
                thresh = np.partition(score.ravel(), k - 1)[k - 1]
                prune1 = score <= thresh
        for i in range(i2 - i1):
            if pattern.structured_nm and i % pattern.m == 0:
                group = w1[:, i:i + pattern.m] ** 2 / d[None, i:i + pattern.m] ** 2
                lowest = np.argpartition(group, pattern.n - 1, axis=1)[:, :pattern.n]
                np.put_along_axis(prune1[:, i:i + pattern.m], lowest, True, axis=1)
            obs_column(w1, err1, hinv1, d, np.where(prune1[:, i], 0.0, w1[:, i]), i)
        w[:, i1:i2] = w1
        mask[:, i1:i2] = ~prune1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w, mask


def obs_round(w: np.ndarray, h: np.ndarray, scale: np.ndarray, qmin: int, qmax: int, *, blocksize: int = 128,
              percdamp: float = 0.01) -> np.ndarray:
    """Round ``w`` [rows, cols] to the grid ``scale`` (one step per row) within [qmin, qmax] given
    its Hessian, column by column, each column's rounding error compensated on the columns after
    it (GPTQ, Frantar et al. 2022: OBS with a grid instead of zeros). Returns the integer levels."""
    w = w.astype(np.float64, copy=True)
    h, dead = damp(h, percdamp)
    w[:, dead] = 0.0
    hinv = inverse_cholesky(h)
    step = np.where(scale > 0, scale, 1.0)[:, None]
    cols = w.shape[1]
    levels = np.empty(w.shape, np.int64)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = np.diag(hinv1)
        for i in range(i2 - i1):
            level = np.clip(np.rint(w1[:, i] / step[:, 0]), qmin, qmax)
            levels[:, i1 + i] = level
            obs_column(w1, err1, hinv1, d, level * step[:, 0], i)
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return levels


def magnitude_mask(w: np.ndarray, pattern: Pattern, score: np.ndarray | None = None) -> np.ndarray:
    """Kept mask by |w| (or ``score``): per layer for unstructured, per group of M columns for N:M."""
    score = np.abs(w) if score is None else score
    if pattern.structured_nm:
        rows, cols = w.shape
        groups = score.reshape(rows, cols // pattern.m, pattern.m)
        lowest = np.argpartition(groups, pattern.n - 1, axis=2)[:, :, :pattern.n]
        keep = np.ones_like(groups, dtype=bool)
        np.put_along_axis(keep, lowest, False, axis=2)
        return keep.reshape(rows, cols)
    k = int(score.size * pattern.sparsity)
    keep = np.ones(score.size, dtype=bool)
    if k:
        keep[np.argpartition(score.ravel(), k - 1)[:k]] = False
    return keep.reshape(score.shape)


def wanda_mask(w: np.ndarray, h: np.ndarray, pattern: Pattern) -> np.ndarray:
    """Wanda (Sun et al. 2023): score |w| * ||x_j||, compared within each output row."""
    norms = np.sqrt(np.maximum(np.diag(h), 0.0))
    score = np.abs(w) * norms[None, :]
    if pattern.structured_nm:
        return magnitude_mask(w, pattern, score)
    k = int(w.shape[1] * pattern.sparsity)
    keep = np.ones_like(w, dtype=bool)
    if k:
        lowest = np.argpartition(score, k - 1, axis=1)[:, :k]
        np.put_along_axis(keep, lowest, False, axis=1)
    return keep


def reconstruction_error(w_old: np.ndarray, w_new: np.ndarray, h: np.ndarray) -> float:
    """||X W_old^T - X W_new^T||^2 / ||X W_old^T||^2 from the Hessian alone."""
    diff = (w_old - w_new).astype(np.float64)
    old = w_old.astype(np.float64)
    num = float(((diff @ h) * diff).sum())
    den = float(((old @ h) * old).sum())
    return num / den if den > 0 else 0.0
