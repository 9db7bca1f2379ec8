"""Sessions that share the graph's weights, and models read as (proto without weights, arrays).

onnxruntime must run on the very arrays the graph holds (a changed weight changes the output,
which a copy could not), give the outputs an ordinary session gives, and the pruning pipeline
must read a file's weights into arrays once, inline or external, equal to what onnx reads.
Every session is made in graph/sessions.py, whatever its kind (ordinary, profiled, shared).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import conv_model, feed_of, initializers, ort_run, save_external

import onnxprune
from onnxprune.errors import ModelError
from onnxprune.graph.load import check_without_weights, read_model, read_split, to_graph, without_weights
from onnxprune.graph.sessions import graph_session, light_model, make_session


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


@pytest.fixture
def model() -> onnx.ModelProto:
    return conv_model(cin=64, cout=96, hw=8)  # a 216 KiB weight: over SHARE_BYTES, shared by pointer


def test_a_shared_session_gives_the_outputs_of_an_ordinary_one(model: onnx.ModelProto) -> None:
    feed = feed_of(model)
    sess = graph_session(gs.import_onnx(model))
    np.testing.assert_allclose(sess.run(None, feed)[0], ort_run(model, feed)[0], rtol=1e-5, atol=1e-5)


def test_a_shared_session_reads_the_graphs_own_arrays(model: onnx.ModelProto) -> None:
    graph = gs.import_onnx(model)
    weight = next(t for t in graph.tensors().values() if t.name == "w")
    weight.values = np.array(weight.values)  # an array the test owns
    feed = feed_of(model)
    sess = graph_session(graph)
    before = sess.run(None, feed)[0]
    weight.values[:] = 0  # in place: a session holding a copy would not see it
    after = sess.run(None, feed)[0]
    assert not np.allclose(before, after)
    bias = initializers(model)["b"]
    np.testing.assert_allclose(after, np.maximum(bias, 0)[None, :, None, None] * np.ones_like(after), atol=1e-6)


def test_a_light_model_carries_no_weight_bytes_and_the_graph_keeps_them(model: onnx.ModelProto) -> None:
    graph = gs.import_onnx(model)
    light, arrays = light_model(graph)
    assert set(arrays) == {"w"}  # the bias (384 bytes) travels inline
    assert light.ByteSize() < 2000 < model.ByteSize()
    stub = next(t for t in light.graph.initializer if t.name == "w")
    assert stub.data_location == onnx.TensorProto.EXTERNAL and not stub.raw_data
    np.testing.assert_array_equal(graph.tensors()["w"].values, initializers(model)["w"])  # restored


@pytest.mark.parametrize("layout", ["inline", "external"])
def test_read_split_gives_the_weights_onnx_reads(model: onnx.ModelProto, tmp_path: Path, layout: str) -> None:
    path = tmp_path / "m.onnx"
    if layout == "external":
        save_external(_copy(model), path)  # saving converts the proto it is given
    else:
        onnx.save_model(model, str(path))
    light, weights, external = read_split(path)
    assert external == (layout == "external")
    full, _ = read_model(path)
    assert weights.keys() == initializers(full).keys()
    for name, values in initializers(full).items():
        np.testing.assert_array_equal(weights[name], values)
    assert all(not t.raw_data and t.data_location != onnx.TensorProto.EXTERNAL for t in light.graph.initializer)
    graph = to_graph(light, weights)
    assert graph.tensors()["w"].values is weights["w"]  # the graph holds the arrays, not copies
    feed = feed_of(model)
    np.testing.assert_allclose(graph_session(graph).run(None, feed)[0], ort_run(model, feed)[0], atol=1e-5)


def test_read_split_refuses_a_short_external_data_file(model: onnx.ModelProto, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    save_external(_copy(model), path)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"initializer w: external data .* runs past the end of m\.onnx\.data"):
        read_split(path)


def test_the_checker_without_weights_still_checks_the_graph(model: onnx.ModelProto) -> None:
    light = without_weights(model)
    check_without_weights(light)  # fine as it is
    light.graph.node[0].input[1] = "missing"
    with pytest.raises(ModelError, match="invalid ONNX model"):
        check_without_weights(light)


def test_calibration_taps_share_the_weights_of_big_models_and_agree(monkeypatch) -> None:
    from onnxprune.calib import activations

    model = conv_model(cin=64, cout=96, hw=8)
    graph = gs.import_onnx(model)
    feeds = [feed_of(model, seed=s) for s in (1, 2)]
    copied = [v["c"] for v in activations.layer_inputs(graph, ["c"], feeds)]
    monkeypatch.setattr(activations, "SHARE_FROM", 0)  # every model counts as big: shared sessions
    sess = activations.tap(graph, ["c"])
    assert sess.get_session_options().graph_optimization_level.name == "ORT_DISABLE_ALL"  # the shared kind
    shared = [v["c"] for v in activations.layer_inputs(graph, ["c"], feeds)]
    for a, b in zip(copied, shared, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_rewritten_graph_exports_light_too(export) -> None:
    # the rewrite makes new constants (export_dtype set): they too must travel as stubs
    from onnxprune.api import make_plan
    from onnxprune.structure.rewrite import apply_plan

    analysis = onnxprune.analyze(export("resnet18", "legacy"))
    graph, _ = apply_plan(analysis, make_plan(analysis, flops=0.5))
    light, arrays = light_model(graph)
    assert sum(a.nbytes for a in arrays.values()) > 10 * 2**20  # about half of resnet18's 45 MB
    assert light.ByteSize() < 2**20


def _session_constructions(path: Path) -> list[int]:
    """The lines of ``path`` that call onnxruntime's ``InferenceSession`` or ``SessionOptions``
    (``ort.InferenceSession(...)``, or the bare name imported from onnxruntime)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("InferenceSession", "SessionOptions"):
                lines.append(node.lineno)
    return lines


def test_every_onnxruntime_session_is_made_in_sessions_py() -> None:
    package = Path(onnxprune.__file__).parent
    owner = package / "graph" / "sessions.py"
    assert _session_constructions(owner), "the scan must see the factory's own calls"
    elsewhere = {str(path.relative_to(package)): lines for path in sorted(package.rglob("*.py"))
                 if path != owner and (lines := _session_constructions(path))}
    assert elsewhere == {}, f"sessions made outside graph/sessions.py (use make_session): {elsewhere}"


def test_the_factory_makes_profiled_sessions_optimised_or_not(model: onnx.ModelProto, tmp_path: Path) -> None:
    # two of the modes it unified: the latency model's profiled session (kernel events in a file
    # under the prefix given) and capture's optimised session, and its unoptimised one
    feed = feed_of(model)
    kernels = {}
    for optimise in (True, False):
        sess = make_session(model, optimise=optimise, threads=1, profile=tmp_path / f"opt{optimise}")
        opts = sess.get_session_options()
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level) == (1, 1, 4)
        np.testing.assert_allclose(sess.run(None, feed)[0], ort_run(model, feed)[0], rtol=1e-5, atol=1e-5)
        profile = Path(sess.end_profiling())
        assert profile.parent == tmp_path and profile.name.startswith(f"opt{optimise}")
        kernels[optimise] = {event["args"]["op_name"] for event in json.loads(profile.read_text())
                             if event.get("cat") == "Node" and "op_name" in event.get("args", {})}
    # onnxruntime fuses the model's Conv and Relu into one kernel unless its optimisations are off
    assert "Relu" not in kernels[True] and {"Conv", "Relu"} <= kernels[False], kernels
