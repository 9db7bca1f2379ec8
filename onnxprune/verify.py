"""Verify stage: the pruned model must pass onnx.checker, run in onnxruntime and keep every
output's name, dtype, rank and non-channel dims."""

from __future__ import annotations

import numpy as np
import onnx

from .capture import input_feed, session
from .errors import ModelError
from .load import check_model


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))


def verify(dense: onnx.ModelProto, pruned: onnx.ModelProto, feed: dict[str, np.ndarray] | None = None) -> None:
    """Raise ModelError if the pruned model is not a drop-in replacement for the dense one."""
    check_model(pruned, "pruned model")
    if feed is None:
        import onnx_graphsurgeon as gs

        feed = input_feed(gs.import_onnx(dense))
    try:
        got = run(pruned, feed)
    except Exception as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"internal error: the pruned model does not run in onnxruntime ({line}); "
                         "nothing was written") from None
    want = run(dense, feed)
    if list(got) != list(want):
        raise ModelError("internal error: the pruned model's outputs differ in names; nothing was written")
    for name, value in want.items():
        if got[name].shape != value.shape or got[name].dtype != value.dtype:
            raise ModelError(f"internal error: output {name} changed from {value.shape} to "
                             f"{got[name].shape}; nothing was written")
        if not np.isfinite(got[name]).all() and np.isfinite(value).all():
            raise ModelError(f"internal error: output {name} is not finite after pruning; nothing was written")
