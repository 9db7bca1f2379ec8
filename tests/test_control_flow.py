"""If, Loop and Scan whose bodies read tensors of the main graph (issue 18 §2, control flow).

A body may use any tensor of the graph around it by name (an activation, an initializer) without
that tensor being an input of the If/Loop/Scan node. The channels of such a tensor are frozen
("read inside If body"), the rest of the model is pruned, and the pruned model runs and computes
what the dense model computes with the removed channels masked (tests/masking.py).

The models are built by hand with onnx.helper:

    x [N,3,8,8] -> Conv c0 (C) -> Relu -> Conv c1 (C) -> Relu = a -> If/Loop/Scan reading a -> z
      -> Conv c2 (C) -> Relu -> GlobalAveragePool -> Flatten -> Gemm fc -> y [N,10]

c0's outputs are prunable (unless a body reads c0's weight), c2's outputs are prunable, c1's
outputs (a) are read inside the body and must stay whole.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import (
    IR_VERSION,
    MODEL,
    OPSET,
    assert_close,
    assert_one_line_error,
    cli,
    frozen_slots,
    grouped_slots,
)
from masking import masked_dense
from onnx import TensorProto, helper, numpy_helper

from onnxprune import api
from onnxprune.graph.capture import capture
from onnxprune.graph.load import to_graph, to_model
from onnxprune.graph.scopes import subgraph_reads
from onnxprune.graph.sessions import light_model
from onnxprune.graph.verify import run
from onnxprune.structure.slots import Slot

C = 8  # channels of every Conv
KINDS = ["If-input", "If-computed", "Loop", "Scan"]


def _value(name: str, elem: int = TensorProto.FLOAT, shape=None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _body(kind: str, reads: list[str]) -> tuple[list[onnx.NodeProto], dict]:
    """The control-flow node(s) producing ``z`` from the outer activation ``a``; ``reads`` are the
    outer-scope initializers the body applies in turn: "scale" multiplies, a Conv weight convolves
    (a weight shared by the body and a top-level Conv, as a recurrent block has; constant folding
    cannot take it out of the body, as it would a body's ReduceMean of a weight)."""
    def scaled(src: str, out: str, prefix: str) -> list[onnx.NodeProto]:
        nodes, current = [], src
        for i, name in enumerate(reads):
            if name == "scale":
                nodes.append(helper.make_node("Mul", [current, name], [f"{prefix}_m{i}"]))
            else:
                nodes.append(helper.make_node("Conv", [current, name], [f"{prefix}_m{i}"], kernel_shape=[3, 3],
                                              pads=[1, 1, 1, 1]))
            current = f"{prefix}_m{i}"
        nodes.append(helper.make_node("Identity", [current], [out]))
        return nodes

    extra: dict = {}
    if kind.startswith("If"):
        then = helper.make_graph(scaled("a", "t_out", "t"), "then", [], [_value("t_out")])
        other = helper.make_graph([helper.make_node("Add", ["a", "scale"], ["e_out"])], "else", [], [_value("e_out")])
        nodes = []
        if kind == "If-const":  # constant folding inlines the taken branch: no If is left
            extra["cond"] = np.array(True)
        if kind == "If-computed":  # the condition comes from the activation itself
            nodes += [helper.make_node("ReduceMean", ["a"], ["m"], keepdims=0),
                      helper.make_node("Greater", ["m", "zero"], ["cond"])]
            extra["zero"] = np.array(0.0, np.float32)
        nodes.append(helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other))
        return nodes, extra
    if kind == "Loop":  # v = v * scale... + a, twice: a loop-carried channel tensor and an outer read
        body = helper.make_graph(
            [*scaled("v_in", "m_out", "l"), helper.make_node("Add", ["m_out", "a"], ["v_out"]),
             helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
            [_value("i", TensorProto.INT64, []), _value("cond_in", TensorProto.BOOL, []), _value("v_in")],
            [_value("cond_out", TensorProto.BOOL, []), _value("v_out")])
        extra.update(trip=np.array(2, np.int64), go=np.array(True))
        return [helper.make_node("Loop", ["trip", "go", "a"], ["z"], body=body)], extra
    body = helper.make_graph(  # Scan: a state updated once per element of a 2-long sequence
        [*scaled("s_in", "m_out", "s"), helper.make_node("Add", ["m_out", "a"], ["s_out"]),
         helper.make_node("Identity", ["e"], ["e_out"])], "body",
        [_value("s_in"), _value("e", shape=[1])], [_value("s_out"), _value("e_out", shape=[1])])
    extra["seq"] = np.ones((2, 1), np.float32)
    return [helper.make_node("Scan", ["a", "seq"], ["z", "ys"], body=body, num_scan_inputs=1)], extra


def control_flow_model(kind: str, reads: tuple[str, ...] = ("scale",), channels: int = C) -> onnx.ModelProto:
    """The model of the module docstring; ``reads``: outer tensors the body uses besides ``a``
    ("scale" is an initializer only the body reads; "w1", "w2" are the weights of c1 and c2)."""
    rng = np.random.default_rng(0)
    inits = {"w0": rng.standard_normal((channels, 3, 3, 3)) / 5, "b0": rng.standard_normal(channels) / 10,
             "w1": rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels),
             "b1": rng.standard_normal(channels) / 10,
             "w2": rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels),
             "b2": rng.standard_normal(channels) / 10,
             "scale": rng.uniform(0.5, 1.5, (1, channels, 1, 1)),
             "fc.w": rng.standard_normal((10, channels)) / np.sqrt(channels), "fc.b": np.zeros(10)}
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    body, extra = _body(kind, list(reads))
    inits.update(extra)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], **conv), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], **conv), helper.make_node("Relu", ["c1"], ["a"]),
             *body,
             helper.make_node("Conv", ["z", "w2", "b2"], ["c2"], **conv), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1)]
    inputs = [_value("x", shape=["N", 3, 8, 8])]
    if kind == "If-input":
        inputs.append(_value("cond", TensorProto.BOOL, []))
    graph = helper.make_graph(nodes, "control_flow", inputs, [_value("y", shape=["N", 10])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Batch-2 inputs; both branches where the condition is an input."""
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    if any(i.name == "cond" for i in model.graph.input):
        return [{"x": x, "cond": np.array(True)}, {"x": x, "cond": np.array(False)}]
    return [{"x": x}, {"x": -x}]  # If-computed: the mean of a decides; both signs of the input


def pruned_matches_masked(model: onnx.ModelProto, flops: float):
    """Prune through the API's stages; the pruned model must run and equal the masked dense model."""
    analysis = api.analyze(model)
    plan = api.make_plan(analysis, flops=flops, round_to=1)
    pruned, kept = api.apply(analysis, plan, model)
    assert kept, "something must be pruned"
    onnx.checker.check_model(pruned, full_check=True)
    masked = masked_dense(analysis, kept, model)
    for feed in feeds(model):
        assert_close(run(pruned, feed), run(masked, feed))
    return analysis, kept


@pytest.mark.parametrize("kind", KINDS)
def test_channels_a_body_reads_are_frozen_and_the_rest_is_pruned(kind: str) -> None:
    model = control_flow_model(kind)
    analysis, kept = pruned_matches_masked(model, flops=0.8)
    reasons = {r for f in analysis.frozen if Slot("w1", 0) in f.slots for r in f.reasons}
    assert f"read inside {kind.split('-')[0]} body" in reasons
    assert Slot("w1", 0) not in kept and Slot("a", 1) not in kept  # a keeps every channel
    assert Slot("w0", 0) in kept or Slot("w2", 0) in kept


@pytest.mark.parametrize("kind", ["If-input", "Loop"])
def test_a_weight_a_body_reads_keeps_its_values_and_shape(kind: str) -> None:
    """The body also convolves with c2's weight: c2's channels are frozen as well, the weight
    reaches the body whole, and c0's channels are still pruned."""
    model = control_flow_model(kind, reads=("scale", "w2"))
    analysis, kept = pruned_matches_masked(model, flops=0.9)
    assert {Slot("w2", 0), Slot("w2", 1)} <= frozen_slots(analysis)
    assert not {Slot("w2", 0), Slot("w2", 1)} & grouped_slots(analysis)
    assert not any(slot.tensor == "w2" for slot in kept)
    assert Slot("w0", 0) in kept


def test_an_if_with_a_constant_condition_is_folded_and_pruned_through() -> None:
    """Folding inlines the taken branch (a Mul by ``scale``): c1's channels are prunable, and
    ``scale``, now a top-level constant, is sliced with them."""
    analysis, kept = pruned_matches_masked(control_flow_model("If-const"), flops=0.3)
    assert "If" not in analysis.no_rule_ops
    assert Slot("w1", 0) in kept
    assert any(slot.tensor.startswith("scale") and slot.axis == 1 for slot in kept)  # graphsurgeon renames it


def test_calibration_stages_on_a_model_with_control_flow(tmp_path) -> None:
    """Re-fitting, 2:4 by OBS and fidelity run on a model whose Loop body convolves with c2's
    weight: that weight stays dense and unchanged (the body reads it too), c0 and c1 take the
    pattern, and the pruned model runs."""
    model = control_flow_model("Loop", reads=("scale", "w2"))
    calib = tmp_path / "x.npy"
    np.save(calib, np.random.default_rng(2).standard_normal((12, 3, 8, 8)).astype(np.float32))
    result = api.prune(model, flops=0.8, round_to=4, calib=str(calib), reconstruct=True, pattern="2:4")
    assert result.refits, "c1 lost input channels and is re-fitted"
    assert ("w2", "its weight is also read inside Loop body") in result.sparsity.dense
    assert {lay.weight for lay in result.sparsity.layers} == {"w1", "fc.w"}  # c0: 3 input channels
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    np.testing.assert_array_equal(weights["w2"], numpy_helper.to_array(
        next(t for t in model.graph.initializer if t.name == "w2")))
    assert result.fidelity is not None and result.fidelity.samples == 3
    for feed in feeds(result.model):
        assert run(result.model, feed)["y"].shape == (2, 10)


def test_subgraph_reads_finds_outer_tensors_at_any_depth() -> None:
    """An If nested in a Loop body reads ``a`` and ``w2``: both are reads of the outer Loop; a body's
    own tensors and the initializer only a body uses are not tensors of the main graph."""
    inner = helper.make_graph([helper.make_node("Mul", ["a", "w2_mean"], ["inner_out"])], "inner", [],
                              [_value("inner_out")])
    other = helper.make_graph([helper.make_node("Identity", ["a"], ["other_out"])], "other", [], [_value("other_out")])
    body = helper.make_graph(
        [helper.make_node("ReduceMean", ["w2"], ["w2_mean"], keepdims=0),
         helper.make_node("If", ["cond_in"], ["v_out"], then_branch=inner, else_branch=other),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [_value("i", TensorProto.INT64, []), _value("cond_in", TensorProto.BOOL, []), _value("v_in")],
        [_value("cond_out", TensorProto.BOOL, []), _value("v_out")])
    model = control_flow_model("Loop")
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    loop.attribute[0].g.CopyFrom(body)
    graph = gs.import_onnx(model)
    assert subgraph_reads(graph) == {"a": "Loop", "w2": "Loop"}


@pytest.mark.parametrize("kind", ["If-computed", "Loop"])  # the stages run every kind above
def test_cli_prunes_a_model_with_control_flow(kind: str, tmp_path) -> None:
    """The real command: the pruned file loads and runs (verify ran it at batch 1 and 2), the
    summary names why c1's channels are frozen."""
    src = tmp_path / "m.onnx"
    onnx.save(control_flow_model(kind), src)
    proc = cli(src, "--flops", "0.8", "--round-to", "1", "-o", tmp_path / "out.onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"read inside {kind.split('-')[0]} body" in proc.stdout
    pruned = onnx.load(tmp_path / "out.onnx")
    assert [o.name for o in pruned.graph.output] == ["y"]
    for feed in feeds(pruned):
        assert run(pruned, feed)["y"].shape == (2, 10)


def test_a_target_only_frozen_channels_could_meet_is_refused_with_an_honest_floor(tmp_path) -> None:
    """With the body convolving with c2's weight only c0's channels can go: the floor the refusal
    names is what pruning c0 alone leaves (never a figure that counts the frozen channels as
    prunable), and the message names no private file."""
    model = control_flow_model("Loop", reads=("scale", "w2"))
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    proc = cli(src, "--flops", "0.4", "--round-to", "1", "-o", tmp_path / "out.onnx", cwd=tmp_path)
    line = assert_one_line_error(proc, MODEL)
    assert "unreachable" in line and "read inside Loop body" in line, line
    assert "onnxprune-" not in line and "/tmp" not in line, line
    floor = float(line.split("still leaves ")[1].split()[0])
    # FLOPs at 8x8 of c0 (3->8, 3x3), c1 (8->8), c2 (8->8) and fc (8->10); c0 keeps 1 channel at most
    dense = 2 * 64 * (8 * 27 + 8 * 72 + 8 * 72) + 2 * 80
    left = 2 * 64 * (1 * 27 + 8 * 9 + 8 * 72) + 2 * 80
    assert floor == pytest.approx(left / dense, abs=1e-3)
    assert not list(tmp_path.glob("out*"))


def test_big_weights_a_body_reads_stay_inline_in_sessions_and_outputs() -> None:
    """Weights of 64 KiB and more travel to onnxruntime as stubs filled from memory; one a body also
    reads must not (the body's copy would be an empty stub), and the written model must hold it."""
    model = control_flow_model("If-input", reads=("scale", "w2"), channels=64)
    graph = to_graph(model)
    light, arrays = light_model(graph)
    assert "w2" not in arrays and "w1" in arrays, "w2 (147 KiB) is read inside the If body"
    cap = capture(graph)
    assert cap.shapes["y"] == (1, 10)
    out = to_model(graph, model)
    for feed in feeds(model):
        assert_close(run(out, feed), run(model, feed))
    # graphsurgeon writes what a body reads into the body too; the copy of the main graph's w2 goes
    # (the body reads it by name), "scale", which only the branches read, stays in them
    body_inits = [t.name for n in out.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
                  for t in a.g.initializer]
    assert "w2" not in body_inits and "scale" in body_inits and "w2" in initializers_of(out)
    assert out.ByteSize() < 1.1 * model.ByteSize()
    assert light.graph.initializer


def initializers_of(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def test_capture_adds_no_body_tensor_as_an_output() -> None:
    """Every tensor of the main graph is captured; tensors defined inside a body cannot be outputs
    of the main graph and are not asked for."""
    model = control_flow_model("Scan")
    cap = capture(to_graph(model))
    assert cap.shapes["a"] == (1, C, 8, 8) and cap.shapes["z"] == (1, C, 8, 8)
    assert not {"m_out", "s_out", "s_m0", "e_out"} & set(cap.shapes)
