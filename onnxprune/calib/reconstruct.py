"""Reconstruct stage: after channels are removed, re-fit each layer that lost input channels so its
outputs follow the dense layer's on calibration data, choosing how hard to fit on held-out files.

For a layer with dense weights W (rows = kept output channels) and bias b, dense inputs X and the
pruned model's inputs X_p (with the earlier layers already re-fitted: each layer also corrects the
drift the ones before it leave), both with a ones column for the bias, the candidate weights V are

- ``none``: the dense weights of the kept columns, unchanged;
- ``stats``: those, scaled and shifted per output channel so that the mean and variance of the
  layer's output match the dense layer's (BatchNorm re-calibration: two numbers per channel, it
  cannot over-fit);
- ``ridge``: least squares pulled toward the dense weights,
  min ||X_p V^T - X [W b]^T||^2 + lam * s * ||V - V_none||^2 (s: the mean of diag X_p^T X_p),
  with lam ``RIDGE_DEFAULT`` for ``ridge``;
- ``lstsq``: plain least squares (1% damping), as many free parameters as weights: it fits a few
  calibration images exactly and generalises worst.

``auto`` (the default with calibration data) picks lam per layer from ``RIDGE_GRID`` by the output
error on held-out files: the calibration samples are split in two folds by source file, each fold
is predicted from a fit on the other, and the winner is fitted again on both. none and stats are not
offered to auto: chosen per layer they fitted a few layers' held-out files best and cost the whole
model half its agreement (measured on MobileNetV2, README "Recovery"). All of it comes from sums
(X_p^T X_p, X_p^T Y, sum Y^2 with Y the dense layer's outputs) accumulated per fold in one pass,
the walk (``walk.py``) handing each layer's inputs on to the next: one run of the dense and of the
pruned model in all.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.layers import MAX_ROWS, Layer, find_layers
from ..progress import Progress, no_progress
from ..structure.slots import Slot
from .activations import batch_size_for
from .obs import damp
from .walk import ForwardWalk, frontier_for

log = logging.getLogger(__name__)

METHODS = ("auto", "ridge", "stats", "lstsq", "none")
RIDGE_GRID = (0.01, 0.03, 0.1)  # lam, relative to the mean diagonal of X_p^T X_p, that auto chooses from
RIDGE_DEFAULT = 0.03  # --reconstruct ridge
FOLDS = 2
ROWS_PER_COLUMN = 32  # rows of X per layer (all batches) for each column to fit: plenty for a ridge fit
MIN_ROWS = 1024  # per batch, at least
CV_OUTPUTS = 96  # output channels the held-out choice is made on


@dataclass
class Refit:
    """One re-fitted layer: what was chosen, its relative output error on the calibration data before
    (the kept dense weights, which fit nothing) and after, and the chosen fit's error on held-out
    files (each fold predicted from a fit on the other; None when nothing was compared)."""

    name: str
    error_before: float
    error_after: float
    chosen: str = "lstsq"
    held_out_after: float | None = None


def summarise(refits: list[Refit]) -> str:
    """What was chosen, counted: "ridge 20, stats 5, none 2"."""
    counts = Counter(r.chosen.split("(")[0] for r in refits)
    return ", ".join(f"{name} {n}" for name, n in counts.most_common())


# --- sums ----------------------------------------------------------------------------------------


@dataclass
class Sums:
    """Over calibration rows, with Y = X [W b]^T the dense layer's outputs and a ones column last on
    X_p: X_p^T X_p, X_p^T Y, the sum of Y^2 per output channel, and the row count. (Y, not X: the
    dense side costs rows x outputs, not rows x columns^2.)"""

    pp: np.ndarray
    py: np.ndarray
    yy: np.ndarray
    rows: int = 0

    @classmethod
    def zeros(cls, kept: int, outputs: int) -> Sums:
        return cls(np.zeros((kept + 1, kept + 1)), np.zeros((kept + 1, outputs)), np.zeros(outputs))

    def add(self, xp: np.ndarray, y: np.ndarray) -> None:
        """Accumulate a batch of rows (float32 products, float64 sums; the ones column implicit)."""
        sp = xp.sum(0, dtype=np.float64)
        self.pp[:-1, :-1] += xp.T @ xp
        self.pp[:-1, -1] += sp
        self.pp[-1, :-1] += sp
        self.pp[-1, -1] += len(xp)
        self.py[:-1] += xp.T @ y
        self.py[-1] += y.sum(0, dtype=np.float64)
        self.yy += np.einsum("ij,ij->j", y, y, dtype=np.float64)
        self.rows += len(xp)

    def outputs(self, pick: np.ndarray) -> Sums:
        """These sums for the output channels ``pick`` only, in float32."""
        return Sums(self.pp.astype(np.float32), self.py[:, pick].astype(np.float32), self.yy[pick], self.rows)

    def __add__(self, other: Sums) -> Sums:
        return Sums(self.pp + other.pp, self.py + other.py, self.yy + other.yy, self.rows + other.rows)

    def __sub__(self, other: Sums) -> Sums:
        return Sums(self.pp - other.pp, self.py - other.py, self.yy - other.yy, self.rows - other.rows)

    def residual(self, v: np.ndarray) -> tuple[float, float]:
        """(||Y - X_p V^T||^2, ||Y||^2) over these rows; V carries its bias as the last column."""
        ref = float(self.yy.sum())
        fit = float(((v @ self.pp) * v).sum())
        mixed = float((v * self.py.T).sum())
        return max(ref - 2 * mixed + fit, 0.0), ref


# --- candidates ----------------------------------------------------------------------------------


def _solve(s: Sums, start: np.ndarray, keep: np.ndarray, lam: float | None, percdamp: float) -> np.ndarray:
    """Least squares over the columns ``keep`` (the others stay as in ``start``): lam None is plain
    (damped) least squares, else ridge toward ``start`` with strength lam * mean diag."""
    h = s.pp[np.ix_(keep, keep)]
    rhs = s.py[keep].copy()  # [keep, rows of W]
    fixed = np.setdiff1d(np.arange(len(s.pp)), keep)
    if len(fixed):  # a column that is not fitted (the bias of a layer that has none) still acts
        rhs -= s.pp[np.ix_(keep, fixed)] @ start[:, fixed].T
    if lam is None:
        h, _dead = damp(h, percdamp)  # a kept input channel that is always 0 solves to weight 0
    else:
        scale = lam * max(float(np.mean(np.diag(h))), 1e-12)
        h = h.copy()
        h[np.diag_indices_from(h)] += scale
        rhs = rhs + scale * start[:, keep].T
    v = start.copy()
    v[:, keep] = solve_spd(h, rhs).T
    return v


def solve_spd(h: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """H^-1 rhs for a damped, symmetric positive definite H: by Cholesky in torch when it is installed
    (half the work of numpy's LU, which is the fallback, and what a factorisation that fails uses)."""
    try:
        import torch
    except ImportError:
        return np.linalg.solve(h, rhs)
    th = torch.from_numpy(np.ascontiguousarray(h))
    lower, info = torch.linalg.cholesky_ex(th)
    if int(info) != 0:
        return np.linalg.solve(h, rhs)
    return torch.cholesky_solve(torch.from_numpy(np.ascontiguousarray(rhs, dtype=h.dtype)), lower).numpy()


def _match_statistics(s: Sums, start: np.ndarray, with_bias: bool) -> np.ndarray:
    """``start`` scaled (and, with a bias, shifted) per output channel so that the output's mean and
    variance over the rows match the dense layer's."""
    n = max(s.rows, 1)
    mean_p, mean_d = start @ s.pp[-1] / n, s.py[-1] / n
    var_p = ((start @ s.pp) * start).sum(1) / n - mean_p**2
    var_d = s.yy / n - mean_d**2
    scale = np.where(var_p > 1e-12, np.sqrt(np.maximum(var_d, 0.0) / np.maximum(var_p, 1e-12)), 1.0)
    v = start * scale[:, None]
    if with_bias:
        v[:, -1] += mean_d - scale * mean_p
    return v


def _candidates(method: str) -> list[tuple[str, float | None]]:
    """(name, lam) to try: lam None for lstsq; stats and none have no lam. auto compares ridge's lam
    only: a per-layer choice that also offered none and stats picked them for a few layers where
    they fit the held-out files best, and cost the model half its agreement (README, "Recovery")."""
    return {"auto": [(f"ridge(lam={lam:g})", lam) for lam in RIDGE_GRID],
            "ridge": [(f"ridge(lam={RIDGE_DEFAULT:g})", RIDGE_DEFAULT)], "stats": [("stats", None)],
            "lstsq": [("lstsq", None)], "none": [("none", None)]}[method]


def _fit(name: str, lam: float | None, s: Sums, start: np.ndarray, keep: np.ndarray, with_bias: bool,
         percdamp: float) -> np.ndarray:
    if name == "none":
        return start
    if name == "stats":
        return _match_statistics(s, start, with_bias)
    return _solve(s, start, keep, lam, percdamp)


# --- the stage -----------------------------------------------------------------------------------


def _bias(layer: Layer) -> tuple[gs.Node | None, int | None]:
    """Where the layer's bias lives: (node, input port), or (None, None) when it cannot take one."""
    if layer.node.op in ("Conv", "Gemm"):
        return layer.node, 2
    out = layer.node.outputs[0]
    if len(out.outputs) == 1 and out.outputs[0].op == "Add":
        add = out.outputs[0]
        for port, t in enumerate(add.inputs):
            if isinstance(t, gs.Constant) and t.values.size == layer.outputs:
                return add, port
    return None, None


def _bias_values(node: gs.Node | None, port: int | None, rows: int) -> np.ndarray:
    if node is None or port >= len(node.inputs) or not node.inputs[port].name:
        return np.zeros(rows)
    return np.asarray(node.inputs[port].values, dtype=np.float64).reshape(-1)


def _set_bias(layer: Layer, node: gs.Node, port: int, values: np.ndarray) -> None:
    # named after the layer's output, unique: one bias two layers share (exporters merge equal
    # ones) becomes two re-fitted biases, which must not share a name either
    dtype = np.asarray(layer.weight.values).dtype
    name = f"{layer.key}_refit_bias"
    if port < len(node.inputs) and node.inputs[port].name:
        old = node.inputs[port]
        node.inputs[port] = gs.Constant(name, values.reshape(old.shape).astype(dtype))
        return
    while len(node.inputs) < port:
        node.inputs.append(gs.Variable.empty())
    node.inputs.append(gs.Constant(name, values.astype(dtype)))


def folds_of(sources: np.ndarray | None, n: int) -> np.ndarray:
    """Fold (0 or 1) of each of ``n`` samples, whole sources to a fold, alternating in the order the
    sources first appear (already a seeded shuffle). One source: alternate samples (and say so)."""
    ids = np.arange(n) if sources is None else np.asarray(sources)
    order = {s: i for i, s in enumerate(dict.fromkeys(ids.tolist()))}
    if len(order) < 2:
        log.warning("all calibration samples come from one file: re-fitting holds out samples, not files")
        return np.arange(n) % FOLDS
    return np.array([order[s] % FOLDS for s in ids.tolist()])


def _feeds(samples: dict[str, np.ndarray], folds: np.ndarray, batch: int) -> tuple[list[dict], list[int]]:
    """Batches of one fold each, and the fold of each batch."""
    feeds, fold_of = [], []
    for f in range(FOLDS):
        idx = np.flatnonzero(folds == f)
        for i in range(0, len(idx), batch):
            feeds.append({k: v[idx[i:i + batch]] for k, v in samples.items()})
            fold_of.append(f)
    return feeds, fold_of


def refit_layers(dense: gs.Graph, pruned: gs.Graph, kept: dict[Slot, np.ndarray], samples: dict[str, np.ndarray],
                 *, sources: np.ndarray | None = None, method: str = "auto", batch_size: int = 16,
                 percdamp: float = 0.01, memory_budget: int | None = None,
                 progress: Progress | None = None) -> list[Refit]:
    """Re-fit, in place in ``pruned``, every layer whose input channels were removed, by ``method``
    (one of ``METHODS``); ``sources``: the source file of each sample (held-out folds are whole files);
    ``memory_budget``: bytes the process may hold (--max-memory), a quarter of it for each walk's
    activations (``walk.frontier_for``), the rest on disk."""
    step = progress or no_progress
    dense_layers = {layer.key: layer for layer in find_layers(dense)}  # the rewrite keeps tensor names
    jobs = []
    for layer in find_layers(pruned):
        ref = dense_layers.get(layer.key)
        out_axis, in_axis = layer.axes
        kept_in = kept.get(Slot(ref.weight.name, in_axis)) if ref is not None else None
        if ref is None or kept_in is None:
            continue
        rows = kept.get(Slot(ref.weight.name, out_axis))
        w_dense = ref.matrix().astype(np.float64)
        node, port = _bias(ref)
        bias = _bias_values(node, port, w_dense.shape[0])
        if rows is not None:
            w_dense, bias = w_dense[rows], bias[rows]
        jobs.append((layer, ref, ref.columns_of(kept_in), np.hstack([w_dense, bias[:, None]])))
    if not jobs:
        return []
    n = len(next(iter(samples.values())))
    folds = folds_of(sources, n)
    feeds, fold_of = _feeds(samples, folds, batch_size_for(dense, batch_size, samples))
    held_out = len(set(fold_of)) == FOLDS
    frontier = frontier_for(memory_budget)
    with ForwardWalk(dense, feeds, frontier) as dense_walk, ForwardWalk(pruned, feeds, frontier) as pruned_walk:
        results = []
        for layer, ref, cols, target in jobs:
            step(f"re-fitting {layer.name}")
            per_fold = [Sums.zeros(len(cols), len(target)) for _ in range(FOLDS)]
            w_t, bias = target[:, :-1].T.astype(np.float32), target[:, -1].astype(np.float32)
            # rows per batch: enough for a fit over ``columns`` unknowns, not every pixel of every image
            limit = min(MAX_ROWS, max(MIN_ROWS, -(-ROWS_PER_COLUMN * ref.columns // len(feeds))))
            for f, xd_batch, xp_batch in zip(fold_of, dense_walk.values(ref.x.name), pruned_walk.values(layer.x.name),
                                             strict=True):
                xd = ref.rows_of(xd_batch, limit).astype(np.float32, copy=False)
                xp = layer.rows_of(xp_batch, limit).astype(np.float32, copy=False)
                per_fold[f].add(xp, xd @ w_t + bias)
            dense_walk.release(ref.x.name)
            pruned_walk.release(layer.x.name)
            results.append(_refit(layer, per_fold, held_out, cols, target, method, percdamp))
        return results


def _refit(layer: Layer, per_fold: list[Sums], held_out: bool, cols: np.ndarray, target: np.ndarray, method: str,
           percdamp: float) -> Refit:
    """Choose ``layer``'s fit on held-out folds (when every fold has samples), fit it on all of them
    and set its weights; ``target``: the dense weights and bias [W b] of its kept output channels."""
    total = per_fold[0]
    for s in per_fold[1:]:
        total = total + s
    b_node, b_port = _bias(layer)
    with_bias = b_node is not None
    keep = np.arange(len(cols) + 1) if with_bias else np.arange(len(cols))
    start = np.hstack([target[:, cols], target[:, -1:]])
    if not with_bias:
        start[:, -1] = 0.0  # no bias to set: the fit leaves it 0, as the layer has it
    options = _candidates(method)
    cv = _held_out_errors(per_fold, start, keep, with_bias, options, percdamp) if held_out else {}
    chosen = min(options, key=lambda o: cv.get(o[0], 0.0)) if cv else options[-1]
    v = _fit(*chosen, total, start, keep, with_bias, percdamp)
    before, after = _relative(total, start), _relative(total, v)
    layer.set_matrix(v[:, :len(cols)])
    if with_bias:
        _set_bias(layer, b_node, b_port, v[:, -1])
    return Refit(layer.name, before, after, chosen[0], cv.get(chosen[0]))


def _held_out_errors(per_fold: list[Sums], start: np.ndarray, keep: np.ndarray, with_bias: bool,
                     options: list[tuple[str, float | None]], percdamp: float) -> dict[str, float]:
    """Per candidate: the error on each fold of its fit on the other folds, summed, relative. On at
    most ``CV_OUTPUTS`` output channels (a seeded subset: the rows of V solve independently, and the
    choice is one for the layer), in float32: choosing costs a fraction of the final fit."""
    rows = len(start)
    pick = (np.sort(np.random.default_rng(0).choice(rows, CV_OUTPUTS, replace=False)) if rows > CV_OUTPUTS
            else np.arange(rows))
    folds = [s.outputs(pick) for s in per_fold]
    total = folds[0]
    for s in folds[1:]:
        total = total + s
    start = start[pick].astype(np.float32)
    errors = {}
    for name, lam in options:
        err, ref = 0.0, 0.0
        for held in folds:
            e, r = held.residual(_fit(name, lam, total - held, start, keep, with_bias, percdamp))
            err, ref = err + e, ref + r
        errors[name] = err / ref if ref > 0 else 0.0
    return errors


def _relative(s: Sums, v: np.ndarray) -> float:
    err, ref = s.residual(v)
    return err / ref if ref > 0 else 0.0


__all__ = ["FOLDS", "METHODS", "RIDGE_DEFAULT", "RIDGE_GRID", "Refit", "folds_of", "refit_layers", "summarise"]
