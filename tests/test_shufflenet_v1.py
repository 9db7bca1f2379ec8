"""ShuffleNet v1: grouped 1x1 convolutions (g=3 or 8) around a Reshape -> Transpose -> Reshape
channel shuffle, built here in torch (torchvision has none) and exported with the legacy
exporter (opset 17, and opset 9 as the model zoo's Caffe2 export), and the dynamo one.

Removing whole groups of a grouped Conv ties every group to every other through the shuffle
(one unit for the whole network); the analysis moves those convolutions to removing the same
within-group positions from every group, so ``group`` stays.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from masking import masked_dense

import onnxprune
from onnxprune import api
from onnxprune.graph.capture import input_feed
from onnxprune.graph.verify import run

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

#: name -> (groups, stage widths). Stem 24 channels, bottleneck = width / 4 (the paper's Table 1;
#: 1.5x is megvii's ShuffleNet-Series width).
CONFIGS = {
    "g3_1.5x": (3, (360, 720, 1440)),
    "g8_1x": (8, (384, 768, 1536)),
    "g3_1x": (3, (240, 480, 960)),
}
EXPORTS = ["legacy", "legacy_opset9", "dynamo"]
SIZE = 64


def channel_shuffle(x, groups: int):
    """The stock shuffle: view [b, g, c/g, h, w], swap the two, view back."""
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, c, h, w)


class Unit(nn.Module):
    """Grouped 1x1 -> BN -> ReLU -> shuffle -> depthwise 3x3 -> BN -> grouped 1x1 -> BN; a
    stride-2 unit concatenates an average-pooled shortcut, a stride-1 unit adds its input."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int, first: bool):
        super().__init__()
        self.groups, self.stride = groups, stride
        mid, branch = cout // 4, cout - cin if stride == 2 else cout
        # the paper's first pointwise layer is not grouped (24 input channels are too few)
        self.pw1 = nn.Conv2d(cin, mid, 1, groups=1 if first else groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.pw2 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward(self, x):
        y = channel_shuffle(F.relu(self.bn1(self.pw1(x))), self.groups)
        y = self.bn3(self.pw2(self.bn2(self.dw(y))))
        if self.stride == 2:
            return torch.cat([F.avg_pool2d(x, 3, 2, 1), F.relu(y)], 1)
        return F.relu(x + y)


class ShuffleNetV1(nn.Module):
    def __init__(self, groups: int, widths: tuple[int, ...], repeats: tuple[int, ...] = (2, 2, 2),
                 classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        units, cin = [], 24
        for stage, (width, n) in enumerate(zip(widths, repeats, strict=True)):
            for i in range(n):
                units.append(Unit(cin, width, groups, 2 if i == 0 else 1, first=stage == 0 and i == 0))
                cin = width
        self.units = nn.Sequential(*units)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.units(self.stem(x)).mean((2, 3)))


def build(config: str) -> nn.Module:
    groups, widths = CONFIGS[config]
    torch.manual_seed(0)
    model = ShuffleNetV1(groups, widths).eval()
    gen = torch.Generator().manual_seed(1)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # not the identity
        bn.weight.data = torch.rand(bn.num_features, generator=gen) + 0.5
        bn.bias.data = torch.randn(bn.num_features, generator=gen) * 0.1
        bn.running_mean = torch.randn(bn.num_features, generator=gen) * 0.1
        bn.running_var = torch.rand(bn.num_features, generator=gen) + 0.5
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(config, export) -> the ONNX model (exported once per module)."""
    import warnings

    folder = tmp_path_factory.mktemp("shufflenet_v1")
    cache: dict[tuple[str, str], onnx.ModelProto] = {}

    def get(config: str, export: str) -> onnx.ModelProto:
        if (config, export) not in cache:
            path = folder / f"{config}_{export}.onnx"
            model, x = build(config), torch.randn(1, 3, SIZE, SIZE)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if export == "dynamo":  # dynamic batch: the shuffle's shapes are computed
                    torch.onnx.export(model, (x.expand(2, -1, -1, -1).contiguous(),), str(path), dynamo=True,
                                      input_names=["input"], output_names=["output"],
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
                else:  # opset 9: static batch, as the zoo's model
                    opset = 9 if export == "legacy_opset9" else 17
                    axes = {} if opset == 9 else {"input": {0: "batch"}, "output": {0: "batch"}}
                    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                                      input_names=["input"], output_names=["output"], dynamic_axes=axes)
            cache[config, export] = onnx.load(str(path))
        return cache[config, export]
    return get


def grouped_convs(model: onnx.ModelProto) -> dict[str, tuple[int, str, tuple[int, ...]]]:
    """Conv output -> (group, weight name, weight shape) for every Conv with group > 1."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:
            out[node.output[0]] = (group, node.input[1], inits[node.input[1]])
    return out


@pytest.mark.parametrize("export", EXPORTS)
def test_one_group_per_unit_not_one_for_the_network(export: str, exported) -> None:
    model = exported("g3_1.5x", export)
    analysis = onnxprune.analyze(model)
    # the residual/concat stream (one group through every stage) and the bottleneck of each
    # of the 6 units; whole groups gave a single unit of 24 tied channels for all of them
    assert len(analysis.groups) == 7
    assert all(g.size > 1 for g in analysis.groups)
    stream = max(analysis.groups, key=lambda g: len(g.members))
    assert stream.size == 8  # gcd of the stem (24), the first branch's groups (112) and stage 2's (120)
    assert sorted(g.size for g in analysis.groups if g is not stream) == [10, 10, 20, 20, 40, 40]
    pointwise = [out for out, (_, _, w) in grouped_convs(model).items() if w[1] > 1]
    assert len(pointwise) == 11  # the first unit's first pointwise layer is not grouped
    assert all(analysis.factor_choice.get(out) == 1 for out in pointwise), "same positions in every group"
    depthwise = [out for out, (_, _, w) in grouped_convs(model).items() if w[1] == 1]
    assert len(depthwise) == 6 and not any(out in analysis.factor_choice for out in depthwise)


@pytest.mark.parametrize("export", EXPORTS)
@pytest.mark.parametrize("config", ["g3_1.5x", "g8_1x"])
def test_half_flops(config: str, export: str, exported) -> None:
    model = exported(config, export)
    result = onnxprune.prune(model, flops=0.5)
    assert 0.49 <= result.flops_ratio <= 0.5 + 1e-9, result.flops_ratio
    pruned = result.model
    onnx.checker.check_model(pruned)
    feed = input_feed(gs.import_onnx(model), seed=3)
    want, got = run(model, feed), run(pruned, feed)
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].shape == value.shape and np.isfinite(got[key]).all()
    if export == "dynamo":
        doubled = {k: np.concatenate([v, v]) for k, v in feed.items()}
        assert run(pruned, doubled)["output"].shape[0] == 2, "the dynamic batch survives"
    config_groups = CONFIGS[config][0]
    dense_convs, pruned_convs = grouped_convs(model), grouped_convs(pruned)
    assert dense_convs.keys() == pruned_convs.keys()
    for out, (group, _, w) in pruned_convs.items():
        if dense_convs[out][2][1] > 1:  # pointwise: every group shrinks alike, ``group`` stays
            assert group == config_groups and w[1] <= dense_convs[out][2][1]
        else:  # depthwise: one group per kept channel
            assert w[1] == 1 and group == w[0]
    assert sum(w[0] for *_, w in pruned_convs.values()) < sum(w[0] for *_, w in dense_convs.values())


def test_pruned_equals_masked_dense(exported) -> None:
    model = exported("g3_1.5x", "legacy")
    analysis = api.analyze(model)
    plan = api.make_plan(analysis, flops=0.5)
    pruned, kept = api.apply(analysis, plan, model)
    assert kept
    masked = masked_dense(analysis, kept, model)
    feed = input_feed(gs.import_onnx(model), seed=3)
    got, want = run(pruned, feed), run(masked, feed)
    scale = np.abs(want["output"]).max() + 1e-6
    np.testing.assert_allclose(got["output"] / scale, want["output"] / scale, atol=2e-4)
    # some bottlenecks lost within-group positions: their second pointwise layer's weight columns
    dense = grouped_convs(model)
    assert any(1 < w[1] < dense[out][2][1] for out, (_, _, w) in grouped_convs(pruned).items())


def test_bottlenecks_not_a_multiple_of_the_groups_stay_whole(exported) -> None:
    """The paper's 1x g=3: 20/40/80 bottleneck channels per group, not multiples of 3. Through
    the shuffle no set of within-group positions of the first pointwise layer is a set of
    positions of the second (where 3 divides the width, width/3 units are), so each bottleneck
    is one unit; only the stream (8 units) prunes, and half the FLOPs is met at its 5/8 step."""
    model = exported("g3_1x", "legacy")
    analysis = onnxprune.analyze(model)
    assert len(analysis.groups) == 7
    assert sorted(g.size for g in analysis.groups) == [1] * 6 + [8]
    result = onnxprune.prune(model, flops=0.5)
    assert 0.35 <= result.flops_ratio <= 0.5
