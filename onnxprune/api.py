"""The Python API; the command line is a thin shell over these functions."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from . import capture as capture_mod
from .analyze import Analysis, analyze_graph
from .calibration import CalibrationSet, input_specs, load_calibration
from .cost import flops_terms, param_terms, total
from .deploy import BenchResult, bench_feed, make_runners, time_runners
from .distill import Distillation, check_supported, distill_model, require_torch, resolve_lr, resolve_steps
from .errors import UsageError
from .fidelity import Fidelity, fidelity
from .granularity import candidate_multiples, parse_round_to
from .latency import LatencySearch, search_latency
from .load import read_model, refuse_nonfinite, save_model, to_graph, to_model, unshare_constants, upgrade
from .obs import Pattern
from .reconstruct import Refit, refit_layers
from .rewrite import apply_plan
from .score import CALIBRATED, calibrated_scores, magnitude_scores
from .select import Plan, select_granular
from .shapes import announce_guesses, check_input_shapes, graph_inputs, resolve_input_shapes, size_failure
from .sparsify import SparsifyReport, parse_pattern, sparsify_graph
from .verify import verify

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
InputShapes = dict[str, "tuple[int, ...] | list[int]"]  # {"x": (1, 3, 48, 320)}: sizes of free input dims


@dataclass
class Costs:
    """Cost figures of one model: FLOPs (multiply-add = 2, batch 1) and float parameters."""

    flops: float
    params: float


@dataclass
class PruneResult:
    """What ``prune`` returns: the pruned model, its plan and the figures before/after."""

    model: onnx.ModelProto
    dense: Costs
    pruned: Costs
    plan: dict[str, dict[int, list[int]]]
    groups_found: int
    groups_pruned: int
    frozen: list[dict]
    ratio: float
    external_data: bool = False
    channels: list[dict] = field(default_factory=list)
    sparsity: SparsifyReport | None = None
    refits: list[Refit] = field(default_factory=list)
    fidelity: Fidelity | None = None
    calibration: str | None = None
    latency_search: LatencySearch | None = None
    distillation: Distillation | None = None  # --distill: steps, time, held-out KL/agreement before and after
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # what FLOPs were measured at (batch 1)
    channel_multiple: int = 1  # channel counts of pruned groups are multiples of this
    channel_multiple_why: str | None = None  # how --round-to chose it

    @property
    def flops_ratio(self) -> float:
        """Pruned FLOPs over dense FLOPs, both measured (batch 1)."""
        return self.pruned.flops / self.dense.flops if self.dense.flops else 1.0

    @property
    def params_ratio(self) -> float:
        """Pruned params over dense params."""
        return self.pruned.params / self.dense.params if self.dense.params else 1.0

    def save(self, path: str | os.PathLike) -> None:
        """Write the pruned model atomically, keeping external data if the input used it."""
        save_model(self.model, path, external=self.external_data or None)

    def to_html(self, path: str | os.PathLike) -> None:
        """Write a self-contained HTML report (figures, channels per group, classes, frozen channels,
        fidelity, versions), atomically. The CLI's ``--html`` adds file sizes, latency and the command."""
        from .html import prune_html, write_html
        from .report import summary_dict

        write_html(path, prune_html(summary_dict(self, None, None), self))


def _load(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    if isinstance(model, onnx.ModelProto):
        return upgrade(model), False
    return read_model(model)


def analyze(model: str | os.PathLike | onnx.ModelProto, progress: Progress | None = None, *,
            input_shapes: InputShapes | None = None) -> Analysis:
    """Find the coupled-channel groups of a model (path or ModelProto).

    ``input_shapes`` ({"x": (1, 3, 48, 320)}) sizes inputs with free dims (else 224, with a
    warning); FLOPs shares are measured there (``measured_at``)."""
    proto, _ = _load(model)
    return _analyze(proto, progress, resolve_input_shapes(proto, input_shapes), input_shapes)


def measured_at(analysis: Analysis) -> dict[str, tuple[int, ...]]:
    """The shape (batch 1) each graph input had in the run FLOPs are counted from."""
    return {t.name: tuple(analysis.capture.shapes[t.name]) for t in analysis.graph.inputs
            if t.name in analysis.capture.shapes}


def _analyze(proto: onnx.ModelProto, progress: Progress | None,
             shapes: dict[str, tuple[int, ...]] | None = None, given: InputShapes | None = None) -> Analysis:
    """Load, capture at ``shapes`` (resolved from ``given``; warns about guessed sizes once the model ran
    there) and find the groups."""
    step = progress or (lambda _msg: None)
    step("folding constants")
    graph = to_graph(proto)
    refuse_nonfinite(graph)  # a NaN bias: the dense model is broken, a pruned one may look fine
    shared = unshare_constants(graph)
    step("running the model once to read every shape")
    cap = capture_mod.capture(graph, shapes)
    announce_guesses(proto, given)
    step("finding coupled channel groups")
    analysis = analyze_graph(graph, cap)
    analysis.shared = shared
    return analysis


def model_costs(analysis: Analysis) -> Costs:
    """Dense FLOPs and params of an analysed model (an initializer shared by several layers once)."""
    return _costs(analysis.graph, analysis.capture, skip=set(analysis.shared))


def _costs(graph, cap: capture_mod.Capture, skip: set[str] = frozenset()) -> Costs:
    return Costs(total(flops_terms(graph, _shapes(cap))), total(param_terms(graph, skip)))


def _shapes(cap: capture_mod.Capture):
    """Shape lookup for the cost model: constants from their values, the rest from the capture."""
    import onnx_graphsurgeon as gs

    def shape(t):
        return tuple(t.shape) if isinstance(t, gs.Constant) else cap.shapes.get(t.name)
    return shape


def prune(model: str | os.PathLike | onnx.ModelProto, *, flops: float | None = None,
          params: float | None = None, sparsity: float | None = None, pattern: str | None = None,
          method: str | None = None, calib: str | os.PathLike | CalibrationSet | None = None,
          calib_count: int = 128, preprocess: str = "imagenet", holdout: float = 0.25, sequential: bool = False,
          reconstruct: bool = False, scope: str = "isomorphic", criterion: str = "l2", round_to: int | str = "auto",
          latency: float | None = None, backend: str = "ort-cpu", threads: int = 1, batch: int = 1,
          input_shapes: InputShapes | None = None, distill: bool | int | None = None,
          distill_lr: float | None = None, progress: Progress | None = None) -> PruneResult:
    """Prune a model (path or ModelProto) and verify the result.

    Structured: ``flops`` or ``params`` (fraction of the dense cost to keep) removes channels;
    ``reconstruct`` then re-fits the layers that lost inputs on calibration data. Weight sparsity:
    ``sparsity`` (unstructured fraction) or ``pattern`` ("2:4") with ``method`` magnitude, wanda
    or obs (default obs when ``calib`` is given). Both kinds combine (channels first). ``calib``:
    an image folder, .npy/.npz, a folder of .npy, "random", or a CalibrationSet; a ``holdout``
    share of it measures fidelity to the dense model.

    ``latency`` (fraction of the dense model's measured latency on ``backend`` with ``threads``
    threads at ``batch``) removes channels until the measured latency meets it.

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
    """
    _check_targets(flops, params, sparsity, pattern, latency)
    method = method or ("obs" if calib is not None else "magnitude")
    distill_steps = resolve_steps(distill)
    needs_data = [what for what, on in (("--method " + method, method != "magnitude"),
                                        ("--reconstruct", reconstruct), ("--sequential", sequential),
                                        ("--distill", distill_steps is not None)) if on]
    if sequential and sparsity is None and pattern is None:
        raise UsageError("--sequential applies to weight sparsity (--sparsity/--pattern); --reconstruct is "
                         "always sequential")
    if needs_data and calib is None:
        raise UsageError(f"{needs_data[0]} needs calibration data: give --calib PATH (images, .npy, .npz), "
                         "or --calib random for a mechanics-only run")
    step = progress or (lambda _msg: None)
    if distill_lr is not None and distill_steps is None:
        raise UsageError("--distill-lr needs --distill")
    if distill_steps is not None:
        resolve_lr(distill_lr)
        require_torch()
    proto, external = _load(model)
    if distill_steps is not None:
        check_supported(proto)
    shapes = resolve_input_shapes(proto, input_shapes, batch=batch)
    calib_set, held_out = _calibration(proto, calib, calib_count, preprocess, holdout, input_shapes)
    analysis = _analyze(proto, progress, shapes, input_shapes)
    dense = model_costs(analysis)
    plan, kept, refits, sparse, search = None, {}, [], None, None
    structured = flops is not None or params is not None or latency is not None
    multiples, multiple_why = candidate_multiples(parse_round_to(round_to), backend,
                                                  parse_pattern(pattern).m if pattern and structured else None)
    if latency is not None:
        step("scoring channels")
        scores = score_groups(analysis, criterion, calib_set.samples if calib_set else None)
        plan, search = search_latency(analysis, proto, scores, flops_terms(analysis.graph, _shapes(analysis.capture)),
                                      latency, backend=backend, threads=threads, batch=batch, scope=scope,
                                      round_to=multiples[0], progress=step, shapes=shapes)
    elif structured:
        step("scoring and selecting channels")
        plan = _plan(analysis, flops, params, scope, criterion, multiples, calib_set.samples if calib_set else None)
    if structured:
        step("rewriting the graph")
        graph, kept = apply_plan(analysis, plan)
        if reconstruct:
            refits = refit_layers(analysis.graph, graph, kept, calib_set.samples, progress=step)
    else:
        graph = analysis.graph.copy()
    if sparsity is not None or pattern is not None:
        sparse = sparsify_graph(graph, parse_pattern(pattern) if pattern else Pattern(sparsity=sparsity),
                                method=method, samples=calib_set.samples if calib_set else None,
                                sequential=sequential, progress=step)
    pruned_proto = to_model(graph, proto)
    distilled = None
    if distill_steps is not None:
        step("distilling from the dense model")
        pruned_proto, distilled = distill_model(proto, pruned_proto, calib_set, held_out, steps=distill_steps,
                                                lr=distill_lr, keep_zeros=sparsity is not None or pattern is not None,
                                                progress=step)
    step("verifying with onnx.checker and onnxruntime")
    pruned_graph, pruned_capture = verify(pruned_proto, analysis.capture, [t.name for t in analysis.graph.outputs],
                                          shapes)
    quality = None
    if held_out is not None:
        step("measuring fidelity on held-out calibration samples")
        quality = fidelity(proto, pruned_proto, held_out.samples)
    return PruneResult(
        model=pruned_proto, dense=dense, pruned=_costs(pruned_graph, pruned_capture),
        plan=_plan_report(analysis, kept), groups_found=len(analysis.groups),
        groups_pruned=int(sum(len(r) > 0 for r in plan.removed)) if plan else 0,
        frozen=[{"channels": f.channels, "reasons": f.reasons,
                 "slots": [f"{s.tensor}[{s.axis}]" for s in f.slots[:4]]} for f in analysis.frozen],
        ratio=plan.ratio if plan else 0.0, external_data=external,
        channels=_channel_table(analysis, plan) if plan else [], sparsity=sparse, refits=refits,
        fidelity=quality, calibration=calib_set.description if calib_set else None, latency_search=search,
        distillation=distilled,
        input_shapes=measured_at(analysis), channel_multiple=plan.round_to if plan else 1,
        channel_multiple_why=_multiple_note(plan, multiples, multiple_why) if plan else None,
    )


def _multiple_note(plan: Plan, multiples: list[int], why: str) -> str:
    if plan.round_to == multiples[0]:
        return why
    return (f"{why}; multiples of {multiples[0]} could not meet the target within 2%, so the target needed "
            f"multiples of {plan.round_to}")


def _check_targets(flops, params, sparsity, pattern, latency=None) -> None:
    if sum(x is not None for x in (flops, params, latency)) > 1:
        raise UsageError("give one structured target: --flops, --params or --latency, not both")
    if sparsity is not None and pattern is not None:
        raise UsageError("give one weight-sparsity target: --sparsity or --pattern, not both")
    if flops is None and params is None and latency is None and sparsity is None and pattern is None:
        raise UsageError("give a target: --flops R, --params R, --latency R, --sparsity S or --pattern N:M")
    for name, value in (("flops", flops), ("params", params), ("latency", latency)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value <= 1):
            raise UsageError(f"{name} target must be a fraction in (0, 1], got {value}")
    if sparsity is not None and not 0 <= sparsity < 1:
        raise UsageError(f"sparsity must be in [0, 1), got {sparsity}")


def _calibration(proto, calib, count, preprocess, holdout, input_shapes=None):
    """(calibration samples, held-out samples) or (None, None) without data. ``input_shapes``
    (as given) sizes the free dims of images and random data."""
    if calib is None:
        return None, None
    given = check_input_shapes(proto, input_shapes)
    specs = [replace(spec, size=given.get(spec.name)) for spec in input_specs(proto)]
    data = calib if isinstance(calib, CalibrationSet) else load_calibration(
        calib, specs, count=count, preprocess=preprocess)
    if len(data) < 2:
        raise UsageError("calibration needs at least 2 samples (some are held out to measure fidelity)")
    return data.split(holdout)


def _check_target(flops: float | None, params: float | None) -> None:
    if (flops is None) == (params is None):
        raise UsageError("give exactly one target: flops or params")
    _check_targets(flops, params, None, None)


def make_plan(analysis: Analysis, *, flops: float | None = None, params: float | None = None,
              scope: str = "isomorphic", criterion: str = "l2", round_to: int | str = "auto",
              backend: str = "ort-cpu", samples: dict | None = None) -> Plan:
    """Score every group and choose the atoms to remove to meet the FLOPs or params target.

    ``criterion``: l1/l2 weight magnitude, or with calibration ``samples`` act (activation-
    weighted) or obs (second-order saliency from each layer's Hessian). ``round_to``: as in
    ``prune`` (``plan.round_to`` is the multiple used).
    """
    multiples, _ = candidate_multiples(parse_round_to(round_to), backend)
    return _plan(analysis, flops, params, scope, criterion, multiples, samples)


def _plan(analysis: Analysis, flops: float | None, params: float | None, scope: str, criterion: str,
          multiples: list[int], samples: dict | None) -> Plan:
    _check_target(flops, params)
    scores = score_groups(analysis, criterion, samples)
    terms = (flops_terms(analysis.graph, _shapes(analysis.capture)) if flops is not None
             else param_terms(analysis.graph))
    return select_granular(analysis, scores, terms, flops if flops is not None else params, multiples,
                           scope=scope, what="FLOPs" if flops is not None else "params")


def score_groups(analysis: Analysis, criterion: str = "l2", samples: dict | None = None) -> list:
    """Importance of every group's atoms: weight magnitude (l1, l2) or, from calibration
    ``samples``, activation-weighted (act) or OBS saliency (obs)."""
    if criterion in CALIBRATED:
        if samples is None:
            raise UsageError(f"--criterion {criterion} needs calibration data: give --calib PATH")
        return calibrated_scores(analysis, samples, criterion)
    return magnitude_scores(analysis, criterion)


def apply(analysis: Analysis, plan: Plan, like: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """The pruned ModelProto (opset, IR version, metadata of ``like``) and kept indices per slot."""
    graph, kept = apply_plan(analysis, plan)
    return to_model(graph, like), kept


def measure_costs(model: str | os.PathLike | onnx.ModelProto, *, input_shapes: InputShapes | None = None) -> Costs:
    """FLOPs and params read from a model itself (every shape from a real onnxruntime run, free
    input dims at ``input_shapes``, else 224)."""
    import onnx_graphsurgeon as gs

    proto, _ = _load(model)
    graph = gs.import_onnx(proto)
    cap = capture_mod.capture(graph, resolve_input_shapes(proto, input_shapes))
    announce_guesses(proto, input_shapes)
    return _costs(graph, cap)


def _plan_report(analysis: Analysis, kept) -> dict[str, dict[int, list[int]]]:
    """Kept channel indices of every pruned initializer: {name: {axis: [indices]}}."""
    tensors = analysis.graph.tensors()
    import onnx_graphsurgeon as gs

    out: dict[str, dict[int, list[int]]] = {}
    for slot, idx in kept.items():
        if isinstance(tensors.get(slot.tensor), gs.Constant):
            out.setdefault(slot.tensor, {})[slot.axis] = idx.tolist()
    return out


def _channel_table(analysis: Analysis, plan: Plan) -> list[dict]:
    rows = []
    for group, removed in zip(analysis.groups, plan.removed, strict=True):
        first = group.weights[0] if group.weights else next(iter(group.members))
        rows.append({"group": first.tensor, "class": group.iso_class, "atoms": group.size,
                     "width": group.width, "removed": int(len(removed))})
    return rows


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
    if not models:
        raise UsageError("give at least one model to time")
    protos, names = [], []
    for m in models:
        protos.append(_load(m)[0])
        names.append(m.graph.name or "model" if isinstance(m, onnx.ModelProto) else str(m))
    shapes = [resolve_input_shapes(p, input_shapes, batch=batch) for p in protos]
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


def _bench_size_failure(exc: Exception, protos: list[onnx.ModelProto], feeds: list[dict]) -> UsageError | None:
    """A usage error if onnxruntime failed to run a model whose inputs have free dims (the size
    given or assumed may be wrong for it); None for anything else."""
    if not type(exc).__module__.startswith("onnxruntime"):
        return None
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for proto, feed in zip(protos, feeds, strict=True):
        error = size_failure(graph_inputs(proto), {k: v.shape for k, v in feed.items()}, reason)
        if error is not None:
            return error
    return None


def default_output(path: str | os.PathLike) -> Path:
    """``<input>.pruned.onnx`` beside the input."""
    p = Path(path)
    return p.with_name(p.name[:-5] + ".pruned.onnx" if p.name.endswith(".onnx") else p.name + ".pruned.onnx")


__all__ = ["analyze", "apply", "bench", "make_plan", "prune", "PruneResult", "Costs", "measure_costs", "default_output"]


def group_flops_share(analysis: Analysis) -> list[float]:
    """For each group, the share of dense FLOPs in nodes whose cost scales with the group."""
    terms = flops_terms(analysis.graph, _shapes(analysis.capture))
    dense = total(terms) or 1.0
    shares = []
    for group in analysis.groups:
        slots = set(group.members)
        shares.append(sum(t.dense for t in terms if slots.intersection(t.slots)) / dense)
    return shares
