"""The pruned CNN equals the dense CNN with the removed channels zeroed at their consumers."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from helpers import CNNS, EXPORTERS
from masking import masked_dense

from onnxprune import api
from onnxprune.graph.capture import input_feed
from onnxprune.graph.load import read_model
from onnxprune.graph.verify import run


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", CNNS)
def test_pruned_equals_masked_dense(name: str, exporter: str, export) -> None:
    proto, _ = read_model(export(name, exporter))
    analysis = api.analyze(proto)
    plan = api.make_plan(analysis, flops=0.5)
    pruned, kept = api.apply(analysis, plan, proto)
    assert kept, "something must be pruned"
    masked = masked_dense(analysis, kept, proto)
    feed = input_feed(gs.import_onnx(proto), seed=3)
    got, want = run(pruned, feed), run(masked, feed)
    for key, value in want.items():
        scale = np.abs(value).max() + 1e-6
        np.testing.assert_allclose(got[key] / scale, value / scale, atol=2e-4)
