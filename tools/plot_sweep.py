"""Sweep torchvision resnet18 (random weights, legacy exporter) over FLOPs targets and write the
README's trade-off plot, docs/sweep_resnet18.png, plus its table as CSV beside it.

    python tools/plot_sweep.py                 # targets 0.9 .. 0.3, --round-to 8, latency measured
    python tools/plot_sweep.py --runs 50 --out /tmp/sweep.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from export_models import export_model  # noqa: E402

import onnxprune  # noqa: E402

TARGETS = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "sweep_resnet18.png")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--runs", type=int, default=30, help="latency runs per model (median)")
    args = parser.parse_args(argv)

    model = export_model("resnet18", "legacy", ROOT / ".cache" / "models")
    result = onnxprune.sweep(model, flops=TARGETS, round_to=args.round_to, bench=True, bench_runs=args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnxprune.plot_sweep(result, args.out)
    result.to_csv(args.out.with_suffix(".csv"))
    print(f"dense: {result.dense.flops / 1e9:.3f} GFLOPs, {result.dense.params / 1e6:.2f} M params, "
          f"{result.dense_latency_ms:.2f} ms")
    print("target  FLOPs  params  latency")
    for p in result.points:
        print(f"{p.target:6.2f}  {p.flops_ratio:.3f}  {p.params_ratio:.3f}   {p.latency_ratio:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
