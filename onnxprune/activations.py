"""Capture layer inputs on calibration data through onnxruntime, a batch at a time.

The requested tensors are added as outputs to a copy of the graph; callers consume each batch
(accumulating a Hessian, say) before the next one is computed, so memory stays bounded by one
batch of the requested tensors, never all activations of all layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from .capture import session


def tap(graph: gs.Graph, names: list[str]):
    """An onnxruntime session on ``graph`` whose outputs are exactly ``names``."""
    model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.output[:]
    import onnx

    for name in names:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    return session(model)  # onnxruntime keeps every requested output through its fusions


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


def batch_size_for(graph: gs.Graph, default: int = 16) -> int:
    """Calibration batch size the model accepts: its static batch (often 1) or ``default``."""
    for tensor in graph.inputs:
        dims = tensor.shape or []
        if dims and isinstance(dims[0], int) and dims[0] > 0:
            return dims[0]
    return default
