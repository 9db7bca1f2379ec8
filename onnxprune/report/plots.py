"""Plots (matplotlib, Agg backend, no pyplot state): the sweep's trade-off curve."""

from __future__ import annotations

import os

from ..outputs import write_atomic
from ..results import SweepResult


def sweep_figure(result: SweepResult):
    """The trade-off plot as a matplotlib Figure: FLOPs ratio on x; params ratio, the fidelity task's
    headline score (top-1 agreement, IoU, box F1 or cosine) and latency ratio (where measured) on the
    left axis, the task's second figure (KL, mean abs error or relative error; where measured) on the
    right one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = sorted(result.points, key=lambda p: p.flops_ratio)
    x = [p.flops_ratio for p in pts] + [1.0]  # the dense model closes every curve at (1, 1)
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, [p.params_ratio for p in pts] + [1.0], "o-", label="params ratio")
    if all(p.latency_ratio is not None for p in pts):
        int8 = " INT8" if pts[0].precision == "int8" else ""
        ax.plot(x, [p.latency_ratio for p in pts] + [1.0], "s-", label=f"latency ratio{int8} (onnxruntime CPU)")
    task = result.task if pts and all(p.metrics for p in pts) else None
    if task is not None:
        from ..calib.fidelity import FIGURES, LABELS, SCORE

        int8 = all(p.precision == "int8" for p in pts)
        ax.plot(x, [p.score for p in pts] + [1.0], "^-", label=LABELS[SCORE[task]] + (" (INT8)" if int8 else ""))
        if int8 and all(p.float_score is not None for p in pts):
            ax.plot(x, [p.float_score for p in pts] + [1.0], "v:", label=LABELS[SCORE[task]] + " (FP32, before INT8)")
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
    ax.set_xlabel("FLOPs ratio (pruned / dense)")
    ax.set_ylabel("ratio to dense")
    ax.set_xlim(0, 1.05)
    tops = [v for p in pts for v in (p.params_ratio, p.latency_ratio) if v is not None]
    ax.set_ylim(0, max([1.1, *(1.05 * v for v in tops)]))
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    second = FIGURES[task][1] if task is not None and task != "detect" else None  # detect: F1 says it all
    if second is not None:
        ax2 = ax.twinx()
        label = f"{LABELS[second]} to dense"
        (line,) = ax2.plot(x, [p.metrics[second] for p in pts] + [0.0], "d--", color="tab:red", label=label)
        ax2.set_ylabel(label)
        ax2.set_ylim(bottom=0)
        handles, labels = handles + [line], labels + [label]
    ax.legend(handles, labels, loc="lower right", fontsize="small")
    ax.set_title(f"onnxprune sweep ({result.metric} targets)" + (f"; fidelity as {task}" if task else ""))
    fig.tight_layout()
    return fig


def plot_sweep(result: SweepResult, path: str | os.PathLike) -> None:
    """Write the sweep's trade-off plot as a PNG, atomically."""
    fig = sweep_figure(result)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


__all__ = ["plot_sweep", "sweep_figure"]
