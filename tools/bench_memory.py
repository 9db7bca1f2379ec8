"""Peak memory of the default command, stage by stage, on the giants.

    python tools/bench_memory.py                                    # vit_l_16, vit_h_14, efficientnet_b7 @ 600
    python tools/bench_memory.py --models vit_h_14 --args --max-memory 8
    python tools/bench_memory.py --model my.onnx                    # any .onnx file

Each model is exported once (legacy exporter, random weights, cached in ``--cache``) and then
pruned by ``onnxprune MODEL --flops 0.5 -o OUT`` (plus ``--args``) in a fresh child process. The
child resets the kernel's resident peak (``/proc/self/clear_refs``) at every stage the command
reports, so each row's peak is that stage's own; ``tracemalloc`` (reset per stage too) shows
the part of it that Python allocations (numpy arrays included) hold, the rest being C++
(protobuf, onnxruntime) and the interpreter. A table per model, then one line per model against
the bar of issue 14: peak RSS <= 3 x weight bytes + 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

GIANTS = ("vit_l_16", "vit_h_14", "efficientnet_b7")
GiB = 2**30


def weight_bytes(path: Path) -> int:
    """Bytes of every initializer of the model (inline or external), from dims and types only."""
    import numpy as np
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        total += int(np.prod(t.dims, dtype=np.int64)) * itemsize
    return total


# --- the child: run the CLI, one row per stage ---------------------------------------------------


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(argv: list[str], out: str) -> int:
    import logging
    import tracemalloc

    rows: list[dict] = []
    state = {"stage": "starting Python, importing onnxprune", "t": time.perf_counter()}
    tracemalloc.start()

    def close_stage() -> None:
        _, traced_peak = tracemalloc.get_traced_memory()
        rows.append({"stage": state["stage"], "peak_rss": _status("VmHWM"), "end_rss": _status("VmRSS"),
                     "traced_peak": traced_peak, "seconds": time.perf_counter() - state["t"]})
        with open("/proc/self/clear_refs", "w") as fh:  # the kernel's peak starts again from the current RSS
            fh.write("5")
        tracemalloc.reset_peak()
        state["t"] = time.perf_counter()

    class StageHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name == "onnxprune.cli" and record.levelno == logging.INFO:
                close_stage()
                state["stage"] = record.getMessage()

    from onnxprune import cli

    logging.getLogger("onnxprune.cli").addHandler(StageHandler())
    code = cli.main(argv)
    close_stage()
    Path(out).write_text(json.dumps({"rows": rows, "code": code}))
    return 0


# --- the parent: export, run, tabulate -------------------------------------------------------------


def run_one(model: Path, extra: list[str], work: Path) -> dict:
    out_json = work / "rows.json"
    argv = [str(model), "--flops", "0.5", "-o", str(work / "pruned.onnx"), "--force", "-v", *extra]
    cmd = [sys.executable, __file__, "--child", str(out_json), "--", *argv]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out_json.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' / '.join(tail)}", "wall": wall}
    data = json.loads(out_json.read_text())
    data["wall"] = wall
    data["stderr"] = proc.stderr
    return data


def print_table(name: str, weights: int, data: dict) -> float:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name}: {weights / GiB:.2f} GiB of weights", title_justify="left")
    for col in ("stage", "peak RSS GiB", "x weights", "Python-traced peak GiB", "RSS after GiB", "s"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for row in data["rows"]:
        table.add_row(row["stage"][:70], f"{row['peak_rss'] / GiB:.2f}", f"{row['peak_rss'] / weights:.2f}",
                      f"{row['traced_peak'] / GiB:.2f}", f"{row['end_rss'] / GiB:.2f}", f"{row['seconds']:.1f}")
    Console(width=160).print(table)
    return max(row["peak_rss"] for row in data["rows"])


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[4:], sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(GIANTS), help="torchvision names (exported, legacy)")
    parser.add_argument("--model", type=Path, action="append", default=[], help="an .onnx file (repeatable)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "onnxprune-giants",
                        help="where exports are kept (default: %(default)s)")
    parser.add_argument("--exporter", default="legacy", choices=("legacy", "dynamo"))
    parser.add_argument("--args", nargs=argparse.REMAINDER, default=[],
                        help="more onnxprune options, e.g. --max-memory 8")
    args = parser.parse_args()

    paths = list(args.model)
    if not args.model:
        from export_models import default_input_size, export_model

        for name in args.models:  # at the model's own input size: efficientnet_b7 at 600 px
            size = default_input_size(name)
            print(f"exporting {name} ({args.exporter}, {size} px) to {args.cache} if not there yet", file=sys.stderr)
            paths.append(export_model(name, args.exporter, args.cache / f"{name}_{size}", size=size))
    summary = []
    for path in paths:
        weights = weight_bytes(path)
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
            data = run_one(path, args.args, Path(work))
        if "error" in data:
            summary.append((path.name, weights, None, data["wall"], data["error"]))
            continue
        peak = print_table(path.name, weights, data)
        failed = data["stderr"].strip().splitlines()[-1:] if data["code"] else []
        summary.append((path.name, weights, peak, data["wall"], f"exit {data['code']}: {failed}" if failed else ""))
    print("\n| model | weights GiB | peak RSS GiB | bar 3 x weights + 2 GiB | wall s | |")
    print("|---|---|---|---|---|---|")
    for name, weights, peak, wall, note in summary:
        bar = 3 * weights + 2 * GiB
        verdict = "failed" if peak is None else "pass" if peak <= bar else "MISS"
        shown = "-" if peak is None else f"{peak / GiB:.2f} ({peak / weights:.1f}x)"
        print(f"| {name} | {weights / GiB:.2f} | {shown} | {bar / GiB:.2f}: {verdict} | {wall:.0f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
