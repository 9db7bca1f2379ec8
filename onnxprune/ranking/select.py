"""Select stage: choose which atoms to remove so the cost meets the target.

Isomorphic ranking (Fang et al. 2024): each group's scores are divided by the group's mean,
then atoms are ranked only against atoms of groups with the same structure (an isomorphic
class), and one pruning ratio ``r`` is shared by every class. Instead of hand-tuning ``r``,
bisection finds the smallest ``r`` whose plan meets the FLOPs/params target on the cost model.
``global`` ranks all groups together; ``uniform`` prunes every group by the same ratio.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import ModelError, UsageError
from ..structure.analyze import Analysis
from ..structure.rewrite import Plan
from ..structure.slots import Slot
from .cost import CostTerm, total

SCOPES = ("isomorphic", "global", "uniform")


class Selector:
    """Precomputes rankings once; ``plan_at(r)`` is then cheap enough to bisect on."""

    def __init__(self, analysis: Analysis, scores: list[np.ndarray], scope: str = "isomorphic",
                 round_to: int = 1):
        if scope not in SCOPES:
            raise UsageError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
        if round_to < 1:
            raise UsageError("--round-to must be a positive integer")
        self.analysis = analysis
        self.round_to = round_to
        groups = analysis.groups
        self.order = [np.argsort(s, kind="stable") for s in scores]  # least important first
        normalised = [s / (s.mean() if s.mean() > 0 else 1.0) for s in scores]
        if scope == "isomorphic":
            keys = [g.iso_class for g in groups]
        elif scope == "global":
            keys = [0] * len(groups)
        else:
            keys = list(range(len(groups)))
        self.classes: list[tuple[np.ndarray, np.ndarray]] = []  # (group id per ranked atom) per class
        for key in sorted(set(keys)):
            ids = [i for i, k in enumerate(keys) if k == key]
            owner = np.concatenate([np.full(groups[i].size, i) for i in ids])
            value = np.concatenate([normalised[i] for i in ids])
            self.classes.append(owner[np.argsort(value, kind="stable")])
        # Slot sizes shrink by count * removed atoms of every group touching the slot.
        self.touch: dict[Slot, list[tuple[int, int]]] = {}
        for gi, group in enumerate(groups):
            for slot, members in group.members.items():
                self.touch.setdefault(slot, []).append((gi, members.shape[1]))

    def counts_at(self, ratio: float) -> np.ndarray:
        """Atoms removed per group at the shared ratio, after caps and channel rounding."""
        groups = self.analysis.groups
        counts = np.zeros(len(groups), dtype=np.int64)
        for owners in self.classes:
            k = int(np.floor(ratio * len(owners) + 1e-9))
            counts += np.bincount(owners[:k], minlength=len(groups))
        for gi, group in enumerate(groups):
            keep = group.size - counts[gi]
            step = self.round_to if group.width == 1 else 1
            if step > 1:
                keep = int(round(keep / step) * step)
            keep = min(max(keep, min(step, group.size), 1), group.size)
            counts[gi] = group.size - keep
        return counts

    def kept_fraction(self, counts: np.ndarray) -> dict[Slot, float]:
        sizes = self.analysis.slot_sizes
        return {slot: 1.0 - sum(int(counts[g]) * c for g, c in users) / sizes[slot]
                for slot, users in self.touch.items()}

    def plan(self, counts: np.ndarray, ratio: float, predicted: float) -> Plan:
        return Plan([self.order[g][:c] for g, c in enumerate(counts)], ratio, predicted, self.round_to)


def select(analysis: Analysis, scores: list[np.ndarray], terms: list[CostTerm], target: float,
           scope: str = "isomorphic", round_to: int = 1, what: str = "FLOPs") -> Plan:
    """The plan with the least pruning whose cost is at most ``target`` times the dense cost."""
    if not 0 < target <= 1:
        raise UsageError(f"target {what} ratio must be in (0, 1], got {target}")
    selector = Selector(analysis, scores, scope, round_to)
    dense = total(terms)
    if dense <= 0:
        raise ModelError(f"nothing to prune: the model has no {what} to reduce (no Conv, Gemm or MatMul layer "
                         "with weights)")

    def cost_of(counts: np.ndarray) -> float:
        return total(terms, selector.kept_fraction(counts)) / dense

    def cost(r: float) -> tuple[float, np.ndarray]:
        counts = selector.counts_at(r)
        return cost_of(counts), counts

    if target >= 1:
        counts = np.zeros(len(analysis.groups), dtype=np.int64)
        return selector.plan(counts, 0.0, 1.0)
    floor, counts_hi = cost(1.0)
    if floor > target:
        unrounded = cost_of(np.array([g.size - 1 for g in analysis.groups], dtype=np.int64))
        why = _unreachable_cause(analysis, round_to, counts_hi, floor, unrounded)
        raise ModelError(f"{what} target {target:g} is unreachable: pruning every prunable group as far "
                         f"as possible still leaves {floor:.3f} of the dense {what}; {why}")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        value, counts = cost(mid)
        if value <= target:
            hi, counts_hi, floor = mid, counts, value
        else:
            lo = mid
        if hi - lo < 1e-7:
            break
    counts_hi, floor = _fill(selector, scores, counts_hi, floor, target, cost_of)
    return selector.plan(counts_hi, hi, floor)


# A plan meets a FLOPs/params target when its cost lies within 2% below it (relative).
TARGET_TOLERANCE = 0.02


def select_granular(analysis: Analysis, scores: list[np.ndarray], terms: list[CostTerm], target: float,
                    multiples: list[int], scope: str = "isomorphic", what: str = "FLOPs") -> Plan:
    """``select`` at the coarsest channel multiple in ``multiples`` (coarsest first) whose plan meets
    the target within 2%; else at the finest one. A coarse multiple can overshoot (whole blocks of
    channels move at once) or miss (groups smaller than it keep every channel)."""
    for i, multiple in enumerate(multiples):
        finest = i == len(multiples) - 1
        try:
            plan = select(analysis, scores, terms, target, scope=scope, round_to=multiple, what=what)
        except ModelError:
            if finest:
                raise
            continue
        if finest or plan.predicted >= target * (1 - TARGET_TOLERANCE):
            return plan
    raise AssertionError("unreachable: the finest multiple returns or raises")


def _fill(selector: Selector, scores: list[np.ndarray], counts: np.ndarray, value: float, target: float,
          cost_of) -> tuple[np.ndarray, float]:
    """Give back the most important removed units while the target still holds.

    The shared ratio moves in steps of whole units per class; where the last step overshoots
    the target by more than half a percent, this closes the gap one unit at a time.
    """
    step = selector.round_to
    for _ in range(50):
        if target - value < 0.005:
            break
        candidates = []
        for g, group in enumerate(selector.analysis.groups):
            back = step if group.width == 1 and step > 1 else 1
            if counts[g] >= back:
                last = selector.order[g][counts[g] - 1]
                candidates.append((scores[g][last] / (scores[g].mean() or 1.0), g, back))
        changed = False
        for _, g, back in sorted(candidates, reverse=True):
            counts[g] -= back
            trial = cost_of(counts)
            if trial <= target:
                value, changed = trial, True
            else:
                counts[g] += back
        if not changed:
            break
    return counts, value


def _unreachable_cause(analysis: Analysis, round_to: int, counts: np.ndarray, floor: float,
                       unrounded: float) -> str:
    """Why no plan meets the target: the channel rounding, channels tied into single units, or frozen
    channels (graph inputs/outputs, ops without a rule)."""
    groups = analysis.groups
    if round_to > 1 and unrounded < floor:
        widest = max(g.size for g in groups if g.width == 1)  # wider units (heads) are not rounded
        if not counts.any():
            return (f"--round-to {round_to} leaves no group able to lose channels: the widest prunable group has "
                    f"{widest} channels")
        return (f"--round-to {round_to} keeps too many channels (every group keeps a multiple of {round_to}); "
                f"without it the floor would be {unrounded:.3f}")
    if groups and all(g.size == 1 for g in groups):
        channels = sum(next(iter(g.members.values())).shape[1] for g in groups)
        ops = _tying_ops(analysis, groups)
        through = f"through {', '.join(ops[:6])}{', ...' if len(ops) > 6 else ''}" if ops else ""
        if len(groups) == 1:
            return (f"all {channels} prunable channels are tied into one unit{f' ({through})' if through else ''}; "
                    "removing it would remove every channel")
        return (f"each of the {len(groups)} prunable groups is one tied unit ({channels} channels in all"
                f"{f', {through}' if through else ''}); removing one would remove all its channels")
    frozen_ops = sorted({r for f in analysis.frozen for r in f.reasons})
    if frozen_ops:
        return f"the rest is frozen by: {', '.join(frozen_ops[:8])}"
    return "every group keeps at least one unit" if groups else "no channel can be removed"


def _tying_ops(analysis: Analysis, groups: list) -> list[str]:
    """The ops, in graph order, touching the groups' tensors that tie several channels together
    (Reshape, Transpose, Concat, grouped Conv as ``Conv(group=3)``, ...)."""
    from ..graph.layers import group as group_of

    names = {slot.tensor for g in groups for slot in g.members}
    seen: list[str] = []
    for node in analysis.graph.nodes:
        if not any(t.name in names for t in (*node.inputs, *node.outputs)):
            continue
        group = group_of(node)
        spec = ops.spec(node.op, node.domain)
        if (spec.one_to_one or spec.layer) and group == 1:  # never ties several channels into one unit
            continue
        label = f"{node.op}(group={group})" if group != 1 else node.op
        if label not in seen:
            seen.append(label)
    return seen
