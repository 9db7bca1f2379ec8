"""The op registry (onnxprune.ops): one spec per op type, a safe default for every other op."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from helpers import Net, analysis_of, frozen_slots

from onnxprune import ops
from onnxprune.structure.slots import Slot


def test_an_op_of_another_domain_is_unknown_whatever_its_name():
    """A custom-domain "Relu" is not ONNX's Relu: it gets the default that freezes."""
    assert ops.spec("Relu").ties is not None
    assert ops.spec("Relu", "com.example") is ops.UNKNOWN
    assert ops.spec("Relu", "ai.onnx") is ops.spec("Relu") and ops.spec("Relu", None) is ops.spec("Relu")
    assert ops.spec("NoSuchOp") is ops.UNKNOWN


def test_unknown_is_the_spec_that_knows_nothing():
    unknown = ops.UNKNOWN
    assert (unknown.ties, unknown.fix, unknown.flops, unknown.torch, unknown.sparse24, unknown.probe) == (None,) * 6
    assert not unknown.layer and not unknown.one_to_one and not unknown.learned and not unknown.not_trainable


def test_register_refuses_a_field_the_spec_has_not():
    with pytest.raises(TypeError, match="no field tie"):
        ops.register("Relu", tie=lambda node, sg: None)
    with pytest.raises(ValueError):
        ops.register()


def test_every_layer_says_its_weight_layout_and_flops():
    """A layer (weights at input 1) must say which weight axis holds outputs and which inputs, and
    what it costs; the consumers (scoring, re-fitting, the cost model) rely on both."""
    layers = {op: s for op, s in ops.known().items() if s.layer}
    assert set(layers) == {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    for op, s in layers.items():
        assert s.weight_axes is not None and s.flops is not None and s.ties is not None, op
        assert s.torch is not None and s.sparse24 is not None, op
    for op, s in ops.known().items():
        if s.solvable is not None:  # the solvers read its weight as a matrix and write it back
            assert s.as_matrix is not None and s.from_matrix is not None, op


@pytest.mark.parametrize("op,attrs,shape,axes", [
    ("Conv", {}, (8, 4, 3, 3), (0, 1)),
    ("ConvTranspose", {"group": 2}, (4, 3, 3, 3), (1, 0)),
    ("Gemm", {"transB": 1}, (10, 6), (0, 1)),
    ("Gemm", {}, (6, 10), (1, 0)),
    ("MatMul", {}, (6, 10), (1, 0)),
])
def test_weight_matrix_round_trips(op, attrs, shape, axes):
    node = gs.Node(op, attrs=attrs, inputs=[gs.Variable("x"), gs.Constant("w", np.zeros(shape, np.float32))])
    spec = ops.spec(op)
    assert spec.weight_axes(node) == axes
    if spec.as_matrix is None:
        return
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    m = spec.as_matrix(node, w)
    assert m.shape[0] == shape[axes[0]]
    np.testing.assert_array_equal(spec.from_matrix(node, m, shape), w)


def test_control_flow_is_known_and_frozen():
    """If/Loop/Scan are registered on purpose with no rules: they freeze what they touch."""
    for op in ("If", "Loop", "Scan"):
        s = ops.spec(op)
        assert s is not ops.UNKNOWN and s.op == op and s.ties is None and s.torch is None


def test_an_unregistered_op_freezes_its_channels_and_is_listed():
    net = Net(channels=4)
    h = net.node("Atan", [net.conv("x", 4, 8, 3, name="c1")])
    net.head(net.relu(net.conv(h, 8, 6, 1, name="c2")), 6)
    analysis = analysis_of(net.model())
    assert Slot("c1", 1) in frozen_slots(analysis)
    assert analysis.no_rule_ops == {"Atan": 1}
