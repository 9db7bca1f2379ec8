"""Graphs as other exporters write them (paddle2onnx, tf2onnx, old opsets, fp16, QDQ, contrib ops).

Each case is a small hand-built graph. Pruning either works (the result passes onnx.checker,
runs in onnxruntime, keeps output names, dtypes and shapes, and where no op normalises across
channels equals the dense model with the removed channels zeroed), or the channels an op
cannot shrink are frozen with the op named as the reason and the rest is pruned.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import (
    Net,
    assert_close,
    const_input,
    feed_of,
    frozen_slots,
    group_with,
    grouped_slots,
    initializers,
    mask_equivalent,
    small_model,
    zero_rows,
)
from masking import masked_dense
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import api
from onnxprune.graph.verify import run
from onnxprune.structure.slots import Slot


def check_pruned(model: onnx.ModelProto, flops: float = 0.5, tmp_path: Path | None = None,
                 atol: float = 0.0) -> onnxprune.PruneResult:
    """Prune to ``flops``; the result (and its saved file, with ``tmp_path``) must be a valid model
    that runs and keeps every output's name, dtype and shape."""
    result = onnxprune.prune(model, flops=flops)
    assert result.flops_ratio <= flops + 1e-9
    assert result.groups_pruned > 0, "something must be pruned"
    pruned = result.model
    if tmp_path is not None:
        result.save(tmp_path / "pruned.onnx")
        pruned = onnx.load(str(tmp_path / "pruned.onnx"))
    onnx.checker.check_model(pruned, full_check=True)
    feed = feed_of(model)
    want, got = run(model, feed), run(pruned, feed)
    assert list(got) == list(want) == [o.name for o in model.graph.output]
    for name, value in want.items():
        assert got[name].shape == value.shape and got[name].dtype == value.dtype, name
        assert np.isfinite(got[name].astype(np.float32)).all(), name
    weights = {t.name for t in model.graph.initializer}  # IR 3 lists them as inputs too
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input if i.name not in weights]
    return result


def reasons_for(analysis, slot: Slot) -> set[str]:
    return {r for f in analysis.frozen if slot in f.slots for r in f.reasons}


# --- weights that are not initializers --------------------------------------------------------


def to_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """paddle2onnx style: every initializer becomes a ``Constant`` node."""
    consts = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t)
              for t in model.graph.initializer]
    del model.graph.initializer[:]
    nodes = consts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


conv_net = small_model  # conv -> relu -> conv -> relu -> head


def test_weights_as_constant_nodes():
    """Also a Reshape target as ``Constant(value_ints)`` and a scale as ``Constant(value_float)``."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    net.nodes.append(helper.make_node("Constant", [], ["half"], value_float=0.5))
    h = net.node("Mul", [h, "half"])
    net.nodes.append(helper.make_node("Constant", [], ["r.shape"], value_ints=[1, 8, 64]))
    h = net.node("Reshape", [net.node("Reshape", [h, "r.shape"]), net.ints("back", [1, 8, 8, 8])])
    h = net.relu(net.conv(h, 8, 6, 1, name="c2"))
    net.head(h, 6)
    model = to_constant_nodes(net.model())
    assert not model.graph.initializer
    analysis = onnxprune.analyze(model)
    assert Slot("c2.w", 1) in group_with(analysis, Slot("c1.w", 0)).members, "folded into initializers"
    result = check_pruned(model)
    w = initializers(result.model)
    assert w["c2.w"].shape[1] == w["c1.w"].shape[0] < 8 or w["c2.w"].shape[0] < 6
    mask_equivalent(model)


def test_weights_from_constant_of_shape():
    """Biases (and a per-channel scale) built at run time from ConstantOfShape are folded first."""
    net = Net(channels=4)
    zero_bias = net.node("ConstantOfShape", [net.ints("c1.bshape", [8])], out="c1.b",
                         value=numpy_helper.from_array(np.array([0.1], dtype=np.float32)))
    h = net.node("Conv", ["x", net.weight("c1.w", (8, 4, 3, 3), 36), zero_bias], out="c1", pads=[1] * 4)
    scale = net.node("ConstantOfShape", [net.ints("scale.shape", [8, 1, 1])], out="scale",
                     value=numpy_helper.from_array(np.array([0.5], dtype=np.float32)))
    h = net.relu(net.node("Mul", [h, scale], out="scaled"))
    h = net.relu(net.conv(h, 8, 6, 1, name="c2"))
    net.head(h, 6)
    model = net.model()

    analysis = onnxprune.analyze(model)
    group = group_with(analysis, Slot("c1.w", 0))
    assert {Slot("c1.b", 0), Slot("scale", 0), Slot("c2.w", 1)} <= set(group.members)
    result = check_pruned(model)
    w = initializers(result.model)
    k = w["c1.w"].shape[0]
    assert w["c1.b"].shape == (k,) and w["scale"].shape == (k, 1, 1)
    mask_equivalent(model)


# --- tf2onnx: NHWC input ------------------------------------------------------------------------


def test_nhwc_input_with_transposes():
    """tf2onnx: an NHWC input, a Transpose before each Conv and back after it, a weight stored HWIO
    and transposed in the graph (folded), a per-channel bias added on the last axis, and a
    channels-last MatMul head."""
    net = Net(channels=4)
    nchw = net.node("Transpose", ["x"], perm=[0, 3, 1, 2])
    hwio = net.weight("c1.hwio", (3, 3, 4, 8), 36)  # TensorFlow's layout, transposed in the graph
    h = net.node("Conv", [nchw, net.node("Transpose", [hwio], out="c1.w", perm=[3, 2, 0, 1])], out="c1",
                 pads=[1] * 4)
    nhwc = net.node("Transpose", [h], perm=[0, 2, 3, 1])
    nhwc = net.relu(net.node("Add", [nhwc, net.const("c1.b", net.rng.standard_normal(8))], out="biased"))
    h = net.conv(net.node("Transpose", [nhwc], perm=[0, 3, 1, 2]), 8, 6, 1, name="c2")
    nhwc = net.relu(net.node("Transpose", [h], perm=[0, 2, 3, 1]))
    pooled = net.node("ReduceMean", [nhwc], axes=[1, 2], keepdims=0)  # [1, 6]
    net.node("MatMul", [pooled, net.weight("fc.w", (6, 10), 6)], out="y")
    graph = helper.make_graph(net.nodes, "nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], net.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    analysis = onnxprune.analyze(model)
    group = group_with(analysis, Slot("c1.w", 0))
    assert {Slot("c1.b", 0), Slot("biased", 3), Slot("c2.w", 1)} <= set(group.members)
    assert Slot("fc.w", 0) in group_with(analysis, Slot("c2.w", 0)).members
    assert Slot("c1.w", 1) in frozen_slots(analysis), "the input's channels stay"
    result = check_pruned(model)
    w = initializers(result.model)
    assert w["c1.b"].shape[0] == w["c1.w"].shape[0] == w["c2.w"].shape[1]
    mask_equivalent(model)


# --- old opsets and IR versions -------------------------------------------------------------------


def old_style_net(opset: int) -> onnx.ModelProto:
    """Each op in the form its opset writes: Pad/Slice/Clip/Split/Squeeze/ReduceMean with
    attributes where the old opsets had them, BatchNormalization's ``spatial`` and Upsample before
    opset 10, Dropout with a ratio."""
    net = Net(channels=4, opset=opset)
    h = net.relu(net.bn(net.conv("x", 4, 8, 3, bias=False, name="c1"), 8, name="bn1"))
    if opset < 9:  # BatchNormalization-7 has the ``spatial`` attribute
        net.nodes[-2].attribute.append(helper.make_attribute("spatial", 1))
    if opset < 11:
        h = net.node("Pad", [h], out="pad", pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="constant")
    else:
        h = net.node("Pad", [h, net.ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])], out="pad")
    h = net.conv(h, 8, 8, 3, name="c2")  # 10x10
    if opset < 10:
        h = net.node("Slice", [h], out="sl", starts=[1, 1], ends=[9, 9], axes=[2, 3])
    else:
        h = net.node("Slice", [h, net.ints("st", [1, 1]), net.ints("en", [9, 9]), net.ints("ax", [2, 3])], out="sl")
    h = net.node("Dropout", [h], out="drop", **({"ratio": 0.1} if opset < 12 else {}))
    if opset < 11:
        h = net.node("Clip", [h], out="clip", min=0.0, max=6.0)
    else:
        h = net.node("Clip", [h, net.const("cmin", 0.0), net.const("cmax", 6.0)], out="clip")
    if opset < 9:
        h = net.node("Upsample", [h], out="up", mode="nearest", scales=[1.0, 1.0, 2.0, 2.0])
    elif opset == 9:
        h = net.node("Upsample", [h, net.const("scales", [1, 1, 2, 2])], out="up", mode="nearest")
    elif opset == 10:
        h = net.node("Resize", [h, net.const("scales", [1, 1, 2, 2])], out="up", mode="nearest")
    else:
        h = net.node("Resize", [h, net.const("roi", []), net.const("scales", [1, 1, 2, 2])], out="up",
                     mode="nearest")
    h = net.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    if opset < 13:
        a, b = net.node("Split", [h], n_out=2, axis=1, split=[3, 5])
    else:
        a, b = net.node("Split", [h, net.ints("sizes", [3, 5])], n_out=2, axis=1)
    h = net.relu(net.node("Concat", [net.conv(a, 3, 6, 1, name="ca"), net.conv(b, 5, 6, 1, name="cb")], axis=1))
    if opset < 18:
        r = net.node("ReduceMean", [h], axes=[2, 3], keepdims=1)
    else:
        r = net.node("ReduceMean", [h, net.ints("raxes", [2, 3])], keepdims=1)
    s = net.node("Squeeze", [r], axes=[2, 3]) if opset < 13 else net.node("Squeeze", [r, net.ints("sq", [2, 3])])
    s = net.reshape(s, [1, 12], name="flat")
    net.node("Gemm", [s, net.weight("fc.w", (10, 12), 12), net.const("fc.b", np.zeros(10))], out="y", transB=1)
    return net.model()


def with_ir_version(model: onnx.ModelProto, ir: int) -> onnx.ModelProto:
    """IR 3 requires every initializer to be listed among the graph inputs too."""
    model.ir_version = ir
    if ir < 4:
        for init in model.graph.initializer:
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    onnx.checker.check_model(model)
    return model


OPSET_IR = [(7, 3), (8, 3), (9, 3), (9, 4), (10, 5), (11, 6), (12, 7), (13, 7), (14, 7), (15, 8), (16, 8), (17, 8),
            (18, 8), (19, 9), (20, 9), (21, 10)]


@pytest.mark.parametrize("opset,ir", OPSET_IR, ids=[f"opset{o}-ir{i}" for o, i in OPSET_IR])
def test_old_opsets_and_ir_versions(opset: int, ir: int, tmp_path: Path, caplog):
    """The opset is kept; IR 3 (initializers listed as inputs) becomes IR 4 and the log says so."""
    model = with_ir_version(old_style_net(opset), ir)
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        result = check_pruned(model, tmp_path=tmp_path)
    saved = onnx.load(str(tmp_path / "pruned.onnx"))
    assert [(o.domain, o.version) for o in saved.opset_import] == [("", opset)]
    assert saved.ir_version == max(ir, 4)
    assert [i.name for i in saved.graph.input] == ["x"]
    upgraded = [r.getMessage() for r in caplog.records if "upgraded" in r.getMessage()]
    if ir < 4:
        assert upgraded and "IR version 3 -> 4" in upgraded[0]
    else:
        assert not upgraded
    w = initializers(result.model)
    assert w["bn1.scale"].shape[0] == w["c1.w"].shape[0] == w["c2.w"].shape[1]
    split = next(n for n in result.model.graph.node if n.op_type == "Split")
    sizes = (list(helper.get_attribute_value(split.attribute[[a.name for a in split.attribute].index("split")]))
             if opset < 13 else list(const_input(result.model, split, 1)))
    assert sizes == [w["ca.w"].shape[1], w["cb.w"].shape[1]]
    mask_equivalent(model)


def test_opset_older_than_onnxruntime_runs_is_upgraded(caplog):
    """onnxruntime has no kernels before opset 7: onnx.version_converter upgrades the model."""
    net = Net(channels=4, opset=6)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.relu(net.conv(h, 8, 6, 1, name="c2"))
    flat = net.node("Flatten", [net.node("GlobalAveragePool", [h])], axis=1)
    net.node("Gemm", [flat, net.weight("fc.w", (10, 6), 6), net.const("fc.b", np.zeros(10))], out="y", transB=1,
             broadcast=1)
    model = net.model()
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        result = onnxprune.prune(model, flops=0.5)
    assert [(o.domain, o.version) for o in result.model.opset_import] == [("", 7)]
    assert any("opset 6 -> 7" in r.getMessage() for r in caplog.records)
    onnx.checker.check_model(result.model)
    assert run(result.model, feed_of(model))["y"].shape == (1, 10)


# --- layer forms ---------------------------------------------------------------------------------


def test_unfolded_batchnorm_as_mul_add():
    """BatchNorm exported as Mul and Add with per-channel [C, 1, 1] constants after the Conv."""
    net = Net(channels=4)
    h = net.conv("x", 4, 8, 3, bias=False, name="c1")
    h = net.node("Mul", [h, net.const("bn.mul", net.rng.uniform(0.5, 1.5, (8, 1, 1)))], out="bn_mul")
    h = net.relu(net.node("Add", [h, net.const("bn.add", net.rng.standard_normal((8, 1, 1)))], out="bn_add"))
    h = net.relu(net.conv(h, 8, 6, 1, bias=False, name="c2"))
    net.head(h, 6)
    model = net.model()
    analysis = onnxprune.analyze(model)
    assert {Slot("bn.mul", 0), Slot("bn.add", 0), Slot("c2.w", 1)} <= set(group_with(analysis, Slot("c1.w", 0)).members)
    result = check_pruned(model)
    w = initializers(result.model)
    assert w["bn.mul"].shape == w["bn.add"].shape == (w["c1.w"].shape[0], 1, 1)
    kept = result.plan["c1.w"][0]
    np.testing.assert_array_equal(w["bn.mul"], initializers(model)["bn.mul"][kept])
    mask_equivalent(model)


def test_conv_without_any_bias():
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, bias=False, name="c1"))
    h = net.relu(net.conv(h, 8, 8, 3, bias=False, group=8, name="dw"))
    h = net.relu(net.conv(h, 8, 6, 1, bias=False, name="c2"))
    net.head(h, 6)
    model = net.model()
    result = check_pruned(model)
    w = initializers(result.model)
    assert w["c1.w"].shape[0] == w["dw.w"].shape[0] == w["c2.w"].shape[1]
    assert [len(n.input) for n in result.model.graph.node if n.op_type == "Conv"] == [2, 2, 2]
    mask_equivalent(model)


def test_gemm_with_trans_a_and_trans_b():
    """Gemm(A^T, B^T): A arrives as [K, M] (features first), B as [N, K]."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    flat = net.node("Flatten", [net.node("GlobalAveragePool", [h])], axis=1)  # [1, 8]
    cols = net.node("Transpose", [flat], perm=[1, 0])  # [8, 1]
    hid = net.relu(net.node("Gemm", [cols, net.weight("g1.w", (16, 8), 8), net.const("g1.b", np.zeros(16) + 0.1)],
                            out="g1", transA=1, transB=1))  # [1, 16]
    net.node("Gemm", [hid, net.weight("g2.w", (10, 16), 16)], out="y", transB=1)
    model = net.model()
    analysis = onnxprune.analyze(model)
    assert Slot("g1.w", 1) in group_with(analysis, Slot("c1.w", 0)).members
    assert {Slot("g1.b", 0), Slot("g2.w", 1)} <= set(group_with(analysis, Slot("g1.w", 0)).members)
    result = check_pruned(model)
    w = initializers(result.model)
    assert w["g1.w"].shape == (w["g1.b"].shape[0], w["c1.w"].shape[0])
    assert w["g2.w"].shape == (10, w["g1.b"].shape[0])
    # masking.py zeroes g1.w's axis 1 (transB) and g2.w's axis 1: both are input features here
    mask_equivalent(model)


def test_matmul_with_the_weight_on_the_left_batched():
    """tf-style 1x1 conv as MatMul: W[Cout, Cin] @ X[1, Cin, H*W] (the weight broadcast over the batch)."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    flat = net.reshape(h, [1, 8, 64], name="r1")
    mixed = net.relu(net.node("MatMul", [net.weight("wl", (12, 8), 8), flat], out="ml"))  # [1, 12, 64]
    back = net.reshape(mixed, [1, 12, 8, 8], name="r2")
    h = net.relu(net.conv(back, 12, 6, 1, name="c2"))
    net.head(h, 6)
    model = net.model()
    analysis = onnxprune.analyze(model)
    assert Slot("wl", 1) in group_with(analysis, Slot("c1.w", 0)).members
    assert Slot("c2.w", 1) in group_with(analysis, Slot("wl", 0)).members
    result = check_pruned(model, 0.4)
    w = initializers(result.model)
    assert w["wl"].shape == (w["c2.w"].shape[1], w["c1.w"].shape[0])
    mask_equivalent(model, 0.4, extra_mask=zero_rows("wl", 1))


def test_initializer_shared_by_several_nodes():
    """One weight used by two Convs in sequence (weight tying) and one bias used by a Conv and an
    Add: each use is pruned on its own, and untouched uses stay one initializer."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    tied = net.weight("tied.w", (8, 8, 1, 1), 8)
    bias = net.const("tied.b", net.rng.standard_normal(8) * 0.1)
    h = net.relu(net.node("Conv", [h, tied, bias], out="t1"))
    h = net.relu(net.node("Conv", [h, tied, bias], out="t2"))
    h = net.node("Add", [h, net.const("shift", np.zeros((8, 1, 1)))], out="shifted")
    h = net.relu(net.node("Add", [h, net.node("Reshape", [bias, net.ints("b.shape", [8, 1, 1])])], out="plus_b"))
    net.head(h, 8)
    model = net.model()
    analysis = onnxprune.analyze(model)
    assert len([c for c, o in analysis.shared.items() if o == "tied.w"]) == 1
    result = check_pruned(model)
    names = [t.name for t in result.model.graph.initializer]
    assert len(names) == len(set(names))
    mask_equivalent(model)


def test_identity_and_dropout_left_in():
    """Identity and inference Dropout (with its mask output) between layers, and an Identity on a weight."""
    net = Net(channels=4, opset=13)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.node("Identity", [h], out="ident")
    h, _mask = net.node("Dropout", [h, net.const("ratio", 0.2), net.const("training", False, dtype=np.bool_)],
                        n_out=2)
    w2 = net.node("Identity", [net.weight("c2.w_raw", (6, 8, 1, 1), 8)], out="c2.w")
    h = net.relu(net.node("Conv", [h, w2], out="c2"))
    net.head(h, 6)
    model = net.model()
    analysis = onnxprune.analyze(model)
    assert {Slot("ident", 1), Slot("c2.w", 1)} <= set(group_with(analysis, Slot("c1.w", 0)).members)
    result = check_pruned(model)
    assert initializers(result.model)["c2.w"].shape[1] == initializers(result.model)["c1.w"].shape[0]
    mask_equivalent(model)


def test_backbone_with_two_heads_and_a_feature_output():
    """Several outputs: logits and a box head from one backbone, and the backbone's last feature map
    as an output too (its channels are frozen; the rest is pruned)."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    feat = net.relu(net.conv(h, 8, 6, 3, name="c2"))
    net.node("Identity", [feat], out="features")
    pooled = net.node("Flatten", [net.node("GlobalAveragePool", [feat])], axis=1)
    cls = net.relu(net.node("Gemm", [pooled, net.weight("cls1.w", (12, 6), 6), net.const("cls1.b", np.zeros(12))],
                            out="cls1", transB=1))
    net.node("Gemm", [cls, net.weight("cls2.w", (10, 12), 12)], out="logits", transB=1)
    box = net.relu(net.node("Gemm", [pooled, net.weight("box1.w", (8, 6), 6)], out="box1", transB=1))
    net.node("Gemm", [box, net.weight("box2.w", (4, 8), 8)], out="boxes", transB=1)
    model = net.model({"logits": [1, 10], "boxes": [1, 4], "features": [1, 6, 8, 8]})
    analysis = onnxprune.analyze(model)
    assert Slot("c2.w", 0) in frozen_slots(analysis)
    assert "graph output" in reasons_for(analysis, Slot("c2.w", 0))
    assert {Slot("c1.w", 0), Slot("cls1.w", 0), Slot("box1.w", 0)} <= grouped_slots(analysis)
    result = check_pruned(model, 0.6)
    w = initializers(result.model)
    assert w["c2.w"].shape[0] == 6
    mask_equivalent(model, 0.6)


def test_dynamic_batch_height_and_width():
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = net.relu(net.conv(h, 8, 6, 3, name="c2"))
    net.head(h, 6)
    model = net.model()
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]))
    onnx.checker.check_model(model)
    result = check_pruned(model)
    dims = result.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 4, "H", "W"]
    other = {"x": np.random.default_rng(0).standard_normal((3, 4, 20, 12)).astype(np.float32)}
    assert run(result.model, other)["y"].shape == (3, 10)
    mask_equivalent(model)


# --- precision and quantisation -------------------------------------------------------------------


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every float initializer, the input and the output in float16."""
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model)
    return model


def test_fp16_model():
    net = Net(channels=4)
    h = net.relu(net.bn(net.conv("x", 4, 8, 3, name="c1"), 8, name="bn1"))
    h = net.relu(net.conv(h, 8, 6, 1, name="c2"))
    net.head(h, 6)
    model = to_fp16(net.model())
    result = check_pruned(model)
    w = initializers(result.model)
    assert all(v.dtype == np.float16 for v in w.values() if v.dtype.kind == "f")
    assert w["bn1.scale"].shape[0] == w["c1.w"].shape[0] == w["c2.w"].shape[1] < 8 or w["c2.w"].shape[0] < 6
    analysis = api.analyze(model)
    plan = api.make_plan(analysis, flops=0.5)
    pruned, kept = api.apply(analysis, plan, model)
    feed = feed_of(model)
    assert_close(run(pruned, feed), run(masked_dense(analysis, kept, model), feed), atol=2e-2)


def qdq_net(per_channel_activations: bool = False) -> onnx.ModelProto:
    """A QDQ model: int8 per-channel weights through DequantizeLinear(axis=0), activations through a
    QuantizeLinear/DequantizeLinear pair with one scale (per channel on c1's output when asked;
    a MaxPool after it then keeps onnxruntime from fusing it into a QLinearConv, which it cannot run)."""
    net = Net(channels=4)

    def qweight(name: str, shape: tuple[int, ...]) -> str:
        w = net.rng.standard_normal(shape).astype(np.float32) / np.sqrt(np.prod(shape[1:]))
        scale = np.abs(w).reshape(shape[0], -1).max(1) / 127
        q = np.clip(np.round(w / scale.reshape(-1, *[1] * (len(shape) - 1))), -127, 127).astype(np.int8)
        return net.node("DequantizeLinear", [net.const(f"{name}.q", q, np.int8), net.const(f"{name}.scale", scale),
                                             net.const(f"{name}.zp", np.zeros(shape[0]), np.int8)],
                        out=name, axis=0)

    def qdq(x: str, channels: int | None = None) -> str:
        scale = net.const(net.fresh("act.scale"), np.full(channels, 0.05) if channels else 0.05)
        zp = net.const(net.fresh("act.zp"), np.zeros(channels) if channels else 0, np.uint8)
        attrs = {"axis": 1} if channels else {}
        q = net.node("QuantizeLinear", [x, scale, zp], **attrs)
        return net.node("DequantizeLinear", [q, scale, zp], **attrs)

    h = qdq("x")
    h = net.relu(net.node("Conv", [h, qweight("c1.w", (8, 4, 3, 3)), net.const("c1.b", np.zeros(8) + 0.1)],
                          out="c1", pads=[1] * 4))
    h = qdq(h, 8 if per_channel_activations else None)
    if per_channel_activations:  # onnxruntime cannot fuse a per-channel activation DQ into QLinearConv
        h = net.node("MaxPool", [h], kernel_shape=[1, 1])
    h = net.relu(net.node("Conv", [h, qweight("c2.w", (6, 8, 1, 1))], out="c2"))
    h = qdq(h)
    flat = net.node("Flatten", [net.node("GlobalAveragePool", [h])], axis=1)
    net.node("Gemm", [flat, net.weight("fc.w", (10, 6), 6)], out="y", transB=1)
    return net.model()


@pytest.mark.parametrize("per_channel_activations", [False, True])
def test_qdq_model_prunes_through_quantize_pairs(per_channel_activations: bool):
    model = qdq_net(per_channel_activations)
    analysis = onnxprune.analyze(model)
    group = group_with(analysis, Slot("c1.w.q", 0))
    assert {Slot("c1.w.scale", 0), Slot("c1.w.zp", 0), Slot("c1.b", 0), Slot("c2.w.q", 1)} <= set(group.members)
    result = check_pruned(model)
    w = initializers(result.model)
    k1, k2 = w["c1.w.q"].shape[0], w["c2.w.q"].shape[0]
    assert k1 < 8 or k2 < 6
    assert w["c1.w.q"].dtype == np.int8 and w["c1.w.scale"].shape == w["c1.w.zp"].shape == (k1,)
    assert w["c2.w.q"].shape[:2] == (k2, k1) and w["c2.w.scale"].shape == (k2,)
    kept = result.plan["c1.w.q"][0]
    np.testing.assert_array_equal(w["c1.w.scale"], initializers(model)["c1.w.scale"][kept])
    if per_channel_activations:
        act_scales = [v for n, v in w.items() if n.startswith("act.scale") and v.ndim == 1]
        assert act_scales and all(len(v) == k1 for v in act_scales)
    mask_equivalent(model, extra_mask=zero_rows("c2.w.q", 1))
    # the int8 weights count as parameters
    by_params = onnxprune.prune(model, params=0.6)
    assert by_params.dense.params >= 8 * 4 * 9 + 6 * 8 and by_params.params_ratio <= 0.6
    # channels are ranked by their dequantized weights: the float model keeps the same channels
    same = onnxprune.prune(dequantized_weights(model), flops=0.5)
    assert same.plan["c1.w"] == result.plan["c1.w.q"] and same.plan["c2.w"] == result.plan["c2.w.q"]


def dequantized_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ model with each weight DequantizeLinear replaced by its float result."""
    inits = initializers(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].ndim > 1:
            q, scale, zero = (inits[n] for n in node.input)
            shape = (-1,) + (1,) * (q.ndim - 1)
            values = (q.astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape)
            out.graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), node.output[0]))
        else:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out)
    return out


def test_contrib_ops_freeze_what_they_touch():
    """com.microsoft FusedConv and BiasGelu run in onnxruntime but have no rule: their channels
    are frozen with the op named, the rest is pruned."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.node("FusedConv", [h, net.weight("fc1.w", (8, 8, 3, 3), 72), net.const("fc1.b", np.zeros(8))],
                 out="fused", domain="com.microsoft", activation="Relu", kernel_shape=[3, 3], pads=[1] * 4)
    h = net.conv(h, 8, 6, 1, bias=False, name="c2")
    flat = net.node("Flatten", [net.node("GlobalAveragePool", [h])], axis=1)
    hid = net.node("MatMul", [flat, net.weight("m1.w", (6, 12), 6)], out="m1")
    hid = net.node("BiasGelu", [hid, net.const("m1.b", np.zeros(12))], out="gelu", domain="com.microsoft")
    net.node("Gemm", [hid, net.weight("m2.w", (10, 12), 12)], out="y", transB=1)
    model = net.model()
    analysis = onnxprune.analyze(model)
    assert analysis.no_rule_ops == {"com.microsoft.FusedConv": 1, "com.microsoft.BiasGelu": 1}
    assert "FusedConv" in reasons_for(analysis, Slot("c1.w", 0))
    assert "BiasGelu" in reasons_for(analysis, Slot("m1.w", 1))
    assert Slot("c2.w", 0) in grouped_slots(analysis), "channels between the two contrib ops stay prunable"
    result = check_pruned(model, 0.9)
    w = initializers(result.model)
    assert w["c1.w"].shape[0] == 8 and w["fc1.w"].shape == (8, 8, 3, 3) and w["m1.w"].shape[1] == 12
    assert w["c2.w"].shape[0] < 6
    mask_equivalent(model, 0.9)
