"""What a refactor must not change: a structural fingerprint of onnxprune's results per model, and a
comparison of two fingerprints (two checkouts, before and after).

    python tools/fingerprint.py --out after.json MODEL.onnx ...
    (cd /tmp/before && PYTHONPATH=. python /path/to/tools/fingerprint.py --out before.json MODEL.onnx ...)
    python tools/fingerprint.py --compare before.json after.json

Per model it prunes at ``--flops`` with ``--round-to 1`` and with the default (auto), and records
the groups found and pruned, frozen groups, dense and pruned FLOPs and parameters, a hash of the
plan (every kept channel index), and hashes of what other stages read per op: TensorRT 2:4
eligibility of the pruned model, the initializers distillation trains, the ops the PyTorch
interpreter refuses, and the layers the calibration solvers see. Timing is recorded beside them
(wall seconds of the whole record) but is not compared: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import onnx
from rich.console import Console
from rich.table import Table

import onnxprune
from onnxprune.calib.distill import learnable
from onnxprune.calib.torchgraph import unsupported
from onnxprune.deploy.sparse24 import sparse_eligibility
from onnxprune.graph.layers import find_layers
from onnxprune.graph.load import to_graph


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(path: Path, flops: float) -> dict:
    start = time.perf_counter()
    record: dict = {}
    for round_to in (1, "auto"):
        result = onnxprune.prune(path, flops=flops, round_to=round_to)
        record[f"round_to={round_to}"] = {
            "groups": [result.groups_found, result.groups_pruned, len(result.frozen)],
            "flops": [result.dense.flops, result.pruned.flops],
            "params": [result.dense.params, result.pruned.params],
            "plan": _digest(result.plan),
        }
    record["sparse24"] = _digest(sorted((s.layer, s.k, s.eligible, s.why) for s in sparse_eligibility(result.model)))
    model = onnx.load(path)
    train, masked = learnable(model)
    record["distill"] = _digest([sorted(train), sorted(masked)])
    record["torch_refuses"] = unsupported(model)
    layers = find_layers(to_graph(model))
    record["solver_layers"] = _digest([(layer.key, layer.columns, layer.outputs) for layer in layers])
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def compare(before: dict, after: dict) -> int:
    table = Table("model", "same", "differs in", "seconds before", "seconds after")
    differ = 0
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name, {}), after.get(name, {})
        keys = [k for k in sorted(set(a) | set(b)) if k != "seconds" and a.get(k) != b.get(k)]
        differ += bool(keys)
        table.add_row(name, "no" if keys else "yes", ", ".join(keys), str(a.get("seconds", "-")),
                      str(b.get("seconds", "-")))
    console = Console()
    console.print(table)
    total = [sum(d.get(n, {}).get("seconds", 0) for n in d) for d in (before, after)]
    console.print(f"{len(set(before) | set(after)) - differ} of {len(set(before) | set(after))} identical; "
                  f"seconds in all: {total[0]:.1f} before, {total[1]:.1f} after")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*(json.loads(p.read_text()) for p in args.compare))
    if not args.models or not args.out:
        parser.error("give models and --out, or --compare BEFORE AFTER")
    logging.disable(logging.WARNING)
    records = {}
    for path in args.models:
        records[path.name] = fingerprint(path, args.flops)
        print(path.name, records[path.name], flush=True)
    args.out.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
