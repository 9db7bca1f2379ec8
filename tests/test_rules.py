"""One small hand-built graph per op rule: what the analysis couples or freezes, and what the
rewrite does to the op (channel counts, ``group``, Split sizes, Slice bounds, Reshape targets).

Where no op normalises across channels, the pruned model is also compared with the
mask-equivalent dense model of tests/masking.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import (
    Net,
    const_input,
    feed_of,
    frozen_slots,
    group_with,
    grouped_slots,
    initializers,
    mask_equivalent,
    zero_rows,
)
from onnx import helper, numpy_helper

import onnxprune
from onnxprune.graph.verify import run
from onnxprune.structure.analyze import CoupledGroup
from onnxprune.structure.slots import Slot

# --- checks shared by the tests ---------------------------------------------------------------


def node_of(model: onnx.ModelProto, output: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if output in n.output)


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def prune_checked(model: onnx.ModelProto, flops: float = 0.5, **kwargs) -> onnxprune.PruneResult:
    """onnxprune.prune, then the promises of its docstring checked independently."""
    result = onnxprune.prune(model, flops=flops, **kwargs)
    onnx.checker.check_model(result.model)
    feed = feed_of(model)
    want, got = run(model, feed), run(result.model, feed)
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].shape == value.shape
        assert np.isfinite(got[key]).all()
    assert [i.name for i in result.model.graph.input] == [i.name for i in model.graph.input]
    assert result.flops_ratio <= flops + 1e-9
    return result


def members(group: CoupledGroup, tensor: str, axis: int) -> np.ndarray:
    return group.members[Slot(tensor, axis)]


# --- Conv ------------------------------------------------------------------------------------


def conv_chain() -> onnx.ModelProto:
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.relu(net.conv(h, 8, 6, 1, bias=False, name="c2"))
    net.head(h, 6)
    return net.model()


def test_conv_groups_and_channel_counts():
    model = conv_chain()
    analysis = onnxprune.analyze(model)
    assert len(analysis.groups) == 2
    g1, g2 = group_with(analysis, Slot("c1.w", 0)), group_with(analysis, Slot("c2.w", 0))
    assert g1.size == 8 and g1.width == 1
    assert {Slot("c1.b", 0), Slot("c2.w", 1)} <= set(g1.members)
    assert g2.size == 6 and Slot("fc.w", 1) in g2.members
    # the graph input's channels and the logits are frozen
    assert {Slot("c1.w", 1), Slot("fc.w", 0)} <= frozen_slots(analysis)
    assert Slot("c1.w", 1) not in grouped_slots(analysis)

    result = prune_checked(model, 0.5)
    w = initializers(result.model)
    k1, k2 = w["c1.w"].shape[0], w["c2.w"].shape[0]
    assert 1 <= k1 <= 8 and 1 <= k2 <= 6 and k1 + k2 < 14
    assert w["c1.w"].shape == (k1, 4, 3, 3)
    assert w["c1.b"].shape == (k1,)
    assert w["c2.w"].shape == (k2, k1, 1, 1)
    assert w["fc.w"].shape == (10, k2)
    assert w["fc.b"].shape == (10,)
    assert result.plan["c1.w"][0] == sorted(result.plan["c1.w"][0])
    assert len(result.plan["c1.w"][0]) == k1
    mask_equivalent(model, 0.5)


def conv_grouped(group: int) -> onnx.ModelProto:
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 1, name="c1"))
    h = net.relu(net.conv(h, 8, 8, 3, group=group, name="g"))
    h = net.relu(net.conv(h, 8, 6, 1, name="c3"))
    net.head(h, 6)
    return net.model()


def test_grouped_conv_group2_removes_whole_groups():
    model = conv_grouped(2)
    analysis = onnxprune.analyze(model)
    group = group_with(analysis, Slot("g.w", 0))
    # two atoms: each is one group of the grouped conv, its 4 inputs and its 4 outputs together
    assert group.size == 2
    assert sorted(map(tuple, members(group, "g.w", 0))) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert sorted(map(tuple, members(group, "c1.w", 0))) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert group is group_with(analysis, Slot("c3.w", 1))

    result = prune_checked(model, 0.5)
    w = initializers(result.model)
    node = node_of(result.model, "g")
    kept_out = w["g.w"].shape[0]
    assert kept_out == 4, "one of the two groups is removed at half the FLOPs"
    assert attr(node, "group") == 1
    assert w["g.w"].shape[1] * attr(node, "group") == w["c1.w"].shape[0] == 4
    assert result.plan["g.w"][0] in ([0, 1, 2, 3], [4, 5, 6, 7])
    assert result.plan["c1.w"][0] == result.plan["g.w"][0]
    mask_equivalent(model, 0.5)


def test_depthwise_conv_group_follows_channels():
    model = conv_grouped(8)
    analysis = onnxprune.analyze(model)
    group = group_with(analysis, Slot("g.w", 0))
    assert group.size == 8 and group.width == 1
    assert {Slot("c1.w", 0), Slot("g.b", 0), Slot("c3.w", 1)} <= set(group.members)

    result = prune_checked(model, 0.5)
    w = initializers(result.model)
    node = node_of(result.model, "g")
    kept = w["g.w"].shape[0]
    assert kept < 8
    assert attr(node, "group") == kept == w["c1.w"].shape[0] == w["c3.w"].shape[1]
    assert w["g.w"].shape[1] == 1
    assert result.plan["g.w"][0] == result.plan["c1.w"][0]
    mask_equivalent(model, 0.5)


def test_depthwise_conv_on_the_graph_input_is_frozen():
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 4, 3, group=4, name="dw"))
    h = net.relu(net.conv(h, 4, 8, 1, name="c2"))
    net.head(h, 8)
    model = net.model()
    analysis = onnxprune.analyze(model)
    assert Slot("dw.w", 0) in frozen_slots(analysis)
    assert Slot("dw.w", 0) not in grouped_slots(analysis)
    result = prune_checked(model, 0.6)
    node = node_of(result.model, "dw")
    assert attr(node, "group") == 4 and initializers(result.model)["dw.w"].shape == (4, 1, 3, 3)


# --- Gemm and MatMul -------------------------------------------------------------------------


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm(trans_b: int):
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    flat = net.node("Flatten", [net.node("GlobalAveragePool", [h])], axis=1)
    shape1 = (16, 8) if trans_b else (8, 16)
    shape2 = (10, 16) if trans_b else (16, 10)
    hid = net.node("Gemm", [flat, net.weight("g1.w", shape1, 8), net.const("g1.b", np.zeros(16) + 0.1)],
                   out="g1", transB=trans_b)
    net.node("Gemm", [net.relu(hid), net.weight("g2.w", shape2, 16)], out="y", transB=trans_b)
    model = net.model()

    out_axis, in_axis = (0, 1) if trans_b else (1, 0)  # weight axes of output / input features
    analysis = onnxprune.analyze(model)
    hidden = group_with(analysis, Slot("g1.w", out_axis))
    assert hidden.size == 16
    assert {Slot("g1.b", 0), Slot("g2.w", in_axis)} <= set(hidden.members)
    chans = group_with(analysis, Slot("c1.w", 0))
    assert chans.size == 8 and Slot("g1.w", in_axis) in chans.members
    assert Slot("g2.w", out_axis) in frozen_slots(analysis)

    result = prune_checked(model, 0.5)
    w = initializers(result.model)
    k1, kh = w["c1.w"].shape[0], w["g1.b"].shape[0]
    assert kh < 16 or k1 < 8
    assert w["g1.w"].shape == ((kh, k1) if trans_b else (k1, kh))
    assert w["g2.w"].shape == ((10, kh) if trans_b else (kh, 10))
    mask_equivalent(model, 0.5)


def test_matmul_weight_on_the_right():
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    flat = net.node("Flatten", [net.node("GlobalAveragePool", [h])], axis=1)
    hid = net.node("MatMul", [flat, net.weight("m1.w", (8, 16), 8)], out="m1")
    hid = net.relu(net.node("Add", [hid, net.const("m1.b", np.full(16, 0.1))]))
    net.node("MatMul", [hid, net.weight("m2.w", (16, 10), 16)], out="y")
    model = net.model()

    analysis = onnxprune.analyze(model)
    hidden = group_with(analysis, Slot("m1.w", 1))
    assert hidden.size == 16 and {Slot("m1.b", 0), Slot("m2.w", 0)} <= set(hidden.members)
    assert Slot("m1.w", 0) in group_with(analysis, Slot("c1.w", 0)).members
    result = prune_checked(model, 0.5)
    w = initializers(result.model)
    assert w["m1.w"].shape == (w["c1.w"].shape[0], w["m1.b"].shape[0])
    assert w["m2.w"].shape == (w["m1.b"].shape[0], 10)
    mask_equivalent(model, 0.5)


def test_matmul_weight_on_the_left():
    """W @ x: the weight's last axis is contracted with the activation's channels."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    flat = net.reshape(h, [8, 64], name="r1")  # [C, H*W]
    mixed = net.relu(net.node("MatMul", [net.weight("wl", (12, 8), 8), flat], out="ml"))  # [12, H*W]
    back = net.reshape(mixed, [1, 12, 8, 8], name="r2")
    h = net.relu(net.conv(back, 12, 6, 1, name="c2"))
    net.head(h, 6)
    model = net.model()

    analysis = onnxprune.analyze(model)
    chans = group_with(analysis, Slot("c1.w", 0))
    assert Slot("wl", 1) in chans.members and chans.size == 8
    np.testing.assert_array_equal(members(chans, "wl", 1), members(chans, "c1.w", 0))
    rows = group_with(analysis, Slot("wl", 0))
    assert rows.size == 12 and Slot("c2.w", 1) in rows.members

    result = prune_checked(model, 0.4)
    w = initializers(result.model)
    k1, k2 = w["c1.w"].shape[0], w["wl"].shape[0]
    assert k1 < 8 or k2 < 12
    assert w["wl"].shape == (k2, k1)
    assert w["c2.w"].shape[1] == k2
    assert list(const_input(result.model, node_of(result.model, "r1"), 1)) == [k1, 64]
    assert list(const_input(result.model, node_of(result.model, "r2"), 1))[:2] == [1, k2]

    def mask_left(masked: onnx.ModelProto, kept) -> None:
        # tests/masking.py only masks a constant on the right of MatMul: zero wl's columns here.
        keep = kept.get(Slot("wl", 1))
        if keep is None:
            return
        for init in masked.graph.initializer:
            if init.name == "wl":
                values = numpy_helper.to_array(init).copy()
                values[:, np.setdiff1d(np.arange(values.shape[1]), keep)] = 0
                init.CopyFrom(numpy_helper.from_array(values, "wl"))

    mask_equivalent(model, 0.4, extra_mask=mask_left)


# --- Concat, Split, Slice --------------------------------------------------------------------


def test_concat_couples_channels_at_offsets():
    net = Net(channels=4)
    a = net.relu(net.conv("x", 4, 3, 3, name="a"))
    b = net.conv("x", 4, 5, 1, name="b")
    cat = net.node("Concat", [a, b], out="cat", axis=1)
    h = net.relu(net.conv(net.relu(cat), 8, 6, 1, name="c3"))
    net.head(h, 6)
    model = net.model()

    analysis = onnxprune.analyze(model)
    ga, gb = group_with(analysis, Slot("a.w", 0)), group_with(analysis, Slot("b.w", 0))
    assert ga is not gb and ga.size == 3 and gb.size == 5
    np.testing.assert_array_equal(members(ga, "cat", 1), members(ga, "a.w", 0))
    np.testing.assert_array_equal(members(gb, "cat", 1), 3 + members(gb, "b.w", 0))
    np.testing.assert_array_equal(members(gb, "c3.w", 1), 3 + members(gb, "b.w", 0))

    result = prune_checked(model, 0.4)
    w = initializers(result.model)
    ka, kb = w["a.w"].shape[0], w["b.w"].shape[0]
    assert ka + kb < 8
    assert w["c3.w"].shape[1] == ka + kb
    assert result.plan["c3.w"][1] == result.plan["a.w"][0] + [3 + i for i in result.plan["b.w"][0]]
    mask_equivalent(model, 0.4)


@pytest.mark.parametrize("sizes_as_input", [True, False])
def test_split_sizes_follow_the_pruned_channels(sizes_as_input: bool):
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    if sizes_as_input:
        parts = net.node("Split", [h, net.ints("split.sizes", [3, 5])], n_out=2, axis=1)
    else:  # equal parts: the rewrite must add explicit sizes when the halves shrink unequally
        parts = net.node("Split", [h], n_out=2, axis=1)
    na, nb = (3, 5) if sizes_as_input else (4, 4)
    a = net.conv(parts[0], na, 6, 1, name="ca")
    b = net.conv(parts[1], nb, 6, 1, name="cb")
    h = net.relu(net.node("Add", [a, b]))
    net.head(h, 6)
    model = net.model()

    analysis = onnxprune.analyze(model)
    ga, gb = group_with(analysis, Slot("ca.w", 1)), group_with(analysis, Slot("cb.w", 1))
    assert ga.size == na and gb.size == nb
    np.testing.assert_array_equal(members(ga, "c1.w", 0), members(ga, "ca.w", 1))
    np.testing.assert_array_equal(members(gb, "c1.w", 0), na + members(gb, "cb.w", 1))

    result = prune_checked(model, 0.4)
    w = initializers(result.model)
    ka, kb = w["ca.w"].shape[1], w["cb.w"].shape[1]
    assert ka + kb == w["c1.w"].shape[0] < 8
    split = next(n for n in result.model.graph.node if n.op_type == "Split")
    if len(split.input) > 1:
        assert list(const_input(result.model, split, 1)) == [ka, kb]
    else:
        assert ka == kb
    mask_equivalent(model, 0.4)


@pytest.mark.parametrize("start,end", [(2, 7), (-6, 2**62)])
def test_slice_on_the_channel_axis(start: int, end: int):
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    sl = net.node("Slice", [h, net.ints("sl.starts", [start]), net.ints("sl.ends", [end]), net.ints("sl.axes", [1])],
                  out="sl")
    lo, hi = start % 8, min(end, 8)
    h = net.relu(net.conv(sl, hi - lo, 6, 1, name="c2"))
    net.head(h, 6)
    model = net.model()

    analysis = onnxprune.analyze(model)
    inside = group_with(analysis, Slot("c2.w", 1))
    np.testing.assert_array_equal(members(inside, "c1.w", 0), lo + members(inside, "c2.w", 1))
    np.testing.assert_array_equal(members(inside, "sl", 1), members(inside, "c2.w", 1))

    _, kept, pruned = mask_equivalent(model, 0.4)
    kept_c1 = kept.get(Slot("c1.w", 0), np.arange(8))
    node = node_of(pruned, "sl")
    starts, ends = const_input(pruned, node, 1), const_input(pruned, node, 2)
    inside_kept = [i for i in kept_c1 if lo <= i < hi]
    assert int(starts[0]) == int(np.sum(kept_c1 < lo))
    assert int(ends[0]) - int(starts[0]) == len(inside_kept)
    prune_checked(model, 0.4)


# --- Reshape: heads and channel shuffle ------------------------------------------------------


def test_reshape_into_heads_removes_whole_heads():
    """[1, C, H, W] -> [1, heads, head_dim, HW] -> Transpose -> per-head MatMul over head_dim ->
    Transpose back -> [1, C, H, W]: head_dim is fixed by the shared weight, heads are removable."""
    heads, hd = 3, 4
    c = heads * hd
    net = Net(channels=4)
    h = net.conv("x", 4, c, 1, name="c1")
    split = net.reshape(h, [1, heads, hd, 64], name="split")
    t = net.node("Transpose", [split], perm=[0, 1, 3, 2])  # [1, heads, HW, hd]
    mixed = net.relu(net.node("MatMul", [t, net.weight("hw", (hd, hd), hd)]))
    back = net.node("Transpose", [mixed], perm=[0, 1, 3, 2])
    merged = net.reshape(back, [1, c, 8, 8], name="merge")
    h = net.relu(net.conv(merged, c, 6, 1, name="c2"))
    net.head(h, 6)
    model = net.model()

    analysis = onnxprune.analyze(model)
    group = group_with(analysis, Slot("c1.w", 0))
    assert group.size == heads and group.width == hd
    assert sorted(map(tuple, members(group, "c1.w", 0))) == [tuple(range(i * hd, (i + 1) * hd)) for i in range(heads)]
    assert Slot("hw", 0) not in grouped_slots(analysis), "head_dim is shared by every head: frozen"

    _, kept, pruned = mask_equivalent(model, 0.5)
    kept_c = kept[Slot("c1.w", 0)]
    assert len(kept_c) % hd == 0 and 0 < len(kept_c) < c
    for block in kept_c.reshape(-1, hd):  # every kept head keeps all of its head_dim channels
        assert block[0] % hd == 0
        np.testing.assert_array_equal(block, block[0] + np.arange(hd))
    target = const_input(pruned, node_of(pruned, "split"), 1)
    assert target[1] == len(kept_c) // hd and target[2] == hd
    assert initializers(pruned)["hw"].shape == (hd, hd)
    np.testing.assert_array_equal(kept[Slot("c2.w", 1)], kept_c)
    prune_checked(model, 0.5)


def test_channel_shuffle():
    """[1, C, H, W] -> [1, 2, C/2, H, W] -> Transpose(0, 2, 1, 3, 4) -> [1, C, H, W]."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    split = net.reshape(h, [1, 2, 4, 8, 8], name="split")
    t = net.node("Transpose", [split], perm=[0, 2, 1, 3, 4])
    merged = net.reshape(t, [1, 8, 8, 8], name="merge")
    h = net.relu(net.conv(merged, 8, 6, 1, name="c2"))
    net.head(h, 6)
    model = net.model()

    analysis = onnxprune.analyze(model)
    group = group_with(analysis, Slot("c1.w", 0))
    assert group.size == 4 and group.width == 2
    # channel j of the shuffle's 4-channel factor is c1 channels {j, 4 + j} -> c2 inputs {2j, 2j + 1}
    assert sorted(map(tuple, members(group, "c1.w", 0))) == [(j, 4 + j) for j in range(4)]
    assert sorted(map(tuple, members(group, "c2.w", 1))) == [(2 * j, 2 * j + 1) for j in range(4)]

    _, kept, pruned = mask_equivalent(model, 0.4)
    kept_c1 = kept[Slot("c1.w", 0)]
    half = len(kept_c1) // 2
    assert len(kept_c1) % 2 == 0 and half < 4
    np.testing.assert_array_equal(kept_c1[half:], kept_c1[:half] + 4)
    assert list(const_input(pruned, node_of(pruned, "split"), 1)) == [1, 2, half, 8, 8]
    prune_checked(model, 0.4)


def test_grouped_convs_around_a_shuffle_lose_the_same_positions_in_every_group():
    """ShuffleNet v1: grouped 1x1 (g=3) -> shuffle -> grouped 1x1 (g=3). Removing whole groups
    would tie every group to every other through the shuffle, so both convolutions keep
    ``group`` and lose the same within-group positions from every group instead."""
    g, m = 3, 6  # 18 shuffled channels, 6 per group
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 12, 1, name="c1"))
    h = net.relu(net.conv(h, 12, g * m, 1, group=g, name="g1"))
    split = net.reshape(h, [1, g, m, 8, 8], name="split")
    t = net.node("Transpose", [split], perm=[0, 2, 1, 3, 4])
    merged = net.reshape(t, [1, g * m, 8, 8], name="merge")
    h = net.relu(net.conv(merged, g * m, 12, 1, group=g, name="g2"))
    net.head(h, 12)
    model = net.model()

    analysis = onnxprune.analyze(model)
    assert analysis.factor_choice["g1"] == analysis.factor_choice["g2"] == 1, "both moved to positions"
    # g1's inputs: position j of each 4-channel group, tied to weight column j
    into = group_with(analysis, Slot("c1.w", 0))
    assert into.size == 4
    assert sorted(map(tuple, members(into, "c1.w", 0))) == [(j, 4 + j, 8 + j) for j in range(4)]
    np.testing.assert_array_equal(members(into, "g1.w", 1)[:, 0], members(into, "c1.w", 0)[:, 0])
    # shuffled channels: g2 group h reads rows j of every g1 group with j // 2 == h, so a unit
    # is the positions j of one parity in every g1 group (9 channels)
    mid = group_with(analysis, Slot("g1.w", 0))
    assert mid.size == 2 and mid.width == 9
    assert sorted(map(tuple, members(mid, "g1.w", 0))) == [
        tuple(sorted(k * m + j for k in range(g) for j in range(t, m, 2))) for t in range(2)]
    assert Slot("g2.w", 1) in mid.members
    out = group_with(analysis, Slot("g2.w", 0))
    assert out.size == 4 and Slot("fc.w", 1) in out.members

    _, kept, pruned = mask_equivalent(model, 0.5)
    w = initializers(pruned)
    for name in ("g1", "g2"):
        assert attr(node_of(pruned, name), "group") == g
    kept_mid = kept[Slot("g1.w", 0)]
    per = len(kept_mid) // g
    assert len(kept_mid) == g * per and 0 < per < m
    np.testing.assert_array_equal(kept_mid.reshape(g, per), kept_mid[:per] + np.arange(g)[:, None] * m)
    assert w["g1.w"].shape == (g * per, w["c1.w"].shape[0] // g, 1, 1)
    assert w["g2.w"].shape == (w["fc.w"].shape[1], per, 1, 1)
    assert list(const_input(pruned, node_of(pruned, "split"), 1)) == [1, g, per, 8, 8]
    prune_checked(model, 0.5)


# --- LayerNormalization ----------------------------------------------------------------------


def test_layer_norm_over_the_last_axis():
    """Channels-last LayerNorm (ConvNeXt style): scale and bias shrink with the channels.
    It normalises over the channels, so there is no mask equivalence to check."""
    net = Net(channels=4)
    h = net.conv("x", 4, 8, 3, name="c1")
    last = net.node("Transpose", [h], perm=[0, 2, 3, 1])
    ln = net.node("LayerNormalization", [last, net.const("ln.scale", net.rng.uniform(0.5, 1.5, 8)),
                                         net.const("ln.bias", net.rng.standard_normal(8) * 0.1)],
                  out="ln", axis=-1, epsilon=1e-5)
    first = net.node("Transpose", [ln], perm=[0, 3, 1, 2])
    h = net.relu(net.conv(first, 8, 6, 1, name="c2"))
    net.head(h, 6)
    model = net.model()

    analysis = onnxprune.analyze(model)
    group = group_with(analysis, Slot("c1.w", 0))
    assert {Slot("ln.scale", 0), Slot("ln.bias", 0), Slot("ln", 3), Slot("c2.w", 1)} <= set(group.members)
    np.testing.assert_array_equal(members(group, "ln.scale", 0), members(group, "c1.w", 0))

    result = prune_checked(model, 0.4)
    w = initializers(result.model)
    k = w["c1.w"].shape[0]
    assert k < 8
    assert w["ln.scale"].shape == w["ln.bias"].shape == (k,)
    assert w["c2.w"].shape[1] == k
    kept = result.plan["c1.w"][0]
    assert result.plan["ln.scale"][0] == result.plan["ln.bias"][0] == kept
    np.testing.assert_array_equal(w["ln.scale"], initializers(model)["ln.scale"][kept])


# --- Pad, Resize, ConvTranspose, Gather ------------------------------------------------------


def test_pad_passes_channels_it_does_not_pad():
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.node("Pad", [h, net.ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])], out="pad", mode="reflect")
    h = net.relu(net.conv(h, 8, 6, 3, name="c2"))  # 10x10 -> 10x10
    net.head(h, 6)
    model = net.model()
    analysis = onnxprune.analyze(model)
    group = group_with(analysis, Slot("c1.w", 0))
    assert {Slot("pad", 1), Slot("c2.w", 1)} <= set(group.members)
    _, kept, pruned = mask_equivalent(model, 0.5)
    assert Slot("c1.w", 0) in kept
    np.testing.assert_array_equal(const_input(pruned, node_of(pruned, "pad"), 1), [0, 0, 1, 1, 0, 0, 1, 1])


def test_pad_on_the_channel_axis_freezes_it():
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.node("Pad", [h, net.ints("pads", [0, 1, 0, 0, 0, 1, 0, 0])], out="pad")  # 8 -> 10 channels
    h = net.relu(net.conv(h, 10, 6, 1, name="c2"))
    net.head(h, 6)
    model = net.model()
    analysis = onnxprune.analyze(model)
    assert Slot("c1.w", 0) in frozen_slots(analysis) and Slot("c2.w", 1) in frozen_slots(analysis)
    reasons = {r for f in analysis.frozen if Slot("c1.w", 0) in f.slots for r in f.reasons}
    assert "Pad" in reasons
    result = prune_checked(model, 0.9)
    assert initializers(result.model)["c1.w"].shape[0] == 8


@pytest.mark.parametrize("opset", [13, 18])
def test_resize_with_scales(opset: int):
    net = Net(channels=4, opset=opset)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.node("Resize", [h, "", net.const("scales", [1, 1, 2, 2])], out="up", mode="nearest")
    h = net.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = net.relu(net.conv(h, 8, 6, 3, name="c2"))
    net.head(h, 6)
    model = net.model()
    assert Slot("up", 1) in group_with(onnxprune.analyze(model), Slot("c1.w", 0)).members
    _, kept, _ = mask_equivalent(model, 0.5)
    assert Slot("c1.w", 0) in kept
    prune_checked(model, 0.5)


def _resize_sizes(opset: int, axes: list[int] | None) -> onnx.ModelProto:
    net = Net(channels=4, opset=opset)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    sizes = [16, 16] if axes else [1, 8, 16, 16]
    attrs = {"axes": axes} if axes else {}
    h = net.node("Resize", [h, "", "", net.ints("sizes", sizes)], out="up", mode="nearest", **attrs)
    h = net.relu(net.conv(h, 8, 6, 3, name="c2"))
    net.head(h, 6)
    return net.model()


def test_resize_with_sizes_gets_the_new_channel_count():
    model = _resize_sizes(13, None)
    _, kept, pruned = mask_equivalent(model, 0.5)
    k = len(kept[Slot("c1.w", 0)])
    np.testing.assert_array_equal(const_input(pruned, node_of(pruned, "up"), 3), [1, k, 16, 16])


def test_resize_opset18_sizes_for_listed_axes_only():
    model = _resize_sizes(18, [2, 3])
    result = prune_checked(model, 0.5)
    np.testing.assert_array_equal(const_input(result.model, node_of(result.model, "up"), 3), [16, 16])


def test_conv_transpose():
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.node("ConvTranspose", [h, net.weight("ct.w", (8, 6, 2, 2), 8), net.const("ct.b", np.zeros(6) + 0.1)],
                 out="ct", strides=[2, 2])  # weight [Cin, Cout, k, k]
    h = net.relu(net.conv(net.relu(h), 6, 6, 1, name="c2"))
    net.head(h, 6)
    model = net.model()
    analysis = onnxprune.analyze(model)
    assert Slot("ct.w", 0) in group_with(analysis, Slot("c1.w", 0)).members
    assert {Slot("ct.w", 1), Slot("ct.b", 0), Slot("c2.w", 1)} <= set(group_with(analysis, Slot("ct", 1)).members)
    # masking.py does not know ConvTranspose sums over its weight's axis 0
    _, kept, pruned = mask_equivalent(model, 0.5, extra_mask=zero_rows("ct.w", 0))
    w = initializers(pruned)
    assert w["ct.w"].shape[:2] == (w["c1.w"].shape[0], w["ct.b"].shape[0])
    prune_checked(model, 0.5)


def test_gather_of_channels():
    """Gather picks channels [6, 0, 3, 3, 7]: removed source channels drop out of the indices."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    g = net.node("Gather", [h, net.ints("idx", [6, 0, 3, 3, 7])], out="g", axis=1)
    h = net.relu(net.conv(g, 5, 6, 1, name="c2"))
    net.head(h, 6)
    model = net.model()
    analysis = onnxprune.analyze(model)
    atoms = {}  # c1 channel -> the gathered channels (c2 inputs) in its atom
    for group in analysis.groups:
        if Slot("c1.w", 0) in group.members:
            inputs = group.members.get(Slot("c2.w", 1), np.zeros((group.size, 0), dtype=int))
            for src, dst in zip(group.members[Slot("c1.w", 0)], inputs, strict=True):
                atoms[int(src[0])] = sorted(dst.tolist())
    # channel 3 is gathered twice: both copies go with it; 1, 2, 4, 5 are gathered nowhere
    assert atoms == {6: [0], 0: [1], 3: [2, 3], 7: [4], 1: [], 2: [], 4: [], 5: []}
    _, kept, pruned = mask_equivalent(model, 0.5)
    kept_c1 = kept.get(Slot("c1.w", 0), np.arange(8))
    idx = const_input(pruned, node_of(pruned, "g"), 1)
    want = [int(np.searchsorted(kept_c1, i)) for i in [6, 0, 3, 3, 7] if i in kept_c1]
    np.testing.assert_array_equal(idx, want)
    prune_checked(model, 0.5)


# --- ops without a rule ----------------------------------------------------------------------


def _einsum(net: Net, h: str) -> str:
    return net.node("Einsum", [h, net.weight("ein.w", (6, 8), 8)], equation="bchw,oc->bohw")


def _topk(net: Net, h: str) -> str:
    return net.node("TopK", [h, net.ints("k", [6])], n_out=2, axis=1)[0]


def _custom(net: Net, h: str) -> str:  # com.microsoft.Gelu: runs in onnxruntime, no rule here
    gelu = net.node("Gelu", [h], domain="com.microsoft")
    return net.node("Gelu", [net.node("Conv", [gelu, net.weight("ein.w", (6, 8, 1, 1), 8)])], domain="com.microsoft")


@pytest.mark.parametrize("build,op,count", [(_einsum, "Einsum", 1), (_topk, "TopK", 1),
                                            (_custom, "com.microsoft.Gelu", 2)])
def test_op_without_rule_freezes_what_it_touches(build, op: str, count: int):
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = build(net, h)  # [1, 6, 8, 8], every channel touched by the op without a rule
    h = net.relu(net.conv(h, 6, 8, 3, name="c2"))
    h = net.relu(net.conv(h, 8, 6, 1, name="c3"))
    net.head(h, 6)
    model = net.model()

    analysis = onnxprune.analyze(model)
    assert analysis.no_rule_ops.get(op) == count
    assert Slot("c1.w", 0) in frozen_slots(analysis)
    assert Slot("c1.w", 0) not in grouped_slots(analysis)
    reasons = {r for f in analysis.frozen if Slot("c1.w", 0) in f.slots for r in f.reasons}
    assert op.split(".")[-1] in reasons
    assert Slot("c2.w", 0) in grouped_slots(analysis), "channels away from the op stay prunable"

    result = prune_checked(model, 0.6)
    w = initializers(result.model)
    assert w["c1.w"].shape == (8, 4, 3, 3)
    assert w["c2.w"].shape[1] == 6
    assert w["c2.w"].shape[0] < 8 or w["c3.w"].shape[0] < 6
    mask_equivalent(model, 0.6)


# --- shared initializers ---------------------------------------------------------------------


def test_shared_initializer_does_not_couple_two_convs():
    """Two convs on different inputs share one weight (an exporter de-duplicated equal tensors).
    Their channels are unrelated and must land in separate groups."""
    net = Net(channels=4)
    t = net.relu(net.conv("x", 4, 4, 3, name="t"))
    u = net.relu(net.conv("x", 4, 4, 3, name="u"))
    shared = net.weight("shared.w", (6, 4, 3, 3), 36)
    a = net.relu(net.node("Conv", [t, shared], out="a", pads=[1, 1, 1, 1]))
    b = net.node("Conv", [u, shared], out="b", pads=[1, 1, 1, 1])
    a = net.conv(a, 6, 6, 1, name="pa")
    b = net.relu(net.conv(net.relu(b), 6, 2, 1, name="pb"))
    cat = net.node("Concat", [a, b], axis=1)
    net.head(net.relu(cat), 8)
    model = net.model()

    analysis = onnxprune.analyze(model)
    copies = [c for c, original in analysis.shared.items() if original == "shared.w"]
    assert len(copies) == 1
    names = {"shared.w", copies[0]}
    for group in analysis.groups:
        touched = {s.tensor for s in group.members} & names
        assert len(touched) <= 1, f"one group couples both uses of the shared weight: {touched}"
    # four separate groups: inputs of each use (t, u) and outputs of each use (a, b)
    assert len({id(group_with(analysis, Slot(n, ax))) for n in names for ax in (0, 1)}) == 4
    assert group_with(analysis, Slot("t.w", 0)) is not group_with(analysis, Slot("u.w", 0))

    result = prune_checked(model, 0.5, round_to=1)  # channel by channel: both uses lose some
    w = initializers(result.model)
    wa, wb = (w[node_of(result.model, out).input[1]] for out in ("a", "b"))
    assert wa.shape == (w["pa.w"].shape[1], w["t.w"].shape[0], 3, 3)
    assert wb.shape == (w["pb.w"].shape[1], w["u.w"].shape[0], 3, 3)
    assert result.plan["t.w"][0] != result.plan["u.w"][0] or wa.shape != wb.shape, \
        "the two uses are pruned independently here"
    mask_equivalent(model, 0.5)


def test_untouched_shared_initializer_is_stored_once():
    """When neither use of a shared initializer is pruned it stays one initializer."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.relu(net.conv(h, 8, 6, 1, name="c2"))
    bias = net.const("zero.b", np.zeros(10))
    flat = net.node("Flatten", [net.node("GlobalAveragePool", [h])], axis=1)
    net.node("Gemm", [flat, net.weight("fc1.w", (10, 6), 6), bias], out="y", transB=1)
    net.node("Gemm", [flat, net.weight("fc2.w", (10, 6), 6), bias], out="y2", transB=1)
    model = net.model(outputs={"y": [1, 10], "y2": [1, 10]})
    assert onnxprune.analyze(model).shared == {"zero.b__1": "zero.b"}
    result = prune_checked(model, 0.5)
    assert initializers(result.model)["c2.w"].shape[0] < 6, "the layer before both Gemms is pruned"
    names = [t.name for t in result.model.graph.initializer]
    assert names.count("zero.b") == 1 and not [n for n in names if n.startswith("zero.b__")]
    gemms = [n for n in result.model.graph.node if n.op_type == "Gemm"]
    assert [n.input[2] for n in gemms] == ["zero.b", "zero.b"]
