"""Report stage: the terminal summary (rich) and the JSON report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..deploy.sparse24 import SparseLayer, reason_counts
from ..errors import printable
from ..graph.load import model_file_bytes
from ..graph.shapes import spelled
from ..outputs import write_atomic
from ..ranking.granularity import backend_multiple
from ..results import NOT_MEASURED, BenchResult, PruneResult, PruneRun, StageRow, latency_pair
from ..structure.analyze import Analysis, measured_at

if TYPE_CHECKING:
    from ..calib.distill import Distillation


def say(console: Console, text: str, **kwargs: Any) -> None:
    """Print a line that may hold names from the model or the user (tensors, inputs, op types, paths):
    never read as rich markup or emoji (a tensor named ``[red]`` is shown as such, a ``[/]`` cannot
    break the print), and control characters shown escaped (``errors.printable``)."""
    console.print(printable(text), markup=False, emoji=False, **kwargs)


def name_cell(text: object) -> Text:
    """A table cell holding a name from the model or the user, shown as ``say`` shows it."""
    return Text(printable(text))


def file_size(path: str | os.PathLike) -> int:
    """Bytes of a model file plus every external data file it names."""
    return model_file_bytes(path)


def human(n: float, unit: str = "") -> str:
    """``1.23G``: three significant digits and a decimal SI suffix."""
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}"
        n /= 1000
    return f"{n:.3g}P{unit}"


def summary_dict(result: PruneResult, run: PruneRun | None = None) -> dict[str, Any]:
    """Everything the summary shows, as plain data for the JSON report (which adds the plan)."""
    run = run or PruneRun()
    out = result.to_dict()
    if run.file_bytes:
        dense, pruned = run.file_bytes
        out["file_bytes"] = {"dense": dense, "pruned": pruned, "ratio": pruned / dense}
    latency = latency_pair(result, run)
    if latency is not None:
        out["latency_ms"] = latency.to_dict()
    if run.stage_latency:
        out["stages"] = [row.to_dict() for row in result.stages(run.stage_latency)]
    if run.output is not None:
        out["output"] = run.output
    if run.command is not None:
        out["command"] = run.command
    return out


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (a staged file beside it, then renamed)."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def measured_at_line(shapes: dict[str, Any], batch: int | None = None) -> str:
    """``measured at x[1,3,48,320] (FLOPs per sample; latency at batch 1)``: the input sizes FLOPs (and
    latency, if timed at ``batch``) were measured at."""
    timed = f"; latency at batch {batch}" if batch else ""
    return f"measured at {', '.join(spelled(k, v) for k, v in shapes.items())} (FLOPs per sample{timed})"


def cost_rows(result: PruneResult, run: PruneRun | None = None) -> list[tuple[str, float, float, float, str]]:
    """(label, dense, pruned, pruned / dense, unit) of FLOPs, params and, where measured, file size."""
    rows = [("FLOPs", result.dense.flops, result.pruned.flops, result.flops_ratio, ""),
            ("params", result.dense.params, result.pruned.params, result.params_ratio, "")]
    if run is not None and run.file_bytes:
        dense, pruned = run.file_bytes
        rows.append(("file size", dense, pruned, pruned / dense, "B"))
    return rows


def print_summary(console: Console, result: PruneResult, run: PruneRun | None = None) -> None:
    """The terminal summary of a prune (rich tables)."""
    table = Table(title="onnxprune summary", show_lines=False)
    table.add_column("")
    table.add_column("dense", justify="right")
    table.add_column("pruned", justify="right")
    table.add_column("ratio", justify="right")
    flops, params, *size = cost_rows(result, run)
    for label, dense, pruned, ratio, unit in (params, flops, *size):
        table.add_row(label, human(dense, unit), human(pruned, unit), f"{ratio:.3f}")
    lat = latency_pair(result, run)
    if lat is not None:
        table.add_row(f"latency ({lat.backend}, median)", f"{lat.dense_ms:.2f} ms", f"{lat.pruned_ms:.2f} ms",
                      f"{lat.speedup:.2f}x faster")
    console.print(table)
    if result.input_shapes:
        say(console, measured_at_line(result.input_shapes, lat.batch if lat is not None else None), highlight=False)
    if result.channel_multiple_why:
        ranked = f"; channels ranked by {result.criterion}" if result.criterion else ""
        say(console, f"channel counts: multiples of {result.channel_multiple} ({result.channel_multiple_why})"
                     f"{ranked}", highlight=False)
    search = result.latency_search
    if search is not None:
        c = search.chosen
        say(console, f"latency target {search.target:g} on {search.backend}: measured {c.latency_ratio:.3f} of dense "
                      f"at FLOPs {c.flops_ratio:.3f} (round-to {c.round_to}), {len(search.probes)} candidates "
                      "timed", highlight=False)
        if search.method == "table" and search.table:
            lt = search.table
            how = "read from the cache" if lt["cached"] else f"measured in {lt['build_s']:.1f} s"
            say(console, f"  latency table ({lt['nodes']} layers, {lt['probes']} probes, {how}) predicted "
                          f"{c.predicted_ratio:.3f}; largest prediction error {search.prediction_error:.3f}",
                          highlight=False)
    sp = result.sparsity
    if sp is not None:
        errors = [layer.error for layer in sp.layers if layer.error is not None]
        mean_err = f", mean layer output error {sum(errors) / len(errors):.4f}" if errors else ""
        say(console, f"sparsity: {sp.pattern} by {sp.method}{' (sequential)' if sp.sequential else ''} "
                      f"in {len(sp.layers)} layers{mean_err}; {len(sp.dense)} layers stay dense")
        for layer, why in sp.dense[:10]:
            say(console, f"  dense: {layer} ({why})")
    refits = result.refits
    if refits:
        before = sum(r.error_before for r in refits) / len(refits)
        after = sum(r.error_after for r in refits) / len(refits)
        from ..calib.reconstruct import summarise

        held = [r.held_out_after for r in refits if r.held_out_after is not None]
        on_held = f" ({sum(held) / len(held):.4f} on held-out files)" if held else ""
        say(console, f"reconstruct: {len(refits)} layers re-fitted ({summarise(refits)}), "
                      f"mean layer output error {before:.4f} -> {after:.4f}{on_held}")
    if result.distillation is not None:
        say(console, distill_line(result.distillation), highlight=False)
    if result.quantization is not None:
        say(console, result.quantization.describe(), highlight=False)
        print_stages(console, result.stages(run.stage_latency if run else None))
    f = result.fidelity
    if f is not None:
        say(console, f"fidelity on {f.samples} held-out samples: {f.describe()}", highlight=False)
        say(console, f"  measured as {f.task}: {f.reason or 'given with --task'}", highlight=False)
    if result.calibration:
        say(console, f"calibration: {result.calibration}")
    if result.held_out:
        say(console, f"held out (fidelity measured on): {result.held_out}")
    say(console, f"groups: {result.groups_found} found, {result.groups_pruned} pruned, {len(result.frozen)} frozen")
    for frozen in result.frozen:
        say(console, f"  frozen: {frozen.channels} channel set(s) at {', '.join(frozen.slots[:2])}"
                      f" because of {', '.join(frozen.reasons)}")
    if f is None:  # last, where it is seen: the model's accuracy is unknown
        print_not_measured(console, result.recover_command)


def print_stages(console: Console, rows: list[StageRow]) -> None:
    """Each stage's fidelity to the dense model (held-out) and, when timed, its latency."""
    from ..calib.fidelity import LABELS

    timed = any(r.latency_ms is not None for r in rows)
    table = Table(title="what each stage cost")
    for col in ("stage", "fidelity (held-out)", *(("latency", "vs dense FP32") if timed else ())):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in rows:
        f = (f"{r.fidelity.headline()}, {LABELS.get(r.fidelity.loss_name, r.fidelity.loss_name)} "
             f"{r.fidelity.loss:.4g}" if r.fidelity else "-")
        times = (f"{r.latency_ms:.2f} ms", f"{r.speedup:.2f}x") if r.latency_ms else ("-", "-")
        table.add_row(name_cell(r.stage), f, *(times if timed else ()))
    console.print(table)


def print_not_measured(console: Console, recover_command: str | None) -> None:
    """What a run without calibration data says about accuracy: fidelity was not measured, the model
    usually needs recovery, and the command that measures and recovers it (``recover_command``)."""
    say(console, f"fidelity {NOT_MEASURED}", highlight=False)
    if recover_command:
        say(console, f"  {recover_command}", highlight=False, soft_wrap=True)


def distill_line(d: Distillation) -> str:
    """``distill: 300 steps ... held-out KL 0.45 -> 0.08, top-1 agreement 63.3% -> 88.1%``: the task's
    loss and score (a classifier's KL and top-1 agreement)."""
    how = f"best at step {d.best_step}" + (", stopped early" if d.stopped_early else "")
    return (f"distill: {d.steps} of {d.max_steps} steps ({how}) in {d.seconds:.0f} s on {d.device}: "
            f"{distill_measures(d)} ({d.held_out} samples)")


def distill_measures(d: Distillation) -> str:
    """``held-out KL 0.45 -> 0.08, top-1 agreement 63.3% -> 88.1%``, or the task's own loss and score."""
    if getattr(d, "task", "classify") == "classify":
        return (f"held-out KL {d.kl_before:.4g} -> {d.kl_after:.4g}, top-1 agreement "
                f"{d.agreement_before:.1%} -> {d.agreement_after:.1%}")
    return (f"held-out {d.loss_name} {d.loss_before:.4g} -> {d.loss_after:.4g}, {d.score_name} "
            f"{d.score_before:.4g} -> {d.score_after:.4g} ({d.task})")


def print_analysis(console: Console, analysis: Analysis, flops_share: list[float],
                   sparse: list[SparseLayer] | None = None) -> None:
    """The terminal view of an analysis: groups, classes, frozen channels, 2:4 eligibility."""
    table = Table(title="coupled channel groups")
    for col in ("#", "class", "channels", "width", "FLOPs share", "first member", "members"):
        table.add_column(col, justify="right" if col not in ("first member",) else "left")
    for i, (group, share) in enumerate(zip(analysis.groups, flops_share, strict=True)):
        first = next(iter(group.members))
        table.add_row(str(i), str(group.iso_class), str(group.size), str(group.width), f"{share:.1%}",
                      name_cell(f"{first.tensor}[{first.axis}]"), str(len(group.members)))
    console.print(table)
    if measured_at(analysis):
        say(console, measured_at_line(measured_at(analysis)), highlight=False)
    classes = len({g.iso_class for g in analysis.groups})
    say(console, f"{len(analysis.groups)} prunable groups in {classes} isomorphic classes; "
                  f"{len(analysis.frozen)} frozen")
    multiple = backend_multiple("ort-cpu")
    say(console, f"pruning rounds channel counts to multiples of {multiple.multiple} by default "
                  f"({multiple.reason}; --round-to N to change)", highlight=False)
    for frozen in analysis.frozen:
        where = ", ".join(f"{s.tensor}[{s.axis}]" for s in frozen.slots[:2])
        say(console, f"  frozen: {frozen.channels} channel set(s) at {where} because of {', '.join(frozen.reasons)}")
    if analysis.no_rule_ops:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(analysis.no_rule_ops.items()))
        say(console, f"ops without a channel rule (their channels are frozen): {ops}")
    if sparse is not None:
        print_sparse_24(console, sparse)


def print_sparse_24(console: Console, layers: list[SparseLayer]) -> None:
    """One line on TensorRT 2:4 eligibility (how many layers, how many carry the pattern), one per
    reason layers are not eligible."""
    eligible = [layer for layer in layers if layer.eligible]
    carrying = sum(layer.carries_24 for layer in eligible)
    say(console, f"2:4 sparsity (TensorRT): {len(eligible)} of {len(layers)} Conv/MatMul/Gemm layers eligible, "
                  f"{carrying} already carry the 2:4 pattern", highlight=False)
    for why, count in sorted(reason_counts(layers).items(), key=lambda item: -item[1]):
        say(console, f"  not eligible: {count} x {why}", highlight=False)


def print_bench(console: Console, result: BenchResult) -> None:
    """The ``onnxprune bench`` table: trtexec's statistics per model and the ratio to the first."""
    table = Table(title=f"latency on {result.backend}, batch {result.batch}, {result.threads} thread(s)"
                        f"{', fp16' if result.fp16 else ''}; models timed alternating")
    for col in ("model", "median ms", "mean ms", "p90 ms", "p95 ms", "p99 ms", "CV", "runs", "samples/s",
                "vs first"):  # CV above 10% is marked: the machine is busy, trust the ratios over the times
        table.add_column(col, justify="left" if col == "model" else "right")
    short = [Path(n).name for n in result.names]
    names = short if len(set(short)) == len(short) else result.names
    for name, lat, ratio in zip(names, result.latencies, result.ratios(), strict=True):
        table.add_row(name_cell(name), f"{lat.median_ms:.3f}", f"{lat.mean_ms:.3f}", f"{lat.p90_ms:.3f}",
                      f"{lat.p95_ms:.3f}", f"{lat.p99_ms:.3f}", f"{lat.cv:.1%}" + (" (high)" if lat.noisy else ""),
                      str(lat.runs), f"{lat.throughput:.1f}", f"{ratio:.3f} ({1 / ratio:.2f}x)" if ratio > 0 else "-")
    console.print(table)
    inputs = [", ".join(spelled(k, v) for k, v in feed.items()) for feed in result.inputs or []]
    if inputs and len(set(inputs)) == 1:
        say(console, f"inputs timed at {inputs[0]}", highlight=False)
    elif inputs:
        for name, shown in zip(names, inputs, strict=True):
            say(console, f"{name}: inputs timed at {shown}", highlight=False)
    for name, build in zip(names, result.engine_reports or [None] * len(names), strict=True):
        if build:
            ran = ", ".join(build["ran_sparse"][:8]) + (" ..." if len(build["ran_sparse"]) > 8 else "")
            say(console, f"{name}: TensorRT {build['tensorrt']} engine ({_engine_precision(build)}), "
                          f"built in {build['build_s']:.1f} s; {len(build['eligible_sparse'])} layers eligible for "
                          f"sparse math, {len(build['ran_sparse'])} ran sparse{': ' + ran if ran else ''}",
                          highlight=False)


def _engine_precision(build: dict[str, Any]) -> str:
    """The engine's precision and its other builder flags, e.g. "FP16, SPARSE_WEIGHTS" (on TensorRT 11
    FP16 is a float16 model, not a flag)."""
    flags = [flag for flag in build["flags"] if flag != "FP16"]
    return ", ".join([build.get("precision") or ("FP16" if "FP16" in build["flags"] else "FP32"), *flags])
