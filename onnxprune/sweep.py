"""Sweep: prune one model at several targets, analysing it (and loading calibration data, and
scoring channels) once, and tabulate/plot what each target costs and keeps.

Per target: select -> rewrite -> optional re-fit -> verify -> costs -> optional fidelity; with
``bench`` the dense model and every pruned model are then timed alternating in one process.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import onnx

from .errors import UsageError
from .options import (
    BenchOptions,
    CalibOptions,
    ShapeOptions,
    SolverOptions,
    check_fraction,
    names,
    signature_parameters,
)
from .pipeline import Pipeline, measured_at
from .progress import Progress, no_progress
from .results import SweepPoint, SweepResult

log = logging.getLogger(__name__)


SOLVER = ("scope", "criterion", "round_to", "reconstruct")  # the solver options a sweep takes
OPTION_CLASSES = (CalibOptions, SolverOptions, BenchOptions, ShapeOptions)


def _targets(flops, params) -> tuple[str, list[float]]:
    if (flops is None) == (params is None):
        raise UsageError("give one kind of target: flops=[...] or params=[...]")
    metric, values = ("flops", flops) if flops is not None else ("params", params)
    values = list(values)
    if not values:
        raise UsageError(f"give at least one {metric} target")
    for v in values:
        check_fraction(metric, v)
    return metric, values


def _options(kwargs: dict) -> tuple[CalibOptions, SolverOptions, BenchOptions, ShapeOptions]:
    known = {n for cls in OPTION_CLASSES for n in names(cls, SOLVER if cls is SolverOptions else None)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"sweep() got an unexpected keyword argument {unknown[0]!r}")
    return tuple(cls(**{k: v for k, v in kwargs.items() if k in names(cls)}) for cls in OPTION_CLASSES)


def sweep(model: str | os.PathLike | onnx.ModelProto, *, flops: list[float] | None = None,
          params: list[float] | None = None, bench: bool = False, bench_runs: int = 20, keep_models: bool = False,
          progress: Progress | None = None, **options) -> SweepResult:
    """Prune ``model`` at each FLOPs (or params) target, reusing one analysis, one calibration set
    and one set of channel scores (one ``Pipeline``). Every pruned model is verified as ``prune``
    verifies it.

    ``keep_models`` keeps each pruned ModelProto on its point (for saving). With ``bench`` the
    dense and all pruned models are timed alternating on ``backend`` (see ``bench``).
    The other keywords are options as in ``prune``: calibration (``calib``, ``calib_count``,
    ``preprocess``, ``holdout``), ``scope``, ``criterion``, ``round_to`` (default ``"auto"``: the
    channel multiple ``backend`` runs fastest), ``reconstruct``, ``backend``, ``threads``,
    ``batch``, ``fp16`` and ``input_shapes``.
    """
    metric, targets = _targets(flops, params)
    calib, solver, bench_options, shapes = _options(options)
    calib.validate()
    solver.validate(None, calib)
    bench_options.validate()
    step = progress or no_progress
    pipe = Pipeline(model, calib=calib, solver=solver, bench=bench_options, shapes=shapes, progress=progress)
    multiples, _ = pipe.multiples()
    step("scoring channels")
    pipe.scores()
    points: list[SweepPoint] = []
    models: list[onnx.ModelProto] = []
    for i, target in enumerate(targets, 1):
        where = f"{metric} {target:g} ({i}/{len(targets)})"
        pipe.step = lambda m, w=where: step(f"{w}: {m}")
        plan, _ = pipe.plan(**{metric: target}, multiples=multiples)
        pruned_model = pipe.to_model(pipe.apply(plan))
        costs = pipe.verify(pruned_model)
        point = SweepPoint(target=float(target),
                           flops_ratio=costs.flops / pipe.dense.flops if pipe.dense.flops else 1.0,
                           params_ratio=costs.params / pipe.dense.params if pipe.dense.params else 1.0,
                           groups_pruned=int(sum(len(r) > 0 for r in plan.removed)), ratio=float(plan.ratio),
                           round_to=plan.round_to)
        quality = pipe.fidelity(pruned_model)
        if quality is not None:
            point.top1_agreement, point.cosine, point.kl = quality.top1_agreement, quality.cosine, quality.kl
        log.debug("sweep %s: FLOPs %.4f params %.4f", where, point.flops_ratio, point.params_ratio)
        points.append(point)
        if keep_models:
            point.model = pruned_model
        if bench:
            models.append(pruned_model)
    pipe.step = step
    dense_ms = None
    if bench:
        step(f"timing the dense and the pruned models on {bench_options.backend}, alternating")
        lat = pipe.measure([pipe.model, *models], runs=bench_runs)
        dense_ms = lat[0].median_ms
        for point, latency in zip(points, lat[1:], strict=True):
            point.latency_ms = latency.median_ms
            point.latency_ratio = latency.median_ms / dense_ms if dense_ms else None
    return SweepResult(metric=metric, dense=pipe.dense, points=points, dense_latency_ms=dense_ms,
                       calibration=pipe.calib.description if pipe.calib else None, external_data=pipe.external,
                       input_shapes=measured_at(pipe.analysis), batch=bench_options.batch)


sweep.__signature__ = inspect.Signature(  # help(sweep) and IDEs list every option
    [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
     *[inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
       for n, d in (("flops", None), ("params", None), ("bench", False), ("bench_runs", 20), ("keep_models", False))],
     *[p for cls in OPTION_CLASSES for p in signature_parameters(cls, only=SOLVER if cls is SolverOptions else None)],
     inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=None)],
    return_annotation="SweepResult")


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


__all__ = ["model_filename", "save_models", "sweep"]
