"""Property tests: random small CNNs (Conv 1x1/3x3 with and without bias, depthwise Conv,
BatchNormalization, Relu, residual Add, Concat of two branches) ending in GlobalAveragePool +
Flatten + Gemm, pruned at a random FLOPs target in [0.3, 0.9].
"""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest
from helpers import Net, assert_close, feed_of
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from masking import masked_dense

import onnxprune
from onnxprune import api
from onnxprune.errors import ModelError
from onnxprune.graph.verify import run

# ONNXPRUNE_EXAMPLES=1000 for a deeper search than the default run's.
SETTINGS = settings(max_examples=int(os.environ.get("ONNXPRUNE_EXAMPLES", 25)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# One step of the network body, as (kind, k, width, bias) descriptors; widths are absolute.
CONV = st.tuples(st.just("conv"), st.sampled_from([1, 3]), st.integers(2, 8), st.booleans())
DEPTHWISE = st.tuples(st.just("dw"), st.just(3), st.just(0), st.booleans())
BN = st.just(("bn", 0, 0, False))
RELU = st.just(("relu", 0, 0, False))
RESIDUAL = st.tuples(st.just("res"), st.sampled_from([1, 3]), st.integers(2, 8), st.booleans())
RESIDUAL_DW = st.tuples(st.just("res_dw"), st.just(3), st.just(0), st.booleans())
CONCAT = st.tuples(st.just("cat"), st.sampled_from([1, 3]), st.integers(1, 6), st.integers(1, 6))
DENSE = st.tuples(st.just("dense"), st.sampled_from([1, 3]), st.integers(1, 6), st.booleans())
STEP = st.one_of(CONV, DEPTHWISE, BN, RELU, RESIDUAL, RESIDUAL_DW, CONCAT, DENSE)


def build(channels: int, steps: list[tuple], seed: int) -> onnx.ModelProto:
    """The network the steps describe, from x [1, channels, 8, 8] to y [1, 10]."""
    net = Net(channels=channels, seed=seed)
    cur, c = "x", channels
    for kind, k, width, extra in steps:
        if kind == "conv":
            cur, c = net.conv(cur, c, width, k, bias=extra), width
        elif kind == "dw":
            cur = net.conv(cur, c, c, 3, bias=extra, group=c)
        elif kind == "bn":
            cur = net.bn(cur, c)
        elif kind == "relu":
            cur = net.relu(cur)
        elif kind == "res":  # cur + conv(relu(conv(cur))): both ends coupled to cur's channels
            mid = net.relu(net.conv(cur, c, width, k, bias=extra))
            cur = net.node("Add", [cur, net.bn(net.conv(mid, width, c, 1, bias=False), c)])
        elif kind == "res_dw":  # cur + bn(depthwise(cur))
            cur = net.node("Add", [cur, net.bn(net.conv(cur, c, c, 3, bias=extra, group=c), c)])
        elif kind == "cat":  # two branches of widths (width, extra) concatenated on channels
            a = net.relu(net.conv(cur, c, width, k))
            b = net.conv(cur, c, extra, 1, bias=False)
            cur, c = net.node("Concat", [a, b], axis=1), width + extra
        elif kind == "dense":  # DenseNet: concat(cur, conv(cur)), either order
            new = net.relu(net.conv(cur, c, width, k))
            cur, c = net.node("Concat", [cur, new] if extra else [new, cur], axis=1), c + width
    net.head(cur, c)
    return net.model()


@st.composite
def networks(draw) -> onnx.ModelProto:
    channels = draw(st.integers(3, 8))
    steps = draw(st.lists(STEP, min_size=1, max_size=6))
    # usually start with a plain conv, so that most graphs have prunable channels
    if draw(st.booleans()) or steps[0][0] not in ("conv", "cat"):
        steps.insert(0, ("conv", 3, draw(st.integers(4, 8)), True))
    return build(channels, steps, draw(st.integers(0, 2**32 - 1)))


TARGETS = st.floats(0.3, 0.9, allow_nan=False)


def unreachable_floor(exc: ModelError, target: float) -> float:
    """The floor a ModelError for an unreachable target reports; it must exceed the target."""
    match = re.search(r"target \S+ is unreachable: .* still leaves ([0-9.]+) of the dense", str(exc))
    assert match, f"unexpected ModelError: {exc}"
    floor = float(match.group(1))
    assert floor >= target - 1e-3, (floor, target)
    return floor


@SETTINGS
@given(model=networks(), target=TARGETS)
def test_prune_meets_the_target_and_keeps_the_interface(model: onnx.ModelProto, target: float):
    before = model.SerializeToString()
    try:
        result = onnxprune.prune(model, flops=target)
    except ModelError as exc:
        unreachable_floor(exc, target)
        event("unreachable")
        return
    finally:
        assert model.SerializeToString() == before, "the ModelProto passed in must not change"
    event("pruned")
    pruned = result.model
    onnx.checker.check_model(pruned)
    feed = feed_of(model)
    want, got = run(model, feed), run(pruned, feed)
    assert list(got) == ["y"]
    assert got["y"].shape == want["y"].shape == (1, 10)
    assert got["y"].dtype == np.float32 and np.isfinite(got["y"]).all()
    assert result.flops_ratio <= target + 1e-9
    assert 0 < result.pruned.flops < result.dense.flops
    assert result.params_ratio < 1
    assert [i.name for i in pruned.graph.input] == ["x"]
    assert pruned.opset_import == model.opset_import and pruned.ir_version == model.ir_version
    # the report's plan names real initializers and only ever keeps a sorted subset
    dense_inits = {t.name: t for t in model.graph.initializer}
    pruned_inits = {t.name: t for t in pruned.graph.initializer}
    for name, axes in result.plan.items():
        assert name in dense_inits, name
        for axis, kept in axes.items():
            assert kept == sorted(set(kept)) and kept
            assert 0 <= kept[0] and kept[-1] < dense_inits[name].dims[axis]
            assert pruned_inits[name].dims[axis] == len(kept)


@SETTINGS
@given(model=networks(), target=TARGETS)
def test_pruned_equals_masked_dense(model: onnx.ModelProto, target: float):
    analysis = api.analyze(model)
    try:
        plan = api.make_plan(analysis, flops=target)
    except ModelError as exc:
        unreachable_floor(exc, target)
        event("unreachable")
        return
    event("pruned")
    pruned, kept = api.apply(analysis, plan, model)
    assert kept, "a reachable target below 1 removes something"
    for slot, idx in kept.items():
        assert 0 < len(idx) < analysis.slot_sizes[slot]
    masked = masked_dense(analysis, kept, model)
    feed = feed_of(model)
    assert_close(run(pruned, feed), run(masked, feed))


@st.composite
def frozen_networks(draw) -> onnx.ModelProto:
    """Every conv reads the graph input and feeds a graph output (through BN/Relu at most)."""
    channels = draw(st.integers(3, 8))
    net = Net(channels=channels, seed=draw(st.integers(0, 2**32 - 1)))
    outputs = {}
    for i in range(draw(st.integers(1, 3))):
        k, width = draw(st.sampled_from([1, 3])), draw(st.integers(1, 8))
        depthwise = draw(st.booleans())
        cur = net.conv("x", channels, channels if depthwise else width, k, bias=draw(st.booleans()),
                       group=channels if depthwise else 1)
        if draw(st.booleans()):
            cur = net.bn(cur, channels if depthwise else width)
        if draw(st.booleans()):
            cur = net.relu(cur)
        out = f"y{i}"
        net.node("Identity", [cur], out=out)
        outputs[out] = [1, channels if depthwise else width, 8, 8]
    return net.model(outputs)


@SETTINGS
@given(model=frozen_networks(), target=st.floats(0.05, 0.99, allow_nan=False),
       what=st.sampled_from(["flops", "params"]))
def test_unreachable_target_raises_model_error(model: onnx.ModelProto, target: float, what: str):
    analysis = onnxprune.analyze(model)
    assert analysis.groups == []
    with pytest.raises(ModelError, match="unreachable"):
        onnxprune.prune(model, **{what: target})


@SETTINGS
@given(model=networks(), target=st.floats(0.001, 1.0, allow_nan=False))
def test_any_target_prunes_or_raises_model_error(model: onnx.ModelProto, target: float):
    """Down to tiny targets the API either meets the target or says why, never crashes."""
    try:
        result = onnxprune.prune(model, flops=target)
    except ModelError as exc:
        unreachable_floor(exc, target)
        return
    assert result.flops_ratio <= target + 1e-9
