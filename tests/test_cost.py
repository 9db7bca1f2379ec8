"""The cost model (onnxprune/cost.py) on tiny graphs, against FLOPs and parameter counts worked out
by hand: a multiply-add is 2 FLOPs; Conv, ConvTranspose, Gemm and MatMul are counted."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import IR_VERSION, OPSET, Net, analysis_of, one_node_model, shape_lookup
from onnx import TensorProto, helper, numpy_helper

from onnxprune.ranking.cost import flops_terms, param_terms, total
from onnxprune.structure.slots import Slot


def conv_gemm():
    """x [1, 3, 8, 8] -> Conv 3x3 (4 channels, pads 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm to 10."""
    net = Net(channels=3, hw=8)
    net.head(net.relu(net.conv("x", 3, 4, 3, name="c1")), 4)
    analysis = analysis_of(net.model())
    return analysis, flops_terms(analysis.graph, shape_lookup(analysis))


def flatten_name(analysis) -> str:
    return next(n for n in analysis.graph.nodes if n.op == "Flatten").outputs[0].name


def test_flops_terms_of_a_conv_and_a_gemm():
    analysis, terms = conv_gemm()
    assert [t.name for t in terms] == [n.name for n in analysis.graph.nodes if n.op in ("Conv", "Gemm")]
    conv, gemm = terms
    assert conv.dense == 2 * (4 * 8 * 8) * (3 * 3 * 3)  # outputs x (Cin x kernel) multiply-adds: 13824
    assert conv.slots == [Slot("c1", a) for a in range(4)] + [Slot("x", 1)]
    assert gemm.dense == 2 * 10 * 4  # 10 outputs x K 4: 80
    assert gemm.slots == [Slot("y", 0), Slot("y", 1), Slot(flatten_name(analysis), 1)]
    assert total(terms) == 13824 + 80


def test_total_scales_each_term_by_the_kept_fraction_of_its_slots():
    analysis, terms = conv_gemm()
    half = {Slot("c1", 1): 0.5, Slot(flatten_name(analysis), 1): 0.5}  # half the conv's channels, and the Gemm's K
    assert total(terms, half) == 13824 * 0.5 + 80 * 0.5
    assert total(terms, {Slot("c1", 1): 0.5, Slot("x", 1): 0.5}) == 13824 * 0.25 + 80
    assert total(terms, {}) == total(terms) == 13904


def test_param_terms_of_a_conv_and_a_gemm():
    analysis, _ = conv_gemm()
    terms = {t.name: t for t in param_terms(analysis.graph)}
    assert {name: t.dense for name, t in terms.items()} == {"c1.w": 4 * 3 * 3 * 3, "c1.b": 4, "fc.w": 10 * 4,
                                                            "fc.b": 10}
    assert terms["c1.w"].slots == [Slot("c1.w", a) for a in range(4)]
    assert total(list(terms.values())) == 162
    assert total(list(terms.values()), {Slot("c1.w", 0): 0.5, Slot("c1.b", 0): 0.5, Slot("fc.w", 1): 0.5}) == 86
    assert {t.name for t in param_terms(analysis.graph, skip={"c1.w", "fc.b"})} == {"c1.b", "fc.w"}


def single(op: str, x_shape: tuple[int, ...], w: np.ndarray, **attrs):
    analysis = analysis_of(one_node_model(op, x_shape, {"w": w}, ["w"], **attrs))
    [term] = flops_terms(analysis.graph, shape_lookup(analysis))
    return term


def test_grouped_conv_scales_with_its_weight_columns():
    """Conv group 2: x [1, 4, 8, 8], w [6, 2, 3, 3] -> y [1, 6, 8, 8]; each output sums 2 x 9 products."""
    term = single("Conv", (1, 4, 8, 8), np.ones((6, 2, 3, 3), np.float32), group=2, pads=[1, 1, 1, 1])
    assert term.dense == 2 * (6 * 8 * 8) * (2 * 3 * 3)
    assert term.slots == [Slot("y", a) for a in range(4)] + [Slot("w", 1)]


def test_conv_transpose_counts_per_input_element():
    """x [1, 4, 5, 5], w [Cin 4, Cout 3, 3, 3] -> y [1, 3, 7, 7]: every input element meets 3 x 9 weights."""
    term = single("ConvTranspose", (1, 4, 5, 5), np.ones((4, 3, 3, 3), np.float32))
    assert term.dense == 2 * (4 * 5 * 5) * (3 * 3 * 3)
    assert term.slots == [Slot("x", a) for a in range(4)] + [Slot("y", 1)]


def test_matmul_counts_k_of_its_left_operand():
    term = single("MatMul", (2, 5, 6), np.ones((6, 7), np.float32))  # y [2, 5, 7], K 6
    assert term.dense == 2 * (2 * 5 * 7) * 6
    assert term.slots == [Slot("y", a) for a in range(3)] + [Slot("x", 2)]


@pytest.mark.parametrize(("trans_a", "x_shape", "k_axis"), [(0, (5, 6), 1), (1, (6, 5), 0)])
def test_gemm_k_follows_trans_a(trans_a, x_shape, k_axis):
    term = single("Gemm", x_shape, np.ones((6, 7), np.float32), transA=trans_a)  # y [5, 7], K 6
    assert term.dense == 2 * (5 * 7) * 6
    assert term.slots == [Slot("y", 0), Slot("y", 1), Slot("x", k_axis)]


def test_quantized_weights_count_and_their_zero_points_do_not():
    """x [1, 4] @ DequantizeLinear(int8 [4, 3], scale, zero point): the int8 weight and the float
    scale are parameters; the int8 zero point is not."""
    inits = [numpy_helper.from_array(np.ones((4, 3), np.int8), "q"),
             numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
             numpy_helper.from_array(np.array(0, np.int8), "zero")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    terms = param_terms(gs.import_onnx(model))
    assert {t.name: t.dense for t in terms} == {"q": 12, "scale": 1}
