"""Prune + INT8 against INT8 alone: is onnxprune worth adding to a pipeline that already quantizes?

    python tools/bench_int8.py [--targets flops:0.95 flops:0.85 latency:0.45] [--models resnet50 convnext_tiny]

MobileNetV2 with its ImageNet weights (tools/bench_fidelity.py: photos shipped inside scikit-image
and scikit-learn, held out by photo). Calibration: --crops / 2 crops of two thirds of the photos;
"held-out crops": as many other crops of the same photos (onnxprune's --holdout, which chooses the
activation calibration and the re-fit); "held-out photos": crops of the other third, never seen by
any calibration. Agreement (top-1) and KL are measured against the dense FP32 model.

Rows, timed alternating in one process on onnxruntime CPU, 1 thread, batch 1 (``onnxprune.bench``):
- dense FP32;
- ORT int8: what onnxruntime's quantization alone makes of the dense model (``quant_pre_process``
  then ``quantize_static``: QDQ, per-channel, U8S8, MinMax; ``calib.int8.onnxruntime_int8``): the
  free alternative;
- onnxprune ``--quantize int8`` of the dense model, weights rounded by OBS with the layers that its
  default ``--keep-fp32 auto`` keeps in FP32 (timed here, onnxruntime CPU, 1 thread), and rounded
  to nearest with the same FP32 layers;
- for each target: onnxprune's default FP32 prune with --calib (act + auto re-fit), then the same
  model quantized with nearest and with OBS rounding (what ``--quantize int8`` runs); a latency
  target (``latency:0.45``, of dense FP32) is searched as ``--latency R --quantize int8`` searches it,
  its candidates timed in INT8.

Bars (issue 21): a pruned INT8 (OBS) row >= 1.2x faster than ORT int8, with agreement on held-out
crops within 0.05 of ORT int8's and KL on held-out photos at most 1.25x ORT int8's; OBS rounding at
least 1.5x lower photo KL than nearest on the same model. ``--models``: random-weight models, speed
only (dense FP32, ORT int8, onnxprune --flops 0.5 --calib random --quantize int8).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_fidelity import crops, crops_and_sources, export_pretrained, photos, split_photos  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.calib.data import CalibrationSet  # noqa: E402
from onnxprune.calib.fidelity import fidelity  # noqa: E402
from onnxprune.calib.int8 import onnxruntime_int8, quantize_int8  # noqa: E402
from onnxprune.deploy.runners import latency_ratio  # noqa: E402


def parse_target(text: str) -> dict:
    kind, value = text.split(":")
    return {kind: float(value)}


def time_models(models: list[onnx.ModelProto], seconds: float) -> list[float]:
    """Median ms of each model, alternating, onnxruntime CPU, 1 thread, batch 1."""
    result = onnxprune.bench(models, threads=1, runs=50, min_seconds=seconds, warmup_s=1.0)
    return [lat.median_ms for lat in result.latencies]


def int8_rows(name: str, model: onnx.ModelProto, calib: CalibrationSet, held: CalibrationSet
              ) -> list[tuple[str, onnx.ModelProto, float]]:
    """``model`` quantized as ``--quantize int8`` does (OBS rounding, layers kept FP32 by auto, timed
    on onnxruntime CPU at 1 thread), and the same with nearest rounding and the same FP32 layers."""
    start = time.perf_counter()
    obs, how = quantize_int8(model, calib, held, timer=partial(latency_ratio, threads=1))
    took = time.perf_counter() - start
    start = time.perf_counter()
    kept = [n for n, _ in how.kept_fp32] or "none"
    nearest, near = quantize_int8(model, calib, held, rounding="nearest", keep_fp32=kept)
    return [(f"{name} --quantize int8 ({near.summary()})", nearest, time.perf_counter() - start),
            (f"{name} --quantize int8 ({how.summary()})", obs, took)]


def mobilenet_rows(targets: list[dict], n: int, cache: Path, seconds: float) -> None:
    model = export_pretrained(cache / "mobilenet_v2_imagenet.onnx")
    dense = onnx.load(str(model))
    seen, new = split_photos(photos())
    x, src = crops_and_sources(seen, n, seed=0)
    calib = CalibrationSet({"input": x}, f"{n} crops of {len(seen)} photos", images=True, sources=src)
    x, src = crops_and_sources(seen, n, seed=2)
    held = CalibrationSet({"input": x}, f"{n} other crops of them", images=True, sources=src)
    fresh = {"input": crops(new, n, seed=1)}

    rows: list[tuple[str, onnx.ModelProto, float]] = [("dense FP32", dense, 0.0)]
    start = time.perf_counter()
    rows.append(("ORT int8 of dense (MinMax, per-channel)", onnxruntime_int8(dense, calib),
                 time.perf_counter() - start))
    rows += int8_rows("onnxprune", dense, calib, held)
    for target in targets:
        flag = " ".join(f"--{k} {v:g}" for k, v in target.items())
        start = time.perf_counter()
        # a latency target is searched as --quantize int8 searches it (candidates timed in INT8)
        int8 = {"quantize": "int8"} if "latency" in target else {}
        result = onnxprune.prune(model, calib=calib, holdout=held, **target, **int8)
        pruned = result.float_model if int8 else result.model
        rows.append((f"onnxprune {flag} FP32", pruned, time.perf_counter() - start))
        rows += int8_rows(f"onnxprune {flag}", pruned, calib, held)

    ms = time_models([m for _, m, _ in rows], seconds)
    table = Table(title=f"MobileNetV2 (ImageNet weights), onnxruntime CPU 1 thread: {len(calib)} calibration crops of "
                        f"{len(seen)} photos, {len(held)} held-out crops of them, {n} crops of {len(new)} held-out "
                        "photos; agreement and KL against dense FP32")
    for col in ("model", "ms", "vs dense", "vs ORT int8", "crops top-1", "crops KL", "photos top-1", "photos KL",
                "s to make", "bar"):
        table.add_column(col, justify="left" if col in ("model", "bar") else "right")
    figures = []
    for (name, m, _), t in zip(rows, ms, strict=True):
        a, b = fidelity(dense, m, held.samples), fidelity(dense, m, fresh)
        figures.append((name, t, a, b))
    ort = figures[1]
    nearest_kl = {}
    for i, (name, t, a, b) in enumerate(figures):
        bar = ""
        if "nearest" in name:
            nearest_kl[name.split(" --quantize")[0]] = b.kl
        elif "OBS" in name:
            base = name.split(" --quantize")[0]
            ratio = nearest_kl[base] / b.kl if b.kl else float("inf")
            bar = f"OBS {ratio:.2f}x lower photo KL than nearest ({'pass' if ratio >= 1.5 else 'MISS'} >= 1.5x)"
            if base != "onnxprune":
                speed = ort[1] / t
                ok = speed >= 1.2 and a.top1_agreement >= ort[2].top1_agreement - 0.05 and b.kl <= 1.25 * ort[3].kl
                gap = a.top1_agreement - ort[2].top1_agreement
                bar += (f"; vs ORT int8: {speed:.2f}x faster (>= 1.2), crops top-1 {gap:+.3f} (>= -0.05), "
                        f"photo KL {b.kl / ort[3].kl:.2f}x (<= 1.25): {'pass' if ok else 'MISS'}")
        table.add_row(name, f"{t:.2f}", f"{figures[0][1] / t:.2f}x", f"{ort[1] / t:.2f}x", f"{a.top1_agreement:.3f}",
                      f"{a.kl:.3f}", f"{b.top1_agreement:.3f}", f"{b.kl:.3f}", f"{rows[i][2]:.0f}", bar)
    Console(width=max(Console().width, 200)).print(table)


def speed_rows(names: list[str], cache: Path, seconds: float) -> None:
    from export_models import export_model

    table = Table(title="random weights, speed only: onnxruntime CPU 1 thread, batch 1")
    for col in ("model", "dense FP32 ms", "ORT int8 ms", "onnxprune --flops 0.5 --quantize int8 ms",
                "vs dense", "vs ORT int8"):
        table.add_column(col, justify="right")
    for name in names:
        path = export_model(name, "legacy", cache)
        dense = onnx.load(str(path))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((32, 3, 224, 224)).astype(np.float32)
        calib = CalibrationSet({dense.graph.input[0].name: x}, "32 random samples")
        ort_int8 = onnxruntime_int8(dense, calib)
        ours = onnxprune.prune(path, flops=0.5, calib="random", calib_count=32, quantize="int8").model
        d, o, p = time_models([dense, ort_int8, ours], seconds)
        table.add_row(name, f"{d:.2f}", f"{o:.2f}", f"{p:.2f}", f"{d / p:.2f}x", f"{o / p:.2f}x")
    Console(width=max(Console().width, 160)).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="*", default=[{"flops": 0.95}, {"flops": 0.85}, {"latency": 0.45}],
                        type=parse_target, help="KIND:VALUE, KIND one of flops, params, latency (default "
                                                "flops:0.95 flops:0.85 latency:0.45)")
    parser.add_argument("--models", nargs="*", default=["resnet50", "convnext_tiny"],
                        help="random-weight models for the speed-only rows (none: skip)")
    parser.add_argument("--crops", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per model (each at least 50 runs)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "models")
    args = parser.parse_args()
    mobilenet_rows(args.targets, args.crops // 2, args.cache, args.seconds)
    if args.models:
        speed_rows(args.models, args.cache, args.seconds)


if __name__ == "__main__":
    main()
