"""FP16 by conversion (onnxprune.deploy.fp16), the way TensorRT 11 gets FP16 engines: the float16 model
keeps float32 inputs and outputs and runs in onnxruntime's CPU provider close to the float32 model.

Real models (slow): resnet50, mobilenet_v2 and vit_b_16 from both exporters, output cosine above
0.999 and the same top-1 class on random inputs. onnxruntime 1.32's CPU provider crashes (SIGSEGV)
creating a session for the float16 vit_b_16 of the dynamo exporter at ORT_ENABLE_ALL and runs it at
ORT_ENABLE_EXTENDED, so the float16 models run at EXTENDED (that level's layout transformations are
the CPU provider's, not what TensorRT runs).
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import IR_VERSION, conv_model
from onnx import TensorProto, helper, numpy_helper

from onnxprune.deploy.fp16 import to_float16
from onnxprune.deploy.sparse24 import carries_24
from onnxprune.errors import UsageError
from onnxprune.graph.load import read_model

pytest.importorskip("onnxconverter_common", reason="needs onnxconverter-common (the test and gpu extras)")


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def elem_types(values) -> list[int]:
    return [v.type.tensor_type.elem_type for v in values]


def test_conv_model_becomes_float16_inside_float32_at_the_edges() -> None:
    model = conv_model(sparse=True)
    half = to_float16(model)
    assert {init.data_type for init in half.graph.initializer} == {TensorProto.FLOAT16}
    assert elem_types(half.graph.input) == elem_types(half.graph.output) == [TensorProto.FLOAT]
    assert model.graph.initializer[0].data_type == TensorProto.FLOAT, "the input model is not changed"
    assert carries_24(half), "zeros stay zeros: the 2:4 pattern survives"
    onnx.checker.check_model(half, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 64, 16, 16)).astype(np.float32)
    out, ref = run(half, {"x": x}), run(model, {"x": x})
    assert out.dtype == np.float32
    assert cosines(out, ref).min() > 0.999


def test_cast_to_float_stays_float32() -> None:
    """A shape cast to float (the legacy exporter's ViT computes its attention scale so): the
    converter alone leaves Cast(to=FLOAT) with a float16 output type, which onnx and onnxruntime
    refuse; kept float32 and cast after, the model checks and runs."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "last"], ["width"], name="gather", axis=0),
             helper.make_node("Cast", ["width"], ["widthf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Sqrt", ["widthf"], ["scale"], name="sqrt"),
             helper.make_node("Div", ["x", "scale"], ["y"], name="div")]
    graph = helper.make_graph(nodes, "scale", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
                              [numpy_helper.from_array(np.array(1, np.int64), "last")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    half = to_float16(model)
    onnx.checker.check_model(half, full_check=True)
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(run(half, {"x": x}), x / 4, rtol=2e-3, atol=2e-3)


def test_a_float16_model_is_used_as_it_is() -> None:
    half = to_float16(conv_model())
    assert to_float16(half) is half


def test_missing_converter_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_converter(name: str, *args, **kwargs):
        if name.startswith("onnxconverter_common"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_converter)
    with pytest.raises(UsageError, match="pip install onnxconverter-common"):
        to_float16(conv_model())


def _fill_zero_matrices(model: onnx.ModelProto) -> None:
    """torchvision's ViT classifier starts at zeros (every output would be its bias): random instead."""
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim == 2 and not w.any():
            init.CopyFrom(numpy_helper.from_array((0.02 * rng.standard_normal(w.shape)).astype(w.dtype), init.name))


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "vit_b_16"])
def test_real_models_in_float16_match_float32(export, name: str, exporter: str) -> None:
    model, _ = read_model(export(name, exporter))
    _fill_zero_matrices(model)
    half = to_float16(model)
    assert elem_types(half.graph.input) == elem_types(model.graph.input)
    assert elem_types(half.graph.output) == elem_types(model.graph.output)
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    feed = {model.graph.input[0].name: x}
    out, ref = run(half, feed), run(model, feed)
    assert np.isfinite(out).all()
    assert cosines(out, ref).min() > 0.999, cosines(out, ref)
    assert (out.argmax(1) == ref.argmax(1)).all()
