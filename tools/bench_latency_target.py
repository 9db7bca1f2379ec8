"""`--latency` (latency table + knapsack) against `--flops` pruning, on onnxruntime CPU.

    python tools/bench_latency_target.py [--models resnet50 mobilenet_v2] [--latency 0.5] [--threads 1 2]
                                         [--fidelity]

For each model (exported with random weights, cached in .cache/models) and thread count:

1. ``onnxprune.prune(model, latency=R)``: the latency table (built, or read from the cache; the
   build time and the time to read it back are reported), the knapsack, the whole-model check;
2. the same target by the FLOPs-driven measured search (``method="measured"``: regula falsi on
   the FLOPs target against measured latency, the isomorphic plans of ``--flops``);
3. a ``--flops`` grid around R (the default channel multiple, as ``--flops`` prunes);
4. dense and every model above timed together, alternating in one process (an independent
   measurement, not the searches' own); the table's prediction for each plan beside it;
5. the ``--flops`` grid's FLOPs ratio interpolated at the latency the ``--latency`` model measured:
   FLOPs kept at equal measured latency.

``--fidelity`` adds the torchvision MobileNetV2 with ImageNet weights (tools/bench_fidelity.py)
with KL and top-1 agreement to the dense model on held-out crops of real photos, for each model
(``--reconstruct``, so that the figures are not all at chance) and interpolated for the grid.

Bars (issue 12): the ``--latency`` model lands within R +- 0.03 of dense latency, and keeps more
FLOPs than ``--flops`` pruning at the same measured latency.
"""

from __future__ import annotations

import argparse
import sys
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
from onnxprune.api import apply, make_plan  # noqa: E402
from onnxprune.deploy.runners import bench_feed, measure  # noqa: E402
from onnxprune.graph.load import read_model  # noqa: E402
from onnxprune.options import BenchOptions  # noqa: E402
from onnxprune.pipeline import Pipeline  # noqa: E402
from onnxprune.ranking.granularity import backend_multiple  # noqa: E402
from onnxprune.ranking.latency import search_latency  # noqa: E402
from onnxprune.ranking.latency_model import Knapsack, latency_table  # noqa: E402

BAND = 0.03


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
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--grid", type=float, nargs="+", default=None,
                        help="--flops targets (default R-0.1 .. R+0.05 in steps of 0.05)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--fidelity", action="store_true",
                        help="add the ImageNet-weights MobileNetV2 with KL / top-1 agreement (tools/bench_fidelity.py)")
    parser.add_argument("--crops", type=int, default=128, help="real-photo crops for --fidelity (half held out)")
    parser.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo"])
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "models")
    args = parser.parse_args()
    grid = args.grid or [round(args.latency + d, 3) for d in (-0.1, -0.05, 0.0, 0.05)]

    console = Console(width=200)
    table = Table(title=f"--latency {args.latency} (latency table + knapsack) vs --flops, onnxruntime CPU, "
                        f"median of {args.runs} alternating runs")
    cols = ["model", "threads", "run", "FLOPs ratio", "latency ratio", "table predicts", "seconds"]
    args.fid_cols = args.fidelity or "mobilenet_v2_imagenet" in args.models
    cols += ["top-1 agree", "KL"] if args.fid_cols else []
    for col in (*cols, "bar"):
        table.add_column(col, justify="right")
    names = list(args.models) + (["mobilenet_v2_imagenet"] if args.fidelity and
                                     "mobilenet_v2_imagenet" not in args.models else [])
    data = _fidelity_data(args) if "mobilenet_v2_imagenet" in names else None
    for name in names:
        for threads in args.threads:
            _bench_one(name, threads, grid, args, table, console, data if name == "mobilenet_v2_imagenet" else None)
    console.print(table)


def _fidelity_data(args: argparse.Namespace):
    from bench_fidelity import crops, photos

    from onnxprune.calib.data import CalibrationSet

    images = photos()
    return CalibrationSet({"input": crops(images, args.crops)}, f"{args.crops} crops of {len(images)} photos")


def _load(name: str, args: argparse.Namespace, console: Console) -> Path:
    if name == "mobilenet_v2_imagenet":
        from bench_fidelity import export_pretrained

        return export_pretrained(args.cache / "mobilenet_v2_imagenet.onnx")
    from export_models import export_model

    path = Path(export_model(name, args.exporter, args.cache))
    dense, _ = read_model(path)
    if randomise_zero_weights(dense):
        path = path.with_name(path.stem + "_nonzero.onnx")
        onnx.save(dense, path)
        console.print(f"{name}: all-zero classifier weights replaced by random ones (see randomise_zero_weights)")
    return path


def _bench_one(name: str, threads: int, grid: list[float], args: argparse.Namespace, table: Table, console: Console,
               data) -> None:
    """Prune one model both ways at one thread count, time them together and add the rows."""
    path = _load(name, args, console)
    dense, _ = read_model(path)
    extra = {"calib": data, "holdout": 0.5, "reconstruct": True} if data is not None else {}
    start = time.perf_counter()
    try:
        target = onnxprune.prune(path, latency=args.latency, threads=threads, **extra)
    except onnxprune.ModelError as exc:  # a busy machine's timings can defeat the search: say so, go on
        table.add_row(name, str(threads), f"--latency {args.latency}: {exc}", *[""] * (len(table.columns) - 4),
                      "MISS")
        table.add_section()
        return
    table_s = time.perf_counter() - start
    search = target.latency_search

    pipe = Pipeline(dense, bench=BenchOptions(threads=threads))
    analysis, terms, scores = pipe.analysis, pipe.terms("flops"), pipe.scores()
    multiple = backend_multiple("ort-cpu").multiple
    start = time.perf_counter()  # the FLOPs-driven measured search (what --latency did before the table)
    plan_m, search_m = search_latency(pipe, args.latency, round_to=multiple, method="measured")
    measured_s = time.perf_counter() - start
    measured_model = _build(analysis, plan_m, dense, data)
    measured_flops = float(plan_m.predicted)

    start = time.perf_counter()  # read back from the cache: the overhead a second run pays
    lt = latency_table(analysis, dense, threads=threads, round_to=multiple)
    cached_s = time.perf_counter() - start
    knapsack = Knapsack(analysis, lt, terms, scores, multiple)
    grid_models, grid_pred, grid_flops = [], [], []
    for f in grid:
        plan = make_plan(analysis, flops=f)
        grid_pred.append(knapsack.predict(np.array([len(r) for r in plan.removed])) / lt.dense_ms())
        grid_flops.append(float(plan.predicted))
        grid_models.append(_build(analysis, plan, dense, data))

    runs = [target.model, measured_model, *grid_models]
    lat = measure([dense, *runs], bench_feed(dense), runs=args.runs, min_seconds=3.0, threads=threads)
    ratios = [x.median_ms / lat[0].median_ms for x in lat[1:]]
    fids = [_fid(dense, m, data) for m in runs] if data is not None else [None] * len(runs)

    reached = ratios[0]
    g_ratios, g_fids = ratios[2:], fids[2:]
    flops_at = _interp(reached, g_ratios, grid_flops)
    chosen = search.chosen
    err = search.prediction_error
    info = search.table or {}
    note = (f"table {'read from cache' if info.get('cached') else 'built'} ({info.get('build_s', 0):.1f} s to build, "
            f"{cached_s:.2f} s to read back); {len(search.probes)} whole-model check(s), "
            f"prediction error {err:.3f}" if err is not None else "")
    lo, hi = args.latency - BAND, args.latency + BAND
    blank = [""] * (2 if args.fid_cols else 0)

    def _fid_cells(fid) -> list[str]:
        return [f"{fid.top1_agreement:.1%}", f"{fid.kl:.4f}"] if fid is not None else blank

    table.add_row(name, str(threads), f"--latency {args.latency} (table, round-to {chosen.round_to})",
                  f"{target.flops_ratio:.3f}", f"{reached:.3f}", f"{chosen.predicted_ratio:.3f}", f"{table_s:.1f}",
                  *_fid_cells(fids[0]), f"in {lo:.2f}-{hi:.2f}: {'pass' if lo <= reached <= hi else 'MISS'}")
    table.add_row("", "", note, "", "", "", "", *blank, "")
    pred_m = knapsack.predict(np.array([len(r) for r in plan_m.removed])) / lt.dense_ms()
    table.add_row("", "", f"--latency {args.latency}, FLOPs search (regula falsi, {len(search_m.probes)} probes)",
                  f"{measured_flops:.3f}", f"{ratios[1]:.3f}", f"{pred_m:.3f}", f"{measured_s:.1f}",
                  *_fid_cells(fids[1]), "")
    for f, fl, ratio, pred, fid in zip(grid, grid_flops, g_ratios, grid_pred, g_fids, strict=True):
        table.add_row("", "", f"--flops {f:g}", f"{fl:.3f}", f"{ratio:.3f}", f"{pred:.3f}", "", *_fid_cells(fid), "")
    if flops_at is None:
        verdict = "n/a: latency outside the --flops grid"
    else:
        verdict = f"{'pass' if target.flops_ratio > flops_at else 'MISS'}: {target.flops_ratio - flops_at:+.3f} FLOPs"
    fid_at = blank
    if data is not None:
        fid_at = [_fmt(_interp(reached, g_ratios, [f.top1_agreement for f in g_fids]), "{:.1%}"),
                  _fmt(_interp(reached, g_ratios, [f.kl for f in g_fids]), "{:.4f}")]
    table.add_row("", "", f"--flops at latency {reached:.3f} (interpolated)", _fmt(flops_at, "{:.3f}"),
                  f"{reached:.3f}", "", "", *fid_at, verdict)
    table.add_section()
    console.print(f"{name}, {threads} thread(s): done", highlight=False)


def _build(analysis, plan, dense: onnx.ModelProto, data) -> onnx.ModelProto:
    """The pruned model of ``plan``; with fidelity data, re-fitted on its calibration half as
    ``prune(..., reconstruct=True, holdout=0.5)`` does."""
    if data is None:
        return apply(analysis, plan, dense)[0]
    from onnxprune.calib.reconstruct import refit_layers
    from onnxprune.graph.load import to_model
    from onnxprune.structure.rewrite import apply_plan

    calib, _ = data.split(0.5)
    graph, kept = apply_plan(analysis, plan)
    refit_layers(analysis.graph, graph, kept, calib.samples)
    return to_model(graph, dense)


def _fid(dense, model, data):
    from onnxprune.calib.fidelity import fidelity

    _, held = data.split(0.5)
    return fidelity(dense, model, held.samples)


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else spec.format(x)


if __name__ == "__main__":
    main()
