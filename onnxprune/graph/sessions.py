"""onnxruntime sessions that read the weights already in memory instead of copying them.

A session built from a serialised ModelProto holds the weights three times while it starts (the
proto, its bytes, onnxruntime's parse) and once for as long as it lives. For a 2.5 GB model that
is what kills a 16-32 GB machine. Here the graph is exported with every large initializer as an
*external* stub (name, type, shape; no bytes), written to a private folder beside an empty data
file, and each stub's values are handed to onnxruntime with ``SessionOptions.add_initializer``:
onnxruntime then runs on the very numpy arrays the graph holds (on the CPU, in place, no copy).

Such sessions run unoptimised and without pre-packing: they serve capture and verification,
where every tensor is an output anyway and a packed copy of each weight would double memory.
Latency is measured on ordinary sessions (``make_session``), as a deployment would run.

Every onnxruntime session of onnxprune is made here, by ``make_session`` (ordinary: optimised or
not, profiled, on GPU providers) or ``shared_session`` (the weights by pointer), from one set of
options (``_options``): errors as exceptions only, a thread count, optimisations, the profiler.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .scopes import body_tensor_names

SHARE_BYTES = 1 << 16  # initializers from 64 KiB up are shared by pointer; smaller ones travel inline
_DATA_FILE = "weights.bin"  # the stubs' location: an empty file (onnxruntime checks that it exists)


def _stub(name: str, values) -> onnx.TensorProto:
    """An external-data TensorProto with ``values``' name, type and shape and no bytes."""
    dtype = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(values.dtype))
    stub = onnx.TensorProto(name=name, dims=list(values.shape), data_type=dtype)
    make_stub(stub, values.nbytes)
    return stub


def make_stub(tensor: onnx.TensorProto, nbytes: int) -> None:
    """Mark ``tensor`` (name, type and shape set, no values) as external data of ``nbytes`` in the
    stubs' data file."""
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", _DATA_FILE), ("offset", "0"), ("length", str(nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def save_stubbed(model: onnx.ModelProto, folder: str | Path) -> Path:
    """Write ``model`` (its stubs' data file empty) to ``folder``/model.onnx, for onnx.checker and
    onnxruntime, which both check that the data file exists."""
    path = Path(folder) / "model.onnx"
    (path.parent / _DATA_FILE).touch()
    path.write_bytes(model.SerializeToString())  # small: the stubs carry no bytes
    return path


@contextlib.contextmanager
def _stubbed(graph: gs.Graph, min_bytes: int) -> Iterator[dict[str, np.ndarray]]:
    """Within the block the graph's large constants export as stubs; yields their arrays by name.

    graphsurgeon exports a constant whose values are ``LazyValues`` by reusing its TensorProto, so
    swapping in a stub for the export copies no weight. The arrays are restored on the way out."""
    saved: dict[int, tuple[gs.Constant, object]] = {}
    arrays: dict[str, np.ndarray] = {}
    # graphsurgeon exports a constant an If/Loop/Scan body reads as an initializer of the body too,
    # where no stub is filled in: such constants travel inline
    in_bodies = body_tensor_names(graph)
    try:
        for tensor in graph.tensors().values():
            if not isinstance(tensor, gs.Constant) or id(tensor) in saved or tensor.name in in_bodies:
                continue
            if getattr(tensor._values, "nbytes", 0) < min_bytes or tensor.export_dtype != tensor.dtype:
                continue  # small, or exported in another type than its values (bfloat16): inline
            values = np.asarray(tensor.values)
            if values.dtype == object or values.dtype.kind in "OUS":
                continue  # strings: onnxruntime takes them inline only
            saved[id(tensor)] = (tensor, tensor._values)
            arrays[tensor.name] = np.ascontiguousarray(values)
            tensor._values = gs.ir.tensor.LazyValues(_stub(tensor.name, values))
        yield arrays
    finally:
        for tensor, values in saved.values():
            tensor._values = values


def light_model(graph: gs.Graph, min_bytes: int = SHARE_BYTES) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The graph as a ModelProto whose initializers of ``min_bytes`` or more are stubs, and those
    initializers' arrays by name (the graph's own, not copies, where they are contiguous)."""
    with _stubbed(graph, min_bytes) as arrays:
        model = gs.export_onnx(graph, do_type_check=False)
    _drop_body_copies(model.graph, {t.name: t for t in model.graph.initializer})
    return model, arrays


def _drop_body_copies(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto]) -> None:
    """Remove from every subgraph the initializers that repeat one of the main graph's, same name
    and same bytes: graphsurgeon exports each constant a body reads from the main graph into the
    body as well, so a Loop convolving with a main-graph weight wrote that weight twice (a pruned
    file larger than the dense one). The body reads the main graph's by name, as ONNX scoping says.
    Such constants are never stubs (``_stubbed``), so their bytes compare."""
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                keep = [t for t in sub.initializer
                        if t.name not in outer or t.SerializeToString() != outer[t.name].SerializeToString()]
                if len(keep) < len(sub.initializer):
                    del sub.initializer[:]
                    sub.initializer.extend(keep)
                _drop_body_copies(sub, outer)


def shared_session(model: onnx.ModelProto, weights: dict[str, np.ndarray], *, threads: int = 0,
                   arena: bool = False) -> ort.InferenceSession:
    """An unoptimised CPU session on ``model`` (from ``light_model``) that reads the stubs' values
    from ``weights`` in place; the arrays must stay unchanged while the session lives. ``arena``
    keeps onnxruntime's activation arena (many runs of one size: calibration batches); without it
    each run's activations go back to the system (a capture's few, large runs)."""
    opts = _options(optimise=False, threads=threads)  # optimisers would read the stubs
    opts.add_session_config_entry("session.disable_prepacking", "1")  # a packed copy per weight otherwise
    opts.enable_cpu_mem_arena = arena
    values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in weights.items()}
    for name, value in values.items():
        opts.add_initializer(name, value)
    # The files are read while the session starts and never again (the stubs' values come from
    # ``weights``), so the folder goes at once: an interrupted run leaves nothing behind.
    with tempfile.TemporaryDirectory(prefix="onnxprune-session-") as folder:
        sess = start_session(save_stubbed(model, folder), opts, ["CPUExecutionProvider"])
    sess._onnxprune_keep = (values, weights)  # onnxruntime reads these buffers for the session's life
    return sess


def _options(*, optimise: bool = True, threads: int = 0, profile: str | os.PathLike | None = None
             ) -> ort.SessionOptions:
    """The options every session starts from. onnxruntime logs fatal errors only (a run's errors
    come back as exceptions, reported in one line); ``optimise`` False turns its graph optimisations
    off (every intermediate tensor stays as the model has it); ``threads`` intra-op threads and one
    inter-op thread (0: onnxruntime's defaults); ``profile``, a file prefix, turns its profiler on."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    if not optimise:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if profile is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile)
    return opts


def make_session(model: onnx.ModelProto, *, optimise: bool = True, threads: int = 0, providers: list | None = None,
                 profile: str | os.PathLike | None = None) -> ort.InferenceSession:
    """An ordinary onnxruntime session on ``model`` (options as in ``_options``), on the CPU unless
    ``providers`` (onnxruntime's list: names or (name, options) pairs) says otherwise.

    ``profile``: a file prefix; ``end_profiling()`` then returns the file of onnxruntime's events.
    Models over protobuf's 2 GiB limit go through a temporary file with external data, kept as
    long as the session lives (onnxruntime may map it)."""
    opts = _options(optimise=optimise, threads=threads, profile=profile)
    providers = providers or ["CPUExecutionProvider"]
    try:  # cheaper than asking ByteSize() first: serialising fails only past the 2 GiB limit
        data = model.SerializeToString()
    except Exception:
        data = None
    if data is not None:
        return ort.InferenceSession(data, opts, providers=providers)
    tmp = tempfile.TemporaryDirectory(prefix="onnxprune-")
    sess = start_session(_save_external(model, Path(tmp.name)), opts, providers)
    sess._onnxprune_weights = tmp  # the folder lives as long as the session
    return sess


def _save_external(model: onnx.ModelProto, folder: Path) -> Path:
    """``model`` written to ``folder``/model.onnx with its weights in one data file beside it (a
    private folder: nothing else writes there, so no atomic rename is needed)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving as external data rewrites the tensors in place
    path = folder / "model.onnx"
    # no location: onnx would check a given one against the current folder; it names a new file
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=1024)
    return path


class SessionError(RuntimeError):
    """onnxruntime refused a model it was given as a private file; the message does not name the file."""


def start_session(path: Path, opts: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    """An onnxruntime session on a model this process wrote to a private folder. onnxruntime's
    refusal starts "Load model from /tmp/onnxprune-.../model.onnx failed:", a file the user never
    named and that is gone by the time they read it: the message keeps only the reason."""
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:
        message = re.sub(r"Load model from .*? failed:\s*", "", str(exc))
        raise SessionError(message.replace(str(path.parent), "<temporary folder>")) from exc


def return_freed_memory() -> None:
    """Collect garbage cycles (graphsurgeon graphs are cyclic: uncollected, their weights outlive
    their stage) and hand the freed memory back to the system (glibc's malloc_trim), so the next
    stage starts from what is really held: onnxruntime frees a capture's activations into the
    allocator, which otherwise keeps them (about 1 GiB after vit_h_14's capture)."""
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def weight_bytes(graph: gs.Graph) -> int:
    """Bytes of the graph's constants (each once), loaded or not."""
    return sum(getattr(t._values, "nbytes", 0) for t in graph.tensors().values() if isinstance(t, gs.Constant))


def graph_session(graph: gs.Graph, *, outputs: list[str] | None = None, threads: int = 0,
                  arena: bool = False) -> ort.InferenceSession:
    """A shared session (see ``shared_session``) on a graph as it is, or with exactly ``outputs``
    (tensor names) as its outputs."""
    model, weights = light_model(graph)
    if outputs is not None:
        del model.graph.output[:]
        model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    return shared_session(model, weights, threads=threads, arena=arena)


__all__ = ["SHARE_BYTES", "SessionError", "graph_session", "light_model", "make_session", "make_stub",
           "return_freed_memory", "save_stubbed", "shared_session", "start_session", "weight_bytes"]
