"""Timing: runners timed in alternation, and the statistics trtexec prints.

Each runner (one timed inference per call, in milliseconds) is warmed up for a fixed time, then
every runner runs once per round, in a rotating order, until there are at least ``runs`` rounds
and at least ``min_seconds`` have passed. Two models timed this way share the machine's noise, so
their ratio holds even when the medians drift. The statistics are those trtexec prints: median,
mean, p90/p95/p99, the coefficient of variation (a warning sign above 10%), and throughput.

Both ``deploy.py`` (onnxruntime runners) and ``gpu.py`` (TensorRT engines) time through here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

HIGH_CV = 0.10  # trtexec-style warning: more than 10% spread means the figures are noisy

Runner = Callable[[], float]  # one timed inference, milliseconds


@dataclass
class Latency:
    """Latency statistics of one model in milliseconds (per batch), and its throughput."""

    median_ms: float
    p90_ms: float
    runs: int
    mean_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    cv: float = 0.0
    batch: int = 1

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return self.batch * 1e3 / self.median_ms if self.median_ms > 0 else 0.0

    @property
    def noisy(self) -> bool:
        """True when the runs vary by more than HIGH_CV (coefficient of variation)."""
        return self.cv > HIGH_CV

    def to_dict(self) -> dict:
        """Plain data for JSON, with the throughput."""
        return {**asdict(self), "throughput": self.throughput}


def latency_stats(samples_ms: list[float] | np.ndarray, batch: int = 1) -> Latency:
    """Summary statistics of per-run times in milliseconds."""
    s = np.asarray(samples_ms, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no timing samples")
    mean = float(s.mean())
    return Latency(median_ms=float(np.median(s)), p90_ms=float(np.percentile(s, 90)), runs=int(s.size),
                   mean_ms=mean, p95_ms=float(np.percentile(s, 95)), p99_ms=float(np.percentile(s, 99)),
                   cv=float(s.std() / mean) if mean > 0 else 0.0, batch=batch)


def time_samples(runners: list[Runner], *, runs: int = 20, min_seconds: float = 0.0,
                 warmup_s: float = 0.3) -> list[list[float]]:
    """Per runner, the milliseconds of each timed run: every runner warmed up for ``warmup_s``, then
    all timed in rotating rounds until ``runs`` rounds and ``min_seconds`` (see module doc)."""
    for run in runners:
        end = time.perf_counter() + warmup_s
        run()
        while time.perf_counter() < end:
            run()
    samples: list[list[float]] = [[] for _ in runners]
    start = time.perf_counter()
    rounds = 0
    while rounds < runs or time.perf_counter() - start < min_seconds:
        for k in range(len(runners)):
            i = (rounds + k) % len(runners)  # rotate who goes first: no model always follows another
            samples[i].append(runners[i]())
        rounds += 1
    return samples


def time_runners(runners: list[Runner], *, runs: int = 20, min_seconds: float = 0.0, warmup_s: float = 0.3,
                 batch: int = 1) -> list[Latency]:
    """``time_samples`` summarised into latency statistics per runner."""
    samples = time_samples(runners, runs=runs, min_seconds=min_seconds, warmup_s=warmup_s)
    return [latency_stats(s, batch) for s in samples]


__all__ = ["HIGH_CV", "Latency", "Runner", "latency_stats", "time_runners", "time_samples"]
