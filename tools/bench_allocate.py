"""Per-layer sparsity allocation (--allocate measured) against uniform sparsity, on real photos.

    python tools/bench_allocate.py [--sparsity 0.5 0.7] [--method obs]

Model and data as tools/bench_fidelity.py builds them (its helpers are imported, not copied):
torchvision MobileNetV2 with its ImageNet weights, 96 calibration crops of two thirds of the
bundled photos, 128 further crops of those photos held out ("held-out crops"), and 128 crops of the
other third, never seen ("held-out photos"). Each --sparsity is pruned one-shot (no distillation)
three ways: uniform (every layer S), and measured with each of the two layer-error normalisations
of ``onnxprune.calib.allocate`` (``channels``: relative output error per output channel, averaged;
``layer``: relative output error of the whole layer). Columns: the model sparsity reached (zeroed
weights over all sparsified layers' weights, counted on the pruned model), the summed layer
error the allocation minimises, top-1 agreement and KL against the dense model on both held-out
sets, and seconds. Bar (issue 13 §2): measured KL at least 1.5x lower than uniform at the same
model sparsity.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_fidelity import export_pretrained, photo_sets, print_confidence  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.calib import allocate  # noqa: E402
from onnxprune.calib.fidelity import fidelity  # noqa: E402

HELD = 128  # held-out crops of the calibration photos (and crops of the held-out photos)


def zeroed_share(model: onnx.ModelProto, weights: list[str]) -> float:
    """Zeroed weights over all weights of the named initializers, counted on the model itself."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    arrays = [inits[name] for name in dict.fromkeys(weights)]
    return float(sum((a == 0).sum() for a in arrays) / sum(a.size for a in arrays))


def run(model: Path, calib, fresh: dict[str, np.ndarray], sparsity: float, method: str, how: str,
        normalisation: str) -> tuple:
    allocate.NORMALISATION = normalisation  # the module's one switch; prune() has no keyword for it
    start = time.perf_counter()
    result = onnxprune.prune(str(model), sparsity=sparsity, method=method, allocate=how, calib=calib,
                             holdout=HELD / (96 + HELD))
    seconds = time.perf_counter() - start
    sp = result.sparsity
    reached = zeroed_share(result.model, [layer.weight for layer in sp.layers])
    error = sum(layer.error or 0.0 for layer in sp.layers)
    spread = [layer.sparsity for layer in sp.layers]
    dense = onnx.load(str(model))
    return result.fidelity, fidelity(dense, result.model, fresh), reached, error, spread, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5])
    parser.add_argument("--method", default="obs", choices=("obs", "wanda", "magnitude"))
    parser.add_argument("--normalisations", nargs="+", default=list(allocate.NORMALISATIONS),
                        choices=allocate.NORMALISATIONS)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "models")
    args = parser.parse_args()

    model = export_pretrained(args.cache / "mobilenet_v2_imagenet.onnx")
    calib, fresh, n_seen, n_new = photo_sets(96 + HELD, HELD)
    train, held = calib.split(HELD / (96 + HELD))  # the split prune(holdout=...) makes
    print_confidence(model, {"calibration crops": train.samples["input"], "held-out crops": held.samples["input"],
                             "held-out photos": fresh["input"]})
    default = allocate.NORMALISATION
    table = Table(title=f"--allocate on MobileNetV2 (ImageNet weights), --method {args.method}, one-shot: "
                        f"{len(train)} calibration crops and {len(held)} held-out crops of {n_seen} photos; "
                        f"{len(fresh['input'])} crops of {n_new} held-out photos")
    for col in ("--sparsity", "--allocate", "layer error", "model sparsity", "layer sparsities",
                "summed layer error", "held-out crops: top-1", "KL", "held-out photos: top-1", "KL", "seconds",
                "bar"):
        table.add_column(col, justify="right")
    try:
        for s in args.sparsity:
            uniform = None
            for how, norm in [("uniform", default)] + [("measured", n) for n in args.normalisations]:
                f, g, reached, error, spread, seconds = run(model, calib, fresh, s, args.method, how, norm)
                bar = ""
                if uniform is None:
                    uniform = (f.kl, g.kl)
                else:
                    ratio = uniform[0] / max(f.kl, 1e-12)
                    bar = (f"{'pass' if ratio >= 1.5 else 'MISS'} (crops KL {ratio:.2f}x lower, photos "
                           f"{uniform[1] / max(g.kl, 1e-12):.2f}x; >= 1.5x)")
                table.add_row(f"{s:g}", how, norm if how == "measured" else "", f"{reached:.4f}",
                              f"{min(spread):.2f}..{max(spread):.2f}", f"{error:.3f}", f"{f.top1_agreement:.1%}",
                              f"{f.kl:.4f}", f"{g.top1_agreement:.1%}", f"{g.kl:.4f}", f"{seconds:.0f}", bar)
                Console(width=220).print(table)  # after each row: a long run shows what it has
    finally:
        allocate.NORMALISATION = default


if __name__ == "__main__":
    main()
