"""Deploy stage: latency measured the way trtexec measures it.

Each model gets a runner (one timed inference per call) on its backend, and the runners are timed
together by ``timing.py``: warmed up, then run in rotating rounds so that two models share the
machine's noise and their ratio holds even when the medians drift; the statistics are those
trtexec prints (see ``timing.Latency``).

Backends: ``ort-cpu`` (default, everywhere), ``ort-cuda`` and ``ort-trt`` (onnxruntime-gpu), and
``tensorrt`` (a TensorRT engine built from the ONNX file, timed with CUDA events); the GPU ones
live in ``gpu.py`` and are refused with a clear message where the library or device is missing.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UsageError
from ..graph.capture import input_feed
from ..graph.sessions import make_session
from .timing import Latency, Runner, time_runners

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
RATIO_RUNS = 30  # latency_ratio: each model timed at least this many times, alternating,
RATIO_SECONDS = 1.5  # and for at least this long in all


def bench_feed(model: onnx.ModelProto, batch: int = 1, seed: int = 0,
               shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Random inputs at ``batch``; refuses a batch the model's inputs do not allow. ``shapes``
    (``shapes.resolve_input_shapes``) sizes the free dims other than the batch (else 224)."""
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    graph = gs.import_onnx(model)
    for tensor in graph.inputs:
        dim = (tensor.shape or [None])[0]
        if isinstance(dim, int) and dim >= 0 and dim != batch:
            raise UsageError(f"input {tensor.name!r} has a fixed batch of {dim}; --batch {batch} is not possible "
                             "(export the model with a dynamic batch)")
    return input_feed(graph, batch=batch, seed=seed, shapes=shapes)


def ort_runner(model: onnx.ModelProto, feed: dict[str, np.ndarray], backend: str = "ort-cpu",
               threads: int = 1, fp16: bool = False) -> Runner:
    """One onnxruntime inference per call, timed on the host clock."""
    if backend == "ort-cpu":
        if fp16:
            raise UsageError("--fp16 needs --backend ort-trt or tensorrt (onnxruntime's CPU runs the model's "
                             "own precision)")
        sess = make_session(model, threads=threads)
    else:
        from .gpu import ort_gpu_session

        sess = ort_gpu_session(model, backend, threads, fp16=fp16)
    names = [o.name for o in sess.get_outputs()]

    def run() -> float:
        start = time.perf_counter()
        sess.run(names, feed)
        return (time.perf_counter() - start) * 1e3
    return run


def make_runners(models: list[onnx.ModelProto], feeds: list[dict[str, np.ndarray]], backend: str, threads: int,
                 fp16: bool = False, engine_paths: list[str | None] | None = None) -> list[Runner]:
    """A runner per model on ``backend``; ``engine_paths`` saves TensorRT engines (tensorrt only)."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "tensorrt":
        if engine_paths and any(engine_paths):
            raise UsageError("--save-engine needs --backend tensorrt")
        return [ort_runner(m, f, backend, threads, fp16) for m, f in zip(models, feeds, strict=True)]
    from .gpu import tensorrt_runner

    paths = engine_paths or [None] * len(models)
    return [tensorrt_runner(m, f, fp16=fp16, save_engine=p) for m, f, p in zip(models, feeds, paths, strict=True)]


def latency_ratio(model: onnx.ModelProto, reference: onnx.ModelProto, **options) -> float:
    """``model``'s median latency over ``reference``'s, timed alternating (``measure``'s options) at
    least ``RATIO_RUNS`` times each and ``RATIO_SECONDS`` in all."""
    a, b = measure([model, reference], runs=RATIO_RUNS, min_seconds=RATIO_SECONDS, **options)
    return a.median_ms / b.median_ms


def measure(models: list[onnx.ModelProto], feed: dict[str, np.ndarray] | None = None, *, runs: int = 20,
            min_seconds: float = 0.0, warmup_s: float = 0.3, threads: int = 1, backend: str = "ort-cpu",
            batch: int = 1, fp16: bool = False, shapes: dict[str, tuple[int, ...]] | None = None) -> list[Latency]:
    """Latency of each model on ``backend``, timed in alternation (see module doc).

    ``feed`` (the same inputs for every model) defaults to random inputs at ``batch`` (free dims
    sized by ``shapes``, see ``bench_feed``).
    """
    feeds = [feed] * len(models) if feed is not None else [bench_feed(m, batch, shapes=shapes) for m in models]
    runners = make_runners(models, feeds, backend, threads, fp16)
    return time_runners(runners, runs=runs, min_seconds=min_seconds, warmup_s=warmup_s, batch=batch)


