"""Wall time of a whole pruning job, onnxprune beside torch-pruning, in one run.

    python tools/bench_prune_time.py [--models resnet50 vit_b_16] [--flops 0.5] [--repeats 3]

onnxprune: load the exported .onnx -> analyse -> prune to --flops -> verify -> save.
torch-pruning (PyPI): build its dependency graph on the same torchvision model -> prune with
isomorphic magnitude ranking, iterative steps until its MACs reach the same target -> export the
result to ONNX (legacy exporter, the faster one). Building the torch model and exporting the
dense ONNX file are not timed for either. Medians of --repeats; the bar: onnxprune takes no
more time than torch-pruning.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import onnxprune  # noqa: E402


def time_onnxprune(path: Path, flops: float, out: Path) -> tuple[float, float]:
    start = time.perf_counter()
    result = onnxprune.prune(path, flops=flops)
    result.save(out)
    return time.perf_counter() - start, result.flops_ratio


def time_torch_pruning(name: str, flops: float, out: Path) -> tuple[float, float]:
    from peers import torch_pruning_onnx

    ratio, seconds = torch_pruning_onnx(name, flops, out, steps=30)  # its usual recipe: 30 steps
    return seconds, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16"])
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo"])
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "models")
    args = parser.parse_args()
    from export_models import export_model

    table = Table(title=f"pruning job wall time to --flops {args.flops} (median of {args.repeats})")
    for col in ("model", "onnxprune s", "FLOPs reached", "torch-pruning s", "MACs reached", "ratio", "bar"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = export_model(name, args.exporter, args.cache)
            ours, theirs = [], []
            for i in range(args.repeats):  # alternate so both see the same machine load
                ours.append(time_onnxprune(path, args.flops, Path(tmp) / f"ours{i}.onnx"))
                theirs.append(time_torch_pruning(name, args.flops, Path(tmp) / f"tp{i}.onnx"))
            t_ours = statistics.median(t for t, _ in ours)
            t_tp = statistics.median(t for t, _ in theirs)
            table.add_row(name, f"{t_ours:.2f}", f"{ours[0][1]:.3f}", f"{t_tp:.2f}", f"{theirs[0][1]:.3f}",
                          f"{t_ours / t_tp:.2f}", "pass" if t_ours <= t_tp else "MISS")
    Console().print(table)


if __name__ == "__main__":
    main()
