"""The rewrite stage (onnxprune/rewrite.py) on a two-conv graph: ``apply_plan`` with a hand-made
plan must give the shapes and the outputs of the same model with its weights sliced by hand.

``small_model``: x [1, 4, 8, 8] -> Conv 3x3 c1 (8) -> Relu -> Conv 1x1 c2 (6) -> Relu -> pool,
flatten, Gemm fc to 10.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import analysis_of, feed_of, initializers, ort_run, small_model
from onnx import numpy_helper

from onnxprune.graph.load import to_model
from onnxprune.structure.rewrite import Plan, apply_plan, kept_indices
from onnxprune.structure.slots import Slot

REMOVED_C1 = np.array([1, 4, 6])  # of c1's 8 output channels
REMOVED_C2 = np.array([0, 3])  # of c2's 6


def sliced_by_hand(model: onnx.ModelProto) -> onnx.ModelProto:
    """The dense model with the removed channels cut out of its initializers with numpy."""
    keep1 = np.setdiff1d(np.arange(8), REMOVED_C1)
    keep2 = np.setdiff1d(np.arange(6), REMOVED_C2)
    w = initializers(model)
    new = {"c1.w": w["c1.w"][keep1], "c1.b": w["c1.b"][keep1], "c2.w": w["c2.w"][keep2][:, keep1],
           "c2.b": w["c2.b"][keep2], "fc.w": w["fc.w"][:, keep2], "fc.b": w["fc.b"]}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(new[init.name], init.name))
    return out


@pytest.fixture(scope="module")
def pruned():
    model = small_model()
    analysis = analysis_of(model)
    c1, c2 = analysis.groups
    assert Slot("c1.w", 0) in c1.members and Slot("c2.w", 0) in c2.members
    # one channel per atom, atom i is channel i: the plan's atoms are the channels
    np.testing.assert_array_equal(c1.members[Slot("c1.w", 0)], np.arange(8)[:, None])
    np.testing.assert_array_equal(c2.members[Slot("c2.w", 0)], np.arange(6)[:, None])
    plan = Plan([REMOVED_C1, REMOVED_C2], ratio=0.0, predicted=0.0)
    dense_values = {t.name: np.asarray(t.values).copy() for t in analysis.graph.tensors().values()
                    if isinstance(t, gs.Constant)}
    graph, kept = apply_plan(analysis, plan)
    return model, analysis, plan, dense_values, graph, kept


def test_weights_have_the_hand_sliced_shapes_and_values(pruned):
    model, _analysis, _plan, _dense, graph, _kept = pruned
    got = initializers(to_model(graph, model))
    want = initializers(sliced_by_hand(model))
    assert {k: v.shape for k, v in got.items()} == {"c1.w": (5, 4, 3, 3), "c1.b": (5,), "c2.w": (4, 5, 1, 1),
                                                   "c2.b": (4,), "fc.w": (10, 4), "fc.b": (10,)}
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_outputs_equal_the_hand_sliced_model_in_onnxruntime(pruned):
    model, _analysis, _plan, _dense, graph, _kept = pruned
    rewritten = to_model(graph, model)
    onnx.checker.check_model(rewritten)
    feed = feed_of(model)
    [got], [want] = ort_run(rewritten, feed), ort_run(sliced_by_hand(model), feed)
    assert got.shape == want.shape == (1, 10)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_kept_indices_per_slot(pruned):
    _model, analysis, plan, _dense, _graph, kept = pruned
    keep1, keep2 = np.setdiff1d(np.arange(8), REMOVED_C1), np.setdiff1d(np.arange(6), REMOVED_C2)
    for slot in (Slot("c1.w", 0), Slot("c1.b", 0), Slot("c1", 1), Slot("c2.w", 1)):
        np.testing.assert_array_equal(kept[slot], keep1, err_msg=str(slot))
    for slot in (Slot("c2.w", 0), Slot("c2.b", 0), Slot("c2", 1), Slot("fc.w", 1)):
        np.testing.assert_array_equal(kept[slot], keep2, err_msg=str(slot))
    assert Slot("fc.w", 0) not in kept and Slot("x", 1) not in kept
    assert kept.keys() == kept_indices(analysis, plan).keys()


def test_the_analysed_graph_is_left_dense(pruned):
    _model, analysis, _plan, dense, _graph, _kept = pruned
    for name, tensor in analysis.graph.tensors().items():
        if name in dense:
            np.testing.assert_array_equal(np.asarray(tensor.values), dense[name], err_msg=name)


def test_an_empty_plan_changes_nothing():
    model = small_model()
    analysis = analysis_of(model)
    graph, kept = apply_plan(analysis, Plan([np.array([], np.int64)] * 2, ratio=0.0, predicted=1.0))
    assert kept == {}
    got = initializers(to_model(graph, model))
    for name, value in initializers(model).items():
        np.testing.assert_array_equal(got[name], value)
    feed = feed_of(model)
    np.testing.assert_array_equal(ort_run(to_model(graph, model), feed)[0], ort_run(model, feed)[0])
