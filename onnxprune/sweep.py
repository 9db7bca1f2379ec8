"""Sweep: prune one model at several targets, analysing it (and loading calibration data, and
scoring channels) once, and tabulate/plot what each target costs and keeps.

Per target: select -> rewrite -> optional re-fit -> verify -> costs -> optional fidelity; with
``bench`` the dense model and every pruned model are then timed alternating in one process.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from . import api
from .calibration import CalibrationSet
from .cost import flops_terms, param_terms
from .errors import UsageError
from .granularity import candidate_multiples, parse_round_to
from .load import to_model
from .outputs import write_atomic
from .reconstruct import refit_layers
from .rewrite import apply_plan
from .score import CALIBRATED
from .select import select_granular

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

COLUMNS = ("target", "flops_ratio", "params_ratio", "latency_ms", "latency_ratio", "top1_agreement", "cosine",
           "kl", "groups_pruned", "ratio", "round_to")


@dataclass
class SweepPoint:
    """One target of a sweep: the measured ratios (on the pruned model itself) and, where asked,
    latency and fidelity to the dense model on held-out calibration samples."""

    target: float
    flops_ratio: float
    params_ratio: float
    groups_pruned: int = 0
    ratio: float = 0.0
    round_to: int = 1  # the channel multiple used (auto may use a finer one for a far target)
    latency_ms: float | None = None
    latency_ratio: float | None = None
    top1_agreement: float | None = None
    cosine: float | None = None
    kl: float | None = None
    model: onnx.ModelProto | None = field(default=None, repr=False, compare=False)

    def row(self) -> dict[str, Any]:
        """The point as one CSV/JSON row (no model)."""
        return {k: getattr(self, k) for k in COLUMNS}


@dataclass
class SweepResult:
    """What ``sweep`` returns; ``metric`` is "flops" or "params" (what the targets bound)."""

    metric: str
    dense: api.Costs
    points: list[SweepPoint]
    dense_latency_ms: float | None = None
    calibration: str | None = None
    external_data: bool = False
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # FLOPs measured there (batch 1)
    batch: int = 1  # the batch latency was timed at

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: dense costs, the input sizes they were measured at, and every point."""
        return {"metric": self.metric, "dense": asdict(self.dense), "dense_latency_ms": self.dense_latency_ms,
                "calibration": self.calibration, "points": [p.row() for p in self.points],
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                "latency_batch": self.batch if self.dense_latency_ms is not None else None}

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the points as CSV, atomically."""
        write_atomic(path, self.write_csv)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON, atomically."""
        write_atomic(path, self.write_json)

    def write_csv(self, path: str | os.PathLike) -> None:
        """Write the points as CSV to ``path`` as is (not atomically)."""
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
            writer.writeheader()
            for p in self.points:
                writer.writerow({k: "" if v is None else v for k, v in p.row().items()})

    def write_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON to ``path`` as is (not atomically)."""
        import json

        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    def plot(self, path: str | os.PathLike) -> None:
        """Write the trade-off plot (``figure``) as a PNG, atomically."""
        fig = self.figure()
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))

    def to_html(self, path: str | os.PathLike, command: list[str] | None = None) -> None:
        """Write a self-contained HTML report (table, plot, versions), atomically."""
        from .html import sweep_html, write_html

        write_html(path, sweep_html(self, command))

    def figure(self):
        """The trade-off plot as a matplotlib Figure: FLOPs ratio on x; params ratio, top-1 agreement
        and latency ratio (where measured) on the left axis, KL (where measured) on the right one.
        Agg backend, no pyplot state."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        pts = sorted(self.points, key=lambda p: p.flops_ratio)
        x = [p.flops_ratio for p in pts] + [1.0]  # the dense model closes every curve at (1, 1)
        fig = Figure(figsize=(7, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(x, [p.params_ratio for p in pts] + [1.0], "o-", label="params ratio")
        if all(p.latency_ratio is not None for p in pts):
            ax.plot(x, [p.latency_ratio for p in pts] + [1.0], "s-", label="latency ratio (onnxruntime CPU)")
        if all(p.top1_agreement is not None for p in pts):
            ax.plot(x, [p.top1_agreement for p in pts] + [1.0], "^-", label="top-1 agreement")
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
        ax.set_xlabel("FLOPs ratio (pruned / dense)")
        ax.set_ylabel("ratio to dense")
        ax.set_xlim(0, 1.05)
        tops = [v for p in pts for v in (p.params_ratio, p.latency_ratio) if v is not None]
        ax.set_ylim(0, max([1.1, *(1.05 * v for v in tops)]))
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if all(p.kl is not None for p in pts):
            ax2 = ax.twinx()
            (line,) = ax2.plot(x, [p.kl for p in pts] + [0.0], "d--", color="tab:red", label="KL to dense")
            ax2.set_ylabel("KL divergence (softmax)")
            ax2.set_ylim(bottom=0)
            handles, labels = handles + [line], labels + ["KL to dense"]
        ax.legend(handles, labels, loc="lower right", fontsize="small")
        ax.set_title(f"onnxprune sweep ({self.metric} targets)")
        fig.tight_layout()
        return fig


def _targets(flops, params) -> tuple[str, list[float]]:
    if (flops is None) == (params is None):
        raise UsageError("give one kind of target: flops=[...] or params=[...]")
    metric, values = ("flops", flops) if flops is not None else ("params", params)
    values = list(values)
    if not values:
        raise UsageError(f"give at least one {metric} target")
    for v in values:
        api._check_targets(v if metric == "flops" else None, v if metric == "params" else None, None, None)
    return metric, values


def sweep(model: str | os.PathLike | onnx.ModelProto, *, flops: list[float] | None = None,
          params: list[float] | None = None, calib: str | os.PathLike | CalibrationSet | None = None,
          calib_count: int = 128, preprocess: str = "imagenet", holdout: float = 0.25, reconstruct: bool = False,
          criterion: str = "l2", scope: str = "isomorphic", round_to: int | str = "auto", bench: bool = False,
          threads: int = 1, backend: str = "ort-cpu", batch: int = 1, fp16: bool = False, bench_runs: int = 20,
          keep_models: bool = False, input_shapes: api.InputShapes | None = None,
          progress: Progress | None = None) -> SweepResult:
    """Prune ``model`` at each FLOPs (or params) target, reusing one analysis, one calibration set
    and one set of channel scores. Every pruned model is verified as ``prune`` verifies it.

    ``keep_models`` keeps each pruned ModelProto on its point (for saving). With ``bench`` the
    dense and all pruned models are timed alternating on ``backend`` (see ``bench``).
    ``input_shapes`` ({"x": (1, 3, 48, 320)}) sizes inputs with free dims, and ``round_to``
    (default ``"auto"``: the channel multiple ``backend`` runs fastest) rounds channel counts, as in ``prune``.
    """
    metric, targets = _targets(flops, params)
    multiples, _ = candidate_multiples(parse_round_to(round_to), backend)
    if reconstruct and calib is None:
        raise UsageError("--reconstruct needs calibration data: give --calib PATH (images, .npy, .npz), "
                         "or --calib random for a mechanics-only run")
    if criterion in CALIBRATED and calib is None:
        raise UsageError(f"--criterion {criterion} needs calibration data: give --calib PATH")
    step = progress or (lambda _msg: None)
    proto, external = api._load(model)
    shapes = api.resolve_input_shapes(proto, input_shapes, batch=batch)
    calib_set, held_out = api._calibration(proto, calib, calib_count, preprocess, holdout, input_shapes)
    analysis = api._analyze(proto, progress, shapes, input_shapes)
    dense = api.model_costs(analysis)
    step("scoring channels")
    scores = api.score_groups(analysis, criterion, calib_set.samples if calib_set else None)
    terms = (flops_terms(analysis.graph, api._shapes(analysis.capture)) if metric == "flops"
             else param_terms(analysis.graph))
    outputs = [t.name for t in analysis.graph.outputs]
    points: list[SweepPoint] = []
    models: list[onnx.ModelProto] = []
    for i, target in enumerate(targets, 1):
        where = f"{metric} {target:g} ({i}/{len(targets)})"
        step(f"{where}: selecting channels")
        plan = select_granular(analysis, scores, terms, target, multiples, scope=scope,
                               what="FLOPs" if metric == "flops" else "params")
        step(f"{where}: rewriting the graph")
        graph, kept = apply_plan(analysis, plan)
        if reconstruct:
            refit_layers(analysis.graph, graph, kept, calib_set.samples, progress=lambda m, w=where: step(f"{w}: {m}"))
        pruned_proto = to_model(graph, proto)
        step(f"{where}: verifying")
        pruned_graph, pruned_capture = api.verify(pruned_proto, analysis.capture, outputs, shapes)
        costs = api._costs(pruned_graph, pruned_capture)
        point = SweepPoint(target=float(target),
                           flops_ratio=costs.flops / dense.flops if dense.flops else 1.0,
                           params_ratio=costs.params / dense.params if dense.params else 1.0,
                           groups_pruned=int(sum(len(r) > 0 for r in plan.removed)), ratio=float(plan.ratio),
                           round_to=plan.round_to)
        if held_out is not None:
            step(f"{where}: measuring fidelity")
            quality = api.fidelity(proto, pruned_proto, held_out.samples)
            point.top1_agreement, point.cosine, point.kl = quality.top1_agreement, quality.cosine, quality.kl
        log.debug("sweep %s: FLOPs %.4f params %.4f", where, point.flops_ratio, point.params_ratio)
        points.append(point)
        if keep_models:
            point.model = pruned_proto
        if bench:
            models.append(pruned_proto)
    dense_ms = None
    if bench:
        from .deploy import measure

        step(f"timing the dense and the pruned models on {backend}, alternating")
        lat = measure([proto, *models], runs=bench_runs, threads=threads, backend=backend, batch=batch, fp16=fp16,
                      shapes=shapes)
        dense_ms = lat[0].median_ms
        for point, latency in zip(points, lat[1:], strict=True):
            point.latency_ms = latency.median_ms
            point.latency_ratio = latency.median_ms / dense_ms if dense_ms else None
    return SweepResult(metric=metric, dense=dense, points=points, dense_latency_ms=dense_ms,
                       calibration=calib_set.description if calib_set else None, external_data=external,
                       input_shapes=api.measured_at(analysis), batch=batch)


def model_filename(metric: str, target: float) -> str:
    """File name of a sweep point's model: ``flops0.5.onnx``."""
    return f"{metric}{target:g}.onnx"


def save_models(result: SweepResult, folder: str | os.PathLike) -> list[Path]:
    """Write each point's kept model as ``<metric><target>.onnx`` in ``folder``."""
    from .load import save_model

    paths = []
    for p in result.points:
        if p.model is None:
            raise UsageError("the sweep kept no models: run it with keep_models=True")
        path = Path(folder) / model_filename(result.metric, p.target)
        save_model(p.model, path, external=result.external_data or None)
        paths.append(path)
    return paths


__all__ = ["SweepPoint", "SweepResult", "model_filename", "save_models", "sweep"]
