"""Deploy stage (CPU part): onnxruntime latency, several models alternating in one process."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from .capture import session


@dataclass
class Latency:
    """Per-model latency statistics in milliseconds."""

    median_ms: float
    p90_ms: float
    runs: int


def measure(models: list[onnx.ModelProto], feed: dict[str, np.ndarray], *, runs: int = 20,
            warmup_s: float = 0.3, threads: int = 1) -> list[Latency]:
    """Median latency of each model, runs interleaved so machine noise hits all alike."""
    sessions = [session(m, threads=threads) for m in models]
    for sess in sessions:
        end = time.perf_counter() + warmup_s
        while True:
            sess.run(None, feed)
            if time.perf_counter() > end:
                break
    samples: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, sess in enumerate(sessions):
            start = time.perf_counter()
            sess.run(None, feed)
            samples[i].append((time.perf_counter() - start) * 1e3)
    return [Latency(float(np.median(s)), float(np.percentile(s, 90)), len(s)) for s in samples]
