"""Command line: parses arguments and calls the Python API. Exit codes: 0 ok, 1 model problem,
2 usage problem, 130 interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

from . import __version__
from .errors import OnnxPruneError, UsageError

EPILOG_PRUNE = """examples:
  onnxprune model.onnx --flops 0.5                 # half the FLOPs -> model.pruned.onnx
  onnxprune model.onnx --params 0.6 -o small.onnx --report plan.json
  onnxprune model.onnx --flops 0.5 --round-to 8    # channel counts multiples of 8 (GPUs)
  onnxprune model.onnx --pattern 2:4 --calib photos/          # 2:4 sparsity by OBS on calibration images
  onnxprune model.onnx --flops 0.7 --reconstruct --calib x.npz   # channels, then least-squares re-fit
  onnxprune analyze model.onnx                     # list coupled groups and frozen channels

exit codes: 0 ok, 1 model problem, 2 usage problem
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, like every other usage problem
        raise UsageError(message)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value


def _prune_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnxprune", description="Structured pruning of an exported ONNX vision model.",
                epilog=EPILOG_PRUNE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="input .onnx file (never modified)")
    p.add_argument("-o", "--output", help="output file (default: <input>.pruned.onnx)")
    p.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    target = p.add_argument_group("targets (a structured one, a sparsity one, or one of each)")
    target.add_argument("--flops", type=_fraction, help="remove channels: keep at most this fraction of the FLOPs")
    target.add_argument("--params", type=_fraction, help="remove channels: keep at most this fraction of the params")
    target.add_argument("--sparsity", type=float, help="zero this fraction of each layer's weights (unstructured)")
    target.add_argument("--pattern", metavar="N:M", help="keep N of every M weights along the input channels (2:4)")
    calib = p.add_argument_group("calibration data (for --method wanda/obs, --reconstruct, fidelity)")
    calib.add_argument("--calib", metavar="PATH", help="image folder, .npy, .npz, folder of .npy, or 'random'")
    calib.add_argument("--calib-count", type=int, default=128, metavar="N", help="samples to use (default 128)")
    calib.add_argument("--preprocess", default="imagenet", help="preset in calibration/ or a JSON file")
    solver = p.add_argument_group("solver")
    solver.add_argument("--method", choices=("magnitude", "wanda", "obs"),
                        help="weight-sparsity method (default: obs with --calib, else magnitude)")
    solver.add_argument("--sequential", action="store_true",
                        help="sparsity: calibrate each layer on the outputs of the already-pruned layers before it")
    solver.add_argument("--reconstruct", action="store_true",
                        help="after removing channels, re-fit each layer that lost inputs to the dense layer's "
                             "outputs, layer by layer on the pruned model's own activations (least squares)")
    rank = p.add_argument_group("ranking")
    rank.add_argument("--scope", choices=("isomorphic", "global", "uniform"), default="isomorphic",
                      help="rank channels within isomorphic classes (default), all together, or per group")
    rank.add_argument("--criterion", choices=("l1", "l2", "act", "obs"), default="l2",
                      help="channel importance: weight magnitude (l1, l2), or with --calib activation-weighted "
                           "(act) or second-order OBS saliency (obs)")
    rank.add_argument("--round-to", type=int, default=1, metavar="N", help="keep channel counts multiples of N")
    out = p.add_argument_group("output")
    out.add_argument("--report", metavar="JSON", help="write the summary and the kept channel indices")
    out.add_argument("--force", action="store_true", help="overwrite an existing output file")
    out.add_argument("--no-latency", action="store_true", help="skip the before/after latency measurement")
    out.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency (default 1)")
    out.add_argument("-q", "--quiet", action="store_true", help="no summary, no progress")
    out.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


def _analyze_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnxprune analyze", description="List coupled channel groups, isomorphic classes, "
                "FLOPs shares and frozen channels.")
    p.add_argument("model")
    p.add_argument("--json", metavar="PATH", help="also write the analysis as JSON")
    p.add_argument("--debug", action="store_true")
    return p


def _sweep_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnxprune sweep", description="Prune at several targets (one analysis, one calibration "
                "set) and write sweep.csv, sweep.json and sweep.png.")
    p.add_argument("model")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--flops", type=_fraction, nargs="+", metavar="R", help="FLOPs targets, e.g. 0.9 0.7 0.5")
    target.add_argument("--params", type=_fraction, nargs="+", metavar="R", help="params targets")
    p.add_argument("--calib", metavar="PATH", help="image folder, .npy, .npz, folder of .npy, or 'random' "
                   "(adds top-1 agreement and KL to the dense model)")
    p.add_argument("--calib-count", type=int, default=128, metavar="N")
    p.add_argument("--preprocess", default="imagenet")
    p.add_argument("--reconstruct", action="store_true", help="re-fit the layers that lost inputs (needs --calib)")
    p.add_argument("--scope", choices=("isomorphic", "global", "uniform"), default="isomorphic")
    p.add_argument("--criterion", choices=("l1", "l2", "act", "obs"), default="l2")
    p.add_argument("--round-to", type=int, default=1, metavar="N")
    p.add_argument("--bench", action="store_true", help="measure onnxruntime CPU latency, all models alternating")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for --bench (default 1)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <model stem>.sweep/ beside the input)")
    p.add_argument("--save-models", action="store_true", help="also write each pruned model into the folder")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty folder")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def _check_output(args: argparse.Namespace) -> Path:
    from .api import default_output

    src = Path(args.model)
    dst = Path(args.output) if args.output else default_output(src)
    _check_writable(dst, "output", args.force, src)
    if getattr(args, "report", None):
        _check_writable(Path(args.report), "report", True, src, dst)
    return dst


def _check_writable(dst: Path, what: str, force: bool, *inputs: Path) -> None:
    """Refuse, before any work, to write over an input, a folder, or an existing file without --force."""
    for other in inputs:
        if other.exists() and dst.exists() and dst.resolve() == other.resolve():
            raise UsageError(f"{what} {dst} is the {'input' if other == inputs[0] else 'output'} file; choose another")
        if other.exists() and dst.resolve() == other.resolve().with_name(other.name + ".data"):
            raise UsageError(f"{what} {dst} is the weights file of {other}; choose another")
    if dst.is_dir():
        raise UsageError(f"{what} {dst} is a directory")
    if dst.exists() and not force:
        raise UsageError(f"{what} {dst} exists; use --force to overwrite")
    folder = dst.parent if str(dst.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{what} folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{what} folder {folder} is not writable")


def _run_prune(args: argparse.Namespace, console: Console) -> None:
    from .api import prune
    from .bench import measure
    from .capture import input_feed
    from .report import file_size, print_summary, summary_dict, write_json

    dst = _check_output(args)
    with console.status("pruning", spinner="dots") if not args.quiet else _null() as status:
        def progress(msg: str) -> None:
            if status is not None:
                status.update(msg)
        result = prune(args.model, flops=args.flops, params=args.params, sparsity=args.sparsity,
                       pattern=args.pattern, method=args.method, calib=args.calib, calib_count=args.calib_count,
                       preprocess=args.preprocess, sequential=args.sequential, reconstruct=args.reconstruct,
                       scope=args.scope, criterion=args.criterion, round_to=args.round_to, progress=progress)
        progress("writing the pruned model")
        result.save(dst)
        latency = None
        if not args.no_latency:
            progress("measuring onnxruntime CPU latency, dense and pruned alternating")
            import onnx_graphsurgeon as gs

            from .load import read_model
            dense, _ = read_model(args.model)
            feed = input_feed(gs.import_onnx(dense))
            latency = tuple(measure([dense, result.model], feed, threads=args.threads))
    summary = summary_dict(result, (file_size(args.model), file_size(dst)), latency)
    summary["output"] = str(dst)
    summary["command"] = sys.argv
    if args.report:
        write_json(args.report, {**summary, "plan": result.plan})
    if not args.quiet:
        print_summary(console, summary)
        console.print(f"wrote {dst}")


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _run_analyze(args: argparse.Namespace, console: Console) -> None:
    from .api import analyze, group_flops_share
    from .report import print_analysis, write_json

    if args.json:
        _check_writable(Path(args.json), "JSON", True, Path(args.model))

    with console.status("analysing", spinner="dots") as status:
        analysis = analyze(args.model, progress=status.update)
    shares = group_flops_share(analysis)
    print_analysis(console, analysis, shares)
    if args.json:
        write_json(args.json, {
            "groups": [{"class": g.iso_class, "channels": g.size, "width": g.width, "flops_share": s,
                        "members": [f"{m.tensor}[{m.axis}]" for m in g.members]}
                       for g, s in zip(analysis.groups, shares, strict=True)],
            "frozen": [{"channels": f.channels, "reasons": f.reasons,
                        "members": [f"{m.tensor}[{m.axis}]" for m in f.slots]} for f in analysis.frozen],
            "ops_without_rule": analysis.no_rule_ops,
        })


def _sweep_folder(args: argparse.Namespace) -> Path:
    src = Path(args.model)
    if args.out:
        return Path(args.out)
    stem = src.name[:-5] if src.name.endswith(".onnx") else src.name
    return src.with_name(stem + ".sweep")


def _run_sweep(args: argparse.Namespace, console: Console) -> None:
    from rich.table import Table

    from .sweep import save_models, sweep

    out = _sweep_folder(args)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise UsageError(f"output folder {out} is not empty; use --force to write into it")
    parent = out.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot create output folder {out}")
    with console.status("sweeping", spinner="dots") if not args.quiet else _null() as status:
        def progress(msg: str) -> None:
            if status is not None:
                status.update(msg)
        result = sweep(args.model, flops=args.flops, params=args.params, calib=args.calib,
                       calib_count=args.calib_count, preprocess=args.preprocess, reconstruct=args.reconstruct,
                       criterion=args.criterion, scope=args.scope, round_to=args.round_to, bench=args.bench,
                       threads=args.threads, keep_models=args.save_models, progress=progress)
        progress("writing the results")
        out.mkdir(parents=True, exist_ok=True)
        written = [out / "sweep.csv", out / "sweep.json", out / "sweep.png"]
        result.to_csv(written[0])
        result.to_json(written[1])
        result.plot(written[2])
        if args.save_models:
            written += save_models(result, out)
    if args.quiet:
        return
    table = Table(title=f"onnxprune sweep ({result.metric} targets)")
    for col in ("target", "FLOPs ratio", "params ratio"):
        table.add_column(col, justify="right")
    bench = result.dense_latency_ms is not None
    fid = any(p.kl is not None for p in result.points)
    if bench:
        table.add_column("latency ms", justify="right")
        table.add_column("speedup", justify="right")
    if fid:
        table.add_column("top-1 agreement", justify="right")
        table.add_column("KL", justify="right")
    for p in result.points:
        row = [f"{p.target:g}", f"{p.flops_ratio:.3f}", f"{p.params_ratio:.3f}"]
        if bench:
            row += [f"{p.latency_ms:.2f}", f"{1 / p.latency_ratio:.2f}x" if p.latency_ratio else "-"]
        if fid:
            row += [f"{p.top1_agreement:.1%}", f"{p.kl:.3f}"]
        table.add_row(*row)
    console.print(table)
    if bench:
        console.print(f"dense latency {result.dense_latency_ms:.2f} ms (onnxruntime CPU, median)")
    for path in written:
        console.print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(message)s")
    console = Console(stderr=False, no_color=bool(os.environ.get("NO_COLOR")))
    err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")))
    try:
        if argv and argv[0] == "analyze":
            args = _analyze_parser().parse_args(argv[1:])
            _run_analyze(args, console)
        elif argv and argv[0] == "sweep":
            args = _sweep_parser().parse_args(argv[1:])
            _run_sweep(args, console)
        else:
            args = _prune_parser().parse_args(argv)
            _run_prune(args, console)
        return 0
    except OnnxPruneError as exc:
        if debug:
            raise
        err.print(f"onnxprune: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("onnxprune: interrupted; nothing was written", highlight=False)
        return 130
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            raise
        err.print(f"onnxprune: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
                  highlight=False, markup=False, soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
