"""The types op rules are written against: ``Slot``, ``SlotGraph`` and ``RewriteContext``.

A *slot* is one static (tensor, axis) that carries channels. Tie rules (``onnxprune.ops``) write into
a ``SlotGraph`` during the analysis (``analyze.py``) and fix rules read a ``RewriteContext``
during the rewrite (``rewrite.py``). This module imports neither of them, so rules and the
stages that run them depend on it, not on each other.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.capture import Capture
from ..graph.scopes import subgraph_reads
from ..ops.quantize import quantized_source


@dataclass(frozen=True)
class Slot:
    """One axis of one tensor that carries channels."""

    tensor: str
    axis: int


class SlotGraph:
    """The tie graph the op rules write into; one per analysis pass."""

    def __init__(self, graph: gs.Graph, capture: Capture, factor_choice: dict[str, int], probe: bool = False):
        self.graph = graph
        self.capture = capture
        self.factor_choice = factor_choice
        self.offsets: dict[Slot, int] = {}
        self.sizes: dict[Slot, int] = {}
        self.total = 0
        self.edges_a: list[np.ndarray] = []
        self.edges_b: list[np.ndarray] = []
        self.claims: dict[Slot, set[int]] = defaultdict(set)
        self.frozen_elems: list[tuple[np.ndarray, str]] = []
        self.weights: set[Slot] = set()
        self.factor_slots: dict[str, list[Slot]] = defaultdict(list)
        self.apart: dict[str, np.ndarray] = {}  # node -> elements its choice expects in different atoms
        self.current: gs.Node | None = None
        self.probe = probe  # splits only claim their factors (see analyze_graph)
        self.frozen_values: set[str] = set()  # computed scalars the rewrite replaces by constants
        # tensors an If/Loop/Scan body reads (name -> op): not node inputs here, never to change
        self.body_reads: dict[str, str] = subgraph_reads(graph)

    # --- what rules read -------------------------------------------------------------------
    def shape(self, tensor: gs.Tensor) -> tuple[int, ...] | None:
        """The real shape at batch 1 (None when the tensor was never seen)."""
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.shape)
        return self.capture.shapes.get(tensor.name)

    def static(self, tensor: gs.Tensor, axis: int) -> bool:
        return isinstance(tensor, gs.Constant) or self.capture.is_static(tensor.name, axis)

    @staticmethod
    def const(tensor: gs.Tensor) -> np.ndarray | None:
        """The value of a constant input, or None when it is computed at run time."""
        return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None

    def fixed(self, tensor: gs.Tensor) -> np.ndarray | None:
        """See Capture.fixed."""
        return self.capture.fixed(tensor)

    # --- what rules write ------------------------------------------------------------------
    def _slot(self, tensor: gs.Tensor, axis: int) -> Slot | None:
        shape = self.shape(tensor)
        # Dynamic axes are slots too: at batch 1 a merged (batch x heads) axis has the heads'
        # size, which keeps heads coupled through reshape round trips; Reshape targets are
        # rewritten with 0/-1 for them (ops.shape.synth_shape).
        if shape is None or not tensor.name or axis >= len(shape):
            return None
        slot = Slot(tensor.name, axis)
        if slot not in self.offsets:
            self.offsets[slot] = self.total
            self.sizes[slot] = shape[axis]
            self.total += shape[axis]
        return slot

    def claim(self, tensor: gs.Tensor, axis: int) -> Slot | None:
        """Say the current op copes with this axis shrinking, without tying it to anything."""
        slot = self._slot(tensor, axis)
        if slot is not None:
            self.claims[slot].add(id(self.current))
        return slot

    def tie(self, a: gs.Tensor, axis_a: int, b: gs.Tensor, axis_b: int,
            idx_a: np.ndarray | None = None, idx_b: np.ndarray | None = None) -> bool:
        """Tie element idx_a[i] of (a, axis_a) to idx_b[i] of (b, axis_b); identity by default."""
        sa, sb = self.claim(a, axis_a), self.claim(b, axis_b)
        if sa is None or sb is None:
            return False
        if idx_a is None and idx_b is None and self.sizes[sa] != self.sizes[sb]:
            self.freeze(a, axis_a, f"{self.current.op} (size mismatch)")
            self.freeze(b, axis_b, f"{self.current.op} (size mismatch)")
            return False
        idx_a = np.arange(self.sizes[sa]) if idx_a is None else np.asarray(idx_a, dtype=np.int64)
        idx_b = np.arange(self.sizes[sb]) if idx_b is None else np.asarray(idx_b, dtype=np.int64)
        self.edges_a.append(idx_a + self.offsets[sa])
        self.edges_b.append(idx_b + self.offsets[sb])
        return True

    def weight(self, tensor: gs.Tensor, axis: int) -> None:
        """Mark a parameter axis whose magnitude scores channels (Conv/Gemm/MatMul/norm weights);
        a weight computed by DequantizeLinear marks its quantized constant."""
        tensor = quantized_source(tensor) or tensor
        if isinstance(tensor, gs.Constant):
            slot = self._slot(tensor, axis)
            if slot is not None:
                self.weights.add(slot)

    def freeze(self, tensor: gs.Tensor, axis: int, reason: str, idx: np.ndarray | None = None) -> None:
        """Forbid removing these elements (all of the axis by default)."""
        slot = self._slot(tensor, axis)
        if slot is None:
            return
        idx = np.arange(self.sizes[slot]) if idx is None else np.asarray(idx, dtype=np.int64)
        self.frozen_elems.append((idx + self.offsets[slot], reason))

    def _key(self) -> str:
        """The current node's key in ``factor_choice`` (its first output: node names may be empty)."""
        return self.current.outputs[0].name

    def choice(self, options: int) -> int:
        """Which of ``options`` ways to tie the current node (the factor a Reshape keeps, the rule
        of a grouped Conv) this pass tries (see analyze_graph)."""
        return min(self.factor_choice.get(self._key(), 0), options - 1)

    def factor_slot(self, slot_tensor: gs.Tensor, axis: int) -> None:
        """Record a factor a split Reshape could tie to (probe pass), in factor order."""
        self.factor_slots[self._key()].append(Slot(slot_tensor.name, axis))

    def keep_apart(self, tensor: gs.Tensor, axis: int, idx: np.ndarray) -> None:
        """Say the current choice is only worth it while these elements end up in different
        atoms; where the rest of the graph ties them all into one, analyze_graph moves the node
        to its next choice (so only a choice that has a next one may say this)."""
        slot = self._slot(tensor, axis)
        if slot is not None:
            self.apart[self._key()] = np.asarray(idx, dtype=np.int64) + self.offsets[slot]


class RewriteContext:
    """What fix rules may ask: old/new shapes and the kept indices of a tensor's axis."""

    def __init__(self, capture: Capture, kept: dict[Slot, np.ndarray]):
        self.capture = capture
        self._kept = kept
        self._changed = {s.tensor for s in kept}

    def old_shape(self, t: gs.Tensor) -> tuple[int, ...]:
        return tuple(t.shape) if isinstance(t, gs.Constant) else self.capture.shapes[t.name]

    def old_shape2(self, t: gs.Tensor) -> tuple[int, ...]:
        return self.capture.shapes2.get(t.name, self.old_shape(t))

    def static(self, t: gs.Tensor, axis: int) -> bool:
        return self.capture.is_static(t.name, axis)

    def fixed(self, tensor: gs.Tensor) -> np.ndarray | None:
        """See Capture.fixed."""
        return self.capture.fixed(tensor)

    def kept(self, t: gs.Tensor, axis: int) -> np.ndarray | None:
        return self._kept.get(Slot(t.name, axis))

    def changed(self, t: gs.Tensor) -> bool:
        return t.name in self._changed

    def new_shape(self, t: gs.Tensor) -> list[int]:
        shape = list(self.old_shape(t))
        for axis in range(len(shape)):
            kept = self.kept(t, axis)
            if kept is not None:
                shape[axis] = len(kept)
        return shape


__all__ = ["RewriteContext", "Slot", "SlotGraph"]
