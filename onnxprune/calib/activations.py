"""Capture layer inputs on calibration data through onnxruntime, a batch at a time.

The requested tensors are added as outputs to a copy of the graph; callers consume each batch
(accumulating a Hessian, say) before the next one is computed, so memory stays bounded by one
batch of the requested tensors, never all activations of all layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

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


