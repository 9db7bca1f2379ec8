"""Read the real shape of every tensor by running the model in onnxruntime.

ONNX shape inference gives up on many real exports (shapes computed at run time by
Shape/Gather/Concat), so the analysis runs the graph twice with every tensor marked as an
output: once at batch 1 and once at batch 2 (other free dims +32 where the model allows; one
at a time where it refuses them all). Axes whose size differs between the runs are dynamic and
never carry prunable channels. Free dims other than the batch take the size ``--input-shape``
gives, else 224 (``shapes.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from ..errors import ModelError, first_line
from .sessions import light_model, return_freed_memory, shared_session
from .shapes import GUESS, free_dims, size_failure

log = logging.getLogger(__name__)


@dataclass
class Capture:
    """Shapes of every tensor at the first run, which axes are dynamic, and small int values
    that do not depend on the free dims."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    shapes2: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dynamic: dict[str, set[int]] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    stable: set[str] = field(default_factory=set)
    finite: dict[str, bool] = field(default_factory=dict)  # graph outputs only
    second_inputs: dict[str, tuple[int, ...]] | None = None  # the second run's input shapes (None: no second run)

    def fixed(self, tensor: gs.Tensor) -> np.ndarray | None:
        """A small input's value if it is constant or computed the same whatever the batch (then
        the rewrite may replace it with a constant); None otherwise."""
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        return self.values.get(tensor.name) if tensor.name in self.stable else None

    def is_static(self, name: str, axis: int) -> bool:
        return axis not in self.dynamic.get(name, set())


def input_feed(graph: gs.Graph, grow: int = 0, seed: int = 0, batch: int | None = None,
               shapes: dict[str, tuple[int, ...]] | None = None,
               only: set[tuple[str, int]] | None = None) -> dict[str, np.ndarray]:
    """Random inputs: free dims take batch 1 (axis 0) or their size in ``shapes`` (else 224);
    ``grow`` enlarges the free dims (those in ``only``, (input, axis) pairs, when given).

    ``batch`` sets a free axis 0 (it overrides ``grow`` there)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for tensor in graph.inputs:
        shape = []
        given = (shapes or {}).get(tensor.name)
        dims = tensor.shape if tensor.shape is not None else ([None] * len(given) if given else [])
        for axis, dim in enumerate(dims):
            if isinstance(dim, int) and dim >= 0:
                shape.append(dim)
            elif axis == 0:
                shape.append(batch if batch is not None else 1 + (1 if grow else 0))
            else:
                grown = grow if only is None or (tensor.name, axis) in only else 0
                shape.append((given[axis] if given else GUESS) + grown)
        dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
        if np.issubdtype(dtype, np.floating):
            feed[tensor.name] = standard_normal(rng, shape, dtype)
        elif dtype == np.bool_:
            feed[tensor.name] = np.ones(shape, dtype=dtype)
        else:
            feed[tensor.name] = np.zeros(shape, dtype=dtype)
    return feed


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...] | list[int], dtype: np.dtype) -> np.ndarray:
    """Standard-normal values of ``dtype``, drawn as float32 unless it is float64: drawing float64 and
    converting would hold twice the input's bytes more (a large --input-shape feed)."""
    wide = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    return rng.standard_normal(shape, dtype=wide).astype(dtype, copy=False)


def _all_outputs_model(graph: gs.Graph) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[str]]:
    """(the graph with every tensor an output and its large weights as stubs, their arrays, the
    output names)"""
    model, weights = light_model(graph)
    present = {o.name for o in model.graph.output}
    names = []
    for node in graph.nodes:
        for out in node.outputs:
            if out.name and out.name not in present and not isinstance(out, gs.Constant):
                names.append(out.name)
                present.add(out.name)
    for name in names:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    return model, weights, [o.name for o in model.graph.output]


SMALL = 64  # run-time values up to this many elements are kept (shape arithmetic, bounds, scales)
CHUNK_BYTES = 1 << 30  # the second run fetches its outputs in groups of about this size
GROWTH = 3.0  # the second run's tensors are at most about this much larger (batch 2, free dims +32)


@dataclass
class _Seen:
    """What the analysis keeps of one tensor of one run: its shape and, if small, its value."""

    shape: tuple[int, ...]
    value: np.ndarray | None
    nbytes: int
    finite: bool | None = None  # checked for the graph's outputs only


def _seen(value, check_finite: bool = False) -> _Seen:
    value = np.asarray(value)
    numeric = np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
    finite = bool(not np.issubdtype(value.dtype, np.floating) or np.isfinite(value).all()) if check_finite else None
    # a copy: an array onnxruntime returns may share its buffer and so keep the whole session arena alive
    return _Seen(tuple(value.shape), value.copy() if numeric and value.size <= SMALL else None, value.nbytes, finite)


class _GroupSessions:
    """onnxruntime sessions on ``model`` in which one group of tensors is the graph's output.

    onnxruntime keeps every graph output alive to the end of a run, whatever a run fetches, so
    bounding memory takes a session whose outputs are only the group. The latest session is kept:
    a model small enough for one group runs both captures on one session. The sessions read the
    graph's own weight arrays (``sessions.shared_session``), so a new one costs no copy of them.
    """

    def __init__(self, model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> None:
        self.model = model
        self.weights = weights
        self.group: list[str] | None = None
        self.sess: ort.InferenceSession | None = None

    def __call__(self, group: list[str]) -> ort.InferenceSession:
        if group != self.group:
            self.sess = None  # free the previous session's weights and buffers before the next one
            del self.model.graph.output[:]
            self.model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in group)
            self.sess = shared_session(self.model, self.weights)
            self.group = group
        return self.sess


def _run(sessions: _GroupSessions, groups: list[list[str]], feed: dict[str, np.ndarray],
         outputs: frozenset[str] = frozenset()) -> dict[str, _Seen]:
    """Run once per group of outputs, keeping only shapes and small values (and, for ``outputs``,
    whether they are finite): the big activations of one group are freed before the next group
    runs, so memory stays bounded on large inputs."""
    seen = {name: _seen(value, name in outputs) for name, value in feed.items()}
    for group in groups:
        sess = sessions(group)
        try:
            values = sess.run(group, feed)
        except Exception as exc:
            raise _RunFailed(str(exc)) from exc
        seen.update((name, _seen(value, name in outputs)) for name, value in zip(group, values, strict=True))
        del values
    return seen


def _groups(names: list[str], sizes: dict[str, float], budget: float) -> list[list[str]]:
    """Consecutive runs of ``names`` whose ``sizes`` add up to about ``budget`` bytes each."""
    groups: list[list[str]] = [[]]
    used = 0.0
    for name in names:
        size = sizes.get(name, 0.0)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0.0
        groups[-1].append(name)
        used += size
    return groups


KEEP_ELEMENTS = 4096  # initializers up to this size keep their values for shape inference's data propagation


def estimated_sizes(model: onnx.ModelProto, feed: dict[str, np.ndarray], outputs: int) -> dict[str, float]:
    """Bytes of each tensor by ONNX shape inference at the feed's shapes, before anything runs.

    Used only to split the first run into groups that fit in memory (every activation of a giant
    at 600 px is over 10 GB at once). Big weights are left out of the copy that is inferred (their
    shapes are enough), so this costs no memory on large models. A tensor inference cannot size
    gets the size of the largest input of the node that makes it; without any, it counts 0.
    """
    graph = model.graph
    light = onnx.GraphProto(name=graph.name, node=graph.node, output=graph.output[:outputs],
                            value_info=graph.value_info, sparse_initializer=graph.sparse_initializer)
    for tensor in graph.input:
        entry = light.input.add()
        entry.CopyFrom(tensor)
        if tensor.name in feed and entry.type.HasField("tensor_type"):
            entry.type.tensor_type.shape.Clear()
            for dim in feed[tensor.name].shape:
                entry.type.tensor_type.shape.dim.add().dim_value = dim
    for init in graph.initializer:
        if int(np.prod(init.dims, dtype=np.int64)) <= KEEP_ELEMENTS:
            light.initializer.append(init)
        else:
            light.initializer.add(name=init.name, dims=init.dims, data_type=init.data_type)
    light_model = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, graph=light,
                                  functions=model.functions)
    try:
        inferred = onnx.shape_inference.infer_shapes(light_model, strict_mode=False, data_prop=True).graph
    except Exception as exc:  # an estimate only: without it the first run is split by the fallback
        log.debug("capture: shape inference failed (%s); sizing the first run's groups without it", exc)
        inferred = light
    sizes: dict[str, float] = {}
    for info in (*inferred.input, *inferred.value_info, *inferred.output):
        kind = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
        if kind.HasField("shape") and all(d >= 0 for d in dims) and kind.elem_type:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)).itemsize
            sizes[info.name] = float(np.prod(dims, dtype=np.float64) * itemsize)
    for node in graph.node:  # topological order: a node's inputs are sized before its outputs
        guess = max((sizes.get(name, 0.0) for name in node.input if name), default=0.0)
        for name in node.output:
            sizes.setdefault(name, guess)
    return sizes


def capture(graph: gs.Graph, shapes: dict[str, tuple[int, ...]] | None = None,
            second_inputs: dict[str, tuple[int, ...]] | None = None, group_bytes: float | None = None) -> Capture:
    """Run the graph twice with every tensor as an output; record shapes and dynamic axes.

    ``shapes`` (input name -> dims, see ``shapes.resolve_input_shapes``) sizes the free dims of the
    first run (224 where not given); its batch entry is not used: the first run is at batch 1.
    ``second_inputs`` (another capture's ``second_inputs``) makes the second run at exactly those
    sizes, without trying others: verify runs a pruned model where the dense model ran.
    A first run that fails while some input has a free dim other than the batch is a usage error
    (the size may be wrong for the model) that says how to give the size. ``group_bytes`` (default
    ``CHUNK_BYTES``) bounds the activations one run fetches: less memory, more runs.
    """
    group_bytes = group_bytes or CHUNK_BYTES
    model, weights, names = _all_outputs_model(graph)
    feed = input_feed(graph, shapes=shapes)
    first_groups = _groups(names, estimated_sizes(model, feed, len(graph.outputs)), group_bytes)
    if len(first_groups) > 1:
        log.debug("capture: first run in %d groups of outputs to bound memory", len(first_groups))
    try:
        sessions = _GroupSessions(model, weights)
        first = _run(sessions, first_groups, feed, frozenset(t.name for t in graph.outputs))
    except Exception as exc:
        failed = exc.__cause__ if isinstance(exc, _RunFailed) else exc
        reason = first_line(failed)
        error = size_failure(_input_dims(graph), {k: v.shape for k, v in feed.items()}, reason) \
            if isinstance(exc, _RunFailed) else None
        raise error or ModelError(f"onnxruntime cannot run the model: {reason}") from None
    groups = _groups(names, {name: seen.nbytes * GROWTH for name, seen in first.items()}, group_bytes)
    if len(groups) > 1:
        log.debug("capture: second run in %d groups of outputs to bound memory", len(groups))
    if second_inputs is not None:
        try:
            second = _run(sessions, groups, input_feed(graph, batch=2, shapes=second_inputs))
        except Exception:  # the caller compares the runs' shapes and says what changed
            second = None
    else:
        second = _second_run(graph, sessions, groups, shapes)
    del sessions
    return_freed_memory()  # the runs' activations, freed into the allocator, go back to the system
    result = Capture()
    for name, one in first.items():
        other = second[name] if second is not None else one
        result.shapes[name] = one.shape
        result.shapes2[name] = other.shape
        result.dynamic[name] = {a for a in range(len(one.shape))
                                if len(other.shape) != len(one.shape) or other.shape[a] != one.shape[a]}
        # Small tensors computed at run time (shape arithmetic, slice bounds, scales), and whether
        # both runs agree (then the value does not depend on the batch or other free dims).
        if one.value is not None:
            result.values[name] = one.value
            if other.value is not None and other.shape == one.shape and np.array_equal(other.value, one.value):
                result.stable.add(name)
    for tensor in graph.outputs:
        result.finite[tensor.name] = first[tensor.name].finite
    if second is not None:
        result.second_inputs = {t.name: second[t.name].shape for t in graph.inputs if t.name in second}
    for tensor in graph.inputs:
        dims = tensor.shape or []
        result.dynamic.setdefault(tensor.name, set()).update(
            a for a, d in enumerate(dims) if not (isinstance(d, int) and d >= 0))
    return result


class _RunFailed(Exception):
    """onnxruntime failed while running the model (not while building the session); the cause is
    onnxruntime's exception."""


def _input_dims(graph: gs.Graph) -> dict[str, tuple | None]:
    return {t.name: tuple(t.shape) if t.shape is not None else None for t in graph.inputs}


def _second_run(graph: gs.Graph, sessions: _GroupSessions, groups: list[list[str]],
                shapes: dict[str, tuple[int, ...]] | None) -> dict[str, _Seen] | None:
    """The second run: batch 2 with every free dim +32; where the model refuses that, the free dims
    it allows grown one at a time (greedily, so a recogniser with a fixed height still shows its
    dynamic width), then batch 2 only; None if the model runs at no other size."""
    free = [(name, axis) for name, dims in _input_dims(graph).items() for axis in free_dims(dims)]

    def attempt(only: set[tuple[str, int]] | None) -> dict[str, _Seen] | None:
        try:
            return _run(sessions, groups, input_feed(graph, grow=32, shapes=shapes, only=only))
        except Exception:  # the model does not allow those sizes
            return None

    second = attempt(None)
    if second is not None:
        return second
    if len(free) > 1:
        grown: set[tuple[str, int]] = set()
        for dim in free:
            trial = attempt(grown | {dim})
            if trial is not None:
                grown.add(dim)
                second = trial
        log.debug("capture: growing every free dim failed; grown in the second run: %s",
                  ", ".join(f"{n}[{a}]" for n, a in sorted(grown)) or "none")
        if second is not None:
            return second
    feed = input_feed(graph, shapes=shapes)  # batch only: the first run's inputs twice
    feed = {k: np.concatenate([v, v]) if v.ndim and _free_batch(graph, k) else v for k, v in feed.items()}
    try:
        return _run(sessions, groups, feed)
    except Exception:
        return None


def _free_batch(graph: gs.Graph, name: str) -> bool:
    tensor = next(t for t in graph.inputs if t.name == name)
    dims = tensor.shape or []
    return bool(dims) and not (isinstance(dims[0], int) and dims[0] >= 0)
