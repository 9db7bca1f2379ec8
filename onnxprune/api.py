"""The Python API; the command line is a thin shell over these functions.

``prune`` and ``sweep`` (sweep.py) take every option as a keyword argument; the keywords are the
fields of the option classes in options.py, which the CLI's flags are built from too.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import numpy as np
import onnx

from .calib.obs import Pattern
from .calib.sparsify import parse_pattern
from .deploy.runners import bench_feed, make_runners, time_runners
from .errors import UsageError, first_line
from .graph import capture as capture_mod
from .graph.load import check_tensors
from .graph.sessions import return_freed_memory
from .graph.shapes import announce_guesses, graph_inputs, size_failure
from .memory import kept_share, resolve_shapes
from .options import OPTION_CLASSES, from_kwargs, signature_parameters
from .pipeline import Pipeline, analyze_model, costs_of, load_model, load_split, measured_at, model_costs, shape_lookup
from .progress import Progress
from .ranking.cost import flops_terms, total
from .ranking.criteria import score_groups
from .ranking.granularity import candidate_multiples, parse_round_to
from .ranking.select import select_granular
from .results import BenchResult, Costs, PruneResult, recover_command_for
from .structure.analyze import Analysis
from .structure.rewrite import Plan, apply_plan

log = logging.getLogger(__name__)

InputShapes = dict[str, "tuple[int, ...] | list[int]"]  # {"x": (1, 3, 48, 320)}: sizes of free input dims


def analyze(model: str | os.PathLike | onnx.ModelProto, progress: Progress | None = None, *,
            input_shapes: InputShapes | None = None) -> Analysis:
    """Find the coupled-channel groups of a model (path or ModelProto).

    ``input_shapes`` ({"x": (1, 3, 48, 320)}) sizes inputs with free dims (else 224, with a
    warning); FLOPs shares are measured there (``measured_at``)."""
    check_model_arg(model)
    proto, weights, _ = load_split(model)
    return analyze_model(proto, progress, resolve_shapes(proto, input_shapes), input_shapes, weights)


def prune(model: str | os.PathLike | onnx.ModelProto, *, progress: Progress | None = None, **options) -> PruneResult:
    """Prune a model (path or ModelProto) and verify the result.

    Structured: ``flops`` or ``params`` (fraction of the dense cost to keep) removes channels;
    ``reconstruct`` then re-fits the layers that lost inputs on calibration data. Weight sparsity:
    ``sparsity`` (unstructured fraction) or ``pattern`` ("2:4") with ``method`` magnitude, wanda
    or obs (default obs when ``calib`` is given). Both kinds combine (channels first). ``calib``:
    an image folder, .npy/.npz, a folder of .npy, "random", or a CalibrationSet; a ``holdout``
    share of its files (held out whole) measures fidelity to the dense model, or ``holdout`` is a
    separate held-out set (a path loaded like ``calib``, an array or a CalibrationSet) and all of
    ``calib`` fits.

    ``latency`` (fraction of the dense model's measured latency on ``backend`` with ``threads``
    threads at ``batch``, FP16 engines with ``fp16``) removes channels until the measured latency
    meets it.

    ``round_to`` keeps the channel counts of pruned groups multiples of it. ``"auto"`` (the default)
    takes the multiple ``backend`` runs fastest (granularity.py: 16 on an AVX-512 CPU, 8 on other
    x86-64; with ``pattern`` N:M also a multiple of M), or the largest divisor of it that still
    meets a FLOPs/params target within 2%; 1 turns rounding off.

    ``input_shapes`` ({"x": (1, 3, 48, 320)}) sizes inputs with free dims other than the batch
    (else 224, with a warning): FLOPs (per sample: the batch entry is not used), calibration
    images and random data, and latency are measured there; the pruned model keeps its free dims.

    The returned model has passed onnx.checker and run in onnxruntime at batch 1 and 2 (when
    the batch is dynamic) with the same input/output names, ranks and non-channel dims.

    ``distill`` (True for the default steps, or a number of steps; needs ``calib`` and PyTorch:
    ``pip install onnxprune[recover]``) then fine-tunes the pruned model's weights to the dense
    model's outputs on augmented calibration samples, early-stopping on the held-out part; masks
    of weight sparsity stay fixed. ``distill_lr``: Adam's learning rate (distill.py).

    ``quantize="int8"`` (needs ``calib``; alone, without a target, it quantizes the dense model)
    makes the result a QDQ INT8 model (calib/int8.py: onnxruntime's QDQ insertion and activation
    calibration chosen on the held-out data, weights rounded by OBS where that helps; ``keep_fp32``
    "auto" (the default: the first layers and the worst-quantized ones stay FP32 where that is
    faster on the backend or clearly more accurate), "none" or node names; ``rounding`` "obs" or
    "nearest"). ``PruneResult.float_model`` is then the
    model before INT8, ``alternative`` the dense model quantized by onnxruntime alone, and
    ``stages()`` what each cost.

    Every keyword is an option field of options.py (its help text is the CLI's).
    """
    check_model_arg(model)
    target, calib, solver, bench, shapes = from_kwargs(check_option_types(options), *OPTION_CLASSES)
    target.validate(solver.quantize)
    calib.validate()
    solver.validate(target, calib)
    bench.validate()
    pipe = Pipeline(model, calib=calib, solver=solver, bench=bench, shapes=shapes, progress=progress,
                    kept=kept_share(target.flops, target.params))
    steps = solver.distill_steps()
    if steps is not None:
        from .calib.distill import check_supported

        check_supported(pipe.skeleton)
    pattern = None
    if target.weight_sparsity:
        pattern = parse_pattern(target.pattern) if target.pattern else Pattern(sparsity=target.sparsity)
    multiples, why = None, None
    if target.structured:
        multiples, why = pipe.multiples(pattern.m if target.pattern else None)
    run = pipe.run(flops=target.flops, params=target.params, latency=target.latency, multiples=multiples,
                   pattern=pattern, distill=steps is not None, quantize=solver.quantize, release=True)
    plan = run.plan
    result = PruneResult(
        model=run.model, dense=pipe.dense, pruned=run.costs, plan=pipe.kept_indices(run.pruned),
        groups_found=len(pipe.analysis.groups),
        groups_pruned=int(sum(len(r) > 0 for r in plan.removed)) if plan else 0,
        frozen=pipe.frozen_rows(), ratio=plan.ratio if plan else 0.0, external_data=pipe.external,
        channels=pipe.channel_rows(plan) if plan else [], sparsity=run.pruned.sparsity, refits=run.pruned.refits,
        fidelity=run.fidelity, calibration=pipe.calib.description if pipe.calib else None,
        held_out=pipe.held_out.description if pipe.held_out else None,
        latency_search=run.search, distillation=run.distillation, input_shapes=measured_at(pipe.analysis),
        channel_multiple=plan.round_to if plan else 1,
        channel_multiple_why=_multiple_note(plan, multiples, why) if plan else None,
        criterion=solver.resolved_criterion(calib) if plan else None,
        quantization=run.quantization, float_model=run.float_model, float_fidelity=run.float_fidelity,
        alternative=run.alternative, alternative_fidelity=run.alternative_fidelity,
        recover_command=None if calib.given else recover_command_for(  # no data: fidelity unknown, say how to fix
            model, (target, calib, solver, bench, shapes)),
    )
    del pipe, run
    return_freed_memory()  # the dense weights, in graphsurgeon's cycles, would outlive the call
    return result


prune.__signature__ = inspect.Signature(  # help(prune) and IDEs list every option
    [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
     *signature_parameters(*OPTION_CLASSES),
     inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=None)],
    return_annotation="PruneResult")


def _multiple_note(plan: Plan, multiples: list[int], why: str) -> str:
    if plan.round_to == multiples[0]:
        return why
    return (f"{why}; multiples of {multiples[0]} could not meet the target within 2%, so the target needed "
            f"multiples of {plan.round_to}")


def make_plan(analysis: Analysis, *, flops: float | None = None, params: float | None = None,
              scope: str = "isomorphic", criterion: str = "l2", round_to: int | str = "auto",
              backend: str = "ort-cpu", samples: dict | None = None) -> Plan:
    """Score every group and choose the atoms to remove to meet the FLOPs or params target.

    ``criterion``: a name registered in criteria.py (l1/l2 weight magnitude, or with calibration
    ``samples`` act or obs). ``round_to``: as in ``prune`` (``plan.round_to`` is the multiple used).
    """
    from .options import check_fraction
    from .ranking.cost import param_terms

    if (flops is None) == (params is None):
        raise UsageError("give exactly one target: flops or params")
    check_fraction("flops" if flops is not None else "params", flops if flops is not None else params)
    multiples, _ = candidate_multiples(parse_round_to(round_to), backend)
    scores = score_groups(analysis, criterion, samples)
    terms = (flops_terms(analysis.graph, shape_lookup(analysis.capture)) if flops is not None
             else param_terms(analysis.graph))
    return select_granular(analysis, scores, terms, flops if flops is not None else params, multiples,
                           scope=scope, what="FLOPs" if flops is not None else "params")


def apply(analysis: Analysis, plan: Plan, like: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """The pruned ModelProto (opset, IR version, metadata of ``like``) and kept indices per slot."""
    from .graph.load import to_model

    graph, kept = apply_plan(analysis, plan)
    return to_model(graph, like), kept


def measure_costs(model: str | os.PathLike | onnx.ModelProto, *, input_shapes: InputShapes | None = None) -> Costs:
    """FLOPs and params read from a model itself (every shape from a real onnxruntime run, free
    input dims at ``input_shapes``, else 224)."""
    import onnx_graphsurgeon as gs

    check_model_arg(model, tensors=True)
    proto, _ = load_model(model)
    graph = gs.import_onnx(proto)
    cap = capture_mod.capture(graph, resolve_shapes(proto, input_shapes))
    announce_guesses(proto, input_shapes)
    return costs_of(graph, cap)


def bench(models: list[str | os.PathLike | onnx.ModelProto], *, backend: str = "ort-cpu", batch: int = 1,
          threads: int = 1, fp16: bool = False, runs: int = 50, min_seconds: float = 3.0, warmup_s: float = 1.0,
          save_engines: list[str | os.PathLike | None] | None = None,
          input_shapes: InputShapes | None = None) -> BenchResult:
    """Time ``models`` (paths or ModelProtos) on ``backend``, alternating in one process.

    Backends: ``ort-cpu`` (default), ``ort-cuda``, ``ort-trt`` (onnxruntime-gpu) and ``tensorrt``
    (an FP16/sparse engine built with TensorRT; ``save_engines`` keeps them). Each model runs at
    least ``runs`` times and for at least ``min_seconds`` after ``warmup_s`` of warm-up; see
    ``deploy.py`` for the statistics. ``input_shapes`` ({"x": (1, 3, 48, 320)}) sizes inputs with
    free dims other than the batch (else 224, with a warning); ``batch`` sets the batch.
    """
    if isinstance(models, str | bytes | os.PathLike | onnx.ModelProto) or not isinstance(models, list | tuple):
        raise TypeError(f"models must be a list of models (paths or onnx.ModelProto), got {type(models).__name__}")
    for i, m in enumerate(models):
        check_model_arg(m, f"models[{i}]", tensors=True)
    batch, threads, runs = (_count(name, v) for name, v in (("batch", batch), ("threads", threads), ("runs", runs)))
    min_seconds, warmup_s = _number("min_seconds", min_seconds), _number("warmup_s", warmup_s)
    if not models:
        raise UsageError("give at least one model to time")
    protos, names = [], []
    for m in models:
        protos.append(load_model(m)[0])
        names.append(m.graph.name or "model" if isinstance(m, onnx.ModelProto) else str(m))
    shapes = [resolve_shapes(p, input_shapes, batch=batch) for p in protos]
    feeds = [bench_feed(p, batch, shapes=sh) for p, sh in zip(protos, shapes, strict=True)]
    engines = [str(e) if e else None for e in save_engines] if save_engines else None
    if engines is not None and len(engines) != len(protos):
        raise UsageError("give one engine path per model")
    runners = make_runners(protos, feeds, backend, threads, fp16, engines)
    try:
        latencies = time_runners(runners, runs=runs, min_seconds=min_seconds, warmup_s=warmup_s, batch=batch)
    except Exception as exc:
        error = _bench_size_failure(exc, protos, feeds) if backend.startswith("ort") else None
        if error is None:
            raise
        raise error from None
    warned: set[str] = set()  # dense and pruned share their inputs: one warning each
    for proto in protos:
        announce_guesses(proto, input_shapes, warned)
    for name, lat in zip(names, latencies, strict=True):
        if lat.noisy:
            log.warning("%s: latency varies by %.0f%% run to run (coefficient of variation); the machine is busy: "
                        "trust the ratios more than the absolute times", name, lat.cv * 100)
    builds = [r.report.summary() if getattr(r, "report", None) else None for r in runners]
    return BenchResult(names, latencies, backend, batch, threads, fp16, engines, builds if any(builds) else None,
                       [{k: tuple(v.shape) for k, v in feed.items()} for feed in feeds])


def check_model_arg(model: object, name: str = "model", *, tensors: bool = False) -> None:
    """TypeError, naming the parameter and what it accepts, unless ``model`` is a path (str or
    os.PathLike) or an onnx.ModelProto. ``tensors``: a ModelProto's tensors are checked as a file's
    are when read (``load.check_tensors``; ``load_split`` does it for the others)."""
    if isinstance(model, onnx.ModelProto):
        if tensors:
            check_tensors(model)
        return
    if isinstance(model, str) or (isinstance(model, os.PathLike) and isinstance(os.fspath(model), str)):
        return
    hint = " (a serialised model: onnx.load_from_string(data) first)" if isinstance(model, bytes | bytearray) else ""
    raise TypeError(f"{name} must be a path (str or os.PathLike) or an onnx.ModelProto, got "
                    f"{type(model).__name__}{hint}")


# Options that are numbers (a fraction, GiB, a learning rate) and counts; numpy's scalars are
# accepted as Python's (np.float32(0.5) from a computed schedule), a bool or a string is not.
_NUMBERS = ("flops", "params", "latency", "sparsity", "distill_lr", "max_memory")
_COUNTS = ("calib_count", "batch", "threads")
_CALIB_TYPES = "a path (str or os.PathLike), 'random', a numpy array of samples or a CalibrationSet"


def check_option_types(options: dict) -> dict:
    """``options`` with numpy numbers as Python numbers; TypeError, naming the option and the types
    it accepts, for a number or a count of another type and for calibration data of no known kind."""
    from .calib.data import CalibrationSet

    out = dict(options)
    for name in _NUMBERS:
        if out.get(name) is not None:
            out[name] = _number(name, out[name])
    for name in _COUNTS:
        if out.get(name) is not None:
            out[name] = _count(name, out[name])
    calib = out.get("calib")
    if calib is not None and not isinstance(calib, str | os.PathLike | np.ndarray | CalibrationSet):
        raise TypeError(f"calib must be {_CALIB_TYPES}, got {type(calib).__name__}")
    holdout = out.get("holdout")  # a fraction, or a separate held-out set of any kind calib takes
    if holdout is not None and not isinstance(holdout, str | os.PathLike | np.ndarray | CalibrationSet):
        out["holdout"] = _number("holdout", holdout)
    return out


def _number(name: str, value: object) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number (int, float or a numpy number), got {type(value).__name__} "
                        f"{value!r}"[:200])
    return float(value)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer (int or a numpy integer), got {type(value).__name__} "
                        f"{value!r}"[:200])
    return int(value)


def _bench_size_failure(exc: Exception, protos: list[onnx.ModelProto], feeds: list[dict]) -> UsageError | None:
    """A usage error if onnxruntime failed to run a model whose inputs have free dims (the size
    given or assumed may be wrong for it); None for anything else."""
    if not type(exc).__module__.startswith("onnxruntime"):
        return None
    reason = first_line(exc)
    for proto, feed in zip(protos, feeds, strict=True):
        error = size_failure(graph_inputs(proto), {k: v.shape for k, v in feed.items()}, reason)
        if error is not None:
            return error
    return None


def default_output(path: str | os.PathLike) -> Path:
    """``<input>.pruned.onnx`` beside the input."""
    p = Path(path)
    return p.with_name(p.name[:-5] + ".pruned.onnx" if p.name.endswith(".onnx") else p.name + ".pruned.onnx")


__all__ = ["analyze", "apply", "bench", "default_output", "group_flops_share", "make_plan", "measure_costs",
           "measured_at", "model_costs", "prune", "score_groups"]


def group_flops_share(analysis: Analysis) -> list[float]:
    """For each group, the share of dense FLOPs in nodes whose cost scales with the group."""
    terms = flops_terms(analysis.graph, shape_lookup(analysis.capture))
    dense = total(terms) or 1.0
    shares = []
    for group in analysis.groups:
        slots = set(group.members)
        shares.append(sum(t.dense for t in terms if slots.intersection(t.slots)) / dense)
    return shares
