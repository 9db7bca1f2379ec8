"""TensorRT 2:4 eligibility read from the ONNX side (onnxprune.deploy.sparse24), checked on CPU.

* One-node graphs for every case the rule distinguishes: Conv input channels 6 / 8, grouped and
  depthwise convs, MatMul with the weight on either side, Gemm with and without transB, a weight
  computed at run time, ConvTranspose.
* The 2:4 pattern is checked along the axis TensorRT reads, against two references written
  apart from the library: the loop from TensorRT's developer guide ("Structured Sparsity") and
  test_sparsify's own reading of the layer protos (``nm_layers`` / ``is_2_4``).
* Real exports (MobileNetV2, both exporters): the counts, then carries_24 after
  ``onnxprune.prune(pattern="2:4")``; and ``onnxprune analyze`` printing and writing sparse_24.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import IR_VERSION, OPSET, is_2_4, mixed_model, nm_layers
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.calib.obs import magnitude_mask
from onnxprune.deploy.sparse24 import SPARSE_24, carries_24, carries_pattern, reason_counts, sparse_eligibility

RNG = np.random.default_rng(0)


def single(op: str, x_shape: list[int], w: np.ndarray | None, *, w_shape: list[int] | None = None,
           weight_left: bool = False, **attrs) -> onnx.ModelProto:
    """One ``op`` node named "layer": input x, weight "w" (an initializer, or a graph input when
    ``w`` is None), output y."""
    inputs = ["w", "x"] if weight_left else ["x", "w"]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    inits = []
    if w is None:
        graph_inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, w_shape))
    else:
        inits.append(numpy_helper.from_array(w.astype(np.float32), "w"))
    node = helper.make_node(op, inputs, ["y"], name="layer", **attrs)
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(len(x_shape))])
    graph = helper.make_graph([node], "one", graph_inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def only(model: onnx.ModelProto):
    (layer,) = sparse_eligibility(model)
    assert layer.layer == "layer"
    return layer


def guide_check(w: np.ndarray) -> bool:
    """TensorRT's developer-guide loop for conv weights [K, C, R, S] with C % 4 == 0: at most two
    non-zeros in every four input channels, for each output channel and kernel position."""
    k_out, c, r_size, s_size = w.shape
    for k in range(k_out):
        for r in range(r_size):
            for s in range(s_size):
                for c_packed in range(c // 4):
                    if np.count_nonzero(w[k, c_packed * 4:(c_packed + 1) * 4, r, s]) > 2:
                        return False
    return True


def zero_two_of_four(w: np.ndarray, axis: int) -> np.ndarray:
    """A copy of ``w`` with positions 1 and 3 of every four along ``axis`` set to zero."""
    w = w.copy()
    index = [slice(None)] * w.ndim
    index[axis] = np.r_[1:w.shape[axis]:4, 3:w.shape[axis]:4]
    w[tuple(index)] = 0
    return w


# --- one node at a time ------------------------------------------------------------------------


@pytest.mark.parametrize("cin, eligible", [(6, False), (8, True), (3, False), (12, True)])
def test_conv_input_channels(cin: int, eligible: bool) -> None:
    layer = only(single("Conv", [1, cin, 6, 6], RNG.standard_normal((5, cin, 3, 3)), kernel_shape=[3, 3]))
    assert (layer.op, layer.k, layer.eligible) == ("Conv", cin, eligible)
    assert layer.why == ("" if eligible else f"input channels not a multiple of 4 ({cin})")
    assert not layer.carries_24  # dense random weights


@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (2, 5)])
def test_conv_pattern_runs_along_input_channels(kernel: tuple[int, int]) -> None:
    dense = RNG.standard_normal((6, 8, *kernel))
    along_cin = zero_two_of_four(dense, 1)
    along_cout = zero_two_of_four(dense, 0)  # half the zeros, on the wrong axis
    for w, want in ((dense, False), (along_cin, True), (along_cout, False)):
        assert guide_check(w) is want
        layer = only(single("Conv", [1, 8, 6, 6], w, kernel_shape=list(kernel)))
        assert layer.eligible and layer.carries_24 is want


def test_conv_pattern_along_the_kernel_is_not_2_4() -> None:
    """A 2x2 kernel with two zeros in each kernel (four consecutive numbers in the ONNX layout):
    50% zeros, but not along the input channels."""
    w = RNG.standard_normal((4, 8, 2, 2))
    w[:, :, 0, :] = 0
    assert (w == 0).mean() == 0.5 and not guide_check(w)
    assert not only(single("Conv", [1, 8, 4, 4], w, kernel_shape=[2, 2])).carries_24


def test_conv_pruned_by_the_pruners_own_mask_carries_the_pattern() -> None:
    w = RNG.standard_normal((16, 32, 3, 3))
    matrix = w.transpose(0, 2, 3, 1).reshape(16, -1)
    pruned = (matrix * magnitude_mask(matrix, SPARSE_24)).reshape(16, 3, 3, 32).transpose(0, 3, 1, 2)
    assert guide_check(pruned)
    assert only(single("Conv", [1, 32, 5, 5], pruned, kernel_shape=[3, 3])).carries_24


def test_grouped_conv_is_not_eligible_but_its_pattern_is_read() -> None:
    w = zero_two_of_four(RNG.standard_normal((16, 8, 3, 3)), 1)  # group 2: 16 -> 16, 8 channels per group
    layer = only(single("Conv", [1, 16, 6, 6], w, kernel_shape=[3, 3], group=2))
    assert (layer.k, layer.eligible, layer.carries_24) == (8, False, True)
    assert layer.why.startswith("grouped convolution (group=2")
    assert not carries_24([layer]), "a grouped conv never makes the model sparse for TensorRT"


def test_depthwise_conv_is_not_eligible() -> None:
    layer = only(single("Conv", [1, 16, 6, 6], RNG.standard_normal((16, 1, 3, 3)), kernel_shape=[3, 3], group=16))
    assert (layer.k, layer.eligible, layer.carries_24) == (1, False, False)
    assert layer.why.startswith("depthwise convolution (group=16")


def test_conv1d_pattern_along_input_channels() -> None:
    dense = RNG.standard_normal((8, 8, 3))
    layer = only(single("Conv", [1, 8, 10], zero_two_of_four(dense, 1), kernel_shape=[3]))
    assert layer.eligible and layer.carries_24
    assert not only(single("Conv", [1, 8, 10], zero_two_of_four(dense, 0), kernel_shape=[3])).carries_24


@pytest.mark.parametrize("k, eligible", [(12, True), (10, False)])
def test_matmul_weight_on_the_right(k: int, eligible: bool) -> None:
    w = zero_two_of_four(RNG.standard_normal((k, 5)), 0)  # zeros along K
    layer = only(single("MatMul", [2, 3, k], w))
    assert (layer.op, layer.k, layer.eligible, layer.carries_24) == ("MatMul", k, eligible, eligible)
    if not eligible:
        assert layer.why == f"K not a multiple of 4 ({k})"


def test_matmul_zeros_along_n_are_not_2_4() -> None:
    w = zero_two_of_four(RNG.standard_normal((8, 8)), 1)  # along N, not K
    layer = only(single("MatMul", [2, 8], w))
    assert layer.eligible and not layer.carries_24


def test_matmul_weight_on_the_left() -> None:
    layer = only(single("MatMul", [8, 3], RNG.standard_normal((5, 8)), weight_left=True))
    assert not layer.eligible and layer.why.startswith("constant on the left")


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_honours_trans_b(trans_b: int) -> None:
    """The same [6, 8] weight: K is 8 with transB=1 (eligible) and 6 without (not)."""
    w = RNG.standard_normal((6, 8))
    layer = only(single("Gemm", [2, 8] if trans_b else [2, 6], w, transB=trans_b))
    assert layer.k == (8 if trans_b else 6)
    assert layer.eligible is bool(trans_b)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_pattern_axis_follows_trans_b(trans_b: int) -> None:
    """Zeros along axis 1 of a square weight are along K only when transB=1."""
    w = zero_two_of_four(RNG.standard_normal((8, 8)), 1)
    layer = only(single("Gemm", [2, 8], w, transB=trans_b))
    assert layer.eligible and layer.carries_24 is bool(trans_b)


@pytest.mark.parametrize("op, x_shape, w_shape", [("Conv", [1, 8, 6, 6], [4, 8, 3, 3]), ("MatMul", [2, 8], [8, 4]),
                                                  ("Gemm", [2, 8], [8, 4])])
def test_weight_computed_at_run_time(op: str, x_shape: list[int], w_shape: list[int]) -> None:
    attrs = {"kernel_shape": [3, 3]} if op == "Conv" else {}
    layer = only(single(op, x_shape, None, w_shape=w_shape, **attrs))
    assert not layer.eligible and not layer.carries_24
    assert layer.why.startswith("weight not a constant (w ")


def test_conv_transpose_is_not_eligible() -> None:
    w = zero_two_of_four(RNG.standard_normal((8, 4, 3, 3)), 0)
    layer = only(single("ConvTranspose", [1, 8, 5, 5], w, kernel_shape=[3, 3]))
    assert layer.op == "ConvTranspose" and layer.k == 8 and not layer.eligible and not layer.carries_24


def test_carries_pattern_counts_zeros_per_group() -> None:
    assert carries_pattern(np.array([[0, 0, 1, 1, 1, 0, 0, 1]], np.float32))
    assert carries_pattern(np.zeros((2, 4)))
    assert not carries_pattern(np.array([[0, 1, 1, 1, 0, 0, 1, 1]], np.float32))
    assert not carries_pattern(np.zeros((2, 6)))  # K not a multiple of 4
    assert not carries_pattern(np.zeros((2, 0)))


# --- a small mixed model and the CLI -----------------------------------------------------------


def weights_by_node(model: onnx.ModelProto) -> dict[str, str]:
    return {node.name: node.input[1] for node in model.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")}


def test_mixed_model_eligibility_matches_the_independent_reading() -> None:
    model = mixed_model()
    layers = sparse_eligibility(model)
    weights = weights_by_node(model)
    reference = nm_layers(model)  # test_sparsify's own reading: {node: (K, [rows, K])}
    assert {layer.layer for layer in layers} == set(reference)
    assert {weights[layer.layer] for layer in layers if layer.eligible} == {"c2.w", "g1.w", "g2.w"}
    for layer in layers:
        assert layer.k == reference[layer.layer][0]
    assert reason_counts(layers) == {"input channels not a multiple of 4": 2, "K not a multiple of 4": 1}
    assert not carries_24(model)


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


def test_analyze_reports_sparse_24(tmp_path: Path) -> None:
    model = mixed_model()
    path = tmp_path / "mixed.onnx"
    onnx.save(model, str(path))
    proc = run_cli("analyze", path, "--json", tmp_path / "a.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2:4 sparsity (TensorRT): 3 of 6 Conv/MatMul/Gemm layers eligible, 0 already carry" in proc.stdout
    assert "not eligible: 2 x input channels not a multiple of 4" in proc.stdout
    entries = json.loads((tmp_path / "a.json").read_text())["sparse_24"]
    want = [vars(layer) for layer in sparse_eligibility(model)]
    assert entries == want
    assert set(entries[0]) == {"layer", "op", "k", "eligible", "why", "carries_24"}


# --- real exports --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_mobilenet_v2_eligibility_and_2_4_after_pruning(export, exporter: str, tmp_path: Path) -> None:
    path = export("mobilenet_v2", exporter)
    dense = onnx.load(str(path))
    layers = sparse_eligibility(dense)
    assert len(layers) == 53  # 52 convs and the classifier
    assert reason_counts(layers) == {"input channels not a multiple of 4": 1, "depthwise convolution": 17}
    assert sum(layer.eligible for layer in layers) == 35
    assert not carries_24(layers)

    result = onnxprune.prune(path, pattern="2:4", method="magnitude")
    pruned = sparse_eligibility(result.model)
    assert [(p.layer, p.eligible, p.k) for p in pruned] == [(d.layer, d.eligible, d.k) for d in layers]
    assert carries_24(result.model)
    assert all(p.carries_24 for p in pruned if p.eligible)
    reference = nm_layers(result.model)  # group-1 convs, Gemm, MatMul with a K-major weight copy
    for p in pruned:
        if p.layer in reference and reference[p.layer][0] % 4 == 0:
            assert is_2_4(reference[p.layer][1]) is p.carries_24, p.layer
    convs = {n.name: numpy_helper.to_array(next(i for i in result.model.graph.initializer if i.name == n.input[1]))
             for n in result.model.graph.node if n.op_type == "Conv"}
    for p in pruned:
        if p.op == "Conv" and p.eligible:
            assert guide_check(convs[p.layer]), p.layer
