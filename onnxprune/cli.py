"""Command line: parses arguments and calls the Python API. Exit codes: 0 ok, 1 model problem,
2 usage problem, 130 interrupted (SIGINT), 143 terminated (SIGTERM).

Conventions: results on stdout, errors, logs and the progress spinner on stderr; ``-q`` prints
nothing but errors, ``-v`` logs the pipeline stages (INFO), ``-vv`` adds DEBUG; colour only on a
terminal (rich decides; ``FORCE_COLOR`` forces it) and never when ``NO_COLOR`` is set to anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import ModelError, OnnxPruneError, UsageError, printable
from .progress import Progress

if TYPE_CHECKING:  # imported inside main(): a Ctrl-C while they load is then one line, not a traceback
    from rich.console import Console

    from .outputs import OutputSet

log = logging.getLogger("onnxprune.cli")

EXIT_CODES = """exit codes:
  0    success
  1    model problem: the file is not a readable model (corrupt, truncated), or it cannot be analysed,
       pruned or verified
  2    usage problem: a model path that does not exist or is a folder, a bad option or target, bad
       calibration data, an output that exists (without --force)
  130  interrupted (Ctrl-C, SIGINT); nothing is left behind (an interrupt after the outputs were
       written says so)
  143  terminated (SIGTERM: timeout, CI cancellation, docker stop); the same as 130

outputs: every file a command writes (models, their .data files, reports, JSON, HTML, sweep folders,
engines) must be new or a regular file replaced with --force, differ from the inputs, from every
weights file the inputs name (even with --force) and from each other, and is written only when the
whole command succeeded, all together; a second run writing the same file at the same time is
refused. An output that is a symlink is written where it points (a model with its .data file).
A path that is empty, '-' (no stdout) or ends in '/' (a folder) is refused; a full disk, a
read-only folder or a name too long is refused before the work where it can be seen then.
"""

EPILOG_PRUNE = """examples:
  onnxprune model.onnx --flops 0.5                 # half the FLOPs -> model.pruned.onnx
  onnxprune model.onnx --params 0.6 -o small.onnx --report plan.json
  onnxprune model.onnx --flops 0.5 --html report.html   # one self-contained page: figures, plots, versions
  onnxprune model.onnx --flops 0.5 --round-to 1    # any channel count (default auto: the backend's multiple)
  onnxprune model.onnx --pattern 2:4 --calib photos/          # 2:4 sparsity by OBS on calibration images
  onnxprune model.onnx --flops 0.7 --reconstruct --calib x.npz   # channels, then least-squares re-fit
  onnxprune model.onnx --pattern 2:4 --calib photos/ --distill    # then distil from the dense model
  onnxprune model.onnx --flops 0.5 -v              # log each pipeline stage on stderr
  onnxprune model.onnx --latency 0.6               # prune until measured onnxruntime CPU latency <= 60%
  onnxprune model.onnx --flops 0.5 --bench --backend tensorrt --fp16   # time dense and pruned engines
  onnxprune rec.onnx --flops 0.5 --input-shape x:1x3x48x320   # free input dims (OCR, detection): their size

""" + EXIT_CODES

EPILOG_ANALYZE = """examples:
  onnxprune analyze model.onnx                     # groups, isomorphic classes, FLOPs shares, frozen channels
  onnxprune analyze model.onnx --json groups.json  # the same as JSON
  onnxprune analyze model.onnx --html groups.html  # one self-contained page with a FLOPs-share plot
  onnxprune analyze rec.onnx --input-shape x:1x3x48x320   # FLOPs shares at this size (free input dims)

""" + EXIT_CODES

EPILOG_BENCH = """examples:
  onnxprune bench model.onnx                       # onnxruntime CPU, 1 thread, batch 1
  onnxprune bench dense.onnx pruned.onnx --threads 4 --batch 8 --json times.json   # alternating, ratio
  onnxprune bench dense.onnx pruned.onnx --backend ort-cuda        # onnxruntime-gpu, CUDA provider
  onnxprune bench pruned.onnx --backend tensorrt --fp16 --save-engine pruned.engine   # sparse 2:4 if present
  onnxprune bench rec.onnx rec.pruned.onnx --input-shape x:1x3x48x320   # free input dims timed at this size

backends: ort-cpu (default), ort-cuda and ort-trt (need onnxruntime-gpu and a GPU), tensorrt (needs the
tensorrt package, torch with CUDA and a GPU); a missing library or device is an error, never a silent
fall-back to the CPU.

""" + EXIT_CODES

EPILOG_SWEEP = """examples:
  onnxprune sweep model.onnx --flops 0.9 0.7 0.5   # -> model.sweep/sweep.csv, sweep.json, sweep.png
  onnxprune sweep model.onnx --flops 0.9 0.7 0.5 --jobs 2            # two local processes
  onnxprune sweep model.onnx --flops 0.9 0.7 0.5 --ray ray://head:10001   # Ray tasks on a cluster
  onnxprune sweep model.onnx --params 0.8 0.6 --bench      # add onnxruntime CPU latency
  onnxprune sweep model.onnx --flops 0.8 0.6 --calib photos/ --html sweep.html   # fidelity; one HTML page
  onnxprune sweep rec.onnx --flops 0.7 0.5 --input-shape x:1x3x48x320   # free input dims: their size

""" + EXIT_CODES


EPILOG_BATCH = """examples:
  onnxprune batch models.yaml                      # -> models.batch/batch.csv, batch.json, done.json
  onnxprune batch models.yaml --ray                # on a local Ray (pip install onnxprune[ray])
  onnxprune batch models.yaml --ray auto --bench-on bench   # this node's cluster; time on nodes with 'bench'

manifest:
  models: [resnet18.onnx, mobilenet_v2.onnx]      # paths relative to the manifest
  flops: [0.9, 0.7, 0.5]                          # or params: [...]
  options: [{round_to: 8}, {round_to: 1}]         # sweep's options; one mapping or a list
  bench: false

A point that fails twice, or a model that cannot be read, is a row with its error; the others are
written, and the exit code is then 1.

""" + EXIT_CODES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, like every other usage problem
        raise UsageError(message)


def _parser(prog: str, description: str, epilog: str, usage: str | None = None) -> _Parser:
    return _Parser(prog=prog, usage=usage, description=description, epilog=epilog, add_help=False,
                   formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_general(p: argparse.ArgumentParser) -> None:
    """-h, --version, -q/-v and --debug: the same on every command."""
    general = p.add_argument_group("general")
    general.add_argument("-h", "--help", action="help", help="show this help and exit")
    general.add_argument("--version", action="version", version=f"onnxprune {__version__}",
                         help="show the version and exit")
    loudness = general.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    loudness.add_argument("-v", "--verbose", action="count", default=0,
                          help="log the pipeline stages on stderr (-vv: debug details)")
    general.add_argument("--debug", action="store_true", help="show tracebacks and all debug logs")


def _prune_parser() -> argparse.ArgumentParser:
    commands = "\n".join(f"  {name:<9} {command.summary}" for name, command in COMMANDS.items())
    p = _parser("onnxprune", usage="%(prog)s model TARGET [options]\n       %(prog)s COMMAND model [options]",
                description="Structured pruning of an exported ONNX vision model: removes channels (or weights) "
                            "to a target,\nverifies the result in onnxruntime and writes it.\n\n"
                            f"commands (onnxprune COMMAND --help for each):\n{commands}",
                epilog=EPILOG_PRUNE)
    p.add_argument("model", help="input .onnx file (never modified)")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="PATH", help="pruned model (default: <input>.pruned.onnx beside it)")
    out.add_argument("--force", action="store_true", help="overwrite existing output files (model, reports)")
    out.add_argument("--report", metavar="JSON", help="write the summary and the kept channel indices as JSON")
    out.add_argument("--html", metavar="PATH", help="write a self-contained HTML report (tables, plots, versions)")
    from .options import BenchOptions, CalibOptions, SolverOptions, TargetOptions, add_arguments

    add_arguments(p.add_argument_group("targets (a structured one, a sparsity one, or one of each)"), TargetOptions)
    add_arguments(p.add_argument_group("calibration data (for --method wanda/obs, --reconstruct, fidelity)"),
                  CalibOptions)
    add_arguments(p.add_argument_group("solver"), SolverOptions, ("method", "sequential", "allocate", "reconstruct"))
    add_arguments(p.add_argument_group("recovery without labels (needs --calib and PyTorch: "
                                       "pip install onnxprune[recover])"), SolverOptions, ("distill", "distill_lr"))
    add_arguments(p.add_argument_group("ranking"), SolverOptions, ("scope", "criterion", "round_to"))
    add_arguments(p.add_argument_group("INT8"), SolverOptions, ("quantize", "keep_fp32", "rounding"))
    add_arguments(p.add_argument_group("memory"), SolverOptions, ("max_memory",))
    latency = p.add_argument_group("latency (--latency target and --bench)")
    latency.add_argument("--bench", action="store_true",
                         help="time the dense and the pruned model, alternating, and show both in the summary")
    add_arguments(latency, BenchOptions)
    latency.add_argument("--no-latency", action="store_true", help=argparse.SUPPRESS)  # the old default-on switch
    _add_input_shape(p)
    _add_general(p)
    return p


def _add_input_shape(p: argparse.ArgumentParser) -> None:
    from .options import ShapeOptions, add_arguments

    add_arguments(p.add_argument_group("input size"), ShapeOptions)


def _check_fp16(args: argparse.Namespace) -> None:
    """Before any work: --fp16 only where the backend can build FP16 engines (BenchOptions.validate)."""
    from .options import BenchOptions, values

    BenchOptions(**values(args, BenchOptions)).validate()


def _bench_parser() -> argparse.ArgumentParser:
    p = _parser("onnxprune bench", usage="%(prog)s model [model ...] [options]",
                description="Time one or more models the way trtexec does: warm-up by time, at least N runs and\n"
                            "T seconds, median, p90/p95/p99, coefficient of variation, throughput. Several models\n"
                            "run alternating in one process, so their ratios hold on a noisy machine.",
                epilog=EPILOG_BENCH)
    p.add_argument("models", nargs="+", metavar="model", help=".onnx files (the first is the reference)")
    from .options import BenchOptions, add_arguments, positive

    backend = p.add_argument_group("backend")
    add_arguments(backend, BenchOptions)
    backend.add_argument("--save-engine", nargs="+", metavar="PATH",
                         help="tensorrt: write each model's engine (one path per model)")
    timing = p.add_argument_group("timing")
    timing.add_argument("--runs", type=positive, default=50, metavar="N", help="at least N runs each (default 50)")
    timing.add_argument("--min-seconds", type=float, default=3.0, metavar="S",
                        help="and at least S seconds in all (default 3)")
    timing.add_argument("--warmup", type=float, default=1.0, metavar="S", help="warm-up per model (default 1 s)")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    out.add_argument("--force", action="store_true", help="overwrite existing output files (JSON, engines)")
    _add_input_shape(p)
    _add_general(p)
    return p


def _analyze_parser() -> argparse.ArgumentParser:
    p = _parser("onnxprune analyze", usage="%(prog)s model [options]",
                description="List coupled channel groups, isomorphic classes, FLOPs shares and frozen channels\n"
                            "(and why). Writes nothing unless asked.", epilog=EPILOG_ANALYZE)
    p.add_argument("model", help="input .onnx file (never modified)")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="also write the analysis as JSON")
    out.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report")
    out.add_argument("--force", action="store_true", help="overwrite existing output files")
    _add_input_shape(p)
    _add_general(p)
    return p


def _sweep_parser() -> argparse.ArgumentParser:
    p = _parser("onnxprune sweep", usage="%(prog)s model (--flops R [R ...] | --params R [R ...]) [options]",
                description="Prune at several targets (one analysis, one calibration set, one scoring) and write\n"
                            "sweep.csv, sweep.json and sweep.png into a folder.", epilog=EPILOG_SWEEP)
    p.add_argument("model", help="input .onnx file (never modified)")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="output folder (default: <model stem>.sweep/ beside the input)")
    out.add_argument("--save-models", action="store_true", help="also write each pruned model into the folder")
    out.add_argument("--force", action="store_true", help="write into an existing non-empty folder")
    out.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report (table, plot, versions)")
    from .options import BenchOptions, CalibOptions, SolverOptions, add_arguments, fraction

    target = p.add_argument_group("targets (one kind, several values)").add_mutually_exclusive_group(required=True)
    target.add_argument("--flops", type=fraction, nargs="+", metavar="R", help="FLOPs targets, e.g. 0.9 0.7 0.5")
    target.add_argument("--params", type=fraction, nargs="+", metavar="R", help="params targets")
    calib = p.add_argument_group("calibration data (adds fidelity to the dense model, measured as --task judges it)")
    add_arguments(calib, CalibOptions)
    add_arguments(calib, SolverOptions, ("reconstruct",))
    add_arguments(p.add_argument_group("ranking"), SolverOptions, ("scope", "criterion", "round_to"))
    add_arguments(p.add_argument_group("INT8 (each point quantized; the table and plot show the FP32 score too)"),
                  SolverOptions, ("quantize", "keep_fp32", "rounding"))
    add_arguments(p.add_argument_group("memory"), SolverOptions, ("max_memory",))
    latency = p.add_argument_group("latency")
    latency.add_argument("--bench", action="store_true", help="time the dense and every pruned model, alternating")
    add_arguments(latency, BenchOptions)
    _add_input_shape(p)
    _add_jobs(p)
    _add_general(p)
    return p


def _add_jobs(p: argparse.ArgumentParser) -> None:
    from .jobs import JobOptions
    from .options import add_arguments

    add_arguments(p.add_argument_group("where the points run (a local process pool by default)"), JobOptions)


def _batch_parser() -> argparse.ArgumentParser:
    p = _parser("onnxprune batch", usage="%(prog)s MANIFEST.yaml [options]",
                description="Prune every model of a YAML manifest with every option set at every target (one\n"
                            "analysis per model and option set), as tasks in a local process pool or on Ray, and\n"
                            "write batch.csv, batch.json and done.json into a folder. A rerun into the same folder\n"
                            "skips the points done (same model file, options and target) and retries the failed.",
                epilog=EPILOG_BATCH)
    p.add_argument("manifest", help="YAML: models, flops or params, options (one set or a list), bench")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="output folder (default: <manifest stem>.batch/ beside it)")
    out.add_argument("--force", action="store_true", help="write into an existing non-empty folder that is not "
                                                          "a batch folder")
    _add_jobs(p)
    _add_general(p)
    return p


# --- outputs: claimed before any work, published together at the end ------------------------


def _outputs(io: _Io, force: bool, *inputs: str | os.PathLike) -> OutputSet:
    """The command's OutputSet, kept on ``io`` so an interrupt can say what was written."""
    from .outputs import OutputSet

    io.outputs = OutputSet(force=force, inputs=inputs)
    return io.outputs


def _claim_optional(outputs: OutputSet, *paths: tuple[str | None, str]) -> None:
    for path, what in paths:
        if path is not None:  # an empty path is given, and refused by the claim
            outputs.claim(path, what)


def _model_need(outputs: OutputSet, flops: float | None = None, params: float | None = None) -> int:
    """About the bytes a pruned model of the input takes at most, for the up-front free-space check:
    the input's files times the share of the weights the target keeps."""
    from .memory import kept_share

    return int(outputs.input_bytes * kept_share(flops, params))


# --- progress, logging, colour -----------------------------------------------------------------


@dataclass
class _Io:
    """Where a command writes: results on ``out``, spinner and errors on ``err``; the command line;
    the files it writes (set by the command)."""

    out: Console
    err: Console
    command: list[str]
    outputs: OutputSet | None = field(default=None)


def _consoles() -> tuple[Console, Console]:
    """stdout and stderr consoles. Rich turns colour off when the stream is not a terminal and on with
    FORCE_COLOR; NO_COLOR set to anything non-empty turns every style off (no escape codes at all).
    stdout piped or redirected gets no width limit (rich would cut tables at 80 columns) unless
    COLUMNS sets one."""
    from rich.console import Console

    plain: dict[str, Any] = {"color_system": None} if os.environ.get("NO_COLOR", "") != "" else {}
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(**plain, **({"width": PIPED_WIDTH} if piped else {})), Console(stderr=True, **plain)


PIPED_WIDTH = 10_000  # tables take their natural width; nothing is that wide


@contextlib.contextmanager
def _stages(io: _Io, quiet: bool, first: str) -> Iterator[Progress]:
    """A progress callback for the API: logs each stage at INFO (-v shows them) and, on an interactive
    terminal and without -q, shows the current one on a spinner on stderr."""
    from rich.text import Text

    spinner = None
    if not quiet and sys.stderr.isatty() and io.err.is_interactive:
        spinner = io.err.status(Text(printable(first)), spinner="dots")

    def progress(message: str) -> None:
        log.info(message)
        if spinner is not None:  # a stage may name a tensor or a path: never markup
            spinner.update(Text(printable(message)))

    with spinner or contextlib.nullcontext():
        progress(first)
        yield progress


class _StderrHandler(logging.StreamHandler):
    """A log handler that writes to whatever sys.stderr is now (the spinner swaps it to print above)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _PrintableFormatter(logging.Formatter):
    """Log lines with control characters shown escaped (``errors.printable``): a message may quote
    a tensor, node or input name, and a model must not send escape sequences to the terminal. A
    traceback (--debug) keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return printable(super().formatMessage(record))


def _configure_logging(quiet: bool, verbose: int, debug: bool) -> None:
    """-q: errors only; default: warnings; -v: onnxprune INFO (the stages); -vv: onnxprune DEBUG;
    --debug: DEBUG from every library."""
    # onnxruntime's telemetry prints a warning on stderr while onnxruntime is imported when it cannot
    # write its device id (HOME missing or read-only), before any code can lower onnxruntime's log
    # level: the command turns that telemetry off the way onnxruntime documents, before the import,
    # unless the user set ORT_DISABLE_TELEMETRY (0 keeps it on).
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING)
    own = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose == 1 else logging.NOTSET
    logging.getLogger("onnxprune").setLevel(own)


# --- commands ----------------------------------------------------------------------------------


def _run_prune(args: argparse.Namespace, io: _Io) -> None:
    from .api import default_output, prune
    from .deploy.runners import measure
    from .graph.load import check_model_path, write_model
    from .options import OPTION_CLASSES, values
    from .pipeline import load_model
    from .report.text import file_size, print_summary, summary_dict, write_json
    from .results import PruneRun

    check_model_path(args.model)  # before its name makes the default output's
    dst = args.output if args.output is not None else default_output(args.model)  # as typed: "" and "d/" refused
    with _outputs(io, args.force, args.model) as outputs:
        outputs.claim_model(dst, need=_model_need(outputs, args.flops, args.params))
        dst = Path(dst)
        _claim_optional(outputs, (args.report, "JSON report"), (args.html, "HTML report"))
        _check_fp16(args)
        with _stages(io, args.quiet, f"reading {args.model}") as progress:
            result = prune(args.model, progress=progress, **values(args, *OPTION_CLASSES))
            progress(f"writing the pruned model to {dst}")
            staged = outputs.stage(dst)
            write_model(result.model, staged, external=result.external_data or None)
            latency = None
            if args.bench:
                progress(f"timing the dense and the pruned model on {args.backend}, alternating")
                dense, _ = load_model(args.model)  # with unique node names, as prune read it
                timed = measure([dense, *result.stage_models()], runs=30, min_seconds=2.0, warmup_s=0.5,
                                threads=args.threads, backend=args.backend, batch=args.batch, fp16=args.fp16,
                                shapes=result.input_shapes)
                latency = (timed[0], timed[-1])
            run = PruneRun(file_bytes=(file_size(args.model), file_size(staged)), latency=latency,
                           stage_latency=timed if latency is not None and len(timed) > 2 else None,
                           backend=args.backend, output=str(dst), command=io.command)
            if args.report:
                progress(f"writing the JSON report to {args.report}")
                write_json(outputs.stage(args.report), {**summary_dict(result, run), "plan": result.plan})
            if args.html:
                from .report.html import prune_html, write_html

                progress(f"writing the HTML report to {args.html}")
                write_html(outputs.stage(args.html), prune_html(result, run))
            written = outputs.publish()
    if not args.quiet:
        print_summary(io.out, result, run)
        _print_written(io, written)


def _print_written(io: _Io, paths: list[Path]) -> None:
    from .report.text import say

    for path in paths:
        if not path.name.endswith(".data"):  # a model's weights file goes with its model
            say(io.out, f"wrote {path}", highlight=False)


def _run_analyze(args: argparse.Namespace, io: _Io) -> None:
    from .api import analyze, group_flops_share, measured_at
    from .deploy.sparse24 import sparse_eligibility
    from .report.text import print_analysis, write_json

    with _outputs(io, args.force, args.model) as outputs:
        _claim_optional(outputs, (args.json, "JSON"), (args.html, "HTML report"))
        with _stages(io, args.quiet, f"reading {args.model}") as progress:
            analysis = analyze(args.model, progress=progress, input_shapes=args.input_shapes)
        shares = group_flops_share(analysis)
        sparse = sparse_eligibility(analysis.graph)
        if args.json:
            write_json(outputs.stage(args.json), {
                "groups": [{"class": g.iso_class, "channels": g.size, "width": g.width, "flops_share": s,
                            "members": [f"{m.tensor}[{m.axis}]" for m in g.members]}
                           for g, s in zip(analysis.groups, shares, strict=True)],
                "frozen": [{"channels": f.channels, "reasons": f.reasons,
                            "members": [f"{m.tensor}[{m.axis}]" for m in f.slots]} for f in analysis.frozen],
                "ops_without_rule": analysis.no_rule_ops,
                "sparse_24": [vars(layer) for layer in sparse],
                "input_shapes": {k: list(v) for k, v in measured_at(analysis).items()},  # FLOPs measured there
            })
        if args.html:
            from .report.html import analysis_html, write_html

            log.info("writing the HTML report to %s", args.html)
            write_html(outputs.stage(args.html), analysis_html(analysis, shares, io.command))
        written = outputs.publish()
    if not args.quiet:
        print_analysis(io.out, analysis, shares, sparse)
        _print_written(io, written)


def _folder_arg(raw: str) -> Path:
    """--out as typed: "" would become "." and "-" is no folder."""
    if raw in ("", "-"):
        raise UsageError(f"--out {raw!r}: give an output folder path")
    return Path(raw)


def _sweep_folder(args: argparse.Namespace) -> Path:
    src = Path(args.model)
    if args.out is not None:
        return _folder_arg(args.out)
    stem = src.name[:-5] if src.name.endswith(".onnx") else src.name
    return src.with_name(stem + ".sweep")


def _run_sweep(args: argparse.Namespace, io: _Io) -> None:
    from rich.table import Table

    from .graph.load import check_model_path, write_model
    from .options import values
    from .report.plots import sweep_figure
    from .report.text import measured_at_line, name_cell, print_not_measured, say, write_json
    from .sweep import OPTION_CLASSES as SWEEP_OPTIONS
    from .sweep import model_filename, sweep_outcome

    check_model_path(args.model)  # before its name makes the default folder's
    folder = _sweep_folder(args)
    names = ["sweep.csv", "sweep.json", "sweep.png"]
    if args.save_models:
        metric = "flops" if args.flops else "params"
        models = [model_filename(metric, target) for target in args.flops or args.params]
        names += [n for m in models for n in (m + ".data", m)]  # a model's weights file before the model
    html_inside = bool(args.html) and Path(os.path.realpath(args.html)).parent == Path(os.path.realpath(folder))
    if html_inside:
        names.append(Path(args.html).name)
    with _outputs(io, args.force, args.model) as outputs:
        needs = {m: _model_need(outputs, **{metric: t}) for m, t in zip(models, args.flops or args.params,
                                                                         strict=True)} if args.save_models else {}
        files = dict(zip(names, outputs.claim_folder(folder, names, needs=needs), strict=True))
        if args.html is not None and not html_inside:
            outputs.claim(args.html, "HTML report")
        _check_fp16(args)
        with _stages(io, args.quiet, f"reading {args.model}") as progress:
            outcome = sweep_outcome(args.model, flops=args.flops, params=args.params, bench=args.bench,
                                    keep_models=args.save_models, progress=progress, **values(args, *SWEEP_OPTIONS))
            result = outcome.result
            if result is None or not result.points:
                raise ModelError("every point failed: " + "; ".join(outcome.errors.values()))
            progress(f"writing the results to {folder}")
            result.write_csv(outputs.stage(files["sweep.csv"]))
            write_json(outputs.stage(files["sweep.json"]), {**result.to_dict(), **_errors_dict(outcome.errors)})
            sweep_figure(result).savefig(outputs.stage(files["sweep.png"]), format="png")
            for point in result.points if args.save_models else ():
                path = files[model_filename(result.metric, point.target)]
                write_model(point.model, outputs.stage(path), external=result.external_data or None)
            if args.html:
                from .report.html import sweep_html, write_html

                progress(f"writing the HTML report to {args.html}")
                write_html(outputs.stage(args.html), sweep_html(result, io.command))
            written = outputs.publish()
    if args.quiet:
        return
    table = Table(title=f"onnxprune sweep ({result.metric} targets)")
    for col in ("target", "FLOPs ratio", "params ratio"):
        table.add_column(col, justify="right")
    bench = result.dense_latency_ms is not None
    fid = result.task is not None
    if bench:
        table.add_column("latency ms", justify="right")
        table.add_column("speedup", justify="right")
    if fid:
        from .calib.fidelity import FIGURES, LABELS, format_metric

        figures = FIGURES[result.task]  # the task's headline and one more (the summary JSON has them all)
        for name in figures:
            table.add_column(LABELS[name], justify="right")
        int8 = any(p.precision == "int8" for p in result.points)
        if int8:
            table.add_column(f"{LABELS[figures[0]]} FP32 (before INT8)", justify="right")
    if result.failed:
        table.add_column("error")
    for p in result.points:
        row = [f"{p.target:g}", f"{p.flops_ratio:.3f}", f"{p.params_ratio:.3f}"]
        if bench:
            row += [f"{p.latency_ms:.2f}", f"{1 / p.latency_ratio:.2f}x" if p.latency_ratio else "-"]
        if fid:
            row += [format_metric(n, p.metrics[n]) if p.metrics else "-" for n in figures]
            if int8:
                row.append(format_metric(figures[0], p.float_score) if p.float_score is not None else "-")
        table.add_row(*row, *([""] if result.failed else []))
    for target, error in result.failed.items():  # failed after a retry: a row with its error
        table.add_row(f"{target:g}", *["-"] * (len(table.columns) - 2), name_cell(error))
    io.out.print(table)
    say(io.out, measured_at_line(result.input_shapes, args.batch if bench else None), highlight=False)
    if bench:
        io.out.print(f"dense latency {result.dense_latency_ms:.2f} ms ({args.backend}, batch {args.batch}, median)")
    if fid:
        say(io.out, f"fidelity to the dense model on held-out samples, measured as {result.task} (--task)",
            highlight=False)
    if not result.fidelity_measured:
        print_not_measured(io.out, result.recover_command)
    _print_written(io, written)
    _fail_on_errors(io, {"the model" if t is None else f"{result.metric} {t:g}": e for t, e in outcome.errors.items()})


def _errors_dict(errors: dict) -> dict:
    """Failed points for sweep.json: {"errors": {"0.5": "..."}} (key "model": the model itself or its timing)."""
    return {"errors": {"model" if t is None else f"{t:g}": e for t, e in errors.items()}} if errors else {}


def _fail_on_errors(io: _Io, errors: dict[str, str]) -> None:
    """After the others were written: each failed point ({what: error}) on stderr, then exit code 1."""
    if not errors:
        return
    for what, error in errors.items():
        _error(io, f"onnxprune: {what} failed: {error}")
    raise ModelError(f"{len(errors)} point(s) failed; the others were written")


def _batch_folder(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return _folder_arg(args.out)
    src = Path(args.manifest)
    return src.with_name(src.stem + ".batch")


BATCH_FILES = ("batch.csv", "batch.json", "done.json")


def _manifest_models(manifest: str) -> list[Path]:
    """The model paths a manifest names, as inputs no output may overwrite (with their weights
    files); ``batch`` validates the manifest itself, so what is no path here is skipped."""
    from .jobs.batch import read_manifest

    data, base = read_manifest(manifest)
    models = data.get("models")
    entries = [m.get("path") if isinstance(m, dict) else m for m in models] if isinstance(models, list) else []
    return [base / m for m in entries if isinstance(m, str) and m]


def _run_batch(args: argparse.Namespace, io: _Io) -> None:
    from rich.table import Table

    from .jobs import JobOptions
    from .jobs.batch import batch
    from .options import values
    from .report.text import name_cell

    if args.manifest == "":
        raise UsageError("manifest path is empty")
    folder = _batch_folder(args)
    resume = (folder / "done.json").is_file() and {p.name for p in folder.iterdir()
                                                   if not p.name.startswith(".")} <= set(BATCH_FILES)
    with _outputs(io, args.force or resume, args.manifest, *_manifest_models(args.manifest)) as outputs:
        files = dict(zip(BATCH_FILES, outputs.claim_folder(folder, BATCH_FILES), strict=True))
        with _stages(io, args.quiet, f"reading {args.manifest}") as progress:
            result = batch(args.manifest, done=folder / "done.json" if resume else None, progress=progress,
                           **values(args, JobOptions))
            progress(f"writing the results to {folder}")
            result.write_csv(outputs.stage(files["batch.csv"]))
            result.write_json(outputs.stage(files["batch.json"]))
            result.write_done(outputs.stage(files["done.json"]))
            written = outputs.publish()
    if not args.quiet:
        table = Table(title=f"onnxprune batch ({len(result.rows)} points)")
        for col in ("model", "options", "target", "FLOPs ratio", "params ratio", "latency ms", "error"):
            table.add_column(col, justify="left" if col in ("model", "options", "error") else "right")
        for r in result.rows:
            flops, params, ms = (r.point.get(k) for k in ("flops_ratio", "params_ratio", "latency_ms"))
            table.add_row(name_cell(r.model), name_cell(json.dumps(r.options, sort_keys=True)),
                          f"{r.metric} {r.target:g}", "-" if flops is None else f"{flops:.3f}",
                          "-" if params is None else f"{params:.3f}", "-" if ms is None else f"{ms:.2f}",
                          name_cell(r.error or ("(earlier run)" if r.reused else "")))
        io.out.print(table)
        _print_written(io, written)
    _fail_on_errors(io, {f"{r.model} {r.metric} {r.target:g}": r.error for r in result.failed})


@dataclass
class Command:
    """A subcommand: its one-line summary (listed by ``onnxprune --help``), parser and runner."""

    summary: str
    parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace, _Io], None]


def _run_bench(args: argparse.Namespace, io: _Io) -> None:
    from .api import bench
    from .graph.load import check_model_path
    from .report.text import print_bench, write_json

    for path in args.models:  # every path before the first is timed
        check_model_path(path)
    engines = args.save_engine
    if engines:
        if args.backend != "tensorrt":
            raise UsageError("--save-engine needs --backend tensorrt")
        if len(engines) != len(args.models):
            raise UsageError(f"--save-engine needs one path per model: {len(args.models)} models, "
                             f"{len(engines)} paths")
    with _outputs(io, args.force, *args.models) as outputs:
        _claim_optional(outputs, *((engine, "engine") for engine in engines or ()), (args.json, "JSON"))
        _check_fp16(args)
        with _stages(io, args.quiet, f"timing {len(args.models)} model(s) on {args.backend}"):
            result = bench(args.models, backend=args.backend, batch=args.batch, threads=args.threads,
                           fp16=args.fp16, runs=args.runs, min_seconds=args.min_seconds, warmup_s=args.warmup,
                           save_engines=[outputs.stage(e) for e in engines] if engines else None,
                           input_shapes=args.input_shapes)
        if engines:  # the table names the engines where they will be, not where they were staged
            result.engines = list(engines)
        if args.json:
            write_json(outputs.stage(args.json), {**result.to_dict(), "command": io.command})
        written = outputs.publish()
    if not args.quiet:
        print_bench(io.out, result)
        _print_written(io, written)


COMMANDS: dict[str, Command] = {
    "analyze": Command("list coupled channel groups, isomorphic classes, FLOPs shares and frozen channels",
                       _analyze_parser, _run_analyze),
    "sweep": Command("prune at several targets from one analysis: CSV, JSON, plot (and HTML)",
                     _sweep_parser, _run_sweep),
    "batch": Command("models x options x targets from a YAML manifest, in a process pool or on Ray",
                     _batch_parser, _run_batch),
    "bench": Command("time models on onnxruntime (CPU, CUDA, TensorRT provider) or TensorRT, alternating",
                     _bench_parser, _run_bench),
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 model problem, 2 usage problem, 130
    interrupted, 143 terminated)."""
    global SIGNAL_SEEN
    SIGNAL_SEEN = 0  # this run's (main may run again in one process: tests, API users)
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in ("stdout", "stderr"):  # closed by the caller (`>&-`): Python sets it to None
        if getattr(sys, stream) is None:
            setattr(sys, stream, open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)
    with _sigterm_as_interrupt():
        return _main(argv)


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv
    io: _Io | None = None
    try:
        _configure_logging(quiet=False, verbose=0, debug=debug)
        io = _Io(*_consoles(), ["onnxprune", *argv])
        if argv and argv[0] in COMMANDS:
            command = COMMANDS[argv[0]]
            args = command.parser().parse_args(argv[1:])
            run = command.run
        else:
            args = _prune_parser().parse_args(argv)
            run = _run_prune
        _configure_logging(args.quiet, args.verbose, args.debug)
        log.debug("arguments: %s", vars(args))
        with _library_noise_as_debug_logs(args.debug):
            run(args, io)
        return 0
    except OnnxPruneError as exc:
        if debug:
            raise
        _error(io, f"onnxprune: error: {exc}{_written_note(io)}")
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted(io)
    except OSError as exc:  # a full disk, a read-only or vanished folder while writing an output: one line
        message = io.outputs.write_error(exc) if io and io.outputs and not SIGNAL_SEEN else None
        if message is None:
            return _unexpected(io, exc, debug)
        if debug:
            raise
        _error(io, f"onnxprune: error: {message}")
        return 1
    except Exception as exc:
        return _unexpected(io, exc, debug)


def _unexpected(io: _Io | None, exc: Exception, debug: bool) -> int:
    """A bug: still one line unless --debug."""
    if SIGNAL_SEEN:  # Ctrl-C inside a C extension's import comes back as another error (numpy: ImportError)
        return _interrupted(io)
    if debug:
        raise exc
    _error(io, f"onnxprune: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)"
               f"{_written_note(io)}")
    return 1


SIGNAL_SEEN = 0  # the SIGINT or SIGTERM on_signal turned into KeyboardInterrupt (0: none)


def on_signal(signum: int, _frame) -> None:
    """SIGINT handler of the installed command (``__main__``) and SIGTERM handler of every run:
    Python's KeyboardInterrupt, remembered, so an interrupt that a library turned into another
    exception is still reported as one, and a SIGTERM exits with 143, not 130."""
    global SIGNAL_SEEN
    SIGNAL_SEEN = SIGNAL_SEEN or signum
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (timeout, CI cancellation, docker stop) is handled as Ctrl-C while a command runs:
    one line, nothing left behind. Signal handlers can only be set on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def _interrupted(io: _Io | None) -> int:
    written = io.outputs.published if io and io.outputs else []
    word = "terminated (SIGTERM)" if SIGNAL_SEEN == signal.SIGTERM else "interrupted"
    _error(io, f"onnxprune: {word} after writing " + ", ".join(map(str, written)) if written
           else f"onnxprune: {word}; nothing was written")
    return 128 + (SIGNAL_SEEN or signal.SIGINT)


def _written_note(io: _Io | None) -> str:
    """What an error after the outputs were published must not hide."""
    written = io.outputs.published if io and io.outputs else []
    return f" (after writing {', '.join(map(str, written))})" if written else ""


def _error(io: _Io | None, message: str) -> None:
    """One line on stderr, through rich when the consoles exist (an interrupt may come before); names
    it quotes from the model or the command line cannot send control characters or markup."""
    message = printable(message)
    if io is None:
        print(message, file=sys.stderr)
    else:
        io.err.print(message, highlight=False, markup=False, emoji=False, soft_wrap=True)


@contextlib.contextmanager
def _library_noise_as_debug_logs(debug: bool) -> Iterator[None]:
    """Python warnings from libraries (numpy's RuntimeWarning, onnx's deprecations) become DEBUG logs
    of ``onnxprune.libraries`` instead of lines on stderr; onnxruntime's own C++ logger, which no
    Python handler can catch, is held at errors-only unless --debug. (onnx-graphsurgeon's printed
    messages are routed in load.py, for API users too.)"""
    import onnxruntime

    noise = logging.getLogger("onnxprune.libraries")

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        noise.debug("%s: %s (%s:%s)", category.__name__, message, filename, lineno)

    onnxruntime.set_default_logger_severity(0 if debug else 3)
    with warnings.catch_warnings():
        warnings.simplefilter("always" if debug else "default")
        warnings.showwarning = show
        yield


if __name__ == "__main__":
    sys.exit(main())
