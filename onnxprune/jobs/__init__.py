"""Many points at once: a sweep's targets, or a batch's models x options x targets, as tasks in a
local process pool (local.py, the default) or on Ray (ray.py).

    outcomes = run(units, JobOptions(jobs=4), progress)   # one UnitOutcome per unit, in order

Each unit (tasks.Unit) is analysed once; each of its targets is one task; a task that fails or
whose process is killed runs once more, then its error is reported and the other points go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..progress import no_progress
from ..results import SweepPoint, SweepResult
from .local import Failure, default_jobs
from .tasks import JobOptions, Unit


@dataclass
class UnitOutcome:
    """One unit's SweepResult (its successful points, in target order; None when the analysis
    failed) and the errors of what failed: {target: error}, target None for the model itself
    (its analysis or its timing)."""

    result: SweepResult | None
    errors: dict[float | None, str] = field(default_factory=dict)


def run(units: list[Unit], options: JobOptions, progress: Callable[[str], None] | None = None) -> list[UnitOutcome]:
    """Run every unit's points as tasks, where ``options`` says."""
    step = progress or no_progress
    if options.ray:
        from .ray import run_units as run_ray

        raw = run_ray(units, options.ray, options.bench_on, step)
    else:
        from .local import run_units as run_local

        raw = run_local(units, options.jobs or default_jobs(), step)
    return [_outcome(unit, *parts) for unit, parts in zip(units, raw, strict=True)]


def _outcome(unit: Unit, header, results, latency) -> UnitOutcome:
    if isinstance(header, Failure) or header is None:
        return UnitOutcome(None, {None: header.error if header else "not analysed"})
    errors: dict[float | None, str] = {}
    points: list[SweepPoint] = []
    for target, r in zip(unit.targets, results, strict=True):
        if isinstance(r, Failure):
            errors[target] = r.error
            continue
        point, model = r
        if unit.keep_models:
            point.model = model
        points.append(point)
    dense_ms = None
    if isinstance(latency, Failure):
        errors[None] = f"timing: {latency.error}"
    elif latency:
        dense_ms = latency[0]
        for point, ms in zip(points, latency[1:], strict=True):
            point.latency_ms = ms
            point.latency_ratio = ms / dense_ms if dense_ms else None
    result = SweepResult(metric=unit.metric, dense=header.dense, points=points, dense_latency_ms=dense_ms,
                         calibration=header.calibration, held_out=header.held_out, external_data=header.external,
                         input_shapes=header.input_shapes, batch=unit.options["bench"].batch,
                         failed={t: e for t, e in errors.items() if t is not None})
    return UnitOutcome(result, errors)


__all__ = ["JobOptions", "Unit", "UnitOutcome", "run"]
