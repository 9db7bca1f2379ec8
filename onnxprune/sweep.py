"""Sweep: prune one model at several targets, analysing it (and loading calibration data, and
scoring channels) once, and tabulate/plot what each target costs and keeps. The targets run in a
local process pool or on Ray (jobs/), or one after another here (``jobs=1``).

Per target: select -> rewrite -> optional re-fit -> verify -> costs -> optional fidelity; with
``bench`` the dense model and every pruned model are then timed alternating in one process.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from pathlib import Path

import numpy as np
import onnx

from .errors import ModelError, UsageError
from .jobs import JobOptions, Unit, UnitOutcome
from .jobs import run as run_jobs
from .jobs.local import default_jobs
from .jobs.tasks import sweep_point
from .memory import kept_share
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
from .results import SweepPoint, SweepResult, recover_command_for

log = logging.getLogger(__name__)


# the solver options a sweep takes
SOLVER = ("scope", "criterion", "round_to", "reconstruct", "max_memory", "quantize", "keep_fp32", "rounding")
OPTION_CLASSES = (CalibOptions, SolverOptions, BenchOptions, ShapeOptions, JobOptions)


def parse_targets(flops, params) -> tuple[str, list[float]]:
    """(metric, targets as floats): one target may be a scalar (``flops=0.5`` is ``[0.5]``); each
    is a number in (0, 1], given once."""
    if (flops is None) == (params is None):
        raise UsageError("give one kind of target: flops=[...] or params=[...]")
    metric, values = ("flops", flops) if flops is not None else ("params", params)
    if _is_number(values):
        values = [values]
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise UsageError(f"{metric} targets must be a list of fractions in (0, 1], got {values!r}"[:160])
    values = list(values)
    if not values:
        raise UsageError(f"give at least one {metric} target")
    for v in values:
        if not _is_number(v):
            raise UsageError(f"{metric} target must be a fraction in (0, 1], got {v!r}"[:160])
        check_fraction(metric, float(v))
    values = [float(v) for v in values]
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise UsageError(f"{metric} target {twice[0]:g} is given twice")
    return metric, values


def _is_number(value) -> bool:
    """A real number, numpy's included; not a bool (True is no target)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def parse_options(kwargs: dict, where: str = "sweep"
                  ) -> tuple[CalibOptions, SolverOptions, BenchOptions, ShapeOptions, JobOptions]:
    """The option instances of sweep's keywords; an unknown keyword is a TypeError."""
    known = {n for cls in OPTION_CLASSES for n in names(cls, SOLVER if cls is SolverOptions else None)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
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

    Where the points run (jobs/): ``jobs`` local processes (default: one per CPU core; 1: one
    after another in this process), or ``ray=True`` (a local Ray) / ``ray="auto"`` /
    ``ray="ray://host:10001"`` as Ray tasks; ``bench_on`` pins the timing to Ray nodes with that
    resource. In processes or on Ray, a point that fails twice is left out with a warning (all
    failing: ModelError); ``sweep_outcome`` returns the errors too.
    """
    outcome = sweep_outcome(model, flops=flops, params=params, bench=bench, bench_runs=bench_runs,
                            keep_models=keep_models, progress=progress, **options)
    if outcome.result is None or not outcome.result.points:
        raise ModelError("every point failed: " + "; ".join(_failures(outcome.errors)))
    for line in _failures(outcome.errors):
        log.warning("sweep point failed: %s", line)
    return outcome.result


def _failures(errors: dict) -> list[str]:
    return [f"{'model' if t is None else f'{t:g}'}: {e}" for t, e in errors.items()]


def sweep_outcome(model: str | os.PathLike | onnx.ModelProto, *, flops: list[float] | None = None,
                  params: list[float] | None = None, bench: bool = False, bench_runs: int = 20,
                  keep_models: bool = False, progress: Progress | None = None, **options) -> UnitOutcome:
    """``sweep``, returning the result and the errors of the points that failed ({target: error})."""
    from .api import check_model_arg

    check_model_arg(model)  # a TypeError naming what it accepts, as prune's
    metric, targets = parse_targets(flops, params)
    if not isinstance(bench, (bool, np.bool_)):
        raise UsageError(f"bench must be True or False, got {bench!r}")
    if isinstance(bench_runs, (bool, np.bool_)) or not isinstance(bench_runs, (int, np.integer)) or bench_runs < 1:
        raise UsageError(f"bench_runs must be a positive integer, got {bench_runs!r}")
    calib, solver, bench_options, shapes, job = parse_options(options)
    calib.validate()
    solver.validate(None, calib)
    bench_options.validate()
    job.validate()
    step = progress or no_progress
    ray_session = contextlib.nullcontext()
    if job.ray:
        from .jobs.ray import session

        ray_session = session(job.ray, step)  # Ray starts, its workers import onnxprune, during the analysis
    with ray_session:
        pipe = Pipeline(model, calib=calib, solver=solver, bench=bench_options, shapes=shapes, progress=progress,
                        kept=max(kept_share(**{metric: t}) for t in targets))
        multiples, _ = pipe.multiples()
        step("scoring channels")
        pipe.scores()
        if job.ray or ((job.jobs or default_jobs()) > 1 and len(targets) > 1):
            unit = Unit("sweep", model, {"calib": calib, "solver": solver, "bench": bench_options, "shapes": shapes},
                        metric, targets, bench, bench_runs, keep_models, pipe=pipe)
            return _with_recover_command(run_jobs([unit], job, step)[0], model, {f"--{metric}": targets}, calib,
                                         solver, bench_options, shapes, job)
    points: list[SweepPoint] = []
    models: list[onnx.ModelProto] = []
    for i, target in enumerate(targets, 1):
        where = f"{metric} {target:g} ({i}/{len(targets)})"
        pipe.step = lambda m, w=where: step(f"{w}: {m}")
        point, pruned_model = sweep_point(pipe, metric, target, multiples)
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
    return _with_recover_command(
        UnitOutcome(SweepResult(metric=metric, dense=pipe.dense, points=points, dense_latency_ms=dense_ms,
                                calibration=pipe.calib.description if pipe.calib else None,
                                held_out=pipe.held_out.description if pipe.held_out else None,
                                external_data=pipe.external, input_shapes=measured_at(pipe.analysis),
                                batch=bench_options.batch)), model, {f"--{metric}": targets}, calib,
        solver, bench_options, shapes, job)


def _with_recover_command(outcome: UnitOutcome, model: str | os.PathLike | onnx.ModelProto,
                          targets: dict[str, list[float]], calib: CalibOptions, *others: object) -> UnitOutcome:
    """Without calibration data the points have no fidelity: the result carries the sweep that measures
    it and recovers the models (the same targets and options, ``others``, with --calib and --reconstruct)."""
    if outcome.result is not None and not calib.given:
        outcome.result.recover_command = recover_command_for(model, (calib, *others), sweep=targets)
    return outcome


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
    from .graph.load import save_model

    paths = []
    for p in result.points:
        if p.model is None:
            raise UsageError("the sweep kept no models: run it with keep_models=True")
        path = Path(folder) / model_filename(result.metric, p.target)
        save_model(p.model, path, external=result.external_data or None)
        paths.append(path)
    return paths


__all__ = ["model_filename", "parse_options", "parse_targets", "save_models", "sweep", "sweep_outcome"]
