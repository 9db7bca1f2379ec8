"""Load stage: read an ONNX file (or proto), check it, fold constants, import into graphsurgeon."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper

from .errors import ModelError

log = logging.getLogger(__name__)

# Protobuf cannot serialise a single message over 2 GiB; above this we keep weights external.
PROTO_LIMIT = 2**31 - 1


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, bool]:
    """Read and check an ONNX file, weights included; raise ModelError with one clear line.

    Returns the model and whether the file kept its weights as external data (so the pruned
    model can keep the same layout).
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{path}: not an ONNX model (no graph inside; truncated or another format?)")
    external = uses_external_data(model)
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise ModelError(f"{path}: cannot load its external weights ({exc})") from None
    check_model(model, path)
    return model, external


def check_model(model: onnx.ModelProto, name: str | os.PathLike = "model") -> None:
    """Run onnx.checker; large models are checked without their weights (the checker's own limit)."""
    try:
        try:
            onnx.checker.check_model(model)
        except ValueError as exc:  # over protobuf's 2 GiB: check the graph without its weights
            if "2GB" not in str(exc) and model.ByteSize() < PROTO_LIMIT:
                raise
            onnx.checker.check_model(strip_weights(model))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{name}: invalid ONNX model ({first})") from None


def strip_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model whose initializers are empty external references (for checks only)."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for init in light.graph.initializer:
        init.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            init.ClearField(field)
        init.data_location = onnx.TensorProto.EXTERNAL
        entry = init.external_data.add()
        entry.key, entry.value = "location", "stripped"
    return light


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import into graphsurgeon with constants folded, so weights are plain initializers.

    Folding turns ``Constant`` nodes (paddle2onnx) and constant subgraphs (a Transpose of a
    weight, ``Shape`` of a static dim) into values the analysis can read.
    """
    graph = gs.import_onnx(model)
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


def to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph back to a ModelProto keeping the original's opset, IR version and metadata."""
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = like.ir_version
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
    """Write atomically: into a private folder beside the target, then renamed into place (the
    data file first, the .onnx last), so a crash never leaves a partial model.

    ``external`` None keeps weights inline unless the model is too big for one protobuf; with
    external data the weights go to ``<name>.data`` beside the model. ``model`` is not changed.
    """
    path = Path(path)
    if external is None:
        external = model.ByteSize() >= PROTO_LIMIT
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmp_dir / path.name
        if external:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # converting to external data rewrites tensors in place
            # No location here: onnx checks a given location against the *current* folder.
            external_data_helper.convert_model_to_external_data(copy, all_tensors_to_one_file=True,
                                                                size_threshold=1024)
            data_name = f"{path.name}.data"
            for tensor in external_data_helper._get_all_tensors(copy):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = data_name
            onnx.save_model(copy, str(tmp))
            if (tmp_dir / data_name).exists():  # absent when every weight is tiny
                _publish(tmp_dir / data_name, path.with_name(data_name))
        else:
            onnx.save_model(model, str(tmp))
        _publish(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _publish(src: Path, dst: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(src, 0o666 & ~umask)
    os.replace(src, dst)


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
