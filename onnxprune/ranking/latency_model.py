"""A latency lookup table measured on the backend, and a knapsack over it (HALP).

Shen et al., "Structural Pruning via Latency-Saliency Knapsack" (NeurIPS 2022): the latency of
each layer as a function of its kept channels, measured on the target, predicts a pruned
model's latency without building it; channels are then removed where they buy the most
latency for the least importance.

**Table.** Every node whose cost scales with a coupled group (``cost.flops_terms``: Conv,
ConvTranspose, Gemm, MatMul) gets a table over its *axes*: the channel slots of its cost term
that groups touch (a Conv has two: kept output channels and kept input channels, which belong to
different groups). Each axis is sampled at a few kept counts, multiples of the granularity
``round_to`` (the dense count, and about 3/4, 1/2 and 1/4 of it); a node's latency is measured
at every pair (a 2-D grid) on single-node models at the real shapes, and interpolated
piecewise-linearly (bilinearly) in between. On ``ort-cpu`` the probes of many nodes share one
session and are read from onnxruntime's profiler, so only the node's kernel counts (not the
layout reorders an isolated node needs, nor Python's call overhead); other onnxruntime backends
time one session per probe with ``deploy``'s runners, alternating.

**Cache.** A table depends on the model, backend, threads, batch, input sizes, machine (CPU model
and onnxruntime version) and ``round_to``; it is written atomically under ``$ONNXPRUNE_CACHE``
(else ``$XDG_CACHE_HOME/onnxprune``, else ``~/.cache/onnxprune``) and read back by later runs.

**Knapsack.** ``solve`` removes, one granularity step at a time, the step with the least value
(normalised importance times FLOPs removed, see ``Knapsack``) per predicted latency saved,
until the predicted latency meets the budget, then gives back the most important steps that
still fit. The table is a sum over nodes: fusion, memory traffic and ops without weights are
not in it, so ``latency.search_latency`` confirms each plan by timing the whole model and
corrects the budget with the measured ratio.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import helper, numpy_helper

from .. import ops
from ..errors import ModelError, UsageError, first_line
from ..graph.capture import standard_normal
from ..graph.sessions import make_session
from ..progress import Progress, no_progress
from ..structure.analyze import Analysis
from ..structure.slots import Slot
from .cost import CostTerm, flops_of

log = logging.getLogger(__name__)

TABLE_VERSION = 1
FRACTIONS = (1.0, 0.75, 0.5, 0.25)  # kept fractions sampled per axis (rounded to the granularity)
PROFILE_RUNS = 7  # profiled runs per batch of probes at least (the first is a warm-up and not counted)
PROFILE_SECONDS = 0.4  # and more runs, up to 10x, while a batch has run for less than this
BATCH_BYTES = 48 << 20  # weights per probe session
DEPTH = 2.0  # the knapsack's reluctance to prune a group deep (see Knapsack)
BATCH_PROBES = 400



# --- the table --------------------------------------------------------------------------------

@dataclass
class NodeTable:
    """One node's measured latency (ms) over the kept counts of its axes (0 to 2 slots)."""

    name: str
    axes: list[Slot]
    sizes: list[int]  # dense channel count of each axis
    points: list[list[int]]  # sampled kept counts per axis, ascending
    ms: np.ndarray  # latency at each grid point, shape (len(points[0]), len(points[1]), ...)

    def __post_init__(self):
        self.ms = np.asarray(self.ms, dtype=np.float64)
        self._mono = None

    def at(self, kept: tuple[int, ...] | list[int]) -> float:
        """Latency at ``kept`` channels per axis: piecewise-linear per axis over the measured grid made
        monotone (a running maximum along each axis: timing noise must not make channels free),
        extrapolated below the lowest sample along its first segment, never negative."""
        if self._mono is None:
            mono = self.ms.copy()
            for axis in range(mono.ndim):
                mono = np.maximum.accumulate(mono, axis=axis)
            self._mono = mono
        grid = self._mono
        for axis, k in enumerate(kept):
            grid = _interp_axis(grid, self.points[axis], float(k))
        return max(float(grid), 0.0)

    @property
    def dense_ms(self) -> float:
        return self.at(self.sizes)

    def to_dict(self) -> dict:
        return {"name": self.name, "axes": [[s.tensor, s.axis] for s in self.axes], "sizes": self.sizes,
                "points": self.points, "ms": np.asarray(self.ms).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> NodeTable:
        return cls(d["name"], [Slot(t, a) for t, a in d["axes"]], list(d["sizes"]),
                   [list(p) for p in d["points"]], np.asarray(d["ms"], dtype=np.float64))


def _interp_axis(grid: np.ndarray, xs: list[int], x: float) -> np.ndarray:
    """Interpolate ``grid`` along its first axis at ``x`` (samples at ``xs``)."""
    if len(xs) == 1:
        return grid[0] * (x / xs[0] if x < xs[0] else 1.0)
    i = int(np.searchsorted(xs, x))
    i = min(max(i, 1), len(xs) - 1)  # the segment [i-1, i]; below xs[0] extends the first one
    x0, x1 = xs[i - 1], xs[i]
    t = (x - x0) / (x1 - x0)
    return grid[i - 1] * (1 - t) + grid[i] * t


@dataclass
class LatencyTable:
    """Every node's table, how it was made, and the slot structure to evaluate plans with."""

    nodes: list[NodeTable]
    key: dict
    build_s: float = 0.0
    cached: bool = False
    path: str | None = None
    probes: int = 0

    def dense_ms(self) -> float:
        """Sum of the nodes' latencies at their dense counts."""
        return float(sum(n.dense_ms for n in self.nodes))

    def predict(self, kept: dict[Slot, int]) -> float:
        """Sum of the nodes' latencies with each axis at ``kept`` channels (dense where absent)."""
        return float(sum(n.at([kept.get(s, size) for s, size in zip(n.axes, n.sizes, strict=True)])
                         for n in self.nodes))

    def summary(self) -> dict:
        """Plain data for the report: size and provenance, not the grids."""
        return {"nodes": len(self.nodes), "probes": self.probes, "build_s": round(self.build_s, 2),
                "cached": self.cached, "path": self.path, "round_to": self.key.get("round_to"),
                "dense_ms": self.dense_ms()}

    def to_json(self) -> str:
        return json.dumps({"version": TABLE_VERSION, "key": self.key, "build_s": self.build_s,
                           "probes": self.probes, "nodes": [n.to_dict() for n in self.nodes]})


# --- what a plan keeps ------------------------------------------------------------------------

class SlotCounts:
    """Kept channel count of every group-touched slot as a function of atoms removed per group."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        self.touch: dict[Slot, list[tuple[int, int]]] = {}  # slot -> (group, channels per atom)
        for gi, group in enumerate(analysis.groups):
            for slot, members in group.members.items():
                self.touch.setdefault(slot, []).append((gi, members.shape[1]))

    def kept(self, removed: np.ndarray, slots: list[Slot] | None = None) -> dict[Slot, int]:
        sizes = self.analysis.slot_sizes
        return {s: sizes[s] - sum(int(removed[g]) * w for g, w in self.touch[s])
                for s in (slots if slots is not None else self.touch)}


def node_axes(analysis: Analysis, counts: SlotCounts) -> list[tuple[str, gs.Node, list[Slot]]]:
    """Per node whose cost scales with a group (``cost.flops_of``): a name unique in the graph, the
    node, and the slots of its cost that groups touch (one per distinct set of groups)."""
    def shape(t: gs.Tensor) -> tuple[int, ...] | None:
        return tuple(t.shape) if isinstance(t, gs.Constant) else analysis.capture.shapes.get(t.name)

    out = []
    for index, node in enumerate(analysis.graph.nodes):
        dense, slots = flops_of(node, shape)
        axes, seen = [], set()
        for slot in slots if dense else []:
            users = counts.touch.get(slot)
            if not users:
                continue
            key = tuple(sorted(g for g, _ in users))
            if key not in seen:
                seen.add(key)
                axes.append(slot)
        if axes:
            out.append((f"{node.name or node.op}#{index}", node, axes))
    return out


def sample_points(size: int, step: int, fractions: tuple[float, ...] = FRACTIONS) -> list[int]:
    """Kept counts sampled on an axis of ``size`` channels: the dense count and multiples of
    ``step`` near each fraction of it, ascending."""
    pts = {size}
    for f in fractions:
        k = int(round(size * f / step)) * step
        if step <= k < size:
            pts.add(k)
    return sorted(pts)


# --- probes -----------------------------------------------------------------------------------

@dataclass
class _Probe:
    node: int  # index into the table's nodes
    cell: tuple[int, ...]  # grid index
    model_node: onnx.NodeProto
    inputs: list[tuple[str, tuple[int, ...], np.dtype]]  # graph inputs (random)
    weights: list[tuple[str, tuple[int, ...], np.dtype]]  # initializers (constant fill)

    @property
    def weight_bytes(self) -> int:
        return sum(int(np.prod(s)) * np.dtype(d).itemsize for _, s, d in self.weights)


def _dtype(t: gs.Tensor) -> np.dtype:
    try:
        return np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32)
    except TypeError:
        return np.dtype(np.float32)


def _make_probe(pid: int, node: gs.Node, analysis: Analysis, counts: SlotCounts, axes: list[Slot],
                point: tuple[int, ...], batch: int) -> tuple[onnx.NodeProto, list, list]:
    """The node alone, at the real shapes with ``point`` channels kept on its axes; every other slot
    its groups touch shrinks in proportion (a Conv's weight and bias with its output channels)."""
    groups = analysis.groups
    frac: dict[int, float] = {}
    for slot, k in zip(axes, point, strict=True):
        for g, _ in counts.touch[slot]:
            frac[g] = k / analysis.slot_sizes[slot]
    cap = analysis.capture

    def shape_of(t: gs.Tensor) -> tuple[int, ...]:
        shape = list(t.shape) if isinstance(t, gs.Constant) else list(cap.shapes[t.name])
        for a in range(len(shape)):
            s = Slot(t.name, a)
            if s in axes:
                shape[a] = point[axes.index(s)]
            elif s in counts.touch:
                removed = sum(int(round((1 - frac.get(g, 1.0)) * groups[g].size)) * w for g, w in counts.touch[s])
                shape[a] = max(shape[a] - removed, 1)
        if batch > 1 and isinstance(t, gs.Variable) and shape and not cap.is_static(t.name, 0):
            shape[0] *= batch
        return tuple(int(d) for d in shape)

    spec = ops.spec(node.op, node.domain)
    names, inputs, weights, shapes = [], [], [], []
    for port, t in enumerate(node.inputs):
        if t is None or not t.name:
            names.append("")
            shapes.append(None)
            continue
        name = f"p{pid}_i{port}"
        names.append(name)
        shape = shape_of(t)
        shapes.append(shape)
        weight = isinstance(t, gs.Constant) or port in spec.probe_weights
        (weights if weight else inputs).append((name, shape, _dtype(t)))
    attrs = {k: v for k, v in node.attrs.items() if isinstance(v, (int, float, str, list, tuple))}
    if spec.probe is not None:  # sizes the node stores (a grouped Conv's group), as its fix rule writes them
        attrs = spec.probe(node, attrs, shapes)
    proto = helper.make_node(node.op, names, [f"p{pid}_y"], name=f"p{pid}", domain=node.domain or "", **attrs)
    return proto, inputs, weights


def _probe_model(probes: list[_Probe], opset: list) -> onnx.ModelProto:
    inputs, inits, outputs, nodes = [], [], [], []
    for k, p in enumerate(probes):
        for name, shape, dtype in p.inputs:
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape))
        for name, shape, dtype in p.weights:
            # distinct small values: nothing for common-subexpression elimination to merge
            inits.append(numpy_helper.from_array(np.full(shape, 0.01 + 1e-4 * (k % 97), dtype=dtype), name))
        nodes.append(p.model_node)
        dtype = (p.inputs or p.weights)[0][2]
        outputs.append(helper.make_tensor_value_info(p.model_node.output[0], helper.np_dtype_to_tensor_dtype(dtype),
                                                     None))
    graph = helper.make_graph(nodes, "latency_probes", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=opset)
    model.ir_version = min(model.ir_version, 10)
    return model


def _feed(probes: list[_Probe], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: standard_normal(rng, shape, dtype) for p in probes for name, shape, dtype in p.inputs}


def _batches(probes: list[_Probe]) -> list[list[_Probe]]:
    out, cur, size = [], [], 0
    for p in probes:
        if cur and (size + p.weight_bytes > BATCH_BYTES or len(cur) >= BATCH_PROBES):
            out.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += p.weight_bytes
    if cur:
        out.append(cur)
    return out


_PROBE_EVENT = re.compile(r"^p(\d+)(?:_|$)")


def _profile_times(batch: list[_Probe], opset: list, threads: int, runs: int) -> list[float]:
    """Median kernel milliseconds of each probe, from onnxruntime's profiler (CPU provider)."""
    model = _probe_model(batch, opset)
    with tempfile.TemporaryDirectory(prefix="onnxprune-prof-") as folder:
        sess = make_session(model, threads=threads, profile=Path(folder) / "p")
        feed = _feed(batch)
        names = [o.name for o in sess.get_outputs()]
        start, done = time.perf_counter(), 0
        while done < runs or (time.perf_counter() - start < PROFILE_SECONDS and done < 10 * runs):
            sess.run(names, feed)
            done += 1
        events = json.loads(Path(sess.end_profiling()).read_text())
    local = {int(p.model_node.name[1:]): k for k, p in enumerate(batch)}
    samples: list[list[float]] = [[] for _ in batch]  # per probe, its kernel time in each run
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        m = _PROBE_EVENT.match(e["name"])
        if not m or int(m.group(1)) not in local or e.get("args", {}).get("op_name", "").startswith("Reorder"):
            continue
        k = local[int(m.group(1))]
        samples[k].append(e["dur"] / 1e3)
    out = []
    for s in samples:
        if not s:
            raise ModelError("onnxruntime's profiler recorded no time for a latency probe")
        out.append(float(np.median(s[1:] if len(s) > 1 else s)))
    return out


def _runner_times(batch: list[_Probe], opset: list, backend: str, threads: int, runs: int) -> list[float]:
    """Median milliseconds of one session per probe on ``backend`` (any onnxruntime provider),
    timed in alternation by ``deploy``'s runners."""
    from ..deploy.runners import make_runners
    from ..deploy.timing import time_runners

    models = [_probe_model([p], opset) for p in batch]
    feeds = [_feed([p]) for p in batch]
    lat = time_runners(make_runners(models, feeds, backend, threads), runs=runs, warmup_s=0.05)
    return [x.median_ms for x in lat]


# --- building and caching ---------------------------------------------------------------------

def cache_dir() -> Path:
    """``$ONNXPRUNE_CACHE``, else ``$XDG_CACHE_HOME/onnxprune``, else ``~/.cache/onnxprune``."""
    if os.environ.get("ONNXPRUNE_CACHE"):
        return Path(os.environ["ONNXPRUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnxprune"


def machine() -> str:
    """The CPU model and onnxruntime version the table was measured with."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; onnxruntime {ort.__version__}"


def model_hash(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:32]


def table_key(model: onnx.ModelProto, backend: str, threads: int, batch: int, round_to: int,
              shapes: dict[str, tuple[int, ...]] | None) -> dict:
    """What a table depends on; ``shapes``: the input shapes (batch 1) the model was analysed at."""
    return {"version": TABLE_VERSION, "model": model_hash(model), "backend": backend, "threads": threads,
            "batch": batch, "round_to": round_to, "machine": machine(), "fractions": list(FRACTIONS),
            "shapes": {k: list(v) for k, v in sorted((shapes or {}).items())}}


def _key_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    name = f"{key['backend']}-t{key['threads']}-b{key['batch']}-r{key['round_to']}-{digest}.json"
    return cache_dir() / "latency" / name


SESSIONS_CREATED = 0  # probe sessions created by this process (tests read it: a cached table creates none)


def latency_table(analysis: Analysis, like: onnx.ModelProto, *, backend: str = "ort-cpu",
                  threads: int = 1, batch: int = 1, round_to: int = 16, cache: bool = True,
                  progress: Progress | None = None) -> LatencyTable:
    """The latency table of ``like`` (analysed as ``analysis``, whose input sizes it is measured at)
    on ``backend``, from the cache when one was measured for the same model, settings and machine
    (see module doc)."""
    step = progress or no_progress
    shapes = {t.name: analysis.capture.shapes[t.name] for t in analysis.graph.inputs
              if t.name in analysis.capture.shapes}
    key = table_key(like, backend, threads, batch, round_to, shapes)
    path = _key_path(key)
    counts = SlotCounts(analysis)
    axes_of = node_axes(analysis, counts)
    if cache and path.exists():
        cached = read_cached_table(path, key, [(n, a) for n, _, a in axes_of])
        if cached is not None:
            return cached
    start = time.perf_counter()
    step(f"measuring a latency table on {backend} ({threads} thread(s), batch {batch}, channels in steps of "
         f"{round_to})")
    table = _measure(analysis, like, axes_of, counts, backend, threads, batch, round_to)
    table.key = key
    table.build_s = time.perf_counter() - start
    log.info("latency table: %d nodes, %d probes, %.1f s", len(table.nodes), table.probes, table.build_s)
    if cache:
        from ..outputs import write_atomic

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda tmp: Path(tmp).write_text(table.to_json()))
            table.path = str(path)
        except Exception as exc:  # a read-only home must not fail the pruning
            log.warning("latency table not cached (%s)", exc)
    return table


def read_cached_table(path: Path, key: dict, axes: list[tuple[str, list[Slot]]]) -> LatencyTable | None:
    """The table cached at ``path`` if it is one for ``key`` with these nodes and axes; None to
    measure it again (and overwrite the file). A file that is not a well-formed table (bad JSON,
    NaN or negative times, grids that do not match their sample points, not a regular file) is
    named in a warning: used as it is, it would fail every later run (an IndexError in ``at``) or
    steer the pruning by garbage."""
    try:
        if not path.is_file():  # a FIFO would block the read
            raise ValueError("not a regular file")
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            raise ValueError("not a latency table")
        if data.get("key") != key:
            log.info("latency table %s was measured for other settings; measuring again", path)
            return None
        nodes = [_valid_node(d) for d in data["nodes"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("latency cache %s is corrupt (%s): ignored, measuring the table again", path, first_line(exc))
        return None
    if [(n.name, n.axes) for n in nodes] != axes:
        log.info("latency table %s does not match this model; measuring again", path)
        return None
    build_s, probes = data.get("build_s", 0.0), data.get("probes", 0)
    log.info("latency table read from %s", path)
    return LatencyTable(nodes, key, build_s if isinstance(build_s, int | float) else 0.0, True, str(path),
                        probes if isinstance(probes, int) else 0)


def _valid_node(d: dict) -> NodeTable:
    """A node table from its JSON, checked: 1 or 2 axes, each with ascending positive sample points
    that end at the axis's dense size, and a grid of finite, non-negative times of their shape."""
    node = NodeTable.from_dict(d)
    if not isinstance(node.name, str) or not 1 <= len(node.axes) == len(node.sizes) == len(node.points) <= 2:
        raise ValueError(f"node {node.name!r}: axes, sizes and sample points do not match")
    for points, size in zip(node.points, node.sizes, strict=True):
        if (not points or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in points)
                or points != sorted(set(points)) or points[-1] != size):
            raise ValueError(f"node {node.name!r}: bad sample points {points} for {size} channels")
    if node.ms.shape != tuple(len(p) for p in node.points):
        raise ValueError(f"node {node.name!r}: a grid of shape {node.ms.shape} for sample points of sizes "
                         f"{[len(p) for p in node.points]}")
    if not np.isfinite(node.ms).all() or (node.ms < 0).any():
        raise ValueError(f"node {node.name!r}: NaN, infinite or negative times")
    return node


def _measure(analysis: Analysis, like: onnx.ModelProto, axes_of: list[tuple[str, gs.Node, list[Slot]]],
             counts: SlotCounts, backend: str, threads: int, batch: int, round_to: int) -> LatencyTable:
    global SESSIONS_CREATED
    nodes: list[NodeTable] = []
    probes: list[_Probe] = []
    for name, node, axes in axes_of:
        sizes = [analysis.slot_sizes[s] for s in axes]
        steps = [round_to if all(analysis.groups[g].width == 1 for g, _ in counts.touch[s]) else
                 max(w for _, w in counts.touch[s]) for s in axes]
        points = [sample_points(n, st) for n, st in zip(sizes, steps, strict=True)]
        table = NodeTable(name, axes, sizes, points, np.zeros([len(p) for p in points]))
        for cell in np.ndindex(*table.ms.shape):
            point = tuple(points[a][i] for a, i in enumerate(cell))
            pid = len(probes)
            proto, ins, ws = _make_probe(pid, node, analysis, counts, axes, point, batch)
            probes.append(_Probe(len(nodes), cell, proto, ins, ws))
        nodes.append(table)
    opset = list(like.opset_import) or [helper.make_opsetid("", 17)]
    for batch_probes in _batches(probes):
        SESSIONS_CREATED += 1 if backend == "ort-cpu" else len(batch_probes)
        try:
            times = (_profile_times(batch_probes, opset, threads, PROFILE_RUNS) if backend == "ort-cpu"
                     else _runner_times(batch_probes, opset, backend, threads, 5))
        except (ModelError, UsageError):
            raise
        except Exception as exc:  # onnxruntime refused a probe: say which node
            first = batch_probes[0].model_node
            raise ModelError(f"latency table: onnxruntime cannot run a probe of {first.op_type} nodes "
                             f"({first_line(exc)})"
                             ) from None
        for p, ms in zip(batch_probes, times, strict=True):
            nodes[p.node].ms[p.cell] = ms
    for n in nodes:
        n._mono = None  # filled in place: the monotone envelope is computed on first use
    return LatencyTable(nodes, {}, probes=len(probes))


# --- the knapsack -----------------------------------------------------------------------------

@dataclass
class Solution:
    """Atoms removed per group and the table's latency (ms) for them."""

    counts: np.ndarray
    predicted_ms: float
    steps: int = 0


class Knapsack:
    """Greedy latency-saliency knapsack over a latency table.

    Each step removes ``round_to`` channels (one atom for wider units such as heads) from one
    group: the next least important ones by the group's own ranking. The step removed next is the
    one with the least *value per latency saved*, where a step's value is the normalised importance
    of its atoms (scores over their group's mean, as isomorphic ranking normalises them) times the
    FLOPs it removes, divided by the square of the group's kept fraction after it (``depth`` is
    that exponent). Where latency is proportional to FLOPs, this shrinks every group alike, like
    isomorphic pruning at a FLOPs target; where some layers run slower per FLOP (memory-bound
    depthwise convolutions, channel counts the kernels handle badly), it prunes those further and
    keeps more FLOPs at the same latency. The fraction term keeps it from emptying whole groups
    when their scores are flat, as HALP's plain importance per latency does: on the ImageNet
    MobileNetV2 at 0.6 of dense latency (magnitude or activation scores, re-fitted), depth 0 lost
    far more fidelity than isomorphic ``--flops`` pruning at the same latency, depth 1 somewhat
    more, depth 2 about the same while keeping about 0.01 more FLOPs.
    """

    def __init__(self, analysis: Analysis, table: LatencyTable, terms: list[CostTerm], scores: list[np.ndarray],
                 round_to: int, *, depth: float = DEPTH, min_keep: float = 0.0):
        self.analysis = analysis
        self.table = table
        self.depth = depth
        self.counts = SlotCounts(analysis)
        touch = self.counts.touch
        groups = analysis.groups
        self.order = [np.argsort(s, kind="stable") for s in scores]
        normalised = [np.asarray(s, dtype=np.float64)[o] / (float(np.mean(s)) if np.mean(s) > 0 else 1.0)
                      for s, o in zip(scores, self.order, strict=True)]  # in removal order
        self.cum = [np.concatenate([[0.0], np.cumsum(n)]) for n in normalised]
        self.step = [round_to if g.width == 1 else 1 for g in groups]
        self.floor = [min(max(min(st, g.size), int(np.ceil(min_keep * g.size)), 1), g.size)
                      for st, g in zip(self.step, groups, strict=True)]
        self.fterms = [(t.dense, [s for s in t.slots if s in touch]) for t in terms]
        self.fterms = [(d, sl) for d, sl in self.fterms if sl]
        self.flops_dense = float(sum(t.dense for t in terms)) or 1.0
        self.nodes_of: list[list[int]] = [[] for _ in groups]
        self.fterms_of: list[list[int]] = [[] for _ in groups]
        for ni, n in enumerate(table.nodes):
            for g in sorted({g for s in n.axes for g, _ in touch.get(s, [])}):
                self.nodes_of[g].append(ni)
        for ti, (_, sl) in enumerate(self.fterms):
            for g in sorted({g for s in sl for g, _ in touch[s]}):
                self.fterms_of[g].append(ti)
        node_groups = [{g for s in n.axes for g, _ in touch.get(s, [])} for n in table.nodes]
        term_groups = [{g for s in sl for g, _ in touch[s]} for _, sl in self.fterms]
        self.neighbours = [set().union(*(node_groups[n] for n in self.nodes_of[g]),
                                       *(term_groups[t] for t in self.fterms_of[g]), {g}) for g in range(len(groups))]

    # the cost of one node or FLOPs term at a removal
    def _node_ms(self, ni: int, removed: np.ndarray) -> float:
        n = self.table.nodes[ni]
        kept = self.counts.kept(removed, n.axes)
        return n.at([kept[s] for s in n.axes])

    def _term_flops(self, ti: int, removed: np.ndarray) -> float:
        dense, slots = self.fterms[ti]
        kept = self.counts.kept(removed, slots)
        sizes = self.analysis.slot_sizes
        return dense * float(np.prod([kept[s] / sizes[s] for s in slots]))

    def predict(self, removed: np.ndarray) -> float:
        """The table's latency (ms) with ``removed`` atoms gone from each group."""
        return float(sum(self._node_ms(ni, removed) for ni in range(len(self.table.nodes))))

    def _step_size(self, g: int, keep: int) -> int:
        """Atoms the group's next step removes: down to the next lower multiple of its step."""
        st = self.step[g]
        target = ((keep - 1) // st) * st if st > 1 else keep - 1
        return keep - max(target, self.floor[g])

    def _priority(self, g: int, removed: np.ndarray, node_ms: np.ndarray, flops: np.ndarray):
        """(value per latency saved, atoms) of the group's next step; it looks further ahead while a
        step saves no latency (a flat stretch of the table); None when nothing is left to gain."""
        size = self.analysis.groups[g].size
        r = int(removed[g])
        k = 0
        while True:
            more = self._step_size(g, size - r - k)
            if more <= 0:
                return None
            k += more
            trial = removed.copy()
            trial[g] += k
            saved = sum(node_ms[ni] - self._node_ms(ni, trial) for ni in self.nodes_of[g])
            if saved > 1e-6:
                break
        lost = sum(flops[ti] - self._term_flops(ti, trial) for ti in self.fterms_of[g])
        importance = (self.cum[g][r + k] - self.cum[g][r]) / k
        kept_after = (size - r - k) / size
        value = importance * max(lost, 0.0) / self.flops_dense / max(kept_after, 1e-3) ** self.depth
        return value / (saved / max(float(node_ms.sum()), 1e-12)), k

    def solve(self, budget_ms: float) -> Solution:
        """The removal the greedy reaches first whose predicted latency is at most ``budget_ms``,
        with the most valuable steps given back while the budget holds."""
        groups = self.analysis.groups
        removed = np.zeros(len(groups), dtype=np.int64)
        node_ms = np.array([n.dense_ms for n in self.table.nodes], dtype=np.float64)
        flops = np.array([d for d, _ in self.fterms], dtype=np.float64)
        version = [0] * len(groups)
        heap: list[tuple[float, int, int, int]] = []

        def push(g: int) -> None:
            version[g] += 1
            found = self._priority(g, removed, node_ms, flops)
            if found is not None:
                heapq.heappush(heap, (found[0], g, version[g], found[1]))

        for g in range(len(groups)):
            push(g)
        steps = 0
        while float(node_ms.sum()) > budget_ms and heap:
            _, g, ver, k = heapq.heappop(heap)
            if ver != version[g]:
                continue
            removed[g] += k
            for ni in self.nodes_of[g]:
                node_ms[ni] = self._node_ms(ni, removed)
            for ti in self.fterms_of[g]:
                flops[ti] = self._term_flops(ti, removed)
            steps += 1
            for g2 in self.neighbours[g]:
                push(g2)
        current = float(node_ms.sum())
        if current > budget_ms:
            raise ModelError(f"latency budget out of reach: the latency table predicts {current:.3g} ms with every "
                             f"prunable group at its floor, over the budget of {budget_ms:.3g} ms (dense "
                             f"{self.table.dense_ms():.3g} ms)")
        current = self._give_back(removed, node_ms, budget_ms)
        return Solution(removed, current, steps=steps)

    def _give_back(self, removed: np.ndarray, node_ms: np.ndarray, budget_ms: float) -> float:
        """Restore removed steps, most important first, while the budget still holds (the greedy's
        last step overshoots it)."""
        current = float(node_ms.sum())
        size = [g.size for g in self.analysis.groups]
        for _ in range(20):
            changed = False
            cands = []
            for g in np.flatnonzero(removed):
                r, st, kept = int(removed[g]), self.step[g], size[g] - int(removed[g])
                back = min(size[g], (kept // st + 1) * st) - kept  # up to the next multiple of the step
                cands.append(((self.cum[g][r] - self.cum[g][r - back]) / back, int(g), back))
            for _imp, g, back in sorted(cands, reverse=True):
                trial = removed.copy()
                trial[g] -= back
                new = {ni: self._node_ms(ni, trial) for ni in self.nodes_of[g]}
                total = current + sum(v - node_ms[ni] for ni, v in new.items())
                if total <= budget_ms:
                    removed[g] -= back
                    for ni, v in new.items():
                        node_ms[ni] = v
                    current, changed = float(node_ms.sum()), True
            if not changed:
                break
        return current

    def plan_removed(self, removed: np.ndarray) -> list[np.ndarray]:
        """Atom indices removed per group: each group's least important atoms first."""
        return [self.order[g][: int(c)] for g, c in enumerate(removed)]
