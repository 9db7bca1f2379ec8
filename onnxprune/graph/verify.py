"""Verify stage: the pruned model must pass onnx.checker, run in onnxruntime (at batch 1 and,
where the batch is dynamic, batch 2) and keep every output's name, dtype, rank and non-channel
dims. The same run reads every tensor's shape, so the reported FLOPs are measured on the
pruned model itself, not predicted."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import ModelError, OnnxPruneError
from .capture import Capture, capture
from .load import check_without_weights, without_weights
from .sessions import make_session


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of one onnxruntime CPU run, by name."""
    sess = make_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))


def verify(pruned: onnx.ModelProto, dense: Capture, output_names: list[str],
           shapes: dict[str, tuple[int, ...]] | None = None, group_bytes: float | None = None
           ) -> tuple[gs.Graph, Capture]:
    """Raise ModelError unless the pruned model is a drop-in replacement for the dense one.

    ``shapes``: the input sizes the dense model was captured at (``capture(graph, shapes)``);
    ``group_bytes``: as in ``capture``.
    Returns the pruned graph and its capture (shapes of every tensor) for measuring costs.
    """
    # The checker sees the model without its weights' bytes (a serialised copy of a giant's weights,
    # and the checker's own parse of it, would be two more copies); their sizes are checked as
    # the import below reads them into arrays.
    check_without_weights(without_weights(pruned), "pruned model")
    graph = gs.import_onnx(pruned)
    if [t.name for t in graph.outputs] != output_names:
        raise ModelError("internal error: the pruned model's outputs differ in names; nothing was written")
    try:
        cap = capture(graph, shapes, dense.second_inputs, group_bytes)  # the second run at the dense model's sizes
    except OnnxPruneError as exc:  # the dense model ran at these sizes: a failure here is the rewrite's
        raise ModelError(f"internal error: the pruned model does not run ({exc}); nothing was written") from None
    for name in output_names:
        for run_shapes, label in ((cap.shapes, "batch 1"), (cap.shapes2, "the second run")):
            want = (dense.shapes if run_shapes is cap.shapes else dense.shapes2).get(name)
            if want is not None and run_shapes.get(name) != want:
                raise ModelError(f"internal error: output {name} changed from {want} to {run_shapes.get(name)} "
                                 f"at {label}; nothing was written")
        if not cap.finite.get(name, True) and dense.finite.get(name, True):
            raise ModelError(f"internal error: output {name} is not finite after pruning; nothing was written")
    return graph, cap
