"""INT8 (``--quantize int8``): onnxruntime's static QDQ quantization, with the weights rounded by
OBS (GPTQ) instead of to the nearest step.

onnxruntime.quantization does what it does well and is not rewritten here: QDQ insertion and the
activation ranges (MinMax, Entropy or Percentile calibration). On top of it:

1. the activation calibration method is chosen by the loss on the held-out samples (each method's
   ranges are computed once, cached in a temporary folder);
2. each Conv (group 1), Gemm and MatMul weight is re-rounded on its own per-output-channel grid
   (ORT's symmetric int8 scales, unchanged) by OBS: columns are rounded left to right and each
   column's rounding error is spread over the columns not yet rounded through the inverse
   Hessian's Cholesky factor (``obs.obs_round``). The layer is fitted to the *dense* layer's
   output on the inputs it really sees in the INT8 model (quantized activations X~): the weights
   first move to W X^T X~ (X~^T X~ + d)^-1, then are rounded with X~^T X~ as Hessian, so the
   rounding also absorbs part of the activations' quantization error;
3. layers stay FP32 where that pays (``keep_fp32="auto"``, the default): the first layers in graph
   order (the stem, as a prefix of 1 to ``STEM`` layers) and the layers whose INT8 output error is
   largest are tried in FP32, each kept only if the model is then at least ``FASTER`` faster on the
   backend without losing held-out accuracy, or its held-out loss drops by ``KEEP_GAIN`` at no more
   than ``SLOWER`` extra latency. On onnxruntime's CPU the stem often runs *slower* in INT8: on the
   ImageNet MobileNetV2 the 3-channel first convolution and the 112x112 depthwise after it took 293
   and 148 us in INT8 against 250 and 119 in FP32, and quantizing their activations was most of
   the INT8 error (KL on new photos 0.48 -> 0.18 with both in FP32, the model 1.10x faster).
   Names can also be given, or "none".

Depthwise convolutions (group > 1) keep onnxruntime's nearest rounding.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UsageError, first_line
from ..graph.layers import MAX_ROWS, find_layers, matrix_to_weight
from ..graph.load import save_model
from ..progress import Progress, no_progress
from .activations import batch_size_for, batched, layer_inputs
from .data import CalibrationSet
from .obs import damp, obs_round
from .reconstruct import MIN_ROWS, ROWS_PER_COLUMN
from .walk import ForwardWalk, frontier_for

log = logging.getLogger(__name__)

ACTIVATION_METHODS = ("minmax", "entropy", "percentile")
ROUNDINGS = ("obs", "nearest")
KEEP_GAIN = 0.1  # a layer stays FP32 (auto) for accuracy only if that lowers the held-out loss by 10% or more
KEEP_TRIES = 4  # auto tries this many layers, worst output error first, besides the stem
STEM = 3  # auto tries the first 1, 2 and 3 layers in FP32
FASTER = 0.03  # kept for speed: the model at least 3% faster (beyond the timing noise of alternating runs)
SLOWER = 0.02  # kept for accuracy: the model at most 2% slower
# The fit's ridge, a multiple of the mean diagonal of X~^T X~. MobileNetV2 (ImageNet weights), 64
# calibration crops, KL on crops of 8 photos calibration never saw: nearest 0.31; ridge 0.01: 0.43
# (better on the calibration photos' crops, 0.12 vs 0.33, but it fits them); 0.1: 0.28; 1: 0.18;
# 3: 0.16; 10: 0.19. Rounding by OBS without the fit (plain GPTQ, target W): 0.30.
RIDGE = 1.0


Timer = Callable[[onnx.ModelProto, onnx.ModelProto], float]  # (a, b) -> a's latency / b's, on the backend


@dataclass
class Quantization:
    """What ``quantize_int8`` did: the activation calibration chosen and the held-out loss of each
    method tried (nearest rounding), the weights' rounding and the layers it rounded, the layers
    kept in FP32 and why."""

    activations: str
    tried: dict[str, float]
    loss_name: str
    rounding: str  # what the weights were rounded by: obs, or nearest (asked for, or OBS did worse held out)
    rounded: int = 0
    kept_fp32: list[tuple[str, str]] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)  # held-out loss by rounding, when OBS was tried

    def summary(self) -> str:
        """``percentile activations, OBS rounding, 1 layer FP32``."""
        rounding = "OBS" if self.rounding == "obs" else "nearest"
        kept = f", {len(self.kept_fp32)} layer{'s' * (len(self.kept_fp32) != 1)} FP32" if self.kept_fp32 else ""
        return f"{self.activations} activations, {rounding} rounding{kept}"

    def describe(self) -> str:
        """Everything in one line: the methods tried and their held-out loss, what was kept and why."""
        tried = ", ".join(f"{k} {v:.4g}" for k, v in self.tried.items())
        kept = "; ".join(f"{name} ({why})" for name, why in self.kept_fp32) or "none"
        rounding = f"{self.rounded} layers rounded by OBS" if self.rounding == "obs" else "nearest rounding"
        if len(self.losses) == 2:
            rounding += (f" (held-out {self.loss_name}: nearest {self.losses['nearest']:.4g}, "
                         f"OBS {self.losses['obs']:.4g})")
        return (f"INT8 (QDQ, per-channel weights): activations {self.activations} (held-out {self.loss_name}: "
                f"{tried}); {rounding}; kept in FP32: {kept}")

    def to_dict(self) -> dict:
        return {"precision": "int8", "format": "QDQ", "activations": self.activations, "tried": dict(self.tried),
                "loss_name": self.loss_name, "rounding": self.rounding, "rounded": self.rounded,
                "rounding_losses": dict(self.losses),
                "kept_fp32": [{"node": n, "why": w} for n, w in self.kept_fp32]}


def ort_quantization():
    """``onnxruntime.quantization``, imported without its side effect on the caller's logging: one of
    its modules runs ``logging.basicConfig(level=INFO)`` on import, which would add a handler to the
    root logger and turn on INFO logs of every library in the process."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    import onnxruntime.quantization
    import onnxruntime.quantization.shape_inference  # noqa: F401 - quant_pre_process lives there

    root.setLevel(level)
    root.handlers[:] = handlers
    return onnxruntime.quantization


def _reader(feeds: list[dict[str, np.ndarray]]):
    CalibrationDataReader = ort_quantization().CalibrationDataReader  # noqa: N806 - the class's name

    class Reader(CalibrationDataReader):
        """The feeds, a range at a time (``CalibStridedMinMax``: ranges are merged after each batch,
        so onnxruntime holds one batch's activations, not all of them)."""

        def __init__(self) -> None:
            self.set_range(0, len(feeds))

        def __len__(self) -> int:
            return len(feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(feeds[start_index:end_index])

        def get_next(self) -> dict | None:
            return next(self._it, None)

    return Reader()


def _method(name: str):
    CalibrationMethod = ort_quantization().CalibrationMethod  # noqa: N806 - the class's name
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


class _Quantizer:
    """One float model, its calibration feeds and a temporary folder of cached activation ranges:
    ``qdq(method, exclude)`` is onnxruntime's QDQ model for them (ranges computed once per method)."""

    def __init__(self, model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], folder: Path) -> None:
        # a path, not the proto: quantize_static saves a proto it is given with external data, which
        # rewrites the caller's tensors in place to point at a file it then deletes
        self.model = folder / "model.onnx"
        save_model(model, self.model)
        self.feeds, self.folder = feeds, folder
        quant_pre_process = ort_quantization().shape_inference.quant_pre_process
        pre = folder / "model.pre.onnx"
        try:  # onnxruntime's recommended pre-processing: shape inference and graph optimisation
            with _quiet_ort():
                quant_pre_process(str(self.model), str(pre))
            self.model = pre
        except Exception as exc:  # noqa: BLE001 - its symbolic shape inference fails on some graphs
            log.info("onnxruntime's quantization pre-processing failed (%s); quantizing the model as it is",
                     first_line(exc))

    def qdq(self, method: str, exclude: list[str] = ()) -> onnx.ModelProto:
        q = ort_quantization()
        out = self.folder / "model.int8.onnx"
        with _quiet_ort():
            q.quantize_static(self.model, out, _reader(self.feeds), quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              calibrate_method=_method(method), nodes_to_exclude=list(exclude) or None,
                              calibration_cache_path=self.folder / f"{method}.ranges",
                              extra_options={"CalibStridedMinMax": 1})
        return onnx.load(str(out))


@contextlib.contextmanager
def _quiet_ort():
    """onnxruntime.quantization prints its calibration's progress and logs a pre-processing hint at
    WARNING on the root logger; library code does not print (the model may be going to stdout):
    its prints are dropped and the root logger raised to ERROR while it runs (not under --debug)."""
    root = logging.getLogger()
    level = root.level
    if level != logging.DEBUG:
        root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def refuse_quantized(model: onnx.ModelProto) -> None:
    """A usage error for a model that is already QDQ: quantizing it again is not what anyone means."""
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node):
        raise UsageError("--quantize int8: the model is already quantized (it has QuantizeLinear/DequantizeLinear "
                         "nodes); prune it without --quantize")


def onnxruntime_int8(model: onnx.ModelProto, calib: CalibrationSet) -> onnx.ModelProto:
    """What onnxruntime's quantization alone makes of ``model``, the free alternative to compare
    with: ``quant_pre_process`` then ``quantize_static`` (QDQ, per-channel int8 weights, uint8
    activations, MinMax calibration on ``calib``), nearest rounding."""
    graph = gs.import_onnx(model)
    feeds = batched(calib.samples, batch_size_for(graph, 8, calib.samples))
    with tempfile.TemporaryDirectory(prefix="onnxprune-int8-") as tmp:
        return _Quantizer(model, feeds, Path(tmp)).qdq("minmax")


def quantize_int8(model: onnx.ModelProto, calib: CalibrationSet, held_out: CalibrationSet, *,
                  rounding: str = "obs", keep_fp32: str | list[str] | None = None, task: str | None = None,
                  timer: Timer | None = None, memory_budget: int | None = None, progress: Progress | None = None
                  ) -> tuple[onnx.ModelProto, Quantization]:
    """``model`` (float) as a QDQ INT8 model that onnxruntime and TensorRT run in INT8, and what was
    done. ``calib`` fits the activation ranges and the weights' rounding; ``held_out`` chooses the
    activation calibration and the layers kept in FP32. ``keep_fp32``: "auto" (also None, the
    default), "none", or node names. ``timer(a, b)``: a's latency over b's on the backend the model
    is for; without one, auto keeps layers in FP32 for accuracy only. ``rounding``: "obs" (default)
    or "nearest" (onnxruntime's own). ``memory_budget``: bytes the process may hold (--max-memory):
    a quarter of it for each walk's activations, the rest on disk."""
    from .fidelity import fidelity

    if rounding not in ROUNDINGS:
        raise UsageError(f"unknown rounding {rounding!r}; choose {' or '.join(ROUNDINGS)}")
    step = progress or no_progress
    refuse_quantized(model)
    graph = gs.import_onnx(model)
    for i, node in enumerate(graph.nodes):  # layers are found again in the QDQ model by name
        node.name = node.name or f"onnxprune_node_{i}"
    model = gs.export_onnx(graph)
    names = {n.name for n in graph.nodes}
    words = [keep_fp32] if isinstance(keep_fp32, str) else list(keep_fp32 or ["auto"])
    auto = words == ["auto"]
    given = [] if words in (["auto"], ["none"]) else words
    unknown = [n for n in given if n not in names]
    if unknown:
        raise UsageError(f"--keep-fp32: no node named {unknown[0]!r} in the model")
    feeds = batched(calib.samples, batch_size_for(graph, 8, calib.samples))

    def loss(qdq: onnx.ModelProto) -> tuple[float, str]:
        f = fidelity(model, qdq, held_out.samples, task=task or "auto")
        return f.loss, f.loss_name

    with tempfile.TemporaryDirectory(prefix="onnxprune-int8-") as tmp:
        quantizer = _Quantizer(model, feeds, Path(tmp))
        tried, loss_name = {}, ""
        for method in ACTIVATION_METHODS:
            step(f"INT8: calibrating activations ({method})")
            tried[method], loss_name = loss(quantizer.qdq(method, given))
        method = min(tried, key=tried.get)
        kept = [(n, "asked") for n in given]
        if auto:
            step("INT8: finding layers that quantize worst")
            kept += _auto_fp32(quantizer, method, graph, feeds, tried[method], loss, timer)
        qdq = quantizer.qdq(method, [n for n, _ in kept])
    report = Quantization(method, tried, loss_name, "nearest", kept_fp32=kept)
    if rounding == "obs":
        report.losses["nearest"] = tried[method] if not kept else loss(qdq)[0]
        step("INT8: rounding weights by OBS")
        qgraph = gs.import_onnx(qdq)
        rounded = round_weights(graph, qgraph, feeds, memory_budget=memory_budget, progress=step)
        candidate = gs.export_onnx(qgraph)
        report.losses["obs"] = loss(candidate)[0]
        # kept only where it helps on held-out data: on a random-weight MobileNetV2 (no structure for the
        # fit to find) OBS rounding was worse than nearest; on the real one 1.5-2x better
        if report.losses["obs"] <= report.losses["nearest"]:
            qdq, report.rounding, report.rounded = candidate, "obs", rounded
    return qdq, report


def _auto_fp32(quantizer: _Quantizer, method: str, graph: gs.Graph, feeds: list[dict], base: float, loss,
               timer: Timer | None) -> list[tuple[str, str]]:
    """Layers kept in FP32 by ``keep_fp32="auto"``: the stem (the first 1 to ``STEM`` layers), then
    the ``KEEP_TRIES`` layers with the largest relative output error in the INT8 model, each tried on
    top of what was kept before and kept if the model gets ``FASTER`` without a higher held-out loss,
    or the held-out loss drops by ``KEEP_GAIN`` at most ``SLOWER`` slower (``timer``; without one,
    the loss alone decides)."""
    current = quantizer.qdq(method)
    errors = output_errors(graph, gs.import_onnx(current), feeds[:2])
    in_order = [n.name for n in graph.nodes if n.name in errors]
    trials = [(in_order[:k], f"the first {k} layers" if k > 1 else "the first layer")
              for k in range(1, min(STEM, len(in_order)) + 1)]
    trials += [([name], f"output error {errors[name]:.1%}")
               for name in sorted(errors, key=errors.get, reverse=True)[:KEEP_TRIES]]
    kept: list[tuple[str, str]] = []
    for layers, why in trials:
        names = [n for n, _ in kept]
        new = [n for n in layers if n not in names]
        if not new:
            continue
        trial = quantizer.qdq(method, names + new)
        trial_loss, _ = loss(trial)
        ratio = timer(trial, current) if timer is not None else 1.0
        faster = ratio <= 1 - FASTER and trial_loss <= base
        better = trial_loss <= base * (1 - KEEP_GAIN) and ratio <= 1 + SLOWER
        if faster or better:
            timed = f", latency x{ratio:.2f}" if timer is not None else ""
            kept += [(n, f"{why}: held-out loss {base:.4g} -> {trial_loss:.4g}{timed}") for n in new]
            current, base = trial, trial_loss
    return kept


def output_errors(graph: gs.Graph, qgraph: gs.Graph, feeds: list[dict]) -> dict[str, float]:
    """Relative output error ||y_int8 - y|| / ||y|| of each layer (Conv, Gemm, MatMul) the INT8
    model quantized, by node name, on ``feeds``. A layer is compared where its INT8 copy writes
    (after a ReLU or Clip that onnxruntime fused into it, which the float model computes too)."""
    qnodes = {n.name: n for n in qgraph.nodes if n.op in ("Conv", "Gemm", "MatMul") and n.name}
    tensors = graph.tensors()
    where = {n.name: qnodes[n.name].outputs[0].name for n in graph.nodes
             if n.name in qnodes and qnodes[n.name].outputs[0].name in tensors}
    names = sorted(set(where.values()))
    num, den = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for ref, got in zip(layer_inputs(graph, names, feeds), layer_inputs(qgraph, names, feeds), strict=True):
        for name in names:
            num[name] += float(np.sum((got[name] - ref[name]) ** 2))
            den[name] += float(np.sum(ref[name] ** 2))
    return {node: (num[t] / den[t]) ** 0.5 if den[t] > 0 else 0.0 for node, t in where.items()}


@dataclass
class _Target:
    """A layer of the float model and the int8 weight, scales and input of its copy in the QDQ model."""

    layer: object  # layers.Layer
    node: gs.Node  # the QDQ model's node
    q: gs.Constant  # int8 weight
    scale: np.ndarray  # per output row of the weight matrix
    qmin: int
    qmax: int


def _targets(graph: gs.Graph, qgraph: gs.Graph) -> list[_Target]:
    """The float model's solvable layers whose QDQ copy reads a per-output-channel (or per-tensor)
    symmetric int8 weight through a DequantizeLinear."""
    by_name = {n.name: n for n in qgraph.nodes if n.name}  # a fused activation renames the output, not the node
    out = []
    for layer in find_layers(graph):
        node = by_name.get(layer.node.name)
        if node is None or node.op != layer.node.op or len(node.inputs) < 2 or not node.inputs[1].inputs:
            continue
        dq = node.inputs[1].inputs[0]
        if dq.op != "DequantizeLinear" or not isinstance(dq.inputs[0], gs.Constant):
            continue
        q = dq.inputs[0]
        values = np.asarray(q.values)
        if values.dtype != np.int8 or values.shape != np.asarray(layer.weight.values).shape:
            continue
        scale = np.asarray(dq.inputs[1].values, np.float64)
        zero = np.asarray(dq.inputs[2].values) if len(dq.inputs) > 2 and isinstance(dq.inputs[2], gs.Constant) else 0
        if np.any(zero != 0):
            continue
        out_axis = layer.axes[0]
        if scale.ndim == 1 and scale.size > 1:
            if dq.attrs.get("axis", 1) % values.ndim != out_axis:
                continue
        rows = layer.outputs
        out.append(_Target(layer, node, q, np.broadcast_to(scale.reshape(-1), (rows,)).copy()
                           if scale.size in (1, rows) else None, -128, 127))
    return [t for t in out if t.scale is not None]


def round_weights(graph: gs.Graph, qgraph: gs.Graph, feeds: list[dict[str, np.ndarray]], *,
                  memory_budget: int | None = None, progress: Progress | None = None) -> int:
    """Re-round the int8 weights of ``qgraph`` (the QDQ copy of ``graph``) by OBS, in place, fitted
    to the float layers' outputs on the quantized inputs; returns the number of layers rounded.

    Layers go in graph order, both models walked forward once (``walk.ForwardWalk``): a layer is
    fitted to the inputs the layers rounded before it really produce. (Fitted all at once, each
    layer corrected the rounding errors of nearest-rounded layers before it, which were then gone:
    MobileNetV2's held-out KL went from 0.29 to 5.) ``memory_budget``: as ``quantize_int8``'s."""
    step = progress or no_progress
    targets = _targets(graph, qgraph)
    frontier = frontier_for(memory_budget)
    with ForwardWalk(graph, feeds, frontier) as float_walk, ForwardWalk(qgraph, feeds, frontier) as int8_walk:
        for t in targets:
            step(f"INT8: rounding {t.layer.name}")
            columns = t.layer.columns
            gram, cross = np.zeros((columns, columns)), np.zeros((columns, columns))
            limit = min(MAX_ROWS, max(MIN_ROWS, -(-ROWS_PER_COLUMN * columns // len(feeds))))
            qx = t.node.inputs[0].name
            for x_batch, xq_batch in zip(float_walk.values(t.layer.x.name), int8_walk.values(qx), strict=True):
                x = t.layer.rows_of(x_batch, limit).astype(np.float32, copy=False)
                xq = t.layer.rows_of(xq_batch, limit).astype(np.float32, copy=False)
                gram += xq.T @ xq
                cross += xq.T @ x
            float_walk.release(t.layer.x.name)
            int8_walk.release(qx)
            w = t.layer.matrix().astype(np.float64)
            h, _ = damp(gram, RIDGE)
            # the float layer's output on the quantized inputs, a ridge (on the diagonal) pulling
            # toward the float weights: W (X^T X~ + r) (X~^T X~ + r)^-1
            target = np.linalg.solve(h, (cross + (h - gram)) @ w.T).T
            levels = obs_round(target, h, t.scale, t.qmin, t.qmax)
            t.q.values = np.ascontiguousarray(matrix_to_weight(t.node, levels, np.shape(t.q.values)).astype(np.int8))
    return len(targets)


__all__ = ["ACTIVATION_METHODS", "ROUNDINGS", "Quantization", "onnxruntime_int8", "ort_quantization", "output_errors",
           "quantize_int8", "refuse_quantized", "round_weights"]
