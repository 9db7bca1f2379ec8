"""HTML reports: one self-contained file per run (prune, sweep, analyze).

Plain HTML with a small inline style sheet; plots are matplotlib figures (Agg canvas, no pyplot
state) embedded as base64 PNG, so the file opens anywhere without network access. Every piece of
text from the model or the command line goes through ``html.escape``. One function per section.
"""

from __future__ import annotations

import base64
import html
import io
import os
import platform
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..outputs import write_atomic
from ..results import NOT_MEASURED, ChannelRow, FrozenRow, LatencyPair, PruneResult, PruneRun, SweepResult, latency_pair
from .text import cost_rows, human

if TYPE_CHECKING:
    from ..calib.distill import Distillation
    from ..calib.reconstruct import Refit
    from ..calib.sparsify import SparsifyReport
    from ..ranking.latency import LatencySearch
    from ..structure.analyze import Analysis

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; font-family: monospace; }
pre { background: #f6f6f6; padding: 0.6em; white-space: pre-wrap; word-break: break-all; }
img { max-width: 100%; } p.note { color: #555; font-size: 0.9em; }
p.warning { color: #8a3b00; font-weight: bold; }
"""

Row = Sequence[Any]


# --- building blocks ---------------------------------------------------------------------------


def _cell(value: Any, text_column: bool) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f'<td class="text">{html.escape(text)}</td>' if text_column else f"<td>{html.escape(text)}</td>"


def _table(headers: Sequence[str], rows: Sequence[Row], table_id: str, text_columns: Sequence[int] = ()) -> str:
    """A table; the columns listed in ``text_columns`` (names, tensors) are left-aligned, the rest right."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(_cell(v, i in text_columns) for i, v in enumerate(row)) + "</tr>"
                     for row in rows)
    return f'<table id="{html.escape(table_id)}">\n<tr>{head}</tr>\n{body}\n</table>'


def _section(title: str, body: str, section_id: str) -> str:
    return f'<section id="{html.escape(section_id)}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _page(title: str, sections: list[str]) -> str:
    body = "\n".join(s for s in sections if s)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n")


# --- provenance --------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """Versions of onnxprune, its main dependencies and Python."""
    import numpy
    import onnx
    import onnx_graphsurgeon
    import onnxruntime

    from .. import __version__

    return {"onnxprune": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "onnx-graphsurgeon": onnx_graphsurgeon.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _command_text(command: Sequence[str] | str | None) -> str:
    if command is None:
        return "(not recorded: made through the Python API)"
    return command if isinstance(command, str) else shlex.join(str(part) for part in command)


def _provenance_section(command: Sequence[str] | str | None) -> str:
    body = (f'<pre id="command">{html.escape(_command_text(command))}</pre>\n'
            + _table(("package", "version"), list(versions().items()), "versions", text_columns=(0, 1)))
    return _section("Command line and versions", body, "provenance")


# --- prune report ------------------------------------------------------------------------------


def _summary_section(result: PruneResult, run: PruneRun, latency: LatencyPair | None) -> str:
    rows = [(label, human(dense, unit), human(pruned, unit), f"{ratio:.3f}")
            for label, dense, pruned, ratio, unit in cost_rows(result, run)]
    if latency is not None:
        rows.append((f"latency ({latency.backend}, median)", f"{latency.dense_ms:.3g} ms",
                     f"{latency.pruned_ms:.3g} ms", f"{latency.pruned_ms / latency.dense_ms:.3f}"))
    body = _table(("", "before", "after", "after / before"), rows, "summary", text_columns=(0,))
    body += _note(f"coupled groups: {result.groups_found} found, {result.groups_pruned} pruned, {len(result.frozen)} "
                  f"frozen; shared ratio {result.ratio:.4f}. FLOPs count a multiply-add as 2, at batch 1; "
                  "the pruned figures are measured on the pruned model itself.")
    if result.channel_multiple_why:
        body += _note(f"channel counts: multiples of {result.channel_multiple} ({result.channel_multiple_why})")
    if run.output:
        body += _note(f"output: {run.output}")
    if not result.fidelity_measured:
        body += '\n<p class="warning">Fidelity to the dense model: not measured (no calibration data; see below).</p>'
    return _section("Summary", body, "summary-section")


def _channel_counts(channels: list[ChannelRow]) -> list[tuple[str, int, int, int]]:
    """(group name, class, channels before, channels after) per coupled group."""
    return [(row.group, row.iso_class, row.atoms * row.width, (row.atoms - row.removed) * row.width)
            for row in channels]


def _channel_plot(counts: list[tuple[str, int, int, int]]) -> bytes:
    names = [name if len(name) <= 40 else "..." + name[-37:] for name, *_ in counts]
    ys = list(range(len(counts)))
    fig = _figure(9, min(60, max(2.5, 0.2 * len(counts) + 1.2)))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(ys, [before for *_, before, _ in counts], color="lightgrey", label="before")
    ax.barh(ys, [after for *_, after in counts], color="tab:blue", label="after")
    ax.set_yticks(ys, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("channels")
    ax.set_title("channels per coupled group (graph order)")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _channels_section(channels: list[ChannelRow]) -> str:
    if not channels:
        return _section("Channels per layer", _note("no channels were removed (weight sparsity only)"), "channels")
    counts = _channel_counts(channels)
    rows = [(name, cls, before, after, f"{after / before:.3f}") for name, cls, before, after in counts]
    body = _img(_channel_plot(counts), "channels per coupled group, before and after")
    body += _note("Each row is a coupled group: channels removed together, named by its first weight.")
    body += _table(("group (first weight)", "class", "channels before", "channels after", "kept"), rows,
                   "channels-table", text_columns=(0,))
    return _section("Channels per layer", body, "channels")


def _classes_section(channels: list[ChannelRow], ratio: float) -> str:
    if not channels:
        return ""
    by_class: dict[int, list[tuple[str, int, int, int]]] = {}
    for count in _channel_counts(channels):
        by_class.setdefault(count[1], []).append(count)
    rows = []
    for cls, members in sorted(by_class.items()):
        before, after = sum(m[2] for m in members), sum(m[3] for m in members)
        rows.append((cls, len(members), members[0][0], before, after, f"{after / before:.3f}"))
    body = _note(f"Groups of one structure form an isomorphic class; channels are ranked within their class and "
                 f"one ratio shared by all classes ({ratio:.4f}) meets the target.")
    body += _table(("class", "groups", "first group", "channels before", "channels after", "kept"), rows,
                   "classes-table", text_columns=(2,))
    return _section("Isomorphic classes", body, "classes")


def _frozen_section(frozen: list[FrozenRow], no_rule_ops: dict[str, int] | None = None) -> str:
    """Frozen channel sets and the ops without a channel rule."""
    if not frozen:
        return _section("Frozen channels", _note("none: every channel carrying weights could be pruned"), "frozen")
    rows = [(f.channels, ", ".join(f.slots), ", ".join(f.reasons)) for f in frozen]
    body = _table(("channel sets", "where (first tensors)", "why"), rows, "frozen-table", text_columns=(1, 2))
    if no_rule_ops:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(no_rule_ops.items()))
        body += _note(f"ops without a channel rule (their channels are frozen): {ops}")
    return _section("Frozen channels", body, "frozen")


def _latency_section(latency: LatencyPair | None, search: LatencySearch | None) -> str:
    if latency is None:
        return _section("Latency", _note("not measured"), "latency")
    rows = [("dense", f"{latency.dense_ms:.3f}", "1.00x"),
            ("pruned", f"{latency.pruned_ms:.3f}", f"{latency.speedup:.2f}x")]
    body = _table(("model", "median ms", "speedup"), rows, "latency-table", text_columns=(0,))
    runs = f"median of {latency.runs} runs" if latency.runs else "median"
    body += _note(f"{latency.backend}, {runs}, dense and pruned alternating in one process.")
    if search is not None:
        body += _note(f"latency target {search.target:g} on {search.backend} (tolerance {search.tolerance:g}): "
                      "each candidate timed against the dense model, alternating.")
        if search.method == "table":
            lt = search.table or {}
            body += _note(f"candidates from a latency table ({lt.get('nodes')} layers, {lt.get('probes')} probes, "
                          f"{'read from the cache' if lt.get('cached') else 'measured'}) and a knapsack; the table's "
                          f"largest prediction error {search.prediction_error:.3f}.")
            rows = [(f"{p.budget:.3f}", str(p.round_to), f"{p.flops_ratio:.3f}", f"{p.predicted_ratio:.3f}",
                     f"{p.latency_ratio:.3f}", "chosen" if p == search.chosen else "") for p in search.probes]
            heads = ("table budget", "round-to", "FLOPs ratio", "predicted latency", "latency ratio", "")
        else:
            rows = [(f"{p.flops_target:.3f}", str(p.round_to), f"{p.flops_ratio:.3f}",
                     f"{p.latency_ratio:.3f}", "chosen" if p == search.chosen else "") for p in search.probes]
            heads = ("FLOPs target", "round-to", "FLOPs ratio", "latency ratio", "")
        body += _table(heads, rows, "latency-search")
    return _section("Latency", body, "latency")


def _not_measured(recover_command: str | None) -> str:
    """A run without calibration data: fidelity not measured, recovery usually needed, and the command
    that measures and recovers it (``recover_command``)."""
    body = f'<p class="warning" id="fidelity-not-measured">Fidelity {html.escape(NOT_MEASURED)}</p>'
    if recover_command:
        body += f'\n<pre id="recover-command">{html.escape(recover_command)}</pre>'
    return body


def _fidelity_section(result: PruneResult) -> str:
    f = result.fidelity
    if f is None:
        return _section("Fidelity", _not_measured(result.recover_command), "fidelity")
    rows = f.items()
    body = _note(f"measured as {f.task}: {f.reason or 'given with --task'}; headline: {f.headline()}")
    body += _table(("measure (pruned vs dense)", "value"), rows, "fidelity-table", text_columns=(0,))
    body += _note(f"on {f.samples} held-out samples ({result.held_out or '-'}); calibration: "
                  f"{result.calibration or '-'}")
    return _section("Fidelity", body, "fidelity")


def _sparsity_section(sp: SparsifyReport | None) -> str:
    if sp is None:
        return ""
    rows = [(layer.name, layer.columns, f"{layer.sparsity:.3f}", "-" if layer.error is None else f"{layer.error:.4f}")
            for layer in sp.layers]
    body = _note(f"{sp.pattern} by {sp.method}{' (sequential)' if sp.sequential else ''}; "
                 f"{len(sp.dense)} layers stay dense.")
    body += _table(("layer", "columns", "sparsity", "output error"), rows, "sparsity-table", text_columns=(0,))
    if sp.dense:
        body += _table(("dense layer", "why"), list(sp.dense), "dense-layers", text_columns=(0, 1))
    return _section("Weight sparsity", body, "sparsity")


def _distill_section(d: Distillation | None) -> str:
    if d is None:
        return ""
    classify = getattr(d, "task", "classify") == "classify"
    if classify:
        rows = [("held-out KL", f"{d.kl_before:.4g}", f"{d.kl_after:.4g}"),
                ("held-out top-1 agreement", f"{d.agreement_before:.1%}", f"{d.agreement_after:.1%}")]
    else:
        rows = [(f"held-out {d.loss_name} ({d.task})", f"{d.loss_before:.4g}", f"{d.loss_after:.4g}"),
                (f"held-out {d.score_name}", f"{d.score_before:.4g}", f"{d.score_after:.4g}")]
    body = _table(("measure (pruned vs dense)", "before", "after"), rows, "distill-table", text_columns=(0,))
    masked = f" ({d.masked} with their zeros kept)" if d.masked else ""
    body += _note(f"{d.steps} of {d.max_steps} steps (kept step {d.best_step}) in {d.seconds:.0f} s on "
                  f"{d.device}; Adam lr {d.lr:g}, temperature {d.temperature:g}, batch {d.batch}, "
                  f"{d.train_samples} training samples ({d.augment}); {d.tensors} tensors trained{masked}.")
    body += _distill_curve(d, classify)
    return _section("Distillation", body, "distill")


def _distill_curve(d: Distillation, classify: bool) -> str:
    """The held-out measures every evaluation: a classifier's KL and top-1 agreement, else the task's
    loss and score (curve entries ``train_loss``, ``held_out_loss``, ``score``; older ones
    ``train_kl``, ``held_out_kl``, ``agreement``)."""
    rows = []
    for c in d.curve:
        train = c.get("train_loss", c.get("train_kl"))
        held = c.get("held_out_loss", c.get("held_out_kl"))
        score = c.get("score", c.get("agreement"))
        rows.append((str(c["step"]), "-" if train is None else f"{train:.4g}", "-" if held is None else f"{held:.4g}",
                     "-" if score is None else (f"{score:.1%}" if classify else f"{score:.4g}")))
    names = ("training KL (T)", "held-out KL", "top-1 agreement") if classify else (
        "training loss", f"held-out {d.loss_name}", d.score_name)
    return _table(("step", *names), rows, "distill-curve")


def _reconstruct_section(refits: list[Refit]) -> str:
    if not refits:
        return ""
    rows = [(r.name, r.chosen, f"{r.error_before:.4f}", f"{r.error_after:.4f}",
             "" if r.held_out_after is None else f"{r.held_out_after:.4f}") for r in refits]
    body = _table(("layer", "chosen", "output error before", "after re-fit", "after, on held-out files"), rows,
                  "reconstruct-table", text_columns=(0, 1))
    return _section("Reconstruction", body, "reconstruct")


def _stages_section(result: PruneResult, run: PruneRun) -> str:
    """--quantize: each stage's fidelity and (with --bench) latency, beside onnxruntime's INT8 alone."""
    if result.quantization is None:
        return ""
    rows = []
    for r in result.stages(run.stage_latency):
        f = r.fidelity
        rows.append((r.stage, f.headline() if f else "-", f"{f.loss_name} {f.loss:.4g}" if f else "-",
                     f"{r.latency_ms:.2f} ms" if r.latency_ms else "-", f"{r.speedup:.2f}x" if r.speedup else "-"))
    body = _table(("stage", "fidelity (held-out)", "loss", "latency", "vs dense FP32"), rows, "stages-table",
                  text_columns=(0,))
    body += _note(result.quantization.describe())
    return _section("What each stage cost", body, "stages")


def prune_html(result: PruneResult, run: PruneRun | None = None) -> str:
    """The report of one prune: its ``PruneResult``, and what the run recorded besides (``PruneRun``:
    file sizes, ``--bench`` latency, output path, command line)."""
    run = run or PruneRun()
    latency = latency_pair(result, run)
    sections = [
        _summary_section(result, run, latency),
        _channels_section(result.channels),
        _classes_section(result.channels, result.ratio),
        _frozen_section(result.frozen),
        _latency_section(latency, result.latency_search),
        _fidelity_section(result),
        _sparsity_section(result.sparsity),
        _reconstruct_section(result.refits),
        _distill_section(result.distillation),
        _stages_section(result, run),
        _provenance_section(run.command),
    ]
    return _page("onnxprune report", sections)


# --- sweep report ------------------------------------------------------------------------------


def _sweep_section(result: SweepResult) -> str:
    bench = result.dense_latency_ms is not None
    from ..calib.fidelity import LABELS, format_metric

    measured = [p.metrics for p in result.points if p.metrics]
    fid = list(measured[0]) if measured else []  # the task's metrics, the same for every point
    headers = ["target", "FLOPs ratio", "params ratio", "groups pruned"]
    headers += ["latency ms", "latency ratio"] if bench else []
    headers += [LABELS.get(name, name) for name in fid]
    headers += ["error"] if result.failed else []
    rows = []
    for p in result.points:
        row = [f"{p.target:g}", f"{p.flops_ratio:.4f}", f"{p.params_ratio:.4f}", p.groups_pruned]
        if bench:
            row += [f"{p.latency_ms:.3f}", f"{p.latency_ratio:.3f}"]
        row += [format_metric(name, p.metrics[name]) if p.metrics and name in p.metrics else "-" for name in fid]
        rows.append(row + ([""] if result.failed else []))
    for target, error in result.failed.items():  # failed after a retry: a row with its error
        rows.append([f"{target:g}", *["-"] * (len(headers) - 2), error])
    body = _table(headers, rows, "sweep-table")
    notes = [f"dense: {human(result.dense.flops)} FLOPs, {human(result.dense.params)} params"]
    if bench:
        notes.append(f"dense latency {result.dense_latency_ms:.3f} ms (onnxruntime CPU, median, all models "
                     "alternating)")
    if result.calibration:
        notes.append(f"calibration: {result.calibration}")
    if result.task:
        notes.append(f"fidelity measured as {result.task} (--task)")
    if result.held_out:
        notes.append(f"fidelity on: {result.held_out}")
    body += _note("; ".join(notes))
    if not result.fidelity_measured:
        body += _not_measured(result.recover_command)
    return _section(f"Sweep ({result.metric} targets)", body, "sweep")


def sweep_html(result: SweepResult, command: Sequence[str] | str | None = None) -> str:
    """The report of a sweep (a ``SweepResult``): the table, the trade-off plot, provenance."""
    from .plots import sweep_figure

    plot = _section("Trade-off plot", _img(_png(sweep_figure(result)), "sweep plot"), "plot")
    return _page("onnxprune sweep report", [_sweep_section(result), plot, _provenance_section(command)])


# --- analysis report ---------------------------------------------------------------------------


def _group_rows(analysis: Analysis, flops_share: list[float]) -> list[Row]:
    rows = []
    for i, (group, share) in enumerate(zip(analysis.groups, flops_share, strict=True)):
        first = next(iter(group.members))
        rows.append((i, group.iso_class, group.size * group.width, group.width, f"{share:.1%}",
                     f"{first.tensor}[{first.axis}]", len(group.members)))
    return rows


def _share_plot(analysis: Analysis, flops_share: list[float]) -> bytes:
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    classes = sorted({g.iso_class for g in analysis.groups})
    colours = {cls: f"C{i % 10}" for i, cls in enumerate(classes)}
    ax.bar(range(len(flops_share)), [100 * s for s in flops_share],
           color=[colours[g.iso_class] for g in analysis.groups])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("coupled group # (graph order; colour: isomorphic class)")
    ax.set_ylabel("share of dense FLOPs, %")
    ax.set_title("FLOPs that scale with each group")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _class_rows(analysis: Analysis, flops_share: list[float]) -> list[Row]:
    by_class: dict[int, list] = {}
    for group, share in zip(analysis.groups, flops_share, strict=True):
        by_class.setdefault(group.iso_class, []).append((group, share))
    rows = []
    for cls, members in sorted(by_class.items()):
        first = members[0][0].weights[0].tensor if members[0][0].weights else next(iter(members[0][0].members)).tensor
        rows.append((cls, len(members), sum(g.size * g.width for g, _ in members),
                     f"{sum(s for _, s in members):.1%}", first))
    return rows


def _analysis_frozen_section(analysis: Analysis) -> str:
    frozen = [FrozenRow(f.channels, f.reasons, [f"{s.tensor}[{s.axis}]" for s in f.slots[:4]]) for f in analysis.frozen]
    return _frozen_section(frozen, analysis.no_rule_ops)


def analysis_html(analysis: Analysis, flops_share: list[float], command: Sequence[str] | str | None = None) -> str:
    """The report of ``analyze``: coupled groups, isomorphic classes, FLOPs shares, frozen channels."""
    classes = len({g.iso_class for g in analysis.groups})
    summary = _note(f"{len(analysis.groups)} prunable groups in {classes} isomorphic classes; "
                    f"{len(analysis.frozen)} frozen channel sets.")
    groups = summary
    if analysis.groups:
        groups += _img(_share_plot(analysis, flops_share), "FLOPs share per group")
    groups += _table(("#", "class", "channels", "width", "FLOPs share", "first member", "members"),
                     _group_rows(analysis, flops_share), "groups-table", text_columns=(5,))
    sections = [
        _section("Coupled groups", groups, "groups"),
        _section("Isomorphic classes", _table(("class", "groups", "channels", "FLOPs share", "first group"),
                                              _class_rows(analysis, flops_share), "classes-table",
                                              text_columns=(4,)), "classes"),
        _analysis_frozen_section(analysis),
        _provenance_section(command),
    ]
    return _page("onnxprune analysis", sections)


# --- writing -----------------------------------------------------------------------------------


def write_html(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a staged file beside it, then renamed)."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def to_html(result: PruneResult | SweepResult, path: str | os.PathLike,
            command: Sequence[str] | str | None = None) -> None:
    """Write the self-contained HTML report of a ``prune`` or ``sweep`` result, atomically. (The
    CLI's ``--html`` adds file sizes, latency and the command to a prune report.)"""
    if not isinstance(result, PruneResult | SweepResult):
        raise TypeError(f"result must be a PruneResult or a SweepResult (what prune and sweep return), got "
                        f"{type(result).__name__}")
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a path (str or os.PathLike), got {type(path).__name__}")
    if isinstance(result, SweepResult):
        write_html(path, sweep_html(result, command))
    else:
        write_html(path, prune_html(result, PruneRun(command=command)))


__all__ = ["analysis_html", "prune_html", "sweep_html", "to_html", "versions", "write_html"]
