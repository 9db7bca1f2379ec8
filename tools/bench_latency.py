"""onnxruntime CPU latency, dense vs pruned, alternating in one process.

    python tools/bench_latency.py [--models resnet50 vit_b_16 convnext_tiny] [--flops 0.5]
        [--threads 1] [--runs 30] [--exporter legacy] [--round-to 1]

Exports each model (cached in .cache/models), prunes it with onnxprune at --flops, then times
dense and pruned sessions in alternation (same process, same input, fixed threads) and prints a
table of medians and the speedup. The issue's bar: speedup >= 1.8x at --flops 0.5.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx_graphsurgeon as gs
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import onnxprune  # noqa: E402
from onnxprune.capture import input_feed  # noqa: E402
from onnxprune.deploy import measure  # noqa: E402
from onnxprune.load import read_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16", "convnext_tiny"])
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo"])
    parser.add_argument("--round-to", type=int, nargs="+", default=[1, 8, 16],
                        help="one row per value: onnxruntime's CPU conv kernels run channel counts that are "
                             "multiples of 8/16 much faster")
    parser.add_argument("--scope", default="isomorphic")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "models")
    args = parser.parse_args()

    from export_models import export_model

    table = Table(title=f"onnxruntime CPU latency, {args.threads} thread(s), --flops {args.flops}, "
                        f"median of {args.runs} alternating runs")
    for col in ("model", "--round-to", "FLOPs ratio", "dense ms", "pruned ms", "speedup", "bar 1.8x"):
        table.add_column(col, justify="right")
    for name in args.models:
        path = export_model(name, args.exporter, args.cache)
        dense, _ = read_model(path)
        feed = input_feed(gs.import_onnx(dense))
        results = [onnxprune.prune(path, flops=args.flops, round_to=r, scope=args.scope) for r in args.round_to]
        # one measurement for all variants, alternating, so they share the machine's noise
        latencies = measure([dense] + [r.model for r in results], feed, runs=args.runs, threads=args.threads)
        for round_to, result, lat in zip(args.round_to, results, latencies[1:], strict=True):
            speedup = latencies[0].median_ms / lat.median_ms
            table.add_row(name, str(round_to), f"{result.flops_ratio:.3f}", f"{latencies[0].median_ms:.2f}",
                          f"{lat.median_ms:.2f}", f"{speedup:.2f}x", "pass" if speedup >= 1.8 else "MISS")
    Console().print(table)


if __name__ == "__main__":
    main()
