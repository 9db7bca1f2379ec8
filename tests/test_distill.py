"""``--distill``: label-free recovery from the dense model (onnxprune/distill.py, torchgraph.py).

Real exports (torchvision resnet18 at 64x64, random weights; both exporters), real onnxruntime:

* the PyTorch interpreter reproduces onnxruntime on the dense and the pruned graphs, and on
  one-node graphs for the forms real exports rarely hold (asymmetric pads, auto_pad, ceil_mode,
  ConvTranspose output_padding, Resize, reflect Pad, negative Slice steps, opset 11 and 18 forms);
* distilling a ``--flops 0.5`` model lowers the held-out KL, the held-out figures it reports agree
  with the fidelity onnxruntime measures afterwards, and the output keeps every initializer's
  name, shape and dtype (and passed verify: ``prune`` verifies it);
* after ``--pattern 2:4`` the zeros stay exactly zero and every layer still carries 2:4;
* refusals: no ``--calib``, PyTorch missing (our own import guard, made to fail through
  ``sys.modules``), an op the interpreter cannot run, ``--distill-lr`` alone;
* the command line ``--distill 20`` on an image folder: summary line, JSON and HTML report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import Net
from onnx import numpy_helper

import onnxprune
from onnxprune.deploy.sparse24 import sparse_eligibility
from onnxprune.errors import UsageError
from onnxprune.graph.sessions import make_session

torch = pytest.importorskip("torch", reason="--distill needs torch")

from onnxprune.calib import distill  # noqa: E402
from onnxprune.calib.data import CalibrationSet  # noqa: E402
from onnxprune.calib.distill import _Augment, distill_model, plan_training  # noqa: E402
from onnxprune.calib.fidelity import fidelity  # noqa: E402
from onnxprune.calib.torchgraph import TorchGraph, unsupported  # noqa: E402

SIZE = 64
COUNT = 48  # calibration samples: 36 to train on, 12 held out


@pytest.fixture(scope="module")
def resnet18(model_cache) -> dict[str, Path]:
    export_models = pytest.importorskip("export_models", reason="needs torchvision to export")
    return {exporter: export_models.export_model("resnet18", exporter, model_cache, size=SIZE)
            for exporter in ("legacy", "dynamo")}


@pytest.fixture(scope="module")
def structured(resnet18) -> tuple[onnxprune.PruneResult, onnxprune.PruneResult]:
    """(--flops 0.5 without, with --distill 30), same calibration data; no re-fit, so that
    distillation starts from the plain pruned model."""
    args = {"flops": 0.5, "calib": "random", "calib_count": COUNT, "reconstruct": False}
    return onnxprune.prune(resnet18["legacy"], **args), onnxprune.prune(resnet18["legacy"], **args, distill=30)


def initializers(model: onnx.ModelProto) -> list[tuple[str, tuple[int, ...], int]]:
    return [(t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer]


def values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_interpreter_matches_onnxruntime(resnet18, exporter: str):
    dense = onnx.load(str(resnet18[exporter]))
    pruned = onnxprune.prune(dense, flops=0.5).model
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    for model in (dense, pruned):
        assert unsupported(model) == []
        net = TorchGraph(model, [t.name for t in model.graph.initializer]).eval()
        with torch.no_grad():
            got = net({"input": torch.from_numpy(x)})[0].numpy()
        want = make_session(model).run(None, {"input": x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got / np.abs(want).max(), want / np.abs(want).max(), atol=1e-4)


def test_distill_lowers_the_held_out_kl(structured):
    plain, distilled = structured
    d = distilled.distillation
    assert plain.distillation is None and d is not None
    assert d.steps == 30 and d.max_steps == 30 and d.train_samples == 36 and d.held_out == 12
    assert d.kl_before == pytest.approx(plain.fidelity.kl, rel=1e-3), "before = the pruned model without --distill"
    assert d.kl_after < 0.8 * d.kl_before
    # what distillation measured in torch is what onnxruntime measures on the written model
    assert d.kl_after == pytest.approx(distilled.fidelity.kl, rel=1e-3)
    assert d.agreement_after == pytest.approx(distilled.fidelity.top1_agreement)
    assert d.augment == "horizontal flips", "random arrays are not images: no crops"
    steps = [c["step"] for c in d.curve]
    assert steps[0] == 0 and steps[-1] == 30 and steps == sorted(set(steps)), "scored before, on the way, at the end"


def test_output_keeps_names_and_is_verified(structured):
    plain, distilled = structured
    assert initializers(distilled.model) == initializers(plain.model)
    assert [n.name for n in distilled.model.graph.node] == [n.name for n in plain.model.graph.node]
    before, after = values(plain.model), values(distilled.model)
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    assert len(changed) == distilled.distillation.tensors > 10
    onnx.checker.check_model(distilled.model)
    assert distilled.flops_ratio == pytest.approx(plain.flops_ratio)
    assert distilled.plan == plain.plan


def test_24_masks_survive_distillation(resnet18):
    args = {"pattern": "2:4", "method": "magnitude", "calib": "random", "calib_count": 32}
    plain = onnxprune.prune(resnet18["dynamo"], **args)
    distilled = onnxprune.prune(resnet18["dynamo"], **args, distill=10)
    d = distilled.distillation
    assert d.masked > 10 and d.kl_after < d.kl_before
    carrying = {layer.layer for layer in sparse_eligibility(plain.model) if layer.carries_24}
    assert len(carrying) > 10
    assert {layer.layer for layer in sparse_eligibility(distilled.model) if layer.carries_24} == carrying
    before, after = values(plain.model), values(distilled.model)
    for name, w in before.items():
        zero = w == 0
        if zero.any() and w.ndim >= 2:
            assert (after[name][zero] == 0).all(), f"{name}: a pruned weight came back"
    assert any(not np.array_equal(before[n], after[n]) for n in before), "the kept weights were trained"


def test_refused_without_calib(resnet18):
    with pytest.raises(UsageError, match="--distill needs calibration data: give --calib"):
        onnxprune.prune(resnet18["legacy"], flops=0.5, distill=True)
    with pytest.raises(UsageError, match="--distill-lr needs --distill"):
        onnxprune.prune(resnet18["legacy"], flops=0.5, calib="random", distill_lr=1e-3)
    with pytest.raises(UsageError, match="positive number of steps"):
        onnxprune.prune(resnet18["legacy"], flops=0.5, calib="random", distill=-3)


def test_missing_torch_says_what_to_install(resnet18, monkeypatch, capsys):
    from onnxprune.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(UsageError, match=r"needs PyTorch.*pip install 'onnxprune\[recover\]'"):
        onnxprune.prune(resnet18["legacy"], flops=0.5, calib="random", distill=True)
    assert main([str(resnet18["legacy"]), "--flops", "0.5", "--calib", "random", "--distill"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onnxprune[recover]" in err


def test_an_op_the_interpreter_cannot_run_is_named():
    net = Net(channels=4)
    h = net.node("LpNormalization", [net.relu(net.conv("x", 4, 8, 3, name="c1"))], axis=1)
    net.head(h, 8)
    with pytest.raises(UsageError, match="--distill cannot run this model in PyTorch: no support for LpNormalization"):
        onnxprune.prune(net.model(), flops=0.5, calib="random", distill=True)


def test_augmentation_crops_images_and_only_flips_arrays():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    flips = _Augment((2, 3), ("flips",), generator=gen)
    for _ in range(4):
        y = flips(x)
        assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(y, x, strict=True))
    crops = _Augment((2, 3), ("crops", "flips"), generator=gen)
    y = crops(x)
    assert y.shape == x.shape and not torch.equal(y, x) and not torch.equal(y, x.flip(-1))
    assert _Augment(None, ("crops", "flips"), generator=gen)(x) is x
    assert _Augment((2, 3), ("crops", "mixup"), generator=gen, images=False).choices == ("flips",), \
        "arrays that are no photos: flips only"


def test_augmentations_are_deterministic_by_seed():
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def run(seed: int, choices: tuple[str, ...]) -> torch.Tensor:
        augment = _Augment((2, 3), choices, generator=torch.Generator().manual_seed(seed))
        return torch.cat([augment(x), augment(x)])  # two batches: the generator moves on

    every = distill.AUGMENTATIONS
    assert torch.equal(run(0, every), run(0, every))
    assert not torch.equal(run(0, every), run(1, every))
    for choice in every:
        y = run(0, (choice,))
        assert y.shape == (12, 3, 32, 32) and torch.isfinite(y).all()
        assert torch.equal(y, run(0, (choice,))) and not torch.equal(y[:6], x), choice
    assert distill.resolve_augment("mixup, crops") == ("crops", "mixup")
    assert distill.resolve_augment("none") == ()
    with pytest.raises(UsageError, match="unknown augmentation blur"):
        distill.resolve_augment("blur")



def test_cli_distill_20_on_an_image_folder(resnet18, tmp_path: Path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):  # smooth random images: a gradient plus noise
        base = np.linspace(0, 255, 80)[None, :, None] * rng.uniform(0.2, 1, (1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 30, (72, 80, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(photos / f"{i}.png")
    out, report, html = tmp_path / "p.onnx", tmp_path / "r.json", tmp_path / "r.html"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", str(resnet18["legacy"]), "--flops", "0.5",
                           "--calib", str(photos), "--distill", "20", "-o", str(out), "--report", str(report),
                           "--html", str(html)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = next(s for s in proc.stdout.splitlines() if s.startswith("distill:"))
    assert "distill: 20 of 20 steps" in line and "held-out KL" in line and "top-1 agreement" in line and "->" in line
    data = json.loads(report.read_text())["distill"]
    assert data["steps"] == 20 and data["augment"] == "random resized crops and horizontal flips"
    assert data["kl_after"] <= data["kl_before"] and data["held_out"] == 4
    assert "Distillation" in html.read_text()
    onnx.checker.check_model(onnx.load(str(out)))


ONE_OP_CASES = {  # op, attributes, input shape, constant inputs after x (None: left out), opset
    "avgpool-asym-pads": ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 1, 2]},
                          (1, 2, 9, 9), [], 17),
    "avgpool-count-pad": ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
                          (1, 2, 7, 7), [], 17),
    "avgpool-ceil": ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, (1, 2, 7, 7), [], 17),
    "maxpool-asym-pads": ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1, 1]},
                          (1, 2, 8, 8), [], 17),
    "conv-same-upper": ("Conv", {"kernel_shape": [4, 4], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
                        (1, 3, 9, 9), [np.ones((4, 3, 4, 4), np.float32) * 0.1], 17),
    "convtranspose": ("ConvTranspose", {"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 1]},
                      (1, 3, 5, 5), [np.linspace(-1, 1, 3 * 2 * 3 * 3, dtype=np.float32).reshape(3, 2, 3, 3)], 17),
    "resize-linear": ("Resize", {"mode": "linear"}, (1, 2, 5, 6), [None, np.array([1, 1, 2, 1.5], np.float32)], 17),
    "resize-nearest": ("Resize", {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                  "nearest_mode": "floor"}, (1, 2, 5, 6),
                       [None, np.array([1, 1, 2, 2], np.float32)], 17),
    "pad-reflect": ("Pad", {"mode": "reflect"}, (1, 2, 5, 6), [np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)], 17),
    "slice-negative-step": ("Slice", {}, (2, 3, 8), [np.array([-1], np.int64), np.array([-9], np.int64),
                                                     np.array([2], np.int64), np.array([-2], np.int64)], 17),
    "split-num-outputs": ("Split", {"axis": 2, "num_outputs": 3}, (1, 2, 8), [], 18),
    "depth-to-space-dcr": ("DepthToSpace", {"blocksize": 2, "mode": "DCR"}, (1, 8, 3, 3), [], 17),
    "depth-to-space-crd": ("DepthToSpace", {"blocksize": 2, "mode": "CRD"}, (1, 8, 3, 3), [], 17),
    "gemm-trans": ("Gemm", {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, (4, 3),
                   [np.ones((5, 4), np.float32), np.arange(5, dtype=np.float32)], 17),
    "softmax-opset11": ("Softmax", {"axis": 1}, (2, 3, 4), [], 11),
    "reducemean-opset18": ("ReduceMean", {"keepdims": 0}, (2, 3, 4), [np.array([1, -1], np.int64)], 18),
}


@pytest.mark.parametrize("case", sorted(ONE_OP_CASES))
def test_one_op_matches_onnxruntime(case: str):
    from onnx import TensorProto, helper

    op, attrs, shape, consts, opset = ONE_OP_CASES[case]
    names = ["x"] + ["" if c is None else f"c{i}" for i, c in enumerate(consts)]
    outputs = ["y0", "y1", "y2"] if op == "Split" else ["y0"]
    node = helper.make_node(op, names, outputs, **attrs)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(c, f"c{i}") for i, c in enumerate(consts) if c is not None])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = make_session(model).run(None, {"x": x})
    assert unsupported(model) == []
    got = TorchGraph(model)({"x": torch.from_numpy(x)})
    for g, w in zip(got, want, strict=True):
        assert tuple(g.shape) == w.shape
        np.testing.assert_allclose(g.detach().numpy(), w, rtol=1e-5, atol=1e-5)


# --- task, pull, memory (small hand-built models) ------------------------------------------------


def map_model(hw: int = 32, free: bool = True, depth: int = 1) -> onnx.ModelProto:
    """A text-detector-like net: 2 + ``depth`` convolutions to a one-channel probability map
    (Sigmoid), input [N, 3, H, W] with free N, H, W (``free``) or fixed ones."""
    net = Net(channels=3, hw=hw, seed=2)
    h = net.relu(net.conv("x", 3, 16, 3, name="c1"))
    for i in range(depth):
        h = net.relu(net.conv(h, 16, 16, 3, name=f"c2_{i}" if i else "c2"))
    net.node("Sigmoid", [net.conv(h, 16, 1, 3, name="c3")], out="y")
    model = net.model({"y": [1, 1, hw, hw]})
    if free:
        for value in (model.graph.input[0], model.graph.output[0]):
            for i, name in ((0, "n"), (2, "h"), (3, "w")):
                value.type.tensor_type.shape.dim[i].dim_param = name
    return model


def map_data(count: int, hw: int = 32, seed: int = 0) -> CalibrationSet:
    rng = np.random.default_rng(seed)
    return CalibrationSet({"x": rng.standard_normal((count, 3, hw, hw)).astype(np.float32)}, "random")


def test_early_stopping_uses_the_task_measure_of_a_map(monkeypatch):
    dense = map_model()
    pruned = onnxprune.prune(dense, flops=0.5, input_shapes={"x": (1, 3, 32, 32)}).model
    train, held = map_data(24), map_data(8, seed=1)
    monkeypatch.setattr(distill, "EVAL_EVERY", 2)
    out, d = distill_model(dense, pruned, train, held, steps=8, lr=3e-3)
    assert d.task == "dense" and (d.loss_name, d.score_name) == ("mean abs error", "IoU")
    assert np.isnan(d.kl_before) and np.isnan(d.agreement_after), "no KL or top-1 for a probability map"
    measured = fidelity(dense, pruned, held.samples)
    assert measured.task == "dense"
    assert d.loss_before == pytest.approx(measured.loss, rel=1e-4) and d.score_before == pytest.approx(measured.score)
    losses = {c["step"]: c["held_out_loss"] for c in d.curve}
    assert d.loss_after == min(losses.values()) == losses[d.best_step] < d.loss_before
    assert fidelity(dense, out, held.samples).loss == pytest.approx(d.loss_after, rel=1e-4), "the best step's weights"


def test_pull_keeps_weights_near_the_start():
    dense = map_model()
    pruned = onnxprune.prune(dense, flops=0.5, input_shapes={"x": (1, 3, 32, 32)}).model
    train, held = map_data(16), map_data(8, seed=1)
    start = values(pruned)

    def drift(pull: float) -> float:
        out, d = distill_model(dense, pruned, train, held, steps=12, lr=1e-3, pull=pull)
        assert d.pull == pull and d.best_step == 12, "the held-out loss improved: the last weights were kept"
        after = values(out)
        return sum(float(np.sum((after[n] - start[n]) ** 2)) for n in start)

    # Adam moves each value about lr a step; the pull takes back lr * 300 of the distance a step
    free, pulled = drift(0.0), drift(300.0)
    assert free > 0 and pulled < 0.5 * free
    with pytest.raises(UsageError, match="pull toward the dense weights"):
        distill_model(dense, pruned, train, held, steps=1, pull=-1.0)


def test_micro_batch_shrinks_with_the_memory_budget(monkeypatch):
    from onnxprune.calib.torchgraph import TorchGraph

    monkeypatch.setattr(distill, "MIN_CROP", 16)
    free, fixed = map_model(hw=64), map_model(hw=64, free=False, depth=12)
    sample = {"x": torch.randn(1, 3, 64, 64)}
    for model in (free, fixed):
        net = TorchGraph(model, distill.learnable(model)[0])
        roomy = plan_training(net, sample, (2, 3), model is free, (), 2**30, 16, None)
        assert roomy.micro == 16 and roomy.size is None and roomy.segments == 0
        tight = plan_training(net, sample, (2, 3), model is free, (), roomy.per_sample * 3, 16, None)
        assert tight.micro == 3 and tight.size is None
        starved = plan_training(net, sample, (2, 3), model is free, (), roomy.per_sample // 3, 16, None)
        assert starved.micro == 1
        if model is free:  # a fully convolutional model trains on smaller crops
            assert starved.size is not None and starved.size[0] * starved.size[1] < 64 * 64 and not starved.segments
        else:  # a fixed size: the forward pass is checkpointed instead
            assert starved.size is None and starved.segments == distill.checkpoint_segments(len(net._nodes)) > 1
            assert starved.per_sample < 0.6 * roomy.per_sample


def test_checkpointed_forward_gives_the_same_outputs_and_gradients():
    from onnxprune.calib.torchgraph import TorchGraph

    model = map_model()
    x = {"x": torch.randn(2, 3, 32, 32)}
    grads = []
    for segments in (0, 3):
        net = TorchGraph(model, distill.learnable(model)[0])
        y = distill._forward(net, x, ("c1",), segments)
        (y[0].sum() + y[1].mean()).backward()
        grads.append((y[0].detach(), {n: p.grad.clone() for n, p in net.named_weights().items()}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for name, g in grads[0][1].items():
        torch.testing.assert_close(g, grads[1][1][name])


def test_distill_at_a_small_budget_trains_on_crops(monkeypatch):
    dense = map_model(hw=64)
    pruned = onnxprune.prune(dense, flops=0.5, input_shapes={"x": (1, 3, 64, 64)}).model
    train, held = map_data(8, hw=64), map_data(4, hw=64, seed=1)
    _, roomy = distill_model(dense, pruned, train, held, steps=2)
    assert roomy.micro_batch == 8 and roomy.train_size is None
    assert roomy.memory_budget == min(distill.DEFAULT_TRAIN_MEMORY, distill.machine_memory() // 4)
    monkeypatch.setattr(distill, "MIN_CROP", 16)
    monkeypatch.setattr(distill, "training_budget", lambda budget: 100_000)  # about a quarter of a sample
    _, tight = distill_model(dense, pruned, train, held, steps=2, memory_budget=1)
    assert tight.micro_batch == 1 and tight.batch == 8 and tight.memory_budget == 100_000
    assert tight.train_size[0] * tight.train_size[1] < 64 * 64, "random crops; evaluated at 64x64"
    assert tight.loss_before == pytest.approx(roomy.loss_before, rel=1e-5)
