"""`--latency` target against `--flops` pruning, on onnxruntime CPU.

    python tools/bench_latency_target.py [--models resnet50 vit_b_16] [--latency 0.6] [--threads 1]

For each model (exported with random weights, cached in .cache/models):

1. ``onnxprune.prune(model, latency=R)`` (the measured search, rounding chosen by measurement);
2. ``onnxprune.sweep(model, flops=GRID)`` (plain FLOPs targets, default --round-to 1);
3. dense, the latency-target model and every sweep model are then timed together, alternating
   in one process (an independent measurement, not the search's own), and each pruned model's
   fidelity to the dense model is measured on the same random inputs (top-1 agreement, KL of
   the softmaxes, cosine of the logits);
4. the sweep's fidelity is interpolated at the latency the latency-target model measured, so
   the two are compared at equal measured latency.

Bars (issue 4): the latency-target model ends within 0.55-0.65 of dense latency, and keeps at
least as much fidelity (KL no higher, cosine no lower) as FLOPs pruning at the same latency.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import onnxprune  # noqa: E402
from onnxprune.deploy import bench_feed, measure  # noqa: E402
from onnxprune.fidelity import fidelity  # noqa: E402
from onnxprune.load import read_model, save_model  # noqa: E402


def _interp(x: float, xs: list[float], ys: list[float]) -> float | None:
    """Linear interpolation of ys at x; None outside the measured range."""
    order = np.argsort(xs)
    xs_s, ys_s = np.asarray(xs)[order], np.asarray(ys)[order]
    if not xs_s[0] <= x <= xs_s[-1]:
        return None
    return float(np.interp(x, xs_s, ys_s))


def randomise_zero_weights(model: onnx.ModelProto, seed: int = 0) -> int:
    """Fill all-zero Gemm/MatMul weights with small random values; returns how many.

    torchvision initialises ViT's classifier to zeros, so with random weights every pruned ViT
    would output exactly the dense logits (the bias) and any fidelity comparison is vacuous.
    """
    rng = np.random.default_rng(seed)
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and len(n.input) > 1}
    count = 0
    for init in model.graph.initializer:
        if init.name in weights:
            w = numpy_helper.to_array(init)
            if w.size > 1 and not w.any():
                init.CopyFrom(numpy_helper.from_array((rng.standard_normal(w.shape) * 0.02).astype(w.dtype),
                                                      init.name))
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16"])
    parser.add_argument("--latency", type=float, default=0.6)
    parser.add_argument("--grid", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=32, help="random inputs for fidelity")
    parser.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo"])
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "models")
    args = parser.parse_args()

    console = Console(width=160)
    table = Table(title=f"--latency {args.latency} vs --flops pruning, onnxruntime CPU, {args.threads} thread(s), "
                        f"median of {args.runs} alternating runs")
    for col in ("model", "run", "FLOPs ratio", "latency ratio", "top-1 agree", "KL", "cosine", "search s", "bar"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory(prefix="onnxprune-bench-") as folder:
        for name in args.models:
            _bench_one(name, args, Path(folder), table, console)
    console.print(table)


def _bench_one(name: str, args: argparse.Namespace, tmp: Path, table: Table, console: Console) -> None:
    """Prune one model both ways, time and score them together, and add its rows to the table."""
    from export_models import export_model

    dense, _ = read_model(export_model(name, args.exporter, args.cache))
    if randomise_zero_weights(dense):
        console.print(f"{name}: all-zero classifier weights replaced by random ones (see randomise_zero_weights)")
    path = tmp / f"{name}.onnx"
    save_model(dense, path, external=True)
    start = time.perf_counter()
    target = onnxprune.prune(path, latency=args.latency, threads=args.threads)
    search_s = time.perf_counter() - start
    swept = onnxprune.sweep(path, flops=args.grid, keep_models=True)
    models = [target.model] + [p.model for p in swept.points]
    lat = measure([dense, *models], bench_feed(dense), runs=args.runs, threads=args.threads)
    ratios = [x.median_ms / lat[0].median_ms for x in lat[1:]]
    rng = np.random.default_rng(0)
    feed = bench_feed(dense, 1)
    samples = {k: rng.standard_normal((args.samples, *v.shape[1:])).astype(v.dtype) for k, v in feed.items()}
    fids = [fidelity(dense, m, samples) for m in models]

    reached = ratios[0]
    in_band = 0.55 <= reached <= 0.65
    kl_at = _interp(reached, ratios[1:], [f.kl for f in fids[1:]])
    agree_at = _interp(reached, ratios[1:], [f.top1_agreement for f in fids[1:]])
    cos_at = _interp(reached, ratios[1:], [f.cosine for f in fids[1:]])
    chosen = target.latency_search.chosen
    table.add_row(name, f"--latency {args.latency} (round-to {chosen.round_to})", f"{target.flops_ratio:.3f}",
                  f"{reached:.3f}", f"{fids[0].top1_agreement:.1%}", f"{fids[0].kl:.4f}", f"{fids[0].cosine:.4f}",
                  f"{search_s:.1f}", "in 0.55-0.65" if in_band else "MISS: outside 0.55-0.65")
    for point, ratio, fid in zip(swept.points, ratios[1:], fids[1:], strict=True):
        table.add_row("", f"--flops {point.target:g}", f"{point.flops_ratio:.3f}", f"{ratio:.3f}",
                      f"{fid.top1_agreement:.1%}", f"{fid.kl:.4f}", f"{fid.cosine:.4f}", "", "")
    same = [p.target for p, f in zip(swept.points, fids[1:], strict=True)
            if abs(p.flops_ratio - target.flops_ratio) < 1e-3 and abs(f.kl - fids[0].kl) < 1e-6]
    if same:  # the search ended on a --flops grid model: equal fidelity; interpolating would compare noise
        verdict = f"tie: the same model as --flops {same[0]:g}"
    elif kl_at is None:
        verdict = "n/a: latency outside the --flops grid"
    else:
        better = fids[0].kl <= kl_at and fids[0].cosine >= cos_at
        verdict = "pass" if better else "MISS: --flops keeps more fidelity"
    if kl_at is not None:
        table.add_row("", f"--flops at latency {reached:.3f} (interpolated)", "", f"{reached:.3f}",
                      f"{agree_at:.1%}", f"{kl_at:.4f}", f"{cos_at:.4f}", "", verdict)
    else:
        table.add_row("", "", "", "", "", "", "", "", verdict)
    table.add_section()


if __name__ == "__main__":
    main()
