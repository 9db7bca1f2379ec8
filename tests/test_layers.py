"""Weight layout (onnxprune/graph/layers.py): which axis of a Conv, ConvTranspose, Gemm or MatMul weight
holds the outputs and which the inputs, how ``group`` divides them, and the weight read as a
matrix; checked by hand on index arrays and against onnxruntime on one-node models."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from helpers import one_node_model, ort_run

from onnxprune.graph.layers import (
    Layer,
    find_layers,
    group,
    matrix_to_weight,
    reduction_length,
    weight_axes,
    weight_matrix,
)
from onnxprune.ops.gemm import gemm_k_axis


def node(op: str, **attrs) -> gs.Node:
    return gs.Node(op=op, attrs=attrs)


def layer(op: str, shape: tuple[int, ...], **attrs) -> Layer:
    """A Layer on a weight whose values are their own flat index (0, 1, 2, ...)."""
    w = gs.Constant("w", np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
    return Layer(gs.Node(op=op, attrs=attrs, inputs=[gs.Variable("x"), w]), w, gs.Variable("x"))


@pytest.mark.parametrize(("op", "attrs", "axes"), [
    ("Conv", {}, (0, 1)),
    ("Conv", {"group": 4}, (0, 1)),
    ("ConvTranspose", {}, (1, 0)),
    ("ConvTranspose", {"group": 2}, (1, 0)),
    ("Gemm", {"transB": 1}, (0, 1)),
    ("Gemm", {"transB": 0}, (1, 0)),
    ("Gemm", {}, (1, 0)),
    ("MatMul", {}, (1, 0)),
])
def test_weight_axes(op, attrs, axes):
    assert weight_axes(node(op, **attrs)) == axes


def test_group():
    assert group(node("Conv", group=4)) == 4
    assert group(node("ConvTranspose", group=2)) == 2
    assert group(node("Conv")) == 1
    assert group(node("Gemm", group=3)) == 1  # only convolutions have groups


@pytest.mark.parametrize(("op", "attrs", "shape", "k"), [
    ("Conv", {}, (8, 6, 3, 3), 6),
    ("Conv", {"group": 3}, (9, 2, 3, 3), 2),  # the weight holds input channels per group
    ("Conv", {"group": 8}, (8, 1, 3, 3), 1),  # depthwise
    ("ConvTranspose", {}, (6, 8, 3, 3), 6),
    ("ConvTranspose", {"group": 3}, (6, 4, 3, 3), 2),  # the weight holds all input channels
    ("Gemm", {"transB": 1}, (10, 12), 12),
    ("Gemm", {}, (12, 10), 12),
    ("MatMul", {}, (12, 10), 12),
])
def test_reduction_length(op, attrs, shape, k):
    assert reduction_length(node(op, **attrs), shape) == k


def test_gemm_k_axis():
    assert gemm_k_axis(node("Gemm")) == 1
    assert gemm_k_axis(node("Gemm", transA=1)) == 0
    assert gemm_k_axis(node("Gemm", transA=0)) == 1


@pytest.mark.parametrize("kernel", [(1, 1), (3,), (3, 2), (2, 3, 2)], ids=["1x1", "1d", "2d", "3d"])
def test_conv_matrix_columns_run_kernel_position_then_input_channel(kernel):
    cout, cin = 4, 3
    w = np.arange(cout * cin * int(np.prod(kernel)), dtype=np.float32).reshape(cout, cin, *kernel)
    m = weight_matrix(node("Conv"), w)
    assert m.shape == (cout, cin * int(np.prod(kernel)))
    for pos, index in enumerate(np.ndindex(*kernel)):
        for c in range(cin):
            np.testing.assert_array_equal(m[:, pos * cin + c], w[(slice(None), c, *index)])
    np.testing.assert_array_equal(matrix_to_weight(node("Conv"), m, w.shape), w)


@pytest.mark.parametrize(("op", "attrs", "shape"), [
    ("Gemm", {"transB": 1}, (10, 12)),
    ("Gemm", {}, (12, 10)),
    ("MatMul", {}, (12, 10)),
])
def test_gemm_matmul_matrix_is_outputs_by_k(op, attrs, shape):
    w = np.arange(120, dtype=np.float32).reshape(shape)
    m = weight_matrix(node(op, **attrs), w)
    assert m.shape == (10, 12)
    np.testing.assert_array_equal(m, w if attrs.get("transB") else w.T)
    np.testing.assert_array_equal(matrix_to_weight(node(op, **attrs), m, w.shape), w)


@pytest.mark.parametrize(("op", "attrs", "shape", "inputs", "outputs"), [
    ("Conv", {}, (4, 3, 2, 2), 3, 4),
    ("Gemm", {"transB": 1}, (10, 12), 12, 10),
    ("Gemm", {}, (12, 10), 12, 10),
    ("MatMul", {}, (12, 10), 12, 10),
])
def test_layer_axes_and_channel_counts(op, attrs, shape, inputs, outputs):
    lay = layer(op, shape, **attrs)
    assert lay.axes == weight_axes(lay.node)
    assert (lay.in_channels, lay.outputs) == (inputs, outputs)


def test_columns_of_and_per_channel_on_a_conv():
    lay = layer("Conv", (4, 3, 2, 2))  # columns: position p, channel c -> 3 * p + c
    np.testing.assert_array_equal(lay.columns_of(np.array([0, 2])), [0, 2, 3, 5, 6, 8, 9, 11])
    np.testing.assert_array_equal(lay.per_channel(np.arange(12.0)), [0 + 3 + 6 + 9, 1 + 4 + 7 + 10, 2 + 5 + 8 + 11])


def test_columns_of_and_per_channel_on_gemm_and_matmul():
    for lay in (layer("Gemm", (10, 12), transB=1), layer("MatMul", (12, 10))):
        np.testing.assert_array_equal(lay.columns_of(np.array([1, 5])), [1, 5])
        np.testing.assert_array_equal(lay.per_channel(np.arange(12.0)), np.arange(12.0))


def test_kept_input_channels_reproduce_onnxruntime_on_the_sliced_conv():
    """rows_of(x) restricted to columns_of(kept) times the matrix's same columns is the Conv of the
    kept input channels with the kept weight slices, as onnxruntime computes it."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, 6, 7, 7)).astype(np.float32)
    kept = np.array([0, 2, 3, 5])
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}
    dense = gs.import_onnx(one_node_model("Conv", x.shape, {"w": w}, ["w"], **attrs))
    lay = find_layers(dense)[0]
    cols = lay.columns_of(kept)
    y = lay.rows_of(x)[:, cols].astype(np.float64) @ lay.matrix()[:, cols].T.astype(np.float64)
    want = ort_run(one_node_model("Conv", (2, 4, 7, 7), {"w": w[:, kept]}, ["w"], **attrs), {"x": x[:, kept]})[0]
    n, c, ho, wo = want.shape
    np.testing.assert_allclose(y.reshape(n, ho, wo, c).transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-4)


def test_set_matrix_writes_the_weight_layout_back():
    for lay in (layer("Conv", (4, 3, 2, 2)), layer("Gemm", (10, 12), transB=1), layer("Gemm", (12, 10)),
                layer("MatMul", (12, 10))):
        before = np.asarray(lay.weight.values).copy()
        lay.set_matrix(lay.matrix() * 2)
        np.testing.assert_array_equal(lay.weight.values, before * 2)
        assert lay.weight.values.dtype == before.dtype
