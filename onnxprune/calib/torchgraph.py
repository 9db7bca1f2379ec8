"""Run an ONNX graph in PyTorch, with chosen float initializers as trainable parameters.

``TorchGraph(model, learnable)`` is a ``torch.nn.Module`` that interprets the graph node by node
with torch operators (autograd flows through every op), so ``--distill`` can fine-tune the pruned
model's weights and write them back into the ONNX initializers *by name*
(``TorchGraph.named_weights``). It reads any exporter's graph as it is: the legacy exporter's
``Constant`` nodes, the dynamo exporter's opset 18+ forms (axes as inputs, ``Shape`` with
start/end), shapes computed at run time (``Shape`` -> ``Gather`` -> ``Concat`` -> ``Reshape``),
dynamic batch. float16/bfloat16 tensors are computed in float32 (``Cast`` to them too);
``named_weights`` hands values back in float32 and the caller casts to the initializer's type.

Why not onnx2torch (PyPI): measured on this project's test models (README, "Recovery"), its
1.5.15 release converts no dynamo export (no converter for ReduceMean-18, Shape-19) and no
unfolded legacy export (a Conv bias from a ``Constant`` node is a KeyError); and its modules
store weights under module paths, transposed for some ops, so writing them back by initializer
name would need a second mapping. An interpreter keeps every initializer as itself.

This module is the interpreter loop only: each op's torch kernel, and what it cannot run, live
with everything else onnxprune knows about the op, in ``onnxprune.ops`` (``OpSpec.torch``,
``OpSpec.torch_refuses``).

``unsupported(model)`` lists the ops (with the reason) this interpreter cannot run, so callers
refuse a model before any work.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from .. import ops
from ..ops.kernels import TORCH_DTYPES, to_torch

try:
    import torch
except ImportError:  # pragma: no cover - the caller checks torch first (distill.require_torch)
    torch = None  # type: ignore[assignment]


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH or a.type == onnx.AttributeProto.GRAPHS:
            out[a.name] = None
        elif a.type == onnx.AttributeProto.TENSOR:
            out[a.name] = numpy_helper.to_array(a.t)
        else:
            value = onnx.helper.get_attribute_value(a)
            out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _constant_value(a: dict) -> np.ndarray:
    if "value" in a:
        return a["value"]
    if "value_float" in a:
        return np.array(a["value_float"], np.float32)
    if "value_floats" in a:
        return np.array(a["value_floats"], np.float32)
    if "value_int" in a:
        return np.array(a["value_int"], np.int64)
    if "value_ints" in a:
        return np.array(a["value_ints"], np.int64)
    raise NotImplementedError("Constant without a numeric value")


# ---------------------------------------------------------------------------------------------
# what cannot run


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _why_not(node: onnx.NodeProto, a: dict) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return f"{node.domain}.{node.op_type}"
    if node.op_type == "Constant":
        return None if any(k in a for k in ("value", "value_float", "value_floats", "value_int", "value_ints")) \
            else "Constant (non-numeric)"
    spec = ops.spec(node.op_type, node.domain)
    if spec.torch is None or any(v is None and k in ("then_branch", "else_branch", "body") for k, v in a.items()):
        return node.op_type
    return spec.torch_refuses(a, list(node.output)) if spec.torch_refuses is not None else None


def unsupported(model: onnx.ModelProto) -> list[str]:
    """The ops of ``model`` (sorted, each once) that ``TorchGraph`` cannot run; empty when it runs all."""
    bad = set()
    for node in model.graph.node:
        why = _why_not(node, _attrs(node))
        if why:
            bad.add(why)
    for tensor in model.graph.initializer:
        if tensor.data_type not in TORCH_DTYPES:
            bad.add(f"initializer type {onnx.TensorProto.DataType.Name(tensor.data_type)}")
    return sorted(bad)


# ---------------------------------------------------------------------------------------------
# the module


class TorchGraph(torch.nn.Module if torch else object):
    """An ONNX graph as a torch module. ``learnable``: names of float initializers to hold as
    parameters (the rest are buffers, never trained). ``forward(feed)`` takes {input name: tensor}
    and returns the graph outputs in order."""

    def __init__(self, model: onnx.ModelProto, learnable: Iterable[str] = ()) -> None:
        super().__init__()
        self.opset = _default_opset(model)
        learnable = set(learnable)
        self._names: dict[str, str] = {}  # initializer name -> attribute name
        self.params = torch.nn.ParameterDict()
        for i, init in enumerate(model.graph.initializer):
            value = to_torch(numpy_helper.to_array(init))
            key = f"t{i}"
            self._names[init.name] = key
            if init.name in learnable and value.is_floating_point():
                self.params[key] = torch.nn.Parameter(value)
            else:
                self.register_buffer(key, value, persistent=False)
        self._nodes = []
        for j, node in enumerate(model.graph.node):
            a = _attrs(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                key = f"c{j}"
                self.register_buffer(key, to_torch(_constant_value(a)), persistent=False)
                self._names[node.output[0]] = key
                continue
            why = _why_not(node, a)
            if why:
                raise NotImplementedError(why)
            self._nodes.append((ops.spec(node.op_type).torch, list(node.input), list(node.output), a,
                                ops.KernelContext(self.opset, len(node.output))))
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = [v.name for v in model.graph.input if v.name not in initializers]
        self.outputs = [v.name for v in model.graph.output]
        self._last_use = self._lifetimes()

    def _lifetimes(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, (_, ins, _, _, _) in enumerate(self._nodes):
            for name in ins:
                last[name] = i
        for name in self.outputs:
            last[name] = len(self._nodes)
        return last

    def _value(self, name: str):
        key = self._names[name]
        return self.params[key] if key in self.params else getattr(self, key)

    def named_weights(self) -> dict[str, torch.nn.Parameter]:
        """The trainable parameters by initializer name."""
        return {name: self.params[key] for name, key in self._names.items() if key in self.params}

    def forward(self, feed: dict[str, torch.Tensor], taps: tuple[str, ...] = ()) -> list[torch.Tensor]:
        """The graph outputs, then the values of the intermediate tensors ``taps``."""
        env: dict[str, torch.Tensor] = dict(feed)
        tapped: dict[str, torch.Tensor] = {}
        keep = set(taps)
        for i, (fn, ins, outs, a, ctx) in enumerate(self._nodes):
            args = []
            for name in ins:
                if not name:
                    args.append(None)
                elif name in env:
                    args.append(env[name])
                else:
                    args.append(self._value(name))
            results = fn(args, a, ctx)
            for name, value in zip(outs, results, strict=False):
                if name:
                    env[name] = value
                    if name in keep:
                        tapped[name] = value
            for name in ins:
                if name in env and self._last_use.get(name) == i and name not in feed:
                    del env[name]
        return [env[name] if name in env else self._value(name) for name in self.outputs] + [tapped[t] for t in taps]
