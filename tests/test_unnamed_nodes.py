"""Nodes without names, and nodes sharing one name (issue 18 §2, unnamed nodes).

ONNX allows both (some converters write them; onnx.checker accepts both, onnxruntime only the
first). Every stage keys layers by a stable id (``Layer.key``: the output tensor's name, which ONNX
requires to be unique), never by ``node.name``: a model whose node names are all blank, or all the
same, is pruned exactly as the named model is: the same plan, the same weights (within float
tolerance, from the same calibration data), the same fidelity, for channel pruning with
``--reconstruct``, weight sparsity with ``--sequential``, ``--pattern 2:4``, ``--method obs`` and
the measured allocation, and the calibrated criteria.

The model: x [N,3,16,16] -> Conv c1 (16) -> BN -> Relu -> Conv c2 (16) -> Relu -> Conv c3 (16)
-> Add(r1) -> Relu -> pool -> Flatten -> MatMul (16x12) -> Add bias -> Relu -> Gemm fc (10):
a residual group, a MatMul whose bias lives in an Add (the re-fit writes it), a Gemm, and two
layers (c2, c3) that share one all-zero bias, as exporters de-duplicate equal tensors.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from helpers import Net, cli, conv_model, initializers

from onnxprune import api
from onnxprune.graph.verify import run
from onnxprune.pipeline import unique_node_names

OPTIONS = {  # one per code path that pairs or collects layers
    "reconstruct": {"flops": 0.7, "reconstruct": True},
    "sequential-2:4": {"flops": 0.7, "pattern": "2:4", "sequential": True},
    "obs-2:4": {"pattern": "2:4", "method": "obs"},
    "measured-sparsity": {"sparsity": 0.5, "allocate": "measured"},
    "criterion-obs": {"flops": 0.6, "criterion": "obs", "reconstruct": True},
}


def residual_model() -> onnx.ModelProto:
    net = Net(channels=3, hw=16, seed=7)
    r1 = net.relu(net.bn(net.conv("x", 3, 16, 3, name="c1"), 16, name="bn1"))
    zero = net.const("zero_bias", np.zeros(16))  # one bias two layers share, as exporters de-duplicate
    r2 = net.relu(net.node("Conv", [r1, net.weight("c2.w", (16, 16, 3, 3), 144), zero], out="c2",
                           kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    c3 = net.node("Conv", [r2, net.weight("c3.w", (16, 16, 3, 3), 144), zero], out="c3",
                  kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = net.relu(net.node("Add", [c3, r1]))
    h = net.node("Flatten", [net.node("GlobalAveragePool", [h])], axis=1)
    h = net.node("MatMul", [h, net.weight("m.w", (16, 12), 16)])
    h = net.relu(net.node("Add", [h, net.const("m.b", np.full(12, 0.1))]))
    net.node("Gemm", [h, net.weight("fc.w", (10, 12), 12), net.const("fc.b", np.zeros(10))], out="y", transB=1)
    model = net.model({"y": [1, 10]})
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    return model


def renamed(model: onnx.ModelProto, name: str | None) -> onnx.ModelProto:
    """A copy with every node named ``name`` ("" blanks them all)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        node.name = name
    return out


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("calib") / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((24, 3, 16, 16)).astype(np.float32))
    return str(path)


@pytest.fixture(scope="module")
def named_results(calib):
    """The named model's results, computed once per option set."""
    model = residual_model()
    return {key: api.prune(model, calib=calib, round_to=4, **options) for key, options in OPTIONS.items()}


def assert_same_result(got, want) -> None:
    assert got.plan.keys() == want.plan.keys()
    for tensor, axes in want.plan.items():
        assert got.plan[tensor] == axes, tensor
    got_w, want_w = initializers(got.model), initializers(want.model)
    assert got_w.keys() == want_w.keys()
    for name, values in want_w.items():
        np.testing.assert_allclose(got_w[name], values, rtol=1e-4, atol=1e-5, err_msg=name)
    assert [e for r in got.refits for e in (r.error_before, r.error_after)] == pytest.approx(
        [e for r in want.refits for e in (r.error_before, r.error_after)], rel=1e-4, abs=1e-7)
    if want.sparsity is not None:
        assert [lay.sparsity for lay in got.sparsity.layers] == pytest.approx(
            [lay.sparsity for lay in want.sparsity.layers])
        assert [lay.weight for lay in got.sparsity.layers] == [lay.weight for lay in want.sparsity.layers]
    assert got.fidelity.kl == pytest.approx(want.fidelity.kl, rel=1e-3, abs=1e-6)
    assert got.fidelity.top1_agreement == want.fidelity.top1_agreement


@pytest.mark.parametrize("name", ["", "same"], ids=["blank", "all-same"])
@pytest.mark.parametrize("key", list(OPTIONS))
def test_prune_ignores_node_names(named_results, calib, key: str, name: str) -> None:
    want = named_results[key]
    if want.refits:  # the path under test did something: every re-fitted layer counts
        assert len(want.refits) >= 2
    got = api.prune(renamed(residual_model(), name), calib=calib, round_to=4, **OPTIONS[key])
    assert_same_result(got, want)
    names = [n.name for n in got.model.graph.node if n.name]
    assert len(names) == len(set(names)), "onnxruntime refuses nodes that share a name"


def test_the_reconstruct_case_re_fits_both_layers_of_a_shared_bias(named_results) -> None:
    """c2 and c3 share one all-zero bias and both lose input channels: each gets its own re-fitted
    bias, under a name of its own (not two different tensors under one name)."""
    result = named_results["reconstruct"]
    biases = {n.output[0]: n.input[2] for n in result.model.graph.node if n.op_type == "Conv"}
    assert biases["c2"] == "c2_refit_bias" and biases["c3"] == "c3_refit_bias", biases
    values = initializers(result.model)
    assert np.abs(values["c2_refit_bias"] - values["c3_refit_bias"]).max() > 1e-4
    names = [t.name for t in result.model.graph.initializer]
    assert len(names) == len(set(names))


def test_shared_names_are_made_unique_with_a_warning(caplog) -> None:
    model = renamed(residual_model(), "same")
    before = model.SerializeToString()
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        fixed = unique_node_names(model, owned=False)
    assert model.SerializeToString() == before, "the caller's proto is not changed"
    names = [n.name for n in fixed.graph.node]
    assert names[0] == "same" and len(set(names)) == len(names) and names[1] == "same__1"
    assert "had the name of an earlier node" in caplog.text
    assert run(fixed, {"x": np.ones((1, 3, 16, 16), np.float32)})["y"].shape == (1, 10)
    blank = renamed(residual_model(), "")
    assert unique_node_names(blank, owned=False) is blank, "empty names are valid for onnxruntime"


def test_cli_on_a_model_whose_nodes_share_a_name(tmp_path, calib) -> None:
    src = tmp_path / "same.onnx"
    onnx.save(renamed(residual_model(), "layer"), src)
    proc = cli(src, "--flops", "0.7", "--calib", calib, "--reconstruct", "--pattern", "2:4", "--sequential",
               "-o", tmp_path / "out.onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "renamed them" in proc.stderr
    pruned = onnx.load(tmp_path / "out.onnx")
    assert run(pruned, {"x": np.ones((2, 3, 16, 16), np.float32)})["y"].shape == (2, 10)


def test_float16_conversion_blocks_only_the_float_cast_whatever_the_names() -> None:
    """The float16 converter's block list is by node name: a Cast(to=FLOAT) sharing its name with the
    Conv must not keep the Conv in float32."""
    pytest.importorskip("onnxconverter_common", reason="needs onnxconverter-common (the test and gpu extras)")
    from onnx import TensorProto, helper

    from onnxprune.deploy.fp16 import to_float16

    model = conv_model(cin=8, cout=8, hw=4)
    model.graph.node[-1].output[0] = "r"
    model.graph.node.append(helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT))
    for node in model.graph.node:
        node.name = "n"
    half = to_float16(model)
    assert {init.data_type for init in half.graph.initializer} == {TensorProto.FLOAT16}
    assert [n.name for n in model.graph.node] == ["n"] * 3, "the input model is not changed"
