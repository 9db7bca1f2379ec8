"""Analyse stage: find coupled-channel groups in an ONNX graph.

Every static (tensor, axis) that an op rule touches becomes a *slot*; each of its indices is an
element. Op rules (``onnxprune.ops``, one module per op family) tie elements that must be removed
together, writing into a ``SlotGraph`` (``slots.py``, the types rules are written against).
Connected components of the tie graph are *atoms*: the smallest sets of channels that can be removed at
once. An atom is frozen when any of its elements sits on an axis some touching op has no rule
for (or a graph input/output). Atoms touching the same slots the same way form a
``CoupledGroup``; groups of the same structure form an isomorphic class.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .. import ops
from ..graph.capture import Capture
from ..ops.quantize import dequantized_weight
from .slots import Slot, SlotGraph

log = logging.getLogger(__name__)


@dataclass
class CoupledGroup:
    """Channels that are removed together: ``members[slot][i]`` are atom i's indices in slot."""

    members: dict[Slot, np.ndarray]
    structure: tuple
    weights: list[Slot]
    iso_class: int = -1

    @property
    def size(self) -> int:
        """Number of atoms (removable units) in the group."""
        return len(next(iter(self.members.values())))

    @property
    def width(self) -> int:
        """Channels per atom in the first weight slot (1 for a plain channel, head_dim for a head)."""
        return self.members[self.weights[0]].shape[1] if self.weights else 1


@dataclass
class FrozenGroup:
    """Channels that carry weights but cannot be removed, and the ops that froze them."""

    slots: list[Slot]
    channels: int
    reasons: list[str]


@dataclass
class Analysis:
    """Everything the later stages need about the graph's channel structure."""

    graph: gs.Graph
    capture: Capture
    groups: list[CoupledGroup]
    frozen: list[FrozenGroup]
    slot_sizes: dict[Slot, int]
    weight_slots: set[Slot] = field(default_factory=set)
    factor_choice: dict[str, int] = field(default_factory=dict)
    no_rule_ops: dict[str, int] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)  # unshared initializer copy -> original
    frozen_values: set[str] = field(default_factory=set)  # computed scalars to keep at dense values


def _freeze_unclaimed(sg: SlotGraph, graph: gs.Graph) -> None:
    """Freeze every slot axis that a touching op (or the graph boundary) did not claim."""
    producers: dict[str, list[gs.Node]] = defaultdict(list)
    consumers: dict[str, list[gs.Node]] = defaultdict(list)
    for node in graph.nodes:
        for t in node.inputs:
            if t.name:
                consumers[t.name].append(node)
        for t in node.outputs:
            producers[t.name].append(node)
    boundary = {t.name: "graph input" for t in graph.inputs}
    boundary.update({t.name: "graph output" for t in graph.outputs})
    for slot in list(sg.offsets):
        touching = producers[slot.tensor] + consumers[slot.tensor]
        reasons = [n.op for n in touching if id(n) not in sg.claims[slot]]
        if slot.tensor in boundary:
            reasons.append(boundary[slot.tensor])
        if reasons:
            start = sg.offsets[slot]
            sg.frozen_elems.append((np.arange(start, start + sg.sizes[slot]), reasons[0]))


def _freeze_body_reads(sg: SlotGraph, graph: gs.Graph) -> None:
    """Freeze every axis of the tensors an If/Loop/Scan body reads from this graph: no rule sees
    inside the body, which was written for their sizes (and a weight it reads must keep its values)."""
    tensors = graph.tensors() if sg.body_reads else {}
    for name, op in sg.body_reads.items():
        tensor = tensors[name]
        for axis in range(len(sg.shape(tensor) or ())):
            sg.freeze(tensor, axis, f"read inside {op} body")


def _components(sg: SlotGraph) -> tuple[int, np.ndarray]:
    if sg.edges_a:
        a = np.concatenate(sg.edges_a)
        b = np.concatenate(sg.edges_b)
    else:
        a = b = np.zeros(0, dtype=np.int64)
    adj = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(sg.total, sg.total))
    return connected_components(adj, directed=False)


def run_rules(graph: gs.Graph, capture: Capture, factor_choice: dict[str, int],
              probe: bool = False) -> tuple[SlotGraph, dict]:
    """Apply every op's rule once; returns the tie graph and ops without a rule (counted)."""
    sg = SlotGraph(graph, capture, factor_choice, probe)
    no_rule: dict[str, int] = defaultdict(int)
    for node in graph.nodes:
        sg.current = node
        rule = ops.spec(node.op, node.domain).ties
        if rule is None:
            no_rule[f"{node.domain + '.' if node.domain else ''}{node.op}"] += 1
            continue
        rule(node, sg)
    sg.current = None
    _freeze_body_reads(sg, graph)
    _freeze_unclaimed(sg, graph)
    return sg, dict(no_rule)


def analyze_graph(graph: gs.Graph, capture: Capture) -> Analysis:
    """Find the coupled groups.

    A Reshape that splits a channel axis into factors ([3, heads, head_dim] for qkv, [groups,
    channels] for a shuffle) must tie it to one factor. A probe pass, where splits only claim
    their axes, shows which factors their consumers leave free; the real pass ties each split
    to the outermost free factor.

    A grouped Conv removes whole groups (its first choice) unless the real pass ties all its
    groups into one atom, as a channel shuffle between grouped convolutions does (ShuffleNet
    v1); such a Conv moves to its second choice, the same position of every group, and both
    passes run again. Its new ties only split the atom that whole groups made, and nodes only
    move forward, so this ends.
    """
    moved: dict[str, int] = {}  # nodes a real pass moved past their first choice (keep_apart)
    while True:
        sg, _ = run_rules(graph, capture, moved, probe=True)
        ncomp, labels = _components(sg)
        frozen = _frozen_components(sg, ncomp, labels)
        choice = dict(moved)
        for node_name, slots in sg.factor_slots.items():
            for i, s in enumerate(slots):
                if not frozen[labels[sg.offsets[s]:sg.offsets[s] + sg.sizes[s]]].all():
                    choice[node_name] = i
                    break
        sg, no_rule = run_rules(graph, capture, choice)
        ncomp, labels = _components(sg)
        stuck = [key for key, elems in sg.apart.items() if len(np.unique(labels[elems])) == 1]
        if not stuck:
            break
        for key in stuck:
            moved[key] = choice.get(key, 0) + 1
    frozen = _frozen_components(sg, ncomp, labels)
    return _collect(graph, capture, sg, ncomp, labels, frozen, choice, no_rule)


def _frozen_components(sg: SlotGraph, ncomp: int, labels: np.ndarray) -> np.ndarray:
    frozen = np.zeros(ncomp, dtype=bool)
    for idx, _reason in sg.frozen_elems:
        frozen[labels[idx]] = True
    return frozen


def _is_weight(tensor: gs.Tensor | None) -> bool:
    """Float initializers and quantized weights are weights; other int constants (shapes, indices) are not."""
    if not isinstance(tensor, gs.Constant) or not len(tensor.shape):
        return False
    return np.issubdtype(np.dtype(tensor.dtype), np.floating) or dequantized_weight(tensor) is not None


def _topo_index(graph: gs.Graph) -> dict[str, int]:
    order: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for t in node.inputs:
            order.setdefault(t.name, i)  # constants: first consumer
        for t in node.outputs:
            order[t.name] = i
    return order


def _describe(graph: gs.Graph) -> dict[str, str]:
    """A structural name for each tensor: producing op (or param of consuming op and port)."""
    desc: dict[str, str] = {}
    for node in graph.nodes:
        for port, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant):
                desc.setdefault(t.name, f"{node.op}:in{port}")
        for port, t in enumerate(node.outputs):
            desc[t.name] = f"{node.op}:out{port}"
    for t in graph.inputs:
        desc[t.name] = "input"
    return desc


def _collect(graph, capture, sg: SlotGraph, ncomp, labels, frozen, choice, no_rule) -> Analysis:
    slots = list(sg.offsets)
    slot_of_elem = np.empty(sg.total, dtype=np.int64)
    local = np.empty(sg.total, dtype=np.int64)
    for i, s in enumerate(slots):
        start, size = sg.offsets[s], sg.sizes[s]
        slot_of_elem[start:start + size] = i
        local[start:start + size] = np.arange(size)
    tensors = graph.tensors()
    is_param = np.array([_is_weight(tensors.get(s.tensor)) for s in slots], dtype=bool)
    has_param = np.zeros(ncomp, dtype=bool)
    if len(slots):
        has_param[labels[is_param[slot_of_elem]]] = True

    order = _topo_index(graph)
    desc = _describe(graph)
    groups = _atoms_to_groups(slots, slot_of_elem, local, labels, has_param & ~frozen, sg.weights,
                              order, desc)
    # Report frozen channels of layers (Conv/Gemm/MatMul/norm weights), not frozen token or
    # spatial axes of other constants such as position embeddings.
    is_layer = np.array([s in sg.weights for s in slots], dtype=bool)
    has_layer = np.zeros(ncomp, dtype=bool)
    if len(slots):
        has_layer[labels[is_layer[slot_of_elem]]] = True
    frozen_groups = _frozen_groups(sg, slots, slot_of_elem, labels, has_layer & frozen)
    sizes = {s: sg.sizes[s] for s in slots}
    return Analysis(graph, capture, groups, frozen_groups, sizes, set(sg.weights), dict(choice), no_rule,
                    frozen_values=set(sg.frozen_values))


def _atoms_to_groups(slots, slot_of_elem, local, labels, keep, weights, order, desc) -> list[CoupledGroup]:
    elems = np.nonzero(keep[labels])[0]
    if not len(elems):
        return []
    key = np.lexsort((local[elems], slot_of_elem[elems], labels[elems]))
    elems = elems[key]
    lab = labels[elems]
    bounds = np.flatnonzero(np.diff(lab)) + 1
    by_signature: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for atom in np.split(elems, bounds):
        s_ids, counts = np.unique(slot_of_elem[atom], return_counts=True)
        by_signature[tuple(zip(s_ids.tolist(), counts.tolist(), strict=True))].append(atom)
    groups = []
    for signature, atoms in by_signature.items():
        stacked = np.stack([local[a] for a in atoms])  # atoms sorted by (slot, index)
        members, col = {}, 0
        for s_id, count in signature:
            members[slots[s_id]] = stacked[:, col:col + count]
            col += count
        ordered = sorted(members, key=lambda s: (order.get(s.tensor, 0), s.tensor, s.axis))
        structure = tuple((desc.get(s.tensor, "?"), s.axis if s.tensor in weights else -1,
                           members[s].shape[1]) for s in ordered)
        wslots = [s for s in ordered if s in weights] or [s for s in ordered if desc.get(s.tensor, "").find(":in") > 0]
        groups.append(CoupledGroup({s: members[s] for s in ordered}, structure, wslots))
    groups.sort(key=lambda g: order.get(next(iter(g.members)).tensor, 0))
    classes: dict[tuple, int] = {}
    for g in groups:
        g.iso_class = classes.setdefault(g.structure, len(classes))
    return groups


def _frozen_groups(sg, slots, slot_of_elem, labels, frozen_param) -> list[FrozenGroup]:
    reasons: dict[int, set[str]] = defaultdict(set)
    for idx, reason in sg.frozen_elems:
        labs = np.unique(labels[idx])
        for lab in labs[frozen_param[labs]].tolist():
            reasons[lab].add(reason)
    elems = np.nonzero(frozen_param[labels])[0]
    elems = elems[np.lexsort((slot_of_elem[elems], labels[elems]))]
    bounds = np.flatnonzero(np.diff(labels[elems])) + 1
    by_slots: dict[tuple, FrozenGroup] = {}
    for atom in np.split(elems, bounds) if len(elems) else []:
        key = tuple(np.unique(slot_of_elem[atom]).tolist())
        entry = by_slots.setdefault(key, FrozenGroup([slots[i] for i in key], 0, []))
        entry.channels += 1
        entry.reasons = sorted(set(entry.reasons) | reasons[int(labels[atom[0]])])
    return list(by_slots.values())


def measured_at(analysis: Analysis) -> dict[str, tuple[int, ...]]:
    """The shape (batch 1) each graph input had in the run FLOPs are counted from."""
    return {t.name: tuple(analysis.capture.shapes[t.name]) for t in analysis.graph.inputs
            if t.name in analysis.capture.shapes}
