"""Select stage, latency variant: prune until the *measured* latency meets a target.

FLOPs are not latency: onnxruntime's CPU convolutions run channel counts that are multiples of
the NCHWc block far faster than others, depthwise layers are memory-bound, and attention's cost
is not all in its MatMuls. Two ways to a plan:

**Latency table** (onnxruntime backends, the default; ``latency_model.py``): measure each
prunable node's latency against its kept channels on the backend (cached on disk), then a
knapsack removes channels where they buy the most predicted latency for the least importance
(HALP). Each plan is confirmed by timing the whole model against the dense one, alternating;
when the measured ratio misses the target by more than ``tolerance``, the table's budget is
corrected with the measured ratios (regula falsi on budget -> measured ratio, anchored at the
dense model) and solved again, ``max_probes`` times at most. The search keeps every candidate's
predicted and measured ratio: their gap is the table's prediction error.

**Measured search** (``tensorrt``, whose engines take too long to build per probe, or
``method="measured"``): with isomorphic ranking the channels removed are fixed by one shared
ratio, hence by the FLOPs target; what remains is how far to go and which channel rounding pays:

1. Probe the FLOPs target equal to the latency target with each candidate ``round_to`` (1 and
   8 unless the caller fixed one), timing the dense model and the candidates alternating; keep
   the rounding with the least latency per FLOP kept (1 unless another beats it beyond noise).
2. Regula falsi on FLOPs target -> measured latency ratio, bracketed by the probes (and by the
   dense model at (1, 1)), each probe timed against the dense model in alternation, until a
   ratio lands within ``tolerance`` of the target or the probe budget is spent.
3. Keep the probe closest to the target among those at or below target + tolerance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx

from ..deploy.runners import bench_feed, make_runners, time_runners
from ..errors import ModelError
from ..options import BenchOptions
from ..progress import Progress
from ..structure.analyze import Analysis
from ..structure.rewrite import Plan
from .cost import CostTerm, total

log = logging.getLogger(__name__)

ROUNDINGS = (1, 8)
TABLE_PROBES = 3  # whole-model measurements of table plans (the first, then corrections)
PREFER_ROUNDED = 0.05  # a coarser rounding must be this much faster per FLOP to be chosen (noise)


@dataclass
class LatencyProbe:
    """One measured candidate: the FLOPs target asked for, the rounding, what it measured."""

    flops_target: float
    round_to: int
    flops_ratio: float  # predicted by the cost model for the plan
    latency_ratio: float  # pruned median / dense median, timed alternating
    dense_ms: float
    pruned_ms: float
    predicted_ratio: float | None = None  # latency table: its prediction for this plan (sum of nodes, over dense)
    budget: float | None = None  # latency table: the predicted ratio the knapsack was asked for


@dataclass
class LatencySearch:
    """The probes of a latency-target search and the one chosen."""

    target: float
    backend: str
    tolerance: float
    probes: list[LatencyProbe] = field(default_factory=list)
    chosen: LatencyProbe | None = None
    method: str = "measured"  # "table" (latency table and knapsack) or "measured" (regula falsi on FLOPs)
    table: dict | None = None  # the latency table's size, build time, cache use (LatencyTable.summary)

    @property
    def prediction_error(self) -> float | None:
        """Largest |predicted - measured| latency ratio over the candidates (the table's error)."""
        errs = [abs(p.predicted_ratio - p.latency_ratio) for p in self.probes if p.predicted_ratio is not None]
        return max(errs) if errs else None

    def to_dict(self) -> dict:
        """Plain data for JSON: every probe and the chosen one."""
        return {"target": self.target, "backend": self.backend, "tolerance": self.tolerance, "method": self.method,
                "table": self.table, "prediction_error": self.prediction_error,
                "probes": [vars(p) for p in self.probes], "chosen": vars(self.chosen) if self.chosen else None}


class Candidates(Protocol):
    """What a latency search works on (``pipeline.Pipeline`` provides it): the dense model and its
    analysis, scores and cost terms, where to time, and how to select and build a candidate."""

    analysis: Analysis
    model: onnx.ModelProto
    bench: BenchOptions
    shapes: dict[str, tuple[int, ...]]
    step: Progress

    def scores(self) -> list[np.ndarray]: ...

    def terms(self, metric: str = "flops") -> list[CostTerm]: ...

    def select(self, target: float, round_to: int, metric: str = "flops") -> Plan: ...

    def build(self, plan: Plan) -> onnx.ModelProto: ...


@dataclass
class _Timer:
    """Times a candidate against the dense model, both on the same backend and inputs."""

    dense: onnx.ModelProto
    bench: BenchOptions
    runs: int
    min_seconds: float
    shapes: dict[str, tuple[int, ...]] | None = None

    def __post_init__(self):
        b = self.bench
        self.feed = bench_feed(self.dense, b.batch, shapes=self.shapes)
        self.dense_runner = make_runners([self.dense], [self.feed], b.backend, b.threads, b.fp16)[0]

    def ratios(self, models: list[onnx.ModelProto]) -> tuple[float, list[float]]:
        b = self.bench
        runners = [self.dense_runner, *make_runners(models, [self.feed] * len(models), b.backend, b.threads, b.fp16)]
        lat = time_runners(runners, runs=self.runs, min_seconds=self.min_seconds, batch=b.batch)
        return lat[0].median_ms, [x.median_ms for x in lat[1:]]


def search_latency(pipe: Candidates, target: float, *, round_to: int | None = None, tolerance: float = 0.025,
                   max_probes: int | None = None, runs: int = 15, min_seconds: float = 1.0, method: str | None = None,
                   cache: bool = True) -> tuple[Plan, LatencySearch]:
    """The plan whose measured latency ratio is closest to ``target`` (see module doc), for the model
    ``pipe`` holds (a ``Pipeline``), timed on its bench options' backend with its free input dims at
    ``pipe.shapes``. ``method``: "table" (default on onnxruntime backends) or "measured" (default on
    tensorrt); ``cache``: read and write the latency table in the cache folder
    (``latency_model.cache_dir``)."""
    backend = pipe.bench.backend
    method = method or ("measured" if backend == "tensorrt" else "table")
    if method == "table":
        return _search_table(pipe, target, round_to=round_to, tolerance=tolerance,
                             max_probes=max_probes or TABLE_PROBES, runs=runs, min_seconds=min_seconds, cache=cache)
    if method != "measured":
        raise ValueError(f"unknown latency search method {method!r}")
    max_probes = max_probes or 8
    step = pipe.step
    timer = _Timer(pipe.model, pipe.bench, runs, min_seconds, pipe.shapes)
    search = LatencySearch(target=target, backend=backend, tolerance=tolerance)
    plans: dict[int, Plan] = {}

    def plan_at(flops: float, rounding: int) -> Plan | None:
        try:
            return pipe.select(flops, rounding)
        except ModelError as exc:  # below what the frozen channels allow
            log.info("latency search: FLOPs %.3f not reachable (%s)", flops, exc)
            return None

    def probe(flops: float, roundings: tuple[int, ...]) -> list[LatencyProbe]:
        cands = [(r, plan_at(flops, r)) for r in roundings]
        cands = [(r, p) for r, p in cands if p is not None]
        if not cands:
            return []
        step(f"latency search: timing FLOPs {flops:.3f} against the dense model on {backend}")
        models = [pipe.build(p) for _, p in cands]
        dense_ms, times = timer.ratios(models)
        found = []
        for (r, p), ms in zip(cands, times, strict=True):
            found.append(LatencyProbe(flops, r, float(p.predicted), ms / dense_ms, dense_ms, ms))
            plans[len(search.probes)] = p
            search.probes.append(found[-1])
            log.info("latency search: FLOPs target %.3f round_to %d -> latency %.3f of dense", flops, r,
                     found[-1].latency_ratio)
        return found

    first = probe(target, (round_to,) if round_to else ROUNDINGS)
    if not first:
        raise ModelError(f"latency target {target:g} is out of reach: even FLOPs {target:g} cannot be met "
                         "(too many channels are frozen)")
    # roundings reach slightly different FLOPs at one target: compare time per FLOP kept
    def cost_per_flop(p: LatencyProbe) -> float:
        return p.latency_ratio / max(p.flops_ratio, 1e-9)
    best = min(first, key=cost_per_flop)
    base = first[0]
    faster = cost_per_flop(best) < cost_per_flop(base) * (1 - PREFER_ROUNDED)
    rounding = best.round_to if faster else base.round_to
    if not round_to:
        log.info("latency search: round_to %d runs fastest on %s", rounding, backend)

    points = [(1.0, 1.0)] + [(p.flops_target, p.latency_ratio) for p in first if p.round_to == rounding]
    while len(search.probes) < max_probes:
        if any(abs(r - target) <= tolerance for f, r in points[1:]):
            break
        below = [(f, r) for f, r in points if r < target]
        above = [(f, r) for f, r in points if r >= target]
        hi = min(above, key=lambda x: x[0])
        if below:
            lo = max(below, key=lambda x: x[0])
        else:  # extrapolate towards zero through the lowest point (latency ~ a + b * flops)
            lo = (0.0, 0.0) if hi[0] > 0.05 else None
            if lo is None:
                break
        f = lo[0] + (target - lo[1]) * (hi[0] - lo[0]) / (hi[1] - lo[1]) if hi[1] != lo[1] else (lo[0] + hi[0]) / 2
        f = float(np.clip(f, lo[0] + 0.1 * (hi[0] - lo[0]), hi[0] - 0.1 * (hi[0] - lo[0])))  # stay inside
        found = probe(f, (rounding,))
        if not found:  # the frozen share caps the pruning above f: nothing faster to find
            break
        points.append((f, found[0].latency_ratio))
    eligible = [i for i, p in enumerate(search.probes) if p.round_to == rounding]
    ok = [i for i in eligible if search.probes[i].latency_ratio <= target + tolerance]
    if not ok:
        fastest = min(search.probes, key=lambda p: p.latency_ratio)
        raise ModelError(f"latency target {target:g} not reached on {backend}: the fastest candidate ran at "
                         f"{fastest.latency_ratio:.3f} of dense latency (FLOPs {fastest.flops_ratio:.3f}); "
                         "frozen channels or non-prunable ops dominate the time")
    chosen = min(ok, key=lambda i: abs(search.probes[i].latency_ratio - target))
    search.chosen = search.probes[chosen]
    return plans[chosen], search


def _search_table(pipe: Candidates, target: float, *, round_to: int | None, tolerance: float, max_probes: int,
                  runs: int, min_seconds: float, cache: bool) -> tuple[Plan, LatencySearch]:
    """Latency table, knapsack, whole-model confirmation and budget correction (see module doc)."""
    from .granularity import backend_multiple
    from .latency_model import Knapsack, latency_table

    step, analysis, terms, backend = pipe.step, pipe.analysis, pipe.terms("flops"), pipe.bench.backend
    round_to = round_to or backend_multiple(backend).multiple
    table = latency_table(analysis, pipe.model, backend=backend, threads=pipe.bench.threads, batch=pipe.bench.batch,
                          round_to=round_to, cache=cache, progress=step)
    knapsack = Knapsack(analysis, table, terms, pipe.scores(), round_to)
    timer = _Timer(pipe.model, pipe.bench, runs, min_seconds, pipe.shapes)
    search = LatencySearch(target=target, backend=backend, tolerance=tolerance, method="table",
                           table=table.summary())
    dense_table = table.dense_ms() or 1.0
    dense_flops = total(terms) or 1.0
    sizes = analysis.slot_sizes
    plans: list[Plan] = []
    points = [(1.0, 1.0)]  # (predicted ratio, measured ratio), the dense model first
    budget = target
    seen: set[bytes] = set()
    for _ in range(max_probes):
        try:
            solution = knapsack.solve(budget * dense_table)
        except ModelError as exc:
            if not search.probes:
                raise ModelError(f"latency target {target:g} is out of reach on {backend}: {exc}") from None
            break
        key = solution.counts.tobytes()
        if key in seen:  # the correction no longer changes the plan
            break
        seen.add(key)
        kept = knapsack.counts.kept(solution.counts)
        flops = float(total(terms, {s: k / sizes[s] for s, k in kept.items()}) / dense_flops)
        atoms = sum(g.size for g in analysis.groups) or 1
        plan = Plan(knapsack.plan_removed(solution.counts), float(solution.counts.sum()) / atoms, flops, round_to)
        predicted = solution.predicted_ms / dense_table
        step(f"latency search: timing a plan the table puts at {predicted:.3f} of dense against the dense model "
             f"on {backend}")
        dense_ms, (pruned_ms,) = timer.ratios([pipe.build(plan)])
        measured = pruned_ms / dense_ms
        search.probes.append(LatencyProbe(flops, round_to, flops, measured, dense_ms, pruned_ms, predicted, budget))
        plans.append(plan)
        log.info("latency search: table budget %.3f -> predicted %.3f, measured %.3f of dense (FLOPs %.3f)", budget,
                 predicted, measured, flops)
        if abs(measured - target) <= tolerance:
            break
        points.append((predicted, measured))
        # a correction moves the budget by 40% at most per step and never below half the target: a
        # busy machine's timings (2 threads on 2 shared cores) must not talk the search into
        # pruning nearly everything
        budget = float(np.clip(_corrected_budget(points, target), max(0.6 * budget, 0.5 * target),
                               min(1.4 * budget, 1.0)))
    ok = [i for i, p in enumerate(search.probes) if p.latency_ratio <= target + tolerance]
    if not ok:
        fastest = min(search.probes, key=lambda p: p.latency_ratio)
        raise ModelError(f"latency target {target:g} not reached on {backend}: the fastest candidate ran at "
                         f"{fastest.latency_ratio:.3f} of dense latency where the latency table predicted "
                         f"{fastest.predicted_ratio:.3f} (FLOPs {fastest.flops_ratio:.3f}); ops without weights or "
                         "frozen channels dominate the time, or the machine was too busy to time it")
    chosen = min(ok, key=lambda i: abs(search.probes[i].latency_ratio - target))
    search.chosen = search.probes[chosen]
    return plans[chosen], search


def _corrected_budget(points: list[tuple[float, float]], target: float) -> float:
    """The predicted ratio expected to measure ``target``: interpolated between the measured points
    that bracket it, else along the line from the dense model (1, 1) through the closest one."""
    below = [p for p in points if p[1] < target]
    above = [p for p in points if p[1] >= target]
    if below and above:
        lo = max(below, key=lambda p: p[1])
        hi = min(above, key=lambda p: p[1])
    else:
        lo, hi = (1.0, 1.0), min(points[1:], key=lambda p: abs(p[1] - target))
    if abs(hi[1] - lo[1]) < 1e-9:
        return float(np.clip(hi[0] * target / max(hi[1], 1e-9), 0.02, 1.0))
    budget = lo[0] + (target - lo[1]) * (hi[0] - lo[0]) / (hi[1] - lo[1])
    return float(np.clip(budget, 0.02, 1.0))
