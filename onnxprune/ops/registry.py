"""What onnxprune knows about one ONNX op type: an ``OpSpec``, registered with ``register`` and
looked up with ``spec``.

Every consumer asks here instead of keeping its own table of op names: the channel analysis
(``ties``, ``fix``), the cost model (``flops``), the calibration solvers (``weight_axes``,
``as_matrix``...), the PyTorch interpreter (``torch``), distillation (``not_trainable``), TensorRT
2:4 sparsity (``sparse24``) and the latency model (``probe``). An op that is not registered, or one
of another domain, gets ``UNKNOWN``: no rules at all, so the analysis freezes every channel it
touches, nothing counts its FLOPs and the interpreter refuses it. That is the rule "an op without a
rule never breaks the run", in one place.

This package depends on nothing in onnxprune but ``errors``. The objects the rules receive (the
analysis' ``SlotGraph``, the rewrite's ``RewriteContext``) are passed in by ``structure``, so they are
typed loosely here (``Any``) and documented where each rule kind is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

# structure.slots.SlotGraph: tie, claim, weight, freeze, shape, const, fixed... (ops/ may not import it)
SlotGraph = Any
# structure.slots.RewriteContext: old_shape, new_shape, kept, changed, fixed
RewriteContext = Any
# tensor -> its shape at batch 1 (None when unknown)
Shapes = Callable[[gs.Tensor], "tuple[int, ...] | None"]

TieRule = Callable[[gs.Node, SlotGraph], None]
FixRule = Callable[[gs.Node, RewriteContext], None]
# (FLOPs at batch 1, the (tensor name, axis) slots they scale with)
FlopsRule = Callable[[gs.Node, Shapes], "tuple[float, list[tuple[str, int]]]"]
# (inputs as torch tensors, None for a missing optional one; attributes; KernelContext) -> outputs
TorchKernel = Callable[[list, dict, "KernelContext"], list]
# (attributes, output names, "" for an unused optional one) -> why the interpreter cannot run
# this node, or None
TorchRefusal = Callable[[dict, list], "str | None"]
# node -> (reduction length K, why not eligible or "", the weight as [outputs, columns] or None)
Sparse24Check = Callable[[gs.Node], "tuple[int, str, np.ndarray | None]"]
# (node, its attributes, the probe's shape of each input port) -> the probe node's attributes
ProbeRule = Callable[[gs.Node, dict, list], dict]


@dataclass(frozen=True)
class KernelContext:
    """What a torch kernel may need besides its inputs and attributes."""

    opset: int
    outputs: int


@dataclass
class OpSpec:
    """Everything onnxprune knows about one op type. A field left at its default means "nothing
    known", which is always safe: no ties freeze, no FLOPs count nothing, no kernel refuses."""

    op: str
    # channel analysis: which channel elements of inputs and outputs go together (structure.analyze)
    ties: TieRule | None = None
    # after the tensors shrink, update what the node itself stores about sizes (structure.rewrite)
    fix: FixRule | None = None
    # whether the fix rule writes every non-data input afresh as a constant (a Shape-derived size
    # flowing only into such inputs may change)
    rewrites_inputs: Callable[[gs.Node, SlotGraph], bool] | None = None
    # ties channel c of its input to channel c of its output only (never several channels into one
    # unit): select's "why is the target unreachable" message leaves such ops out
    one_to_one: bool = False
    flops: FlopsRule | None = None
    # a layer: a weight at input 1 (or either side of a MatMul), (output axis, input axis) of it
    layer: bool = False
    weight_axes: Callable[[gs.Node], tuple[int, int]] | None = None
    # Conv's ``group``; 1 for ops without groups
    group: Callable[[gs.Node], int] | None = None
    # inputs, beyond a layer's, that hold learned parameters (norm scale and bias): distillation trains
    # them even when a single value, and load refuses infinities in them
    learned: tuple[int, ...] = ()
    # inputs that are constants but no weights (shapes, indices, statistics, bounds, exponents)
    not_trainable: frozenset[int] = frozenset()
    # calibration solvers: whether a node is a layer they solve as a matrix Y = X @ W.T, how its
    # weight reads as that matrix and back, and whether its input is unfolded (im2col) first
    solvable: Callable[[gs.Node], bool] | None = None
    as_matrix: Callable[[gs.Node, np.ndarray], np.ndarray] | None = None
    from_matrix: Callable[[gs.Node, np.ndarray, tuple], np.ndarray] | None = None
    unfolds: bool = False
    torch: TorchKernel | None = None
    torch_refuses: TorchRefusal | None = None
    sparse24: Sparse24Check | None = None
    # latency probe: the probe node's attributes at the probe's (shrunk) input shapes
    probe: ProbeRule | None = None
    # inputs a latency probe feeds as weights (constants) even when the graph computes them
    probe_weights: tuple[int, ...] = ()


UNKNOWN = OpSpec(op="")
_SPECS: dict[str, OpSpec] = {}
DEFAULT_DOMAINS = (None, "", "ai.onnx")


def spec(op: str, domain: str | None = "") -> OpSpec:
    """The spec of an op type of the default ONNX domain; ``UNKNOWN`` for any other op."""
    if domain not in DEFAULT_DOMAINS:
        return UNKNOWN
    return _SPECS.get(op, UNKNOWN)


def known() -> dict[str, OpSpec]:
    """Every registered op type and its spec."""
    return dict(_SPECS)


class Registration:
    """The specs of some op types, being filled in. Each method is a decorator that sets one field of
    every one of them and returns the function unchanged."""

    def __init__(self, ops: tuple[str, ...]) -> None:
        self.ops = ops

    def set(self, **fields: Any) -> Registration:
        for op in self.ops:
            _SPECS[op] = replace(_SPECS.get(op, OpSpec(op=op)), op=op, **fields)
        return self

    def _field(self, name: str) -> Callable[[Callable], Callable]:
        def decorate(fn: Callable) -> Callable:
            self.set(**{name: fn})
            return fn
        return decorate

    def ties(self, fn: TieRule) -> TieRule:
        return self._field("ties")(fn)

    def fix(self, fn: FixRule) -> FixRule:
        return self._field("fix")(fn)

    def flops(self, fn: FlopsRule) -> FlopsRule:
        return self._field("flops")(fn)

    def torch(self, fn: TorchKernel) -> TorchKernel:
        return self._field("torch")(fn)

    def torch_refuses(self, fn: TorchRefusal) -> TorchRefusal:
        return self._field("torch_refuses")(fn)

    def sparse24(self, fn: Sparse24Check) -> Sparse24Check:
        return self._field("sparse24")(fn)

    def probe(self, fn: ProbeRule) -> ProbeRule:
        return self._field("probe")(fn)


def register(*ops: str, **fields: Any) -> Registration:
    """Register (or extend) the specs of these op types with ``fields``; use the returned object's
    methods as decorators for the rules: ``@register("Conv").ties``."""
    if not ops:
        raise ValueError("register() needs at least one op type")
    unknown = set(fields) - {f for f in OpSpec.__dataclass_fields__ if f != "op"}
    if unknown:
        raise TypeError(f"OpSpec has no field {', '.join(sorted(unknown))}")
    return Registration(ops).set(**fields)


def unregister(*ops: str) -> None:
    """Forget these op types (they become ``UNKNOWN`` again)."""
    for op in ops:
        _SPECS.pop(op, None)
