"""onnxruntime CPU latency at --flops 0.5: the default command, beside Torch-Pruning, in one run.

    python tools/bench_latency.py [--models mobilenet_v2 resnet50 convnext_tiny vit_b_16]
        [--flops 0.5] [--threads 1 2] [--runs 30] [--exporter legacy]

For each model (exported once, cached in .cache/models) it makes:
- onnxprune's default (``--round-to auto``: the channel multiple of onnxruntime CPU on this machine),
- onnxprune with ``--round-to 1`` (no rounding: what FLOPs alone give),
- Torch-Pruning 1.6 (tools/peers.py: isomorphic, global, L2, stepped to the same MACs target) with
  its default and with ``round_to=8``, exported to ONNX,
then, for each thread count, times the dense model and all four in alternation in one process
(same input, fixed threads) and prints medians and speedups. FLOPs ratios are onnxprune's count
on every file (Torch-Pruning stops at its own MACs count). Bars (issue 12): the default reaches
mobilenet_v2 1.7x, resnet50 1.8x, convnext_tiny 1.8x, vit_b_16 1.9x, and is at least as fast as
Torch-Pruning's faster setting, at every thread count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import onnxprune  # noqa: E402
from onnxprune.deploy.runners import measure  # noqa: E402
from onnxprune.graph.load import read_model  # noqa: E402

BARS = {"mobilenet_v2": 1.7, "resnet50": 1.8, "convnext_tiny": 1.8, "vit_b_16": 1.9}


def variants(name: str, path: Path, flops: float, tmp: Path) -> list[tuple[str, object, float]]:
    """(label, ModelProto, FLOPs ratio) of every pruned variant of one model."""
    from peers import torch_pruning_onnx

    dense_flops = onnxprune.measure_costs(path).flops
    out = []
    for label, round_to in (("onnxprune default", "auto"), ("onnxprune --round-to 1", 1)):
        result = onnxprune.prune(path, flops=flops, round_to=round_to)
        out.append((f"{label} ({result.channel_multiple})" if round_to == "auto" else label, result.model,
                    result.flops_ratio))
    for label, round_to in (("torch-pruning", None), ("torch-pruning round_to=8", 8)):
        file = tmp / f"{name}-tp{round_to}.onnx"
        torch_pruning_onnx(name, flops, file, round_to=round_to)
        out.append((label, read_model(file)[0], onnxprune.measure_costs(file).flops / dense_flops))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(BARS))
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo"])
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "models")
    args = parser.parse_args()

    from export_models import export_model

    console = Console(width=200)
    table = Table(title=f"onnxruntime CPU latency at --flops {args.flops}, batch 1, median of {args.runs} "
                        "alternating runs")
    for col in ("model", "threads", "variant", "FLOPs ratio", "ms", "speedup", "bar"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = export_model(name, args.exporter, args.cache)
            dense, _ = read_model(path)
            pruned = variants(name, path, args.flops, Path(tmp))
            for threads in args.threads:
                # one measurement for all, alternating, so they share the machine's noise
                lat = measure([dense] + [m for _, m, _ in pruned], runs=args.runs, threads=threads)
                speedups = [lat[0].median_ms / x.median_ms for x in lat[1:]]
                best_peer = max(speedups[2:])
                table.add_row(name, str(threads), "dense", "1.000", f"{lat[0].median_ms:.2f}", "1.00x", "")
                for i, ((label, _, ratio), x, speedup) in enumerate(zip(pruned, lat[1:], speedups, strict=True)):
                    bar = ""
                    if i == 0:
                        met = speedup >= BARS.get(name, 0) and speedup >= best_peer
                        bar = f"{'pass' if met else 'MISS'} (>= {BARS.get(name, 0)}x and >= {best_peer:.2f}x)"
                    table.add_row("", "", label, f"{ratio:.3f}", f"{x.median_ms:.2f}", f"{speedup:.2f}x", bar)
                table.add_section()
    console.print(table)


if __name__ == "__main__":
    main()
