"""Every model the structured-pruning issue lists, from both exporters, pruned to half the FLOPs; the
CNNs' pruned models must also equal the dense model with the removed channels zeroed at their
consumers (the mask-equivalence oracle, tests/masking.py), checked on the model prune returned."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import CNNS, EXPORTERS, HYBRIDS, TRANSFORMERS
from masking import masked_by_plan

import onnxprune
from onnxprune.graph.capture import input_feed
from onnxprune.graph.sessions import make_session
from onnxprune.graph.verify import run


def _run(model: onnx.ModelProto, batch: int = 1) -> dict[str, np.ndarray]:
    feed = input_feed(gs.import_onnx(model))
    feed = {k: np.concatenate([v] * batch) for k, v in feed.items()}
    sess = make_session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", CNNS + TRANSFORMERS + HYBRIDS)
def test_half_flops(name: str, exporter: str, export) -> None:
    path = export(name, exporter)
    before = path.read_bytes()
    result = onnxprune.prune(path, flops=0.5)
    assert path.read_bytes() == before, "the input file must never change"
    assert 0.48 <= result.flops_ratio <= 0.5 + 1e-9, result.flops_ratio
    assert result.params_ratio < 0.9
    dense = onnx.load(str(path))
    pruned = result.model
    assert [i.name for i in pruned.graph.input] == [i.name for i in dense.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in dense.graph.output]
    assert pruned.opset_import == dense.opset_import
    assert pruned.ir_version == dense.ir_version
    for dense_in, pruned_in in zip(dense.graph.input, pruned.graph.input, strict=True):
        assert dense_in.type == pruned_in.type, "inputs keep their dtype and (dynamic) dims"
    want, got = _run(dense), _run(pruned)
    for key in want:
        assert got[key].shape == want[key].shape
        assert np.isfinite(got[key]).all()
    dyn = dense.graph.input[0].type.tensor_type.shape.dim[0]
    if dyn.dim_param or not dyn.HasField("dim_value"):
        got2 = _run(pruned, batch=2)  # dynamic batch survives pruning
        for key in want:
            assert got2[key].shape[0] == 2 * want[key].shape[0]
    if name in CNNS:  # no op normalises across channels: pruned == dense with removed channels zeroed
        assert result.plan, "something must be pruned"
        feed = input_feed(gs.import_onnx(dense), seed=3)
        got, want = run(pruned, feed), run(masked_by_plan(dense, result.plan), feed)
        for key, value in want.items():
            scale = np.abs(value).max() + 1e-6
            np.testing.assert_allclose(got[key] / scale, value / scale, atol=2e-4)
