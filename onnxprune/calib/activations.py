"""Capture layer inputs on calibration data through onnxruntime, a batch at a time.

The requested tensors are added as outputs to a copy of the graph; callers consume each batch
(accumulating a Hessian, say) before the next one is computed, so memory stays bounded by one
batch of the requested tensors, never all activations of all layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.layers import MAX_ROWS, Layer, subsample
from ..graph.sessions import graph_session, make_session, weight_bytes

SHARE_FROM = 1 << 30  # from this many bytes of weights, calibration sessions share the graph's arrays


def tap(graph: gs.Graph, names: list[str]):
    """An onnxruntime session on ``graph`` whose outputs are exactly ``names``.

    A model with ``SHARE_FROM`` bytes of weights or more is run on the graph's own arrays
    (``sessions.graph_session``: no copy, but unoptimised, about 15% slower over a calibration);
    a smaller one on an ordinary, optimised session of a copy.
    """
    if weight_bytes(graph) >= SHARE_FROM:
        return graph_session(graph, outputs=names, arena=True)
    model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    return make_session(model)  # onnxruntime keeps every requested output through its fusions


def layer_inputs(graph: gs.Graph, names: list[str], batches: Iterable[dict[str, np.ndarray]]
                 ) -> Iterator[dict[str, np.ndarray]]:
    """For each calibration batch, the values of the tensors ``names``."""
    sess = tap(graph, names)
    for feed in batches:
        yield dict(zip(names, sess.run(names, feed), strict=True))


def batched(samples: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Split {input: [n, ...]} samples into feeds of at most ``batch_size``."""
    n = len(next(iter(samples.values())))
    return [{k: v[i:i + batch_size] for k, v in samples.items()} for i in range(0, n, batch_size)]


PIXELS_PER_BATCH = 16 * 224 * 224  # a batch of calibration images holds at most this many pixels


def batch_size_for(graph: gs.Graph, default: int = 16, samples: dict[str, np.ndarray] | None = None,
                   pixels: int = PIXELS_PER_BATCH) -> int:
    """Calibration batch size the model accepts: its static batch (often 1), else ``default``, fewer
    for large ``samples`` (at most ``pixels`` pixels a batch, at least one sample: onnxruntime's
    activations for 16 images at 736x992 take several GiB)."""
    for tensor in graph.inputs:
        dims = tensor.shape or []
        if dims and isinstance(dims[0], int) and dims[0] > 0:
            return dims[0]
    return fitting_batch(samples, default, pixels) if samples else default


def fitting_batch(samples: dict[str, np.ndarray], default: int, pixels: int = PIXELS_PER_BATCH) -> int:
    """At most ``default`` samples, fewer when they are large: at most ``pixels`` pixels (the dims
    after batch and channel) a batch, at least one sample."""
    per_sample = max(int(np.prod(x.shape[2:])) if x.ndim > 2 else 1 for x in samples.values())
    return max(1, min(default, pixels // max(per_sample, 1)))


@dataclass
class PairedStatistics:
    """Sums over calibration rows for one layer pair: X_p^T X_p, X_p^T X and, when asked, X^T X,
    where X are the dense layer's input rows and X_p the pruned layer's (``Layer.rows_of``)."""

    pp: np.ndarray
    pd: np.ndarray
    dd: np.ndarray | None
    rows: int


def paired_statistics(dense: gs.Graph, pruned: gs.Graph | None, pairs: list[tuple[Layer, Layer, np.ndarray | None]],
                      feeds: list[dict[str, np.ndarray]], *, ones: bool = False, dense_gram: bool = False
                      ) -> list[PairedStatistics]:
    """Statistics for fitting pruned layers to dense outputs, one pass over ``feeds``.

    ``pairs`` holds (dense layer, pruned layer, kept columns). With ``pruned`` given, X_p is what the
    pruned model feeds its layer (so a fit also corrects the drift of earlier layers); with None,
    X_p is X's kept columns and the pruned model is not run. ``ones`` appends a ones column to both
    (a bias). Both sides take the same row subset: ``subsample`` is seeded and the row counts match.
    """
    dense_iter = layer_inputs(dense, sorted({ref.x.name for ref, _, _ in pairs}), feeds)
    pruned_names = sorted({layer.x.name for _, layer, _ in pairs})
    pruned_iter = layer_inputs(pruned, pruned_names, feeds) if pruned is not None else None
    stats: list[PairedStatistics | None] = [None] * len(pairs)
    for dense_vals in dense_iter:
        pruned_vals = next(pruned_iter) if pruned_iter is not None else None
        for i, (ref, layer, cols) in enumerate(pairs):
            xd = subsample(ref.rows_of(dense_vals[ref.x.name]), MAX_ROWS).astype(np.float32, copy=False)
            xp = (subsample(layer.rows_of(pruned_vals[layer.x.name]), MAX_ROWS).astype(np.float32, copy=False)
                  if pruned_vals is not None else xd[:, cols])
            if ones:
                column = np.ones((len(xd), 1), np.float32)
                xd, xp = np.hstack([xd, column]), np.hstack([xp, column])
            if stats[i] is None:
                stats[i] = PairedStatistics(np.zeros((xp.shape[1],) * 2), np.zeros((xp.shape[1], xd.shape[1])),
                                            np.zeros((xd.shape[1],) * 2) if dense_gram else None, 0)
            s = stats[i]
            s.pp += xp.T @ xp  # float32 BLAS, float64 sums
            s.pd += xp.T @ xd
            if s.dd is not None:
                s.dd += xd.T @ xd
            s.rows += len(xp)
    return stats
