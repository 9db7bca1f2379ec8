"""Layer Hessians (onnxprune/hessian.py): H = 2 X^T X / rows from onnxruntime's real layer inputs,
and the chunks that keep the Hessians of one pass within a memory budget."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx_graphsurgeon as gs
from helpers import mixed_model

from onnxprune.calib.activations import batched, layer_inputs
from onnxprune.calib.hessian import chunks, from_sums, hessian, hessian_bytes, layer_hessians
from onnxprune.graph.layers import find_layers


def test_layer_hessians_are_2_xtx_over_rows_of_the_real_inputs():
    graph = gs.import_onnx(mixed_model())
    layers = find_layers(graph)
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    feeds = batched({"x": x}, 2)  # three batches: 2, 2, 1
    got = layer_hessians(graph, layers, feeds)
    assert sorted(got) == sorted(lay.key for lay in layers)  # keyed by output tensor, not node name
    names = sorted({lay.x.name for lay in layers})
    rows = {lay.key: [] for lay in layers}
    for values in layer_inputs(graph, names, feeds):
        for lay in layers:
            rows[lay.key].append(lay.rows_of(values[lay.x.name]))
    for lay in layers:
        x_rows = np.concatenate(rows[lay.key])
        assert got[lay.key].shape == (lay.columns, lay.columns)
        np.testing.assert_allclose(got[lay.key], hessian(x_rows) / len(x_rows), rtol=1e-5, atol=1e-6)


def test_hessian_is_twice_the_gram_matrix_in_float64():
    x = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
    h = hessian(x)
    assert h.dtype == np.float64
    np.testing.assert_array_equal(h, 2 * np.array([[10.0, -1.0], [-1.0, 5.0]]))


def fake(columns: int) -> SimpleNamespace:
    return SimpleNamespace(columns=columns)


def test_chunks_stay_within_the_budget():
    a, b, c, d = fake(10), fake(10), fake(20), fake(5)  # 800, 800, 3200, 200 bytes
    assert hessian_bytes(c) == 3200.0
    assert chunks([a, b, c, d], 1600.0) == [[a, b], [c], [d]]  # c alone is over the budget: its own chunk
    assert chunks([a, b, c, d], 1e9) == [[a, b, c, d]]
    assert chunks([a, b, c, d], 1e9, size=1) == [[a], [b], [c], [d]]
    assert chunks([], 1.0) == []


def test_chunks_that_fill_take_the_layer_that_reaches_the_budget():
    a, b, c, d = fake(10), fake(10), fake(20), fake(5)
    assert chunks([a, b, c, d], 1600.0, fill=True) == [[a, b], [c], [d]]
    assert chunks([a, b, c, d], 1000.0, fill=True) == [[a, b], [c], [d]]
    assert chunks([a, d, b, c], 1000.0, fill=True) == [[a, d], [b, c]]


def test_from_sums_normalises_a_gram_sum():
    gram = np.array([[4.0, 1.0], [1.0, 2.0]])
    np.testing.assert_array_equal(from_sums(gram, 4), 2 * gram / 4)
    np.testing.assert_array_equal(from_sums(gram, 0), 2 * gram)  # no rows: no division by zero
