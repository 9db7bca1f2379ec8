"""Weight sparsity with calibration data: unstructured (--sparsity) or N:M (--pattern 2:4),
by magnitude, Wanda or OBS (the correlation-aware pruner), optionally sequential.

Hessians (``hessian.py``) are accumulated a calibration batch at a time for a chunk of layers
whose Hessians fit the memory budget; ``sequential`` instead calibrates each layer on the outputs
of the layers already pruned before it (one pass over the data per layer). ``allocate="measured"``
gives each layer its own sparsity so that the model (weights-weighted) meets --sparsity at the
least summed layer error (``allocate.py``), measured on the dense Hessians first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import ModelError, UsageError
from ..graph.layers import MAX_ROWS, Layer, find_layers, subsample
from ..graph.load import reshare_constants, unshare_constants
from ..graph.scopes import subgraph_reads
from ..progress import Progress, no_progress
from . import allocate as alloc
from .activations import batch_size_for, batched
from .hessian import SPARSIFY_BUDGET, chunks, from_sums, hessian_bytes, layer_hessians
from .obs import Pattern, damp, magnitude_mask, obs_prune, reconstruction_error, wanda_mask
from .walk import ForwardWalk

log = logging.getLogger(__name__)

METHODS = ("magnitude", "wanda", "obs")


@dataclass
class LayerReport:
    """One layer's outcome: achieved sparsity and relative output error on calibration data."""

    name: str
    weight: str
    columns: int
    sparsity: float
    error: float | None
    weights: int = 0  # weights in the layer (model sparsity is weighted by them)


@dataclass
class SparsifyReport:
    pattern: str
    method: str
    sequential: bool
    layers: list[LayerReport] = field(default_factory=list)
    dense: list[tuple[str, str]] = field(default_factory=list)  # (layer, why it stays dense)
    allocate: str = "uniform"  # per-layer sparsity: the same everywhere, or measured (allocate.py)

    @property
    def model_sparsity(self) -> float:
        """Zeroed weights over the weights of all sparsified layers."""
        return alloc.model_sparsity([lay.sparsity for lay in self.layers], [lay.weights for lay in self.layers])


def parse_pattern(text: str) -> Pattern:
    """'2:4' -> keep 2 of every 4 (prune 2)."""
    try:
        keep, group = (int(v) for v in text.split(":"))
    except ValueError:
        raise UsageError(f"--pattern must look like N:M (e.g. 2:4), got {text!r}") from None
    if not 0 < keep < group:
        raise UsageError(f"--pattern {text}: need 0 < N < M")
    return Pattern(n=group - keep, m=group)


def eligible(layer: Layer, pattern: Pattern) -> str | None:
    """Why a layer cannot take the pattern (None when it can): N:M runs along input channels / K."""
    if not pattern.structured_nm:
        return None
    if layer.node.op == "Conv":
        cin = layer.in_channels
        return None if cin % pattern.m == 0 else f"input channels {cin} not a multiple of {pattern.m}"
    k = layer.columns
    return None if k % pattern.m == 0 else f"K={k} not a multiple of {pattern.m}"


def sparsify_graph(graph: gs.Graph, pattern: Pattern, *, method: str = "obs",
                   samples: dict[str, np.ndarray] | None = None, sequential: bool = False, batch_size: int = 16,
                   memory_budget: float = SPARSIFY_BUDGET, progress: Progress | None = None,
                   allocate: str = "uniform") -> SparsifyReport:
    """Sparsify every Conv/Gemm/MatMul layer of ``graph`` in place; returns what happened per layer.
    ``allocate="measured"`` (unstructured, with ``samples``): per-layer sparsities meeting
    ``pattern.sparsity`` over all the layers' weights at the least summed layer error."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "magnitude" and samples is None:
        raise UsageError(f"--method {method} needs calibration data: give --calib PATH (or --calib random "
                         "for a mechanics-only run)")
    check_allocate(allocate, pattern, samples is not None)
    step = progress or no_progress
    what = (f"{pattern.sparsity:.0%} of all layers' weights (allocated per layer by measured error)"
            if allocate == "measured" else str(pattern))
    report = SparsifyReport(what, method, sequential, allocate=allocate)
    shared = unshare_constants(graph)  # a weight two layers share is pruned for each separately
    in_bodies = subgraph_reads(graph)
    layers = []
    for layer in find_layers(graph):
        if not np.isfinite(np.asarray(layer.weight.values, dtype=np.float64)).all():
            # a mask of NaN magnitudes (or an OBS solve on them) would be arbitrary, not an error
            raise ModelError(f"weight {layer.weight.name} has NaN or infinite values: it cannot be sparsified "
                             "(fix the weights, or export the model again)")
        why = eligible(layer, pattern)
        if layer.weight.name in in_bodies:  # zeroing it would change what the body computes too
            why = f"its weight is also read inside {in_bodies[layer.weight.name]} body"
        if why:
            report.dense.append((layer.name, why))
        else:
            layers.append(layer)
    feeds = batched(samples, batch_size_for(graph, batch_size, samples)) if samples is not None else None
    patterns, kept = {}, {}
    if allocate == "measured" and layers:
        patterns, kept = _allocate(graph, layers, pattern, method, feeds, memory_budget, sequential, step)
    if sequential and feeds is not None:
        _sequential(graph, layers, patterns, pattern, method, feeds, report, step)
        reshare_constants(graph, shared, {layer.weight.name for layer in layers})
        return report
    for chunk in chunks(layers, memory_budget):
        missing = [layer for layer in chunk if layer.key not in kept]
        hessians = {**kept, **(layer_hessians(graph, missing, feeds) if missing else {})} if feeds is not None else {}
        for layer in chunk:
            step(f"{method} on {layer.name}")
            report.layers.append(_prune_layer(layer, patterns.get(layer.key, pattern), method,
                                              hessians.get(layer.key)))
            kept.pop(layer.key, None)
    reshare_constants(graph, shared, {layer.weight.name for layer in layers})
    return report


def _sequential(graph: gs.Graph, layers: list[Layer], patterns: dict[str, Pattern], pattern: Pattern, method: str,
                feeds: list[dict[str, np.ndarray]], report: SparsifyReport, step: Progress) -> None:
    """Calibrate each layer on the pruned model's own inputs X_p, but aim at the dense outputs:
    first re-fit W to min ||X_p W'^T - X W^T|| (correcting the drift of earlier layers), then prune
    W' with H = 2 X_p^T X_p. Both models run once in all: the walks hand each layer's inputs on."""
    dense_graph = graph.copy()
    dense = {lay.key: lay for lay in find_layers(dense_graph)}
    with ForwardWalk(dense_graph, feeds) as dense_walk, ForwardWalk(graph, feeds) as pruned_walk:
        for layer in layers:
            step(f"calibrating {layer.name} on the pruned model")
            h, w_fit = _refit_to_dense(dense[layer.key], layer, dense_walk, pruned_walk)
            report.layers.append(_prune_layer(layer, patterns.get(layer.key, pattern), method, h, start=w_fit))


def _refit_to_dense(ref: Layer, layer: Layer, dense_walk: ForwardWalk, pruned_walk: ForwardWalk,
                    percdamp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(H of the pruned model's inputs, W' fitted to reproduce the dense layer's outputs)."""
    pp, pd, rows = 0.0, 0.0, 0
    for xd_batch, xp_batch in zip(dense_walk.values(ref.x.name), pruned_walk.values(layer.x.name), strict=True):
        # the same seeded row subset on both sides (same row counts)
        xd = subsample(ref.rows_of(xd_batch), MAX_ROWS).astype(np.float32, copy=False)
        xp = subsample(layer.rows_of(xp_batch), MAX_ROWS).astype(np.float32, copy=False)
        pp = pp + (xp.T @ xp).astype(np.float64)
        pd = pd + (xp.T @ xd).astype(np.float64)
        rows += len(xp)
    dense_walk.release(ref.x.name)
    pruned_walk.release(layer.x.name)
    hpp, cross = from_sums(pp, rows), from_sums(pd, rows)
    damped, _ = damp(hpp, percdamp)
    w_fit = np.linalg.solve(damped, cross @ ref.matrix().astype(np.float64).T).T
    return hpp, w_fit


def check_allocate(allocate: str, pattern: Pattern, has_data: bool) -> None:
    """Refuse an allocation that cannot be made: measured needs data and an unstructured target."""
    if allocate not in alloc.ALLOCATIONS:
        raise UsageError(f"unknown allocate {allocate!r}; choose one of {', '.join(alloc.ALLOCATIONS)}")
    if allocate != "measured":
        return
    if pattern.structured_nm:
        raise UsageError(f"--allocate measured applies to --sparsity; --pattern {pattern} prunes every eligible layer "
                         "alike (use --allocate uniform, or --sparsity S)")
    if not has_data:
        raise UsageError("--allocate measured needs calibration data: give --calib PATH (images, .npy, .npz), or "
                         "--allocate uniform")


def _allocate(graph: gs.Graph, layers: list[Layer], pattern: Pattern, method: str, feeds, budget: float,
              sequential: bool, step: Progress) -> tuple[dict[str, Pattern], dict[str, np.ndarray]]:
    """(per-layer patterns meeting ``pattern.sparsity`` over all the layers' weights, the Hessians kept
    for the pruning pass: all of them when they fit ``budget`` and the pass is not sequential), both
    by ``Layer.key``."""
    curves, kept, used = [], {}, 0.0
    for chunk in chunks(layers, budget):
        hessians = layer_hessians(graph, chunk, feeds)
        for layer in chunk:
            step(f"measuring {layer.name} at {len(alloc.GRID)} sparsities")
            w, h = layer.matrix().astype(np.float64), hessians[layer.key]
            curves.append(alloc.obs_curve(layer.name, w, h, how=alloc.NORMALISATION) if method == "obs" else
                          alloc.measure_curve(layer.name, w, h,
                                              lambda w, h, s: _prune_matrix(w, h, Pattern(sparsity=s), method)[0],
                                              how=alloc.NORMALISATION))
            used += hessian_bytes(layer)
            if not sequential and used <= budget:
                kept[layer.key] = hessians[layer.key]
    sparsities = alloc.solve(curves, pattern.sparsity)
    log.info("allocated sparsity per layer: %s",
             ", ".join(f"{c.name} {s:.2f}" for c, s in zip(curves, sparsities, strict=True)))
    return {layer.key: Pattern(sparsity=s) for layer, s in zip(layers, sparsities, strict=True)}, kept


def _prune_matrix(w: np.ndarray, h: np.ndarray | None, pattern: Pattern, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(pruned weights, kept mask) of ``w`` by ``method``."""
    if method == "obs":
        new, keep = obs_prune(w, h, pattern)
        return new * keep, keep
    keep = wanda_mask(w, h, pattern) if method == "wanda" else magnitude_mask(w, pattern)
    return w * keep, keep


def _prune_layer(layer: Layer, pattern: Pattern, method: str, h: np.ndarray | None,
                 start: np.ndarray | None = None) -> LayerReport:
    w = (layer.matrix() if start is None else start).astype(np.float64)
    new, keep = _prune_matrix(w, h, pattern, method)
    layer.set_matrix(new)
    error = reconstruction_error(w, new, h) if h is not None else None
    return LayerReport(layer.name, layer.weight.name, layer.columns, float(1.0 - keep.mean()), error, int(keep.size))


__all__ = ["METHODS", "LayerReport", "SparsifyReport", "check_allocate", "parse_pattern", "sparsify_graph"]
