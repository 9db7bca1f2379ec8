"""Recovery after structured pruning: time, peak memory and held-out fidelity, side by side in one run.

    python tools/bench_recovery.py [--quick] [--only ppocr|resnet50] [--no-distill]
                                   [--cache DIR] [--timeout S] [--rss-limit GB]

Each row runs the onnxprune command line in its own process (``python -m onnxprune``), writing into
a temporary folder that is removed at the end; its wall time and its peak resident memory
(``ru_maxrss`` of that process and its children, from ``os.wait4``) are the row's. A run is stopped
past ``--timeout`` seconds or ``--rss-limit`` GiB resident, and its row says so.

PP-OCRv4 det: the real model in rapidocr_onnxruntime's wheel (``tools/setup.sh`` installs it), at
``--input-shape x:1x3x736x992``. Data: synthetic text images from ``calibration/text_images.py``,
rendered once into the cache: 50 (seed 0) are ``--calib``, 20 more (seed 1) are the held-out images,
which no run sees. Preprocessing: ``--preprocess ppocr-det`` (BGR, ImageNet mean/std), or imagenet
with a note where this checkout has no such preset; the held-out images are loaded with the same
preset. Rows at ``--flops 0.8``: without data; ``--calib --reconstruct lstsq``; ``--calib
--reconstruct auto``; ``--calib --distill 100``. Fidelity, computed here with onnxruntime from the
written models against the dense model on the held-out images: IoU of the probability maps
thresholded at 0.3 (PaddleOCR's det threshold; intersection and union summed over all images) and
the mean absolute error of the maps. Bars (issue 20): the reconstruct rows take at most 180 s;
``--distill 100`` peaks under 6 GiB; IoU after ``auto`` is at least the IoU after ``lstsq``.

ResNet-50 (torchvision, random weights, ``tools/export_models.py``'s legacy export, cached):
``--flops 0.5 --calib random --calib-count 128 --reconstruct lstsq`` and ``auto``. Bar: at most 60 s.

Where the command line does not take ``--reconstruct lstsq|auto`` yet, the lstsq row runs the old
``--reconstruct`` flag (least squares) and the auto row says "not available". ``--quick``: 10
calibration and 6 held-out images, no ``--distill`` row, 32 ResNet-50 samples; its figures are not
the issue's setup, so its bars are marked as such. The machine's load average is printed beside
the tables: other work on its cores slows every row.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "calibration"))

import text_images  # noqa: E402

from onnxprune.calib.data import load_calibration, preset_names  # noqa: E402
from onnxprune.graph.sessions import make_session  # noqa: E402
from onnxprune.graph.shapes import input_specs  # noqa: E402

GiB = 2**30
PPOCR_SHAPE = (1, 3, 736, 992)
IMAGE_SIZE = (992, 736)  # width x height of the text images: the model's input, no resize
DET_THRESHOLD = 0.3  # PaddleOCR's det_db_thresh
TEXT_IMAGES_VERSION = 1  # in the cache folder's name: bump when text_images.py renders differently
console = Console(width=None if sys.stdout.isatty() else 200)  # a log file keeps each row on one line


@dataclass
class Run:
    """One command-line run: its exit status, wall seconds, peak RSS, report and last log line."""

    command: list[str]
    output: Path
    shown: str = ""  # the command as a user would type it
    returncode: int | None = None
    seconds: float = 0.0
    peak_gib: float = 0.0
    timed_out: bool = False
    over_memory: bool = False  # stopped at --rss-limit
    report: dict = field(default_factory=dict)
    last_line: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.over_memory


def prune(name: str, args: list[str], stem: Path, limits: argparse.Namespace) -> Run:
    """``onnxprune ARGS`` writing ``stem``.onnx and its JSON report, logged to ``stem``.log."""
    out, report = stem.with_suffix(".onnx"), stem.with_suffix(".json")
    args = [*args, "-o", str(out), "--report", str(report)]
    shown = "onnxprune " + describe(args, {str(out): "OUT.onnx", str(report): "OUT.json"})
    console.print(f"running {name}: {shown}", style="dim", markup=False, highlight=False)
    run = run_cli(args, out, stem.with_suffix(".log"), limits.timeout, limits.rss_limit)
    run.shown = shown
    if run.ok:
        run.report = read_report(report)
    return run


def resident_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GiB
    except (OSError, ValueError):
        pass
    return 0.0


def run_cli(args: list[str], output: Path, log: Path, timeout: float, rss_limit: float) -> Run:
    """``python -m onnxprune ARGS`` in its own process; its peak RSS from ``os.wait4``'s rusage
    (this process and the children it waited for), so each row's memory is its own. Stopped
    (SIGTERM, then SIGKILL) past ``timeout`` seconds or ``rss_limit`` GiB resident: the machine is
    shared."""
    command = [sys.executable, "-m", "onnxprune", *args]
    run = Run(command, output)
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline, killed_at = start + timeout, None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        now = time.perf_counter()
        if killed_at is None and (now > deadline or resident_gib(proc.pid) > rss_limit):
            run.timed_out, run.over_memory = now > deadline, now <= deadline
            killed_at = now
            proc.send_signal(signal.SIGTERM)  # onnxprune cleans up on SIGTERM (exit 143)
        elif killed_at is not None and now > killed_at + 30:
            proc.kill()
        time.sleep(0.2)
    run.seconds = time.perf_counter() - start
    run.returncode = proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    run.peak_gib = usage.ru_maxrss * 1024 / GiB  # Linux: kilobytes
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    run.last_line = lines[-1].strip() if lines else ""
    return run


def read_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def cli_help() -> str:
    return subprocess.run([sys.executable, "-m", "onnxprune", "--help"], capture_output=True, text=True,
                          cwd=ROOT).stdout


def reconstruct_args(method: str, help_text: str) -> list[str] | None:
    """The arguments that ask for ``method`` (lstsq or auto), or None where the CLI cannot."""
    if "lstsq" in help_text:  # the value form: --reconstruct [auto|lstsq|stats|ridge|none]
        return ["--reconstruct", method]
    return ["--reconstruct"] if method == "lstsq" else None  # the old flag is least squares


def describe(args: list[str], placeholders: dict[str, str]) -> str:
    """The row's arguments as a user would type them from the repository root (some paths shown as
    short names)."""
    root = str(ROOT) + os.sep
    return " ".join(placeholders.get(a, a.removeprefix(root)) for a in args)


def fmt_run(run: Run | None) -> tuple[str, str]:
    if run is None:
        return "", ""
    seconds = f"{run.seconds:.0f}" + (" (timeout)" if run.timed_out else "")
    return seconds, f"{run.peak_gib:.2f}"


def bar(ok: bool, text: str, quick: bool) -> str:
    word = "pass" if ok else "MISS"
    return f"{word} ({text})" + (" [quick]" if quick else "")


def failure(run: Run) -> str:
    if run.timed_out:
        return "timed out"
    if run.over_memory:
        return f"stopped: over --rss-limit (peak {run.peak_gib:.1f} GiB)"
    return f"exit {run.returncode}: {run.last_line[:90]}"


def recovery_note(report: dict) -> str:
    """What the JSON report says recovery did: the re-fit layers counted by what was chosen, and
    distillation's steps."""
    parts = []
    refits = report.get("reconstruct")
    if isinstance(refits, list) and refits:
        chosen = Counter(str(r.get("chosen", "lstsq")).split("(")[0] for r in refits if isinstance(r, dict))
        parts.append(", ".join(f"{name} {n}" for name, n in chosen.most_common()))
    distill = report.get("distill")
    if isinstance(distill, dict):
        steps, best = distill.get("steps"), distill.get("best_step")
        parts.append(f"distill {steps} steps" + (f" (kept {best})" if best is not None else ""))
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# PP-OCRv4 det


def ppocr_det_model() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")  # located, not imported: it imports cv2
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("rapidocr_onnxruntime is not installed: bash tools/setup.sh (or pip install --no-deps "
                         "rapidocr_onnxruntime==1.4.4)")
    return Path(spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx"


def text_image_dir(cache: Path, seed: int, count: int) -> Path:
    """A folder of exactly ``count`` text images of seed ``seed`` (rendered once, then reused)."""
    width, height = IMAGE_SIZE
    folder = cache / "text_images" / f"v{TEXT_IMAGES_VERSION}_seed{seed}_{width}x{height}_{count}"
    text_images.write_text_images(folder, count, size=IMAGE_SIZE, seed=seed)
    return folder


def det_maps(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    """The probability maps [N, H, W] of a det model, one image per run (memory stays small)."""
    session = make_session(model)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + 1]})[0][:, 0] for i in range(len(images))])


def map_fidelity(dense: np.ndarray, pruned: np.ndarray) -> tuple[float, float]:
    """(IoU of the maps thresholded at DET_THRESHOLD, summed over all images; mean absolute error)."""
    a, b = dense >= DET_THRESHOLD, pruned >= DET_THRESHOLD
    union = int(np.logical_or(a, b).sum())
    iou = float(np.logical_and(a, b).sum() / union) if union else 1.0
    return iou, float(np.abs(dense - pruned).mean())


def ppocr_rows(args: argparse.Namespace, tmp: Path, help_text: str) -> tuple[Table, list[str], list[str]]:
    model_path = ppocr_det_model()
    n_calib, n_held = (10, 6) if args.quick else (50, 20)
    calib_dir = text_image_dir(args.cache, 0, n_calib)
    held_dir = text_image_dir(args.cache, 1, n_held)
    notes: list[str] = []
    preset = "ppocr-det"
    if preset not in preset_names():
        preset = "imagenet"
        notes.append("this checkout has no ppocr-det preset: --preprocess imagenet (RGB order, resized and "
                     "centre-cropped), so the data are not what PP-OCR expects")
    dense = onnx.load(str(model_path))
    spec = replace(input_specs(dense)[0], size=PPOCR_SHAPE)
    held = load_calibration(held_dir, [spec], count=n_held, preprocess=preset).samples[spec.name]
    dense_maps = det_maps(dense, held)
    coverage = float((dense_maps >= DET_THRESHOLD).mean())
    notes.append(f"dense model on the {n_held} held-out images: {coverage:.1%} of pixels >= {DET_THRESHOLD} "
                 "(text found)")

    shape = "x:" + "x".join(map(str, PPOCR_SHAPE))
    common = [str(model_path), "--flops", "0.8", "--input-shape", shape]
    data = ["--calib", str(calib_dir), "--preprocess", preset]
    rows: list[tuple[str, list[str] | None, str]] = [
        ("no data", [], ""),
        ("lstsq", None if (a := reconstruct_args("lstsq", help_text)) is None else data + a, "time"),
        ("auto", None if (a := reconstruct_args("auto", help_text)) is None else data + a, "time"),
    ]
    if not args.quick and not args.no_distill:
        rows.append(("distill", data + ["--distill", "100"] if "--distill" in help_text else None, "memory"))
    placeholders = {str(model_path): "ch_PP-OCRv4_det_infer.onnx", str(calib_dir): f"TEXT{n_calib}/"}

    table = Table(title=f"PP-OCRv4 det at 736x992, --flops 0.8: {n_calib} calibration text images (seed 0), "
                        f"fidelity on {n_held} held-out text images (seed 1), --preprocess {preset}")
    for col in ("row", "options", "FLOPs", "seconds", "peak GiB", f"IoU@{DET_THRESHOLD}", "MAE", "report says",
                "bar"):
        table.add_column(col, justify="right")
    commands, ious = [], {}
    for i, (name, extra, bar_kind) in enumerate(rows):
        if extra is None:
            table.add_row(name, "", "", "", "", "", "", "", "not available in this checkout")
            continue
        run = prune(name, common + extra, tmp / f"ppocr{i}", args)
        commands.append(run.shown)
        seconds, peak = fmt_run(run)
        options = describe(extra, placeholders)
        if not run.ok:
            table.add_row(name, options, "", seconds, peak, "", "", "", failure(run))
            continue
        report = run.report
        iou, mae = map_fidelity(dense_maps, det_maps(onnx.load(str(run.output)), held))
        ious[name] = iou
        flops = report.get("flops", {}).get("ratio")
        verdict = ""
        if bar_kind == "time":
            verdict = bar(run.seconds <= 180, "<= 180 s", args.quick)
        elif bar_kind == "memory":
            verdict = bar(run.peak_gib < 6, "< 6 GiB", args.quick)
        if name == "auto" and "lstsq" in ious:
            verdict += "; " + bar(iou >= ious["lstsq"], f"IoU >= lstsq's {ious['lstsq']:.3f}", args.quick)
        table.add_row(name, options, f"{flops:.3f}" if flops else "", seconds, peak, f"{iou:.3f}", f"{mae:.4f}",
                      recovery_note(report), verdict)
        for path in tmp.glob(f"ppocr{i}*"):
            path.unlink()  # the models are read; keep the temporary folder small
    return table, notes, commands


# ---------------------------------------------------------------------------------------------
# ResNet-50


def resnet_rows(args: argparse.Namespace, tmp: Path, help_text: str) -> tuple[Table, list[str], list[str]]:
    from export_models import export_model

    model_path = export_model("resnet50", "legacy", args.cache / "models")
    count = 32 if args.quick else 128
    common = [str(model_path), "--flops", "0.5", "--calib", "random", "--calib-count", str(count)]
    table = Table(title=f"ResNet-50 (random weights), --flops 0.5, --calib random ({count} samples)")
    for col in ("row", "options", "FLOPs", "seconds", "peak GiB", "report says", "bar"):
        table.add_column(col, justify="right")
    commands: list[str] = []
    for i, method in enumerate(("lstsq", "auto")):
        extra = reconstruct_args(method, help_text)
        if extra is None:
            table.add_row(method, "", "", "", "", "", "not available in this checkout")
            continue
        run = prune(method, common + extra, tmp / f"resnet{i}", args)
        commands.append(run.shown)
        seconds, peak = fmt_run(run)
        options = describe(extra, {})
        if not run.ok:
            table.add_row(method, options, "", seconds, peak, "", failure(run))
            continue
        report = run.report
        flops = report.get("flops", {}).get("ratio")
        table.add_row(method, options, f"{flops:.3f}" if flops else "", seconds, peak, recovery_note(report),
                      bar(run.seconds <= 60, "<= 60 s", args.quick))
    return table, [], commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images and samples, no --distill row")
    parser.add_argument("--only", choices=["ppocr", "resnet50"], help="one model's rows")
    parser.add_argument("--no-distill", action="store_true", help="leave out the --distill row (the slowest)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache",
                        help="text images (text_images/) and exported models (models/); default .cache")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one run may take (default 3600)")
    parser.add_argument("--rss-limit", type=float, default=12.0,
                        help="stop a run past this many GiB resident (default 12: a shared machine)")
    args = parser.parse_args()

    notes: list[str] = []
    help_text = cli_help()
    if "lstsq" not in help_text:
        notes.append("--reconstruct takes no value in this checkout: the lstsq rows ran the old flag")
    load = os.getloadavg()
    commands: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_recovery-") as tmp:
        for name, rows in (("ppocr", ppocr_rows), ("resnet50", resnet_rows)):
            if args.only in (None, name):
                table, more_notes, more_commands = rows(args, Path(tmp), help_text)
                console.print(table)  # as soon as it is done: a long run shows what it has
                notes += more_notes
                commands += more_commands
    for note in notes:
        console.print(f"note: {note}")
    end = os.getloadavg()
    console.print(f"load average (1 min) at start {load[0]:.2f}, at end {end[0]:.2f}, on {os.cpu_count()} cores")
    console.print("the commands (from the repository root; OUT: a temporary file):")
    for command in commands:
        console.print(f"  {command}", soft_wrap=True, highlight=False, markup=False)


if __name__ == "__main__":
    main()
