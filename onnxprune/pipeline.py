"""The pipeline: one model, analysed once, and the steps every run takes.

    p = Pipeline(model, calib=..., solver=..., bench=..., shapes=...)   # load, capture, analyse, dense costs
    plan, search = p.plan(flops=0.5)         # score (once per criterion) and select; or latency=R
    pruned = p.apply(plan)                   # rewrite (and re-fit with solver.reconstruct)
    p.sparsify(pruned, pattern)              # weight sparsity (optional)
    model = p.to_model(pruned)
    model, how = p.distill(model)            # label-free recovery (optional)
    costs = p.verify(model)                  # onnx.checker + onnxruntime, then costs measured on it
    quality = p.fidelity(model)              # held-out calibration samples (when given)
    int8, how = p.quantize(model)            # --quantize int8: QDQ model (then verify, fidelity again)
    latencies = p.measure([p.model, model])  # on the backend, alternating

``Pipeline.run`` is that sequence, ``plan`` .. ``fidelity``, written once: ``prune`` (api.py) runs
it for its one target, each sweep point (``jobs/tasks.sweep_point``) for its own. The latency
search (latency.py) uses ``select`` and ``build`` to try candidates. The Pipeline holds the dense
model, its analysis, calibration data, channel scores and cost terms, so none of them is computed
twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .calib.data import CalibrationSet, load_calibration, separate_holdout
from .errors import UsageError
from .graph import capture as capture_mod
from .graph.load import (
    read_model,
    read_split,
    refuse_nonfinite,
    split_weights,
    to_graph,
    to_model,
    unshare_constants,
    upgrade,
)
from .graph.sessions import return_freed_memory
from .graph.shapes import announce_guesses, check_input_shapes, input_specs
from .graph.verify import verify
from .memory import plan_memory, resolve_shapes
from .options import BenchOptions, CalibOptions, ShapeOptions, SolverOptions
from .progress import Progress, no_progress
from .ranking.cost import CostTerm, flops_terms, param_terms, total
from .ranking.criteria import score_groups
from .ranking.granularity import candidate_multiples
from .ranking.select import select, select_granular
from .results import ChannelRow, Costs, FrozenRow
from .structure.analyze import Analysis, analyze_graph, measured_at
from .structure.rewrite import Plan, apply_plan

if TYPE_CHECKING:  # types only: the stages import heavier libraries when they run
    from .calib.distill import Distillation
    from .calib.fidelity import Fidelity
    from .calib.int8 import Quantization
    from .calib.obs import Pattern
    from .ranking.latency import LatencySearch

log = logging.getLogger(__name__)
TIMING_SAMPLES = 8  # calibration samples that quantize a latency-search candidate for timing


def load_model(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """(ModelProto upgraded to a supported opset and with unique node names, whether the file used
    external data)."""
    if isinstance(model, onnx.ModelProto):
        return unique_node_names(upgrade(model), owned=False), False
    proto, external = read_model(model)
    return unique_node_names(proto, owned=True), external


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and its subgraphs (If branches, Loop and Scan bodies) at any depth."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield from _graphs(sub)


def unique_node_names(model: onnx.ModelProto, *, owned: bool) -> onnx.ModelProto:
    """``model`` with every node name unique: a node whose name an earlier node has is renamed
    ``NAME__1`` (``__2``, ...). onnx.checker accepts shared names (some converters write them), but
    onnxruntime refuses to load such a model, and so would refuse the pruned one. Empty names stay
    empty (onnxruntime accepts those). A model that is not ``owned`` (the caller's proto) is copied
    before it is changed; a model without shared names is returned as it is."""
    names = [node.name for graph in _graphs(model.graph) for node in graph.node if node.name]
    if len(names) == len(set(names)):
        return model
    if not owned:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    taken, seen, renamed = set(names), set(), []
    for graph in _graphs(model.graph):
        for node in graph.node:
            if not node.name or node.name not in seen:
                seen.add(node.name)
                continue
            k = 1
            while f"{node.name}__{k}" in taken:
                k += 1
            renamed.append((node.name, f"{node.name}__{k}"))
            node.name = f"{node.name}__{k}"
            taken.add(node.name)
    log.warning("%d nodes had the name of an earlier node (onnxruntime refuses such a model); renamed them, "
                "e.g. %s -> %s", len(renamed), *renamed[0])
    return model


def load_split(model: str | os.PathLike | onnx.ModelProto
               ) -> tuple[onnx.ModelProto, dict[str, np.ndarray], bool]:
    """(the model upgraded to a supported opset, without weight bytes; its weights by name; whether
    the file used external data). From a path the arrays are the only copy of the weights in
    memory; from a ModelProto they are copies (the proto is the caller's)."""
    if isinstance(model, onnx.ModelProto):
        light, weights = split_weights(upgrade(model))  # the skeleton is a copy: ours to rename
        return unique_node_names(light, owned=True), weights, False
    light, weights, external = read_split(model)
    return unique_node_names(light, owned=True), weights, external


def analyze_model(proto: onnx.ModelProto, progress: Progress | None = None,
                  shapes: dict[str, tuple[int, ...]] | None = None, given: dict | None = None,
                  weights: dict[str, np.ndarray] | None = None, group_bytes: float | None = None) -> Analysis:
    """Fold constants, capture every shape at ``shapes`` (resolved from ``given``; warns about guessed
    sizes once the model ran there) and find the coupled groups. ``weights``: the initializers'
    values of a ``proto`` without them (``load_split``); ``group_bytes``: see ``capture.capture``."""
    step = progress or no_progress
    step("folding constants")
    graph = to_graph(proto, weights)
    refuse_nonfinite(graph)  # a NaN bias: the dense model is broken, a pruned one may look fine
    shared = unshare_constants(graph)
    step("running the model once to read every shape")
    cap = capture_mod.capture(graph, shapes, group_bytes=group_bytes)
    announce_guesses(proto, given)
    step("finding coupled channel groups")
    analysis = analyze_graph(graph, cap)
    analysis.shared = shared
    return analysis


def shape_lookup(cap: capture_mod.Capture):
    """Shape lookup for the cost model: constants from their values, the rest from the capture."""
    def shape(t):
        return tuple(t.shape) if isinstance(t, gs.Constant) else cap.shapes.get(t.name)
    return shape


def costs_of(graph: gs.Graph, cap: capture_mod.Capture, skip: set[str] = frozenset()) -> Costs:
    """FLOPs and params of a graph whose shapes ``cap`` captured (initializers in ``skip`` not counted)."""
    return Costs(total(flops_terms(graph, shape_lookup(cap))), total(param_terms(graph, skip)))


def model_costs(analysis: Analysis) -> Costs:
    """Dense FLOPs and params of an analysed model (an initializer shared by several layers once)."""
    return costs_of(analysis.graph, analysis.capture, skip=set(analysis.shared))


def load_calibration_split(proto: onnx.ModelProto, calib: CalibOptions, input_shapes: dict | None = None
                           ) -> tuple[CalibrationSet | None, CalibrationSet | None]:
    """(calibration samples, held-out samples), or (None, None) without data. ``input_shapes`` (as
    given) sizes the free dims of images and random data. ``calib.holdout``: a fraction of the
    files held out whole (``CalibrationSet.split``), or a separate set, loaded like ``calib.calib``;
    all of the calibration samples then fit."""
    if calib.calib is None:
        return None, None
    given = check_input_shapes(proto, input_shapes)
    specs = [replace(spec, size=given.get(spec.name)) for spec in input_specs(proto)]

    def load(source):
        return source if isinstance(source, CalibrationSet) else load_calibration(
            source, specs, count=calib.calib_count, preprocess=calib.preprocess)

    data = load(calib.calib)
    if isinstance(calib.holdout, CalibrationSet | np.ndarray | str | os.PathLike):
        return data, separate_holdout(data, load(calib.holdout))
    if len(data) < 2:
        raise UsageError("calibration needs at least 2 samples (some are held out to measure fidelity)")
    return data.split(calib.holdout)


@dataclass
class Pruned:
    """A candidate made from the dense graph: the rewritten graph, the kept indices per slot, the
    plan it follows (None: weight sparsity only) and what the optional steps reported."""

    graph: gs.Graph | None  # None once released (Pipeline.to_model)
    kept: dict = field(default_factory=dict)
    plan: Plan | None = None
    refits: list = field(default_factory=list)
    sparsity: object | None = None  # sparsify.SparsifyReport


@dataclass
class Outcome:
    """One pass of ``Pipeline.run``: the plan (None: no channels removed) and the latency search that
    chose it, the candidate (its graph released), the model, the costs measured on it, its fidelity
    (None without calibration data) and its distillation (None unless asked for)."""

    plan: Plan | None
    search: LatencySearch | None
    pruned: Pruned
    model: onnx.ModelProto
    costs: Costs
    fidelity: Fidelity | None
    distillation: Distillation | None = None
    quantization: Quantization | None = None  # --quantize: what was done; ``model`` is then the INT8 one
    float_model: onnx.ModelProto | None = None  # --quantize: the model before INT8 ...
    float_fidelity: Fidelity | None = None  # ... and its fidelity
    alternative: onnx.ModelProto | None = None  # --quantize: the dense model quantized by onnxruntime alone ...
    alternative_fidelity: Fidelity | None = None  # ... and its fidelity: what INT8 alone gives


class Pipeline:
    """One model's analysis, calibration data, scores and dense figures, and the steps of a run."""

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, *, calib: CalibOptions | None = None,
                 solver: SolverOptions | None = None, bench: BenchOptions | None = None,
                 shapes: ShapeOptions | None = None, progress: Progress | None = None, kept: float = 1.0) -> None:
        self.calib_options = calib or CalibOptions()
        self.solver = solver or SolverOptions()
        self.bench = bench or BenchOptions()
        self.shape_options = shapes or ShapeOptions()
        self.step = progress or no_progress
        given = self.shape_options.input_shapes
        self._source = model
        # --max-memory: refused here, before anything is read, if the model cannot fit; ``kept``
        # (the target's share, where known) sizes the pruned copy
        self.memory = plan_memory(model, self.solver.max_memory, kept=kept, calibrated=self.calib_options.given)
        self._model: onnx.ModelProto | None = None
        self.skeleton, weights, self.external = load_split(model)
        if self.solver.quantize:  # before any work
            from .calib.int8 import refuse_quantized

            refuse_quantized(self.skeleton)
        self.shapes = resolve_shapes(self.skeleton, given, batch=self.bench.batch, budget=self.memory.budget)
        self.calib, self.held_out = load_calibration_split(self.skeleton, self.calib_options, given)
        self.analysis = analyze_model(self.skeleton, progress, self.shapes, given, weights,
                                      self.memory.capture_group)
        del weights  # the analysis graph holds them now, and nothing else does
        self.dense = model_costs(self.analysis)
        self.outputs = [t.name for t in self.analysis.graph.outputs]
        self._scores: dict[str, list[np.ndarray]] = {}
        self._terms: dict[str, list[CostTerm]] = {}
        self._alternative = None  # (model, fidelity): ``alternative``
        self.int8_candidates = False  # --latency with --quantize int8: candidates are timed in INT8 (``build``)

    @property
    def model(self) -> onnx.ModelProto:
        """The dense model as a full ModelProto, read when first asked for (fidelity, latency and
        distillation run on it; pruning itself needs only ``skeleton`` and the analysis graph)."""
        if self._model is None:
            self._model = load_model(self._source)[0]
        return self._model

    # --- ranking ---------------------------------------------------------------------------------

    @property
    def samples(self) -> dict[str, np.ndarray] | None:
        """Calibration inputs by name (None without data)."""
        return self.calib.samples if self.calib is not None else None

    def scores(self) -> list[np.ndarray]:
        """Importance of every group's atoms by the solver's criterion (computed once)."""
        criterion = self.solver.resolved_criterion(self.calib_options)
        if criterion not in self._scores:
            self._scores[criterion] = score_groups(self.analysis, criterion, self.samples)
        return self._scores[criterion]

    def terms(self, metric: str = "flops") -> list[CostTerm]:
        """Cost terms of the dense graph: "flops" or "params" (computed once each)."""
        if metric not in self._terms:
            self._terms[metric] = (flops_terms(self.analysis.graph, shape_lookup(self.analysis.capture))
                                   if metric == "flops" else param_terms(self.analysis.graph))
        return self._terms[metric]

    def multiples(self, pattern_m: int | None = None) -> tuple[list[int], str]:
        """Channel multiples to try, coarsest first, and why (--round-to on --backend; an N:M pattern
        also wants multiples of M)."""
        return candidate_multiples(self.solver.round_to, self.bench.backend, pattern_m)

    def select(self, target: float, round_to: int, metric: str = "flops") -> Plan:
        """The plan meeting ``target`` (FLOPs or params ratio) with channel counts in multiples of ``round_to``."""
        return select(self.analysis, self.scores(), self.terms(metric), target, scope=self.solver.scope,
                      round_to=round_to, what="FLOPs" if metric == "flops" else "params")

    def plan(self, *, flops: float | None = None, params: float | None = None, latency: float | None = None,
             multiples: list[int] | None = None):
        """(plan, latency search or None) for one structured target. FLOPs and params targets take the
        coarsest multiple that meets them within 2%; a latency target is searched by measuring."""
        multiples = multiples or self.multiples()[0]
        if latency is not None:
            from .ranking.latency import search_latency

            self.step("scoring channels")
            self.scores()
            return search_latency(self, latency, round_to=multiples[0])
        metric, target = ("flops", flops) if flops is not None else ("params", params)
        if target is None:
            raise UsageError("give exactly one target: flops or params")
        self.step("scoring and selecting channels")
        plan = select_granular(self.analysis, self.scores(), self.terms(metric), target, multiples,
                               scope=self.solver.scope, what="FLOPs" if metric == "flops" else "params")
        return plan, None

    # --- building a candidate ------------------------------------------------------------------------

    def build(self, plan: Plan) -> onnx.ModelProto:
        """The rewritten model of ``plan``, nothing else (latency-search candidates); with
        ``int8_candidates`` (--latency with --quantize int8) quantized as onnxruntime quantizes it
        (nearest rounding, MinMax on a few calibration samples: what the INT8 model will run like,
        in seconds, not the OBS rounding that only changes the weights' values)."""
        model = to_model(apply_plan(self.analysis, plan)[0], self.skeleton)
        if self.int8_candidates and self.calib is not None:
            from .calib.int8 import onnxruntime_int8

            few = CalibrationSet({k: v[:TIMING_SAMPLES] for k, v in self.calib.samples.items()}, "timing samples")
            model = onnxruntime_int8(model, few)
        return model

    def apply(self, plan: Plan | None, progress: Progress | None = None) -> Pruned:
        """Rewrite the graph by ``plan`` (None: an unchanged copy) and, with ``solver.reconstruct``,
        re-fit the layers that lost inputs on the calibration samples."""
        if plan is None:
            return Pruned(self.analysis.graph.copy())
        (progress or self.step)("rewriting the graph")
        graph, kept = apply_plan(self.analysis, plan)
        pruned = Pruned(graph, kept, plan)
        how = self.solver.reconstruction(self.calib_options)
        if how != "none" and self.samples is not None:
            from .calib.reconstruct import refit_layers

            pruned.refits = refit_layers(self.analysis.graph, graph, kept, self.samples,
                                         sources=getattr(self.calib, "sources", None), method=how,
                                         memory_budget=self.memory.budget, progress=progress or self.step)
        return pruned

    def sparsify(self, pruned: Pruned, pattern) -> None:
        """Zero weights of ``pruned`` in place to ``pattern`` (an obs.Pattern) by the solver's method;
        an unstructured target is spread over the layers by the solver's allocation."""
        from .calib.sparsify import sparsify_graph

        allocate = self.solver.allocate or ("measured" if self.samples is not None and not pattern.structured_nm
                                            else "uniform")
        pruned.sparsity = sparsify_graph(pruned.graph, pattern, method=self.solver.resolved_method(self.calib_options),
                                         samples=self.samples, sequential=self.solver.sequential, progress=self.step,
                                         allocate=allocate, memory_budget=self.memory.hessians)

    def to_model(self, pruned: Pruned, *, release: bool = False) -> onnx.ModelProto:
        """The candidate as a ModelProto with the dense model's opsets, IR version and metadata.
        ``release`` drops the candidate's graph afterwards: its weights then live in the model only,
        not twice through verification."""
        model = to_model(pruned.graph, self.skeleton)
        if release:
            pruned.graph = None
            return_freed_memory()
        return model

    def distill(self, model: onnx.ModelProto, keep_zeros: bool = False):
        """(model fine-tuned to the dense model's outputs, Distillation) with ``solver.distill`` steps;
        ``keep_zeros`` holds weight-sparsity masks fixed."""
        from .calib.distill import distill_model

        self.step("distilling from the dense model")
        return distill_model(self.model, model, self.calib, self.held_out, steps=self.solver.distill_steps(),
                             lr=self.solver.distill_lr, keep_zeros=keep_zeros, task=self.calib_options.task,
                             memory_budget=self.memory.budget, progress=self.step)

    def quantize(self, model: onnx.ModelProto):
        """(``model`` as a QDQ INT8 model, Quantization): activation ranges and the weights' rounding
        from the calibration samples, choices by the held-out ones (calib/int8.py)."""
        from .calib.int8 import quantize_int8

        self.step("quantizing to INT8")
        # layers kept FP32 for speed are timed on onnxruntime backends; TensorRT would build two
        # engines per layer tried, so there the held-out loss alone decides
        timer = self.latency_ratio if self.bench.backend in ("ort-cpu", "ort-cuda") else None
        return quantize_int8(model, self.calib, self.held_out, rounding=self.solver.rounding,
                             keep_fp32=self.solver.keep_fp32, task=self.calib_options.task, timer=timer,
                             memory_budget=self.memory.budget, progress=self.step)

    def alternative(self):
        """(the dense model quantized by onnxruntime alone, its fidelity): the free alternative an
        INT8 run is compared with; made once per Pipeline (a sweep's points share it)."""
        if self._alternative is None:
            from .calib.int8 import onnxruntime_int8

            self.step("quantizing the dense model with onnxruntime alone, for comparison")
            model = onnxruntime_int8(self.model, self.calib)
            self._alternative = (model, self.fidelity(model))
        return self._alternative

    # --- the sequence --------------------------------------------------------------------------------

    def run(self, *, flops: float | None = None, params: float | None = None, latency: float | None = None,
            multiples: list[int] | None = None, pattern: Pattern | None = None, distill: bool = False,
            quantize: str | None = None, release: bool = False) -> Outcome:
        """Prune once, in the one order every run takes: plan (when a FLOPs, params or latency target
        is given; ``multiples`` as in ``plan``) -> apply -> sparsify (to ``pattern``, an obs.Pattern)
        -> to_model -> distill (with ``distill``; sparsity masks kept) -> verify -> fidelity ->
        quantize ("int8") -> verify -> fidelity.
        The candidate's graph is dropped once the model holds its weights (never two copies through
        verification); ``release`` also hands the freed memory back to the system at once
        (``to_model``), which one prune wants and a sweep's worker leaves to its next points."""
        plan, search = None, None
        self.int8_candidates = quantize == "int8"
        if flops is not None or params is not None or latency is not None:
            plan, search = self.plan(flops=flops, params=params, latency=latency, multiples=multiples)
        pruned = self.apply(plan)
        if pattern is not None:
            self.sparsify(pruned, pattern)
        model = self.to_model(pruned, release=release)
        pruned.graph = None  # the model holds the weights now: not a second copy through verification
        distilled = None
        if distill:
            model, distilled = self.distill(model, keep_zeros=pattern is not None)
        costs = self.verify(model)
        outcome = Outcome(plan, search, pruned, model, costs, self.fidelity(model), distilled)
        if quantize:
            outcome.alternative, outcome.alternative_fidelity = self.alternative()
            quantized, outcome.quantization = self.quantize(model)
            self.verify(quantized)  # the FLOPs and params counted are the float model's
            outcome.float_model, outcome.float_fidelity = model, outcome.fidelity
            outcome.model, outcome.fidelity = quantized, self.fidelity(quantized)
        return outcome

    # --- checking and measuring ----------------------------------------------------------------------

    def verify(self, model: onnx.ModelProto) -> Costs:
        """Refuse unless ``model`` is a drop-in replacement for the dense one (onnx.checker, onnxruntime
        at batch 1 and 2, same outputs); its costs, measured on it."""
        self.step("verifying with onnx.checker and onnxruntime")
        graph, cap = verify(model, self.analysis.capture, self.outputs, self.shapes, self.memory.capture_group)
        costs = costs_of(graph, cap)
        del graph  # it holds a copy of the pruned weights, in cycles: freed now
        return_freed_memory()
        return costs

    def fidelity(self, model: onnx.ModelProto):
        """Fidelity to the dense model on the held-out calibration samples (None without data)."""
        if self.held_out is None:
            return None
        from .calib.fidelity import fidelity

        self.step("measuring fidelity on held-out calibration samples")
        return fidelity(self.analysis.graph, model, self.held_out.samples,  # the dense weights, not a copy
                        task=self.calib_options.task)

    def measure(self, models: list[onnx.ModelProto], *, runs: int = 20, min_seconds: float = 0.0,
                warmup_s: float = 0.3) -> list:
        """Latency of ``models`` on the bench options' backend, alternating in one process."""
        from .deploy.runners import measure

        b = self.bench
        return measure(models, runs=runs, min_seconds=min_seconds, warmup_s=warmup_s, threads=b.threads,
                       backend=b.backend, batch=b.batch, fp16=b.fp16, shapes=self.shapes)

    def latency_ratio(self, model: onnx.ModelProto, reference: onnx.ModelProto) -> float:
        """``model``'s median latency over ``reference``'s, timed alternating on the backend."""
        from .deploy.runners import latency_ratio

        b = self.bench
        return latency_ratio(model, reference, threads=b.threads, backend=b.backend, batch=b.batch, fp16=b.fp16,
                             shapes=self.shapes)

    # --- describing a plan ---------------------------------------------------------------------------

    def kept_indices(self, pruned: Pruned) -> dict[str, dict[int, list[int]]]:
        """Kept channel indices of every pruned initializer: {name: {axis: [indices]}}."""
        tensors = self.analysis.graph.tensors()
        out: dict[str, dict[int, list[int]]] = {}
        for slot, idx in pruned.kept.items():
            if isinstance(tensors.get(slot.tensor), gs.Constant):
                out.setdefault(slot.tensor, {})[slot.axis] = idx.tolist()
        return out

    def channel_rows(self, plan: Plan) -> list[ChannelRow]:
        """One row per coupled group: its first weight, class, atoms, width, atoms removed."""
        rows = []
        for group, removed in zip(self.analysis.groups, plan.removed, strict=True):
            first = group.weights[0] if group.weights else next(iter(group.members))
            rows.append(ChannelRow(first.tensor, group.iso_class, group.size, group.width, int(len(removed))))
        return rows

    def frozen_rows(self) -> list[FrozenRow]:
        """The channels no plan may remove, and why."""
        return [FrozenRow(f.channels, f.reasons, [f"{s.tensor}[{s.axis}]" for s in f.slots[:4]])
                for f in self.analysis.frozen]


__all__ = ["Outcome", "Pipeline", "Pruned", "analyze_model", "costs_of", "load_model", "load_split", "measured_at",
           "model_costs"]
