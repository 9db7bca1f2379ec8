"""Load stage: read an ONNX file (or proto), check it, fold constants, import into graphsurgeon."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper, version_converter

from .. import ops
from ..errors import ModelError, UsageError, first_line
from ..outputs import write_atomic
from .sessions import light_model, make_stub, save_stubbed

log = logging.getLogger(__name__)


def _graphsurgeon_logs_to_debug() -> None:
    """onnx-graphsurgeon prints its messages on stdout ("[W] colored module is not installed",
    "[W] ... foldable nodes"); a library must not, so they go to our logger at DEBUG (-vv shows
    them). Its critical() still raises after logging."""
    gs_log = logging.getLogger("onnxprune.libraries.graphsurgeon")

    def log_message(message, severity, mode=None, stack_depth=2) -> None:
        if gs_log.isEnabledFor(logging.DEBUG):
            gs_log.debug("%s", message() if callable(message) else message)

    gs.logger.G_LOGGER.log = log_message


_graphsurgeon_logs_to_debug()

# Protobuf cannot serialise a single message over 2 GiB; above this we keep weights external.
PROTO_LIMIT = 2**31 - 1
# onnxruntime has no kernels for default-domain opsets older than this.
ORT_MIN_OPSET = 7


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, bool]:
    """Read and check an ONNX file, weights included; raise ModelError with one clear line.

    Returns the model and whether the file kept its weights as external data (so the pruned
    model can keep the same layout).
    """
    path = check_model_path(path)
    model = _load_proto(path)
    external = uses_external_data(model)
    check_tensors(model, path.parent, path)  # before reading: external data past its file is named, not read
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise ModelError(f"{path}: cannot load its external weights ({exc})") from None
    check_model(model, path)
    return upgrade(model, path), external


def read_split(path: str | os.PathLike) -> tuple[onnx.ModelProto, dict[str, np.ndarray], bool]:
    """Read and check an ONNX file as (its proto without weight bytes, every initializer's values
    by name, whether the file kept weights as external data).

    The arrays are the one copy of the weights in memory: nothing else holds them. External data
    is read tensor by tensor, so it never passes through a full proto; an inline file is parsed
    whole once (its peak is twice its weights while it is read). onnx.checker reads the file by
    path, not a serialised copy. ``read_model`` gives the classic full proto instead.
    """
    path = check_model_path(path)
    model = _load_proto(path)
    opset = _default_opset(model)
    if opset is not None and opset < ORT_MIN_OPSET:  # the upgrade converts weights too: the classic way
        full, external = read_model(path)
        light, weights = split_weights(full)
        return light, weights, external
    external = uses_external_data(model)
    refuse_unsupported(model, path)
    check_tensors(model, path.parent, path)
    weights = {t.name: _values(t, path) for t in model.graph.initializer}
    light = without_weights(model)
    del model  # an inline file's weight bytes go with the parsed proto
    check_without_weights(light, path)
    return upgrade(light, path), weights, external


def split_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """(``model`` without weight bytes, its initializers' values by name): copies of the values;
    ``model`` itself is not changed. Malformed tensors are refused (``check_tensors``)."""
    check_tensors(model)
    return without_weights(model), {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers keep name, type and shape but no values: a skeleton
    for metadata, inputs and structure, not a runnable model. Nothing of the weights is copied."""
    light = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                            producer_version=model.producer_version, domain=model.domain,
                            model_version=model.model_version, doc_string=model.doc_string)
    light.opset_import.extend(model.opset_import)
    light.metadata_props.extend(model.metadata_props)
    light.functions.extend(model.functions)
    graph = model.graph
    light.graph.name = graph.name
    light.graph.doc_string = graph.doc_string
    for name in ("node", "input", "output", "value_info", "sparse_initializer", "quantization_annotation",
                 "metadata_props"):
        getattr(light.graph, name).extend(getattr(graph, name))
    for t in graph.initializer:
        if t.data_type == onnx.TensorProto.STRING:  # never external, never big: kept whole
            light.graph.initializer.append(t)
        else:
            light.graph.initializer.add(name=t.name, dims=t.dims, data_type=t.data_type)
    return light


def check_without_weights(model: onnx.ModelProto, name: str | os.PathLike = "model") -> None:
    """onnx.checker on a model from ``without_weights``: its initializers become external stubs in a
    private folder beside an empty data file, so the checker checks all but the weights' bytes
    (reading them into arrays checked their sizes) and never holds a copy of them."""
    stubbed = onnx.ModelProto()
    stubbed.CopyFrom(model)
    for tensor in stubbed.graph.initializer:
        if tensor.data_type == onnx.TensorProto.STRING:
            continue
        count = int(np.prod(tensor.dims, dtype=np.int64))
        make_stub(tensor, count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
    try:
        with tempfile.TemporaryDirectory(prefix="onnxprune-check-") as folder:
            onnx.checker.check_model(str(save_stubbed(stubbed, folder)))
    except Exception as exc:
        raise ModelError(f"{name}: invalid ONNX model ({first_line(exc)})") from None


def _load_proto(path: Path) -> onnx.ModelProto:
    """The file's proto without external data; one clear line for what is no ONNX model."""
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{path}: not an ONNX model (no graph inside; truncated or another format?)")
    return model


def _values(tensor: onnx.TensorProto, path: Path) -> np.ndarray:
    """One initializer's values; external bytes are read into a private TensorProto that is freed
    at once (so they never pile up in a long-lived proto)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return onnx.numpy_helper.to_array(tensor)
    one = onnx.TensorProto()
    one.CopyFrom(tensor)
    try:
        external_data_helper.load_external_data_for_tensor(one, str(path.parent))
    except Exception as exc:
        raise ModelError(f"{path}: cannot load its external weights ({exc})") from None
    return onnx.numpy_helper.to_array(one)


# Element types stored packed in raw_data (bits per element); their int32_data holds one byte per entry.
_PACKED_BITS = {getattr(onnx.TensorProto, name): bits for name, bits in (
    ("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2), ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
    if hasattr(onnx.TensorProto, name)}
_INT64_MAX = 2**63 - 1


def check_tensors(model: onnx.ModelProto, folder: str | os.PathLike | None = None,
                  name: str | os.PathLike = "model") -> None:
    """Raise ModelError, naming the tensor, for a malformed tensor anywhere in ``model``
    (initializers, Constant values and other tensor attributes, in subgraphs too): a negative dim,
    dims whose byte count overflows int64, or data (``raw_data``, a typed field, or external data
    in ``folder``) that is shorter or longer than its dims say. External data is checked against
    its file (a regular file, offset and length inside it) without reading it; without ``folder``
    external tensors are not checked (a proto in memory has no folder to read them from).

    onnx and numpy do not check this: a short ``raw_data`` fails deep in a reshape, and a
    negative dim is taken as -1 (the tensor loads at the size its data has)."""
    for tensor, what in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            if folder is not None:
                _check_external(tensor, Path(folder), f"{name}: {what}")
        else:
            _check_inline(tensor, f"{name}: {what}")


def _all_tensors(graph: onnx.GraphProto, where: str = "") -> Iterator[tuple[onnx.TensorProto, str]]:
    """Every dense tensor of ``graph`` and its subgraphs, with how an error names it."""
    for tensor in graph.initializer:
        yield tensor, f"initializer {tensor.name}{where}"
    for node in graph.node:
        label = f"{node.op_type} {node.name or (node.output[0] if node.output else '')}".strip()
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t, f"tensor {attr.t.name or attr.name} of {label}{where}"
            for tensor in attr.tensors:
                yield tensor, f"tensor {tensor.name or attr.name} of {label}{where}"
            for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_tensors(body, f" (in the {attr.name} body of {label}{where})")


def _sizes(tensor: onnx.TensorProto, what: str) -> tuple[int, int | None]:
    """(elements, bytes of raw data) that the dims of ``tensor`` describe (bytes None for strings)."""
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelError(f"{what} has a negative dimension {dims}")
    count = math.prod(dims)
    if tensor.data_type == onnx.TensorProto.STRING:
        return count, None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        raise ModelError(f"{what} has an unknown element type {tensor.data_type}") from None
    bits = _PACKED_BITS.get(tensor.data_type)
    nbytes = (count * bits + 7) // 8 if bits else count * itemsize
    if nbytes > _INT64_MAX:
        raise ModelError(f"{what}: dims {dims} describe {count} elements, more than any tensor can hold "
                         "(their byte count overflows int64)")
    return count, nbytes


def _check_inline(tensor: onnx.TensorProto, what: str) -> None:
    count, nbytes = _sizes(tensor, what)
    if tensor.HasField("raw_data"):
        want, held, unit = nbytes, len(tensor.raw_data), "bytes"
    else:
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
        per_entry = {4: 2, 2: 4}.get(_PACKED_BITS.get(tensor.data_type, 0), 1)  # int4 and int2 share an entry
        want = 2 * count if tensor.data_type in _COMPLEX else -(-count // per_entry)
        held, unit = len(getattr(tensor, field)), f"{field} values"
    if held != want:
        raise ModelError(f"{what}: its dims {list(tensor.dims)} need {want} {unit}, but it holds {held} "
                         f"({'shorter' if held < want else 'longer'} than its dims say)")


_COMPLEX = (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128)


def _check_external(tensor: onnx.TensorProto, folder: Path, what: str) -> None:
    """The external data file is a regular file (a FIFO would block the read), and offset and length
    lie inside it and match the tensor's dims."""
    _, nbytes = _sizes(tensor, what)
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError:
        raise ModelError(f"{what}: external data offset/length are not integers "
                         f"({entries.get('offset')!r}, {entries.get('length')!r})") from None
    if not location:
        raise ModelError(f"{what}: external data without a location")
    if Path(location).is_absolute() or os.path.normpath(location).split(os.sep)[0] == os.pardir:
        # as onnx's own loader: a model may name files beside it or below, never elsewhere on the disk
        raise ModelError(f"{what}: its external data location {location} lies outside the model's folder")
    file = folder / location
    if not file.exists():
        raise ModelError(f"{what}: its external data file {location} does not exist beside the model")
    if not file.is_file():
        raise ModelError(f"{what}: its external data file {location} is not a regular file")
    size = file.stat().st_size
    if length is None:
        length = size - offset
    if offset < 0 or length < 0:
        raise ModelError(f"{what}: external data with a negative offset or length ({offset}, {length})")
    if offset + length > size:
        raise ModelError(f"{what}: external data at offset {offset}, length {length} runs past the end of "
                         f"{location} ({size} bytes)")
    if nbytes is not None and length != nbytes:
        raise ModelError(f"{what}: its dims {list(tensor.dims)} need {nbytes} bytes, but its external data in "
                         f"{location} holds {length} ({'shorter' if length < nbytes else 'longer'} than its dims say)")


def check_model_path(path: str | os.PathLike) -> Path:
    """Refuse a model path that does not exist or is a folder: a wrong path is a usage problem
    (exit 2); a file that is no model is a model problem (exit 1, read_model). "" is refused as
    such: pathlib would read it as ".", the current folder."""
    if os.fspath(path) == "":
        raise UsageError("model path is empty")
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, expected an .onnx file")
    return path


def upgrade(model: onnx.ModelProto, name: str | os.PathLike = "model") -> onnx.ModelProto:
    """Upgrade only what onnx.checker or onnxruntime need, keep the rest, and log what changed.

    An opset older than onnxruntime runs goes through onnx.version_converter to ``ORT_MIN_OPSET``.
    Initializers also listed as graph inputs (IR 3 requires it; old exporters did it anyway) stop
    being inputs: they are weights, and a pruned weight could not be fed at its old shape; IR 3
    becomes IR 4, the first version without that rule. Returns ``model`` itself when nothing
    changes, else an upgraded copy. What no upgrade fixes is refused (see ``refuse_unsupported``).
    """
    refuse_unsupported(model, name)
    notes = []
    opset = _default_opset(model)
    if opset is not None and opset < ORT_MIN_OPSET:
        try:
            model = version_converter.convert_version(model, ORT_MIN_OPSET)
            onnx.checker.check_model(model)
        except Exception as exc:
            raise ModelError(f"{name}: opset {opset} is older than onnxruntime runs ({ORT_MIN_OPSET}) and "
                             f"onnx.version_converter cannot upgrade it ({first_line(exc)})") from None
        notes.append(f"opset {opset} -> {ORT_MIN_OPSET} (onnxruntime runs opset {ORT_MIN_OPSET} and later)")
    weights = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in weights]
    if len(inputs) < len(model.graph.input):
        if not notes:
            model = _copy(model)
        if model.ir_version < 4:
            notes.append(f"IR version {model.ir_version} -> 4 (initializers need not be graph inputs)")
            model.ir_version = 4
        notes.append(f"{len(model.graph.input) - len(inputs)} initializers no longer listed as graph inputs")
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    if notes:
        log.warning("upgraded %s: %s", name, "; ".join(notes))
    return model


def refuse_unsupported(model: onnx.ModelProto, name: str | os.PathLike = "model") -> None:
    """Raise ModelError for an opset newer than onnx knows, an input with a 0-sized dimension, or a
    layer whose weight has a 0-sized dimension.

    A layer with no channels computes nothing; onnxruntime releases disagree on whether to run it
    (1.32 does, older ones refuse), so onnxprune refuses it itself, naming the weight, whatever the
    installed onnxruntime does. 0-sized initializers elsewhere (Resize's empty roi) are fine.
    """
    opset = _default_opset(model)
    if opset is not None and opset > onnx.defs.onnx_opset_version():
        raise ModelError(f"{name}: opset {opset} is newer than onnx {onnx.__version__} knows "
                         f"({onnx.defs.onnx_opset_version()}); update onnx and onnxruntime")
    weights = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in weights and any(d.HasField("dim_value") and d.dim_value == 0 for d in dims):
            shape = [d.dim_param or d.dim_value for d in dims]
            raise ModelError(f"{name}: input {value.name} has a 0-sized dimension {shape}; there is nothing to run")
    empty = {t.name: list(t.dims) for t in model.graph.initializer if 0 in t.dims}
    for node in model.graph.node:
        # a layer's inputs after the first are its weight and bias: 0-sized, it has no channels
        for weight in node.input[1:] if ops.spec(node.op_type, node.domain).layer else ():
            if weight in empty:
                raise ModelError(f"{name}: weight {weight} of {node.op_type} {node.name or node.output[0]} has a "
                                 f"0-sized dimension {empty[weight]}; a layer without channels is not supported")


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _has_parameters(node: gs.Node) -> bool:
    """Layers and normalisations: their constant inputs are learned parameters (weights, biases,
    norm scales and statistics), never infinite."""
    spec = ops.spec(node.op, node.domain)
    return spec.layer or bool(spec.learned)


def refuse_nonfinite(graph: gs.Graph) -> None:
    """Raise ModelError, naming the initializer, for NaN in any float constant or an infinity in a
    layer's parameters (Conv/Gemm/MatMul weight or bias, normalisation scale, bias and statistics).

    The dense model computes NaN from it, and pruning may remove exactly the bad channel, leaving a
    finite model that looks fine. Infinities elsewhere are legitimate (attention masks of -inf).
    One pass over each constant, one at a time: values not yet loaded stay lazy in the graph.
    """
    params = {id(t) for node in graph.nodes if _has_parameters(node) for t in node.inputs}
    users: dict[int, gs.Node] = {}
    for node in graph.nodes:
        for t in node.inputs:
            users.setdefault(id(t), node)
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant):
            continue
        raw = getattr(tensor, "_values", None)
        if isinstance(raw, gs.ir.tensor.LazyValues):  # read it without keeping a copy in the graph
            if raw.tensor.data_type not in _FLOAT_TYPES:
                continue
            values = onnx.numpy_helper.to_array(raw.tensor)
        else:
            values = np.asarray(tensor.values)
            if values.dtype.kind != "f":
                continue
        nan = bool(np.isnan(values).any())
        if nan or (id(tensor) in params and not np.isfinite(values).all()):
            node = users.get(id(tensor))
            where = f" ({node.op} {node.name})" if node is not None and node.name else ""
            raise ModelError(f"weight {tensor.name}{where} has {'NaN' if nan else 'infinite'} values: the model "
                             "computes NaN/Inf from it, and pruning could hide that by removing the bad channel "
                             "(fix the weights, or export the model again)")


def _default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def check_model(model: onnx.ModelProto, name: str | os.PathLike = "model") -> None:
    """Run onnx.checker. Over protobuf's 2 GiB the checker cannot take the model in memory, so it
    checks a copy saved with external data, by path (its documented way for large models)."""
    try:
        try:
            onnx.checker.check_model(model)
        except Exception as exc:  # ValueError, or protobuf's EncodeError "Failed to serialize proto"
            if "2GB" not in str(exc) and "serialize" not in str(exc):
                raise
            with tempfile.TemporaryDirectory(prefix="onnxprune-check-") as folder:
                path = Path(folder) / "model.onnx"
                save_model(model, path, external=True)
                onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ModelError(f"{name}: invalid ONNX model ({first_line(exc)})") from None


def to_graph(model: onnx.ModelProto, weights: dict[str, np.ndarray] | None = None) -> gs.Graph:
    """Import into graphsurgeon with constants folded, so weights are plain initializers.

    Folding turns ``Constant`` nodes (paddle2onnx) and constant subgraphs (a Transpose of a
    weight, ``Shape`` of a static dim) into values the analysis can read. ``weights`` (from
    ``read_split``) are the initializers' values of a ``model`` without them: the graph takes
    those arrays themselves.
    """
    graph = gs.import_onnx(model)
    if weights is not None:
        # an initializer that only an If/Loop/Scan body reads is among its subgraph's tensors only
        scopes = [graph, *graph.subgraphs(recursive=True)]
        for tensor in (t for scope in scopes for t in scope.tensors().values()):
            if isinstance(tensor, gs.Constant) and tensor.name in weights:
                tensor.values = weights[tensor.name]
    _constant_attrs_as_values(graph)
    try:
        graph.fold_constants(fold_shapes=True, error_ok=True, size_threshold=None)
    except Exception as exc:  # folding is an optimisation; the analysis copes without it
        log.warning("constant folding failed, continuing unfolded: %s", exc)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    for node in graph.nodes:
        if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
            # fold_constants leaves some Constant nodes; make them plain initializers.
            const = node.attrs["value"]
            out = node.outputs[0]
            out.to_constant(np.asarray(const.values))
            node.outputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph


# Constant nodes may give their value as a plain number or list; ONNX types them as below.
_CONSTANT_ATTRS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                   "value_ints": np.int64}


def _constant_attrs_as_values(graph: gs.Graph) -> None:
    """Give ``Constant(value_float=...)`` and friends an equivalent ``value`` tensor: graphsurgeon
    folds a plain Python float to float64, which would break the graph's types."""
    for node in graph.nodes:
        if node.op != "Constant":
            continue
        for attr, dtype in _CONSTANT_ATTRS.items():
            if attr in node.attrs:
                name = node.outputs[0].name
                node.attrs = {"value": gs.Constant(f"{name}_value", np.array(node.attrs[attr], dtype=dtype))}
                break


def to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph back to a ModelProto keeping the original's opset, IR version and metadata.

    The large weights are exported as stubs and then filled in one tensor at a time: exporting
    them whole goes through onnx.helper.make_model, which copies the finished graph once more
    (twice the pruned weights at once, on top of the graph's own arrays)."""
    model, arrays = light_model(graph)
    for tensor in model.graph.initializer:
        values = arrays.pop(tensor.name, None)
        if values is not None:
            tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
    model.ir_version = max(like.ir_version, 4)  # initializers are not listed as inputs, which IR 3 requires
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(like, field))
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    del model.functions[:]
    model.functions.extend(like.functions)
    return model


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, external: bool | None = None) -> None:
    """Write atomically (see ``outputs.write_atomic``): the data file and then the .onnx are renamed
    into place from a private folder beside the target, so a crash never leaves a partial model.

    ``external`` None keeps weights inline unless the model is too big for one protobuf; with
    external data the weights go to ``<name>.data`` beside the model. ``model`` is not changed.
    """
    write_atomic(path, lambda tmp: write_model(model, tmp, external=external), model=True)


def write_model(model: onnx.ModelProto, path: str | os.PathLike, *, external: bool | None = None) -> None:
    """Write ``model`` to ``path`` as is (not atomically: callers write into a staging folder), its
    external weights, if any, to ``<name>.data`` beside it. ``external`` as in ``save_model``."""
    path = Path(path)
    if external is None:
        external = model.ByteSize() >= PROTO_LIMIT
    if not external:
        onnx.save_model(model, str(path))
        return
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # converting to external data rewrites tensors in place
    # No location here: onnx checks a given location against the *current* folder.
    external_data_helper.convert_model_to_external_data(copy, all_tensors_to_one_file=True, size_threshold=1024)
    for tensor in external_data_helper._get_all_tensors(copy):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = f"{path.name}.data"
    onnx.save_model(copy, str(path))


def model_file_bytes(path: str | os.PathLike) -> int:
    """Bytes of a model file plus every external data file its weights name (once each), so the
    sizes of models with and without external data, or with data files of any name, compare."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    files = {entry.value for tensor in external_data_helper._get_all_tensors(model)
             if tensor.data_location == onnx.TensorProto.EXTERNAL
             for entry in tensor.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files if (path.parent / f).is_file())


def uses_external_data(model: onnx.ModelProto) -> bool:
    """Whether the file this model came from keeps (some) weights outside the .onnx file."""
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def unshare_constants(graph: gs.Graph) -> dict[str, str]:
    """Give every use of a shared initializer its own Constant (same array, no copy).

    Exporters de-duplicate equal tensors (all-zero biases, LayerNorm weights), which would
    couple unrelated layers into one channel group. Returns {copy name: original name} so the
    rewrite can merge untouched copies back into one initializer.
    """
    copies: dict[str, str] = {}
    used: set[str] = set()
    names = set(graph.tensors())
    for node in graph.nodes:
        for port, tensor in enumerate(node.inputs):
            if not isinstance(tensor, gs.Constant):
                continue
            if tensor.name not in used:
                used.add(tensor.name)
                continue
            i = 1
            while f"{tensor.name}__{i}" in names:
                i += 1
            name = f"{tensor.name}__{i}"
            names.add(name)
            node.inputs[port] = gs.Constant(name, getattr(tensor, "_values", tensor.values),
                                            data_location=tensor.data_location)
            copies[name] = tensor.name
    return copies


def reshare_constants(graph: gs.Graph, shared: dict[str, str], changed: set[str]) -> None:
    """Point uses of unchanged initializer copies back at the one original (see unshare_constants)."""
    tensors = graph.tensors()
    for copy, original in shared.items():
        if copy not in tensors or original not in tensors:
            continue  # a fix rule replaced this constant
        if copy in changed or original in changed:
            continue
        for node in list(tensors[copy].outputs):
            for port, t in enumerate(node.inputs):
                if t.name == copy:
                    node.inputs[port] = tensors[original]
