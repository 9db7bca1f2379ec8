"""FP16 by conversion: an ONNX model whose float32 tensors become float16, its inputs and outputs
kept float32 (a Cast at each boundary).

TensorRT 11 builds only strongly typed networks: ``BuilderFlag.FP16`` is gone and precision comes
from the model's own tensor types, so an FP16 engine needs a float16 model. The conversion is
onnxconverter-common's ``convert_float_to_float16(model, keep_io_types=True)``; it knows which ops
must stay float32 (Resize scales, Range, TopK, ...: its DEFAULT_OP_BLOCK_LIST, run in float32
between Casts). One fix on top: it turns every float32 value to float16 but leaves the ``to``
attribute of ``Cast(to=FLOAT)`` nodes alone, so a graph that casts a shape to float (the legacy
exporter's ViT computes its attention scale so) ends with a Cast whose declared output type
contradicts its ``to``, which onnx's checker and onnxruntime refuse. Those Casts are kept float32
(the converter's node block list), followed by a Cast to float16.

onnxconverter-common is imported only here, only when used (the ``gpu`` extra installs it).
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Iterator

import onnx
from onnx import TensorProto

from ..errors import ModelError, UsageError, first_line

log = logging.getLogger(__name__)

# float16's largest finite value: larger magnitudes are clamped to it (the converter's default,
# 1e4, would also clamp values float16 can hold). Magnitudes below 1e-7 become +-1e-7 (its default,
# about float16's smallest subnormal); zeros stay zeros, so 2:4 patterns survive.
FP16_MAX = 65504.0


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 inputs and outputs; ``model`` is not changed. A
    model that already holds float16 tensors is returned as it is (its own types decide)."""
    try:
        float16 = importlib.import_module("onnxconverter_common.float16")
    except ImportError as exc:
        raise UsageError("FP16 on TensorRT 11 and later converts the model to float16 with onnxconverter-common "
                         f"(pip install onnxconverter-common, or onnxprune[gpu]): {exc}") from None
    work = onnx.ModelProto()
    work.CopyFrom(model)
    # the converter's block list is by node name: every node gets a name of its own (an empty or
    # shared one would leave a Cast out of the list, or put every node of that name in it)
    named, taken, seen = 0, {node.name for node in _nodes(work.graph)}, set()
    for index, node in enumerate(_nodes(work.graph)):
        if not node.name or node.name in seen:
            name = f"onnxprune_fp16_node_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
        seen.add(node.name)
    keep = sorted({node.name for node in _nodes(work.graph)
                   if node.op_type == "Cast" and _cast_to(node) == TensorProto.FLOAT})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            converted = float16.convert_float_to_float16(work, keep_io_types=True, node_block_list=keep,
                                                         max_finite_val=FP16_MAX)
        except ValueError as exc:
            if "already converted to float16" in str(exc):
                log.info("the model already holds float16 tensors: built with its own types, not converted again")
                return model
            raise ModelError(f"cannot convert the model to float16: {first_line(exc)}") from None
        except Exception as exc:  # shape inference and protobuf raise their own types (a model over 2 GiB)
            raise ModelError(f"cannot convert the model to float16: {first_line(exc)}") from None
    clipped = sum("will be truncated to" in str(w.message) for w in caught)
    log.debug("float16 conversion: %d Cast(to=FLOAT) kept float32, %d values clamped into float16's range, "
              "%d unnamed or same-named nodes named", len(keep), clipped, named)
    return converted


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((attr.i for attr in node.attribute if attr.name == "to"), None)



__all__ = ["to_float16"]
