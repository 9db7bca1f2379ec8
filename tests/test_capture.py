"""Capture: every tensor's shape from real onnxruntime runs, in memory-bounded groups.

The groups are sized before anything runs, by ONNX shape inference; a model split into many
groups must give exactly the capture of one run, and what the capture keeps must not hold
onnxruntime's buffers (each output array can pin its whole session's arena).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

import onnxprune.graph.capture as capture_module
from onnxprune.graph.capture import _all_outputs_model, capture, estimated_sizes, input_feed
from onnxprune.graph.load import read_model
from onnxprune.graph.sessions import shared_session

MODELS = [("resnet18", "legacy"), ("mobilevit_xs", "dynamo")]


@pytest.fixture(params=MODELS, ids=[f"{m}-{e}" for m, e in MODELS])
def graph(request, export) -> gs.Graph:
    proto, _ = read_model(export(*request.param))
    return gs.import_onnx(proto)


def test_estimated_sizes_match_the_bytes_onnxruntime_returns(graph: gs.Graph) -> None:
    model, weights, names = _all_outputs_model(graph)
    feed = input_feed(graph)
    sizes = estimated_sizes(model, feed, len(graph.outputs))
    values = shared_session(model, weights).run(names, feed)
    real = {name: float(np.asarray(v).nbytes) for name, v in zip(names, values, strict=True)}
    known = [n for n in names if n in sizes]
    assert len(known) == len(names), "every tensor gets an estimate (inferred or from its node's inputs)"
    exact = sum(sizes[n] == real[n] for n in names)
    assert exact >= 0.95 * len(names), f"only {exact} of {len(names)} tensors sized exactly"
    assert sum(sizes.values()) == pytest.approx(sum(real.values()), rel=0.05)


def test_capture_in_many_groups_equals_capture_in_one(graph: gs.Graph, monkeypatch) -> None:
    whole = capture(graph)
    monkeypatch.setattr(capture_module, "CHUNK_BYTES", 2e6)  # a few MB: dozens of groups and sessions
    sessions = []
    real_session = capture_module.shared_session
    monkeypatch.setattr(capture_module, "shared_session",
                        lambda model, weights: sessions.append(1) or real_session(model, weights))
    split = capture(graph)
    assert len(sessions) > 10, "the small budget must split both runs"
    assert split.shapes == whole.shapes and split.shapes2 == whole.shapes2 and split.dynamic == whole.dynamic
    assert split.stable == whole.stable and split.finite == whole.finite
    assert split.values.keys() == whole.values.keys()
    for name, value in whole.values.items():
        np.testing.assert_array_equal(split.values[name], value)


def test_kept_values_own_their_memory(graph: gs.Graph) -> None:
    # An array onnxruntime returns wraps its buffer (base is a capsule) and keeps the session's
    # allocator alive: keeping one per group once held 1 GB per group on efficientnet_b7 at 600 px.
    values = capture(graph).values
    assert values
    assert all(v.base is None and v.flags.owndata for v in values.values())
