"""Read the real shape of every tensor by running the model in onnxruntime.

ONNX shape inference gives up on many real exports (shapes computed at run time by
Shape/Gather/Concat), so the analysis runs the graph twice with every tensor marked as an
output: once at batch 1 and once at batch 2 (other free dims +32 where the model allows).
Axes whose size differs between the runs are dynamic and never carry prunable channels.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .errors import ModelError
from .load import save_model

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

    def fixed(self, tensor: gs.Tensor) -> np.ndarray | None:
        """A small input's value if it is constant or computed the same whatever the batch (then
        the rewrite may replace it with a constant); None otherwise."""
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        return self.values.get(tensor.name) if tensor.name in self.stable else None

    def is_static(self, name: str, axis: int) -> bool:
        return axis not in self.dynamic.get(name, set())


def input_feed(graph: gs.Graph, grow: int = 0, seed: int = 0, batch: int | None = None) -> dict[str, np.ndarray]:
    """Random inputs: free dims take batch 1 (axis 0) or 224; ``grow`` enlarges the free dims.

    ``batch`` sets a free axis 0 (it overrides ``grow`` there)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for tensor in graph.inputs:
        shape = []
        for axis, dim in enumerate(tensor.shape or []):
            if isinstance(dim, int) and dim >= 0:
                shape.append(dim)
            elif axis == 0:
                shape.append(batch if batch is not None else 1 + (1 if grow else 0))
            else:
                shape.append(224 + grow)
        dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
        if np.issubdtype(dtype, np.floating):
            feed[tensor.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feed[tensor.name] = np.ones(shape, dtype=dtype)
        else:
            feed[tensor.name] = np.zeros(shape, dtype=dtype)
    return feed


def session(model: onnx.ModelProto, optimize: bool = True, threads: int = 0,
            providers: list | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session; unoptimised when every intermediate tensor must stay visible.

    Models over protobuf's 2 GiB limit go through a temporary file with external data.
    ``providers`` (onnxruntime's list, names or (name, options) pairs) replaces the CPU provider.
    """
    providers = providers or ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: run errors come back as exceptions, reported in one line
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:  # cheaper than asking ByteSize() first: serialising fails only past the 2 GiB limit
        data = model.SerializeToString()
    except Exception:
        data = None
    if data is not None:
        return ort.InferenceSession(data, opts, providers=providers)
    tmp = tempfile.TemporaryDirectory(prefix="onnxprune-")
    path = Path(tmp.name) / "model.onnx"
    save_model(model, path, external=True)
    sess = ort.InferenceSession(str(path), opts, providers=providers)
    sess._onnxprune_weights = tmp  # the folder lives as long as the session (it may map the file)
    return sess


def _all_outputs_model(graph: gs.Graph) -> tuple[onnx.ModelProto, list[str]]:
    model = gs.export_onnx(graph, do_type_check=False)
    present = {o.name for o in model.graph.output}
    names = []
    for node in graph.nodes:
        for out in node.outputs:
            if out.name and out.name not in present and not isinstance(out, gs.Constant):
                names.append(out.name)
                present.add(out.name)
    for name in names:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    return model, [o.name for o in model.graph.output]


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
    return _Seen(tuple(value.shape), value if numeric and value.size <= SMALL else None, value.nbytes, finite)


def _run(sess: ort.InferenceSession, groups: list[list[str]], feed: dict[str, np.ndarray],
         outputs: frozenset[str] = frozenset()) -> dict[str, _Seen]:
    """Run once per group of outputs, keeping only shapes and small values (and, for ``outputs``,
    whether they are finite): the big activations of one group are freed before the next group
    runs, so memory stays bounded on large inputs."""
    seen = {name: _seen(value, name in outputs) for name, value in feed.items()}
    for group in groups:
        seen.update((name, _seen(value, name in outputs))
                    for name, value in zip(group, sess.run(group, feed), strict=True))
    return seen


def _groups(names: list[str], first: dict[str, _Seen], budget: float) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    used = 0.0
    for name in names:
        size = first[name].nbytes * GROWTH
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0.0
        groups[-1].append(name)
        used += size
    return groups


def capture(graph: gs.Graph) -> Capture:
    """Run the graph twice with every tensor as an output; record shapes and dynamic axes."""
    model, names = _all_outputs_model(graph)
    try:
        sess = session(model)  # onnxruntime keeps every requested output through its fusions
        first = _run(sess, [names], input_feed(graph), frozenset(t.name for t in graph.outputs))
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot run the model: {first_line}") from None
    groups = _groups(names, first, CHUNK_BYTES)
    if len(groups) > 1:
        log.debug("capture: second run in %d groups of outputs to bound memory", len(groups))
    second = None
    for grow in (32, 0):  # try growing every free dim, then batch only
        feed = input_feed(graph, grow=grow)
        if grow == 0:
            feed = {k: np.concatenate([v, v]) if v.ndim and _free_batch(graph, k) else v
                    for k, v in feed.items()}
        try:
            second = _run(sess, groups, feed)
            break
        except Exception:  # the model does not allow those sizes; fall back
            continue
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
    for tensor in graph.inputs:
        dims = tensor.shape or []
        result.dynamic.setdefault(tensor.name, set()).update(
            a for a, d in enumerate(dims) if not (isinstance(d, int) and d >= 0))
    return result


def _free_batch(graph: gs.Graph, name: str) -> bool:
    tensor = next(t for t in graph.inputs if t.name == name)
    dims = tensor.shape or []
    return bool(dims) and not (isinstance(dims[0], int) and dims[0] >= 0)
