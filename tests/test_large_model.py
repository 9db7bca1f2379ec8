"""A model over protobuf's 2 GiB limit: loaded, pruned and saved with external data."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.graph.sessions import make_session


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ONNXPRUNE_LARGE") != "1",
                    reason="writes and prunes a 2.2 GB model (minutes, ~15 GB RAM): set ONNXPRUNE_LARGE=1")
def test_over_2gb_model_prunes_with_external_data(tmp_path) -> None:
    width = 17_000  # two 17000 x 17000 float32 layers = 2.2 GB, each tensor under 2 GB
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((width, width), dtype=np.float32)
    w2 = rng.standard_normal((width, width), dtype=np.float32)
    w3 = rng.standard_normal((10, width), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2"], ["h2"], transB=1), helper.make_node("Relu", ["h2"], ["r2"]),
         helper.make_node("Gemm", ["r2", "w3"], ["y"], transB=1)],
        "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    del w1, w2
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "big.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, location="big.onnx.data")
    del model, graph

    result = onnxprune.prune(src, flops=0.5)
    assert 0.48 <= result.flops_ratio <= 0.5
    out = tmp_path / "big.pruned.onnx"
    result.save(out)
    assert (tmp_path / "big.pruned.onnx.data").exists(), "external data layout is kept"
    assert out.stat().st_size < 10_000_000, "weights live in the data file"
    loaded = onnx.load(str(out))
    y = make_session(loaded).run(None, {"x": np.ones((2, width), np.float32)})[0]
    assert y.shape == (2, 10)
