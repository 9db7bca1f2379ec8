"""The select stage (onnxprune/select.py) on a two-conv graph whose cost is worked out by hand.

x [1, 4, 8, 8] -> Conv 3x3 c1 (8) -> Relu -> Conv 3x3 c2 (8) -> Relu -> pool, flatten, Gemm to 10.
Group 1 is c1's 8 output channels, group 2 is c2's. With f1, f2 their kept fractions the FLOPs are
    c1: 36864 f1,   c2: 73728 f1 f2,   Gemm: 160 f2     (dense 110752)
so removing k channels of each leaves (36864 f + 73728 f^2 + 160 f) / 110752 with f = (8 - k) / 8.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Net, analysis_of, shape_lookup

from onnxprune.errors import ModelError, UsageError
from onnxprune.ranking.cost import flops_terms
from onnxprune.ranking.select import Selector, _fill, select
from onnxprune.structure.slots import Slot

DENSE = 36864 + 73728 + 160


def cost(kept1: int, kept2: int) -> float:
    """The FLOPs ratio with kept1 of c1's and kept2 of c2's 8 channels, by the formula above."""
    f1, f2 = kept1 / 8, kept2 / 8
    return (36864 * f1 + 73728 * f1 * f2 + 160 * f2) / DENSE


@pytest.fixture(scope="module")
def chain():
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.relu(net.conv(h, 8, 8, 3, name="c2"))
    net.head(h, 8)
    analysis = analysis_of(net.model())
    assert [g.size for g in analysis.groups] == [8, 8]
    assert Slot("c1.w", 0) in analysis.groups[0].members and Slot("c2.w", 0) in analysis.groups[1].members
    terms = flops_terms(analysis.graph, shape_lookup(analysis))
    assert sum(t.dense for t in terms) == DENSE
    return analysis, terms


S1 = np.array([5.0, 1.0, 8.0, 3.0, 2.0, 7.0, 4.0, 6.0])  # least important first: 1, 4, 3, 6, 0, 7, 5, 2
S2 = np.array([1.0, 5.0, 1.0, 9.0, 5.0, 1.0, 5.0, 5.0])  # 0, 2, 5 (ties in index order), then 1, 4, 6, 7, 3


def counts(plan) -> list[int]:
    return [len(r) for r in plan.removed]


def test_bisection_finds_the_fewest_channels_that_meet_the_target(chain):
    """Uniform scope: k channels of each group. k = 2 leaves 0.625, k = 3 leaves 0.469: the target
    0.5 needs 3 of each, and giving any one back (0.563 or 0.521) would miss it."""
    analysis, terms = chain
    assert cost(6, 6) == pytest.approx(0.6252, abs=1e-4) and cost(5, 5) == pytest.approx(0.4690, abs=1e-4)
    plan = select(analysis, [S1, S2], terms, 0.5, scope="uniform")
    assert counts(plan) == [3, 3]
    assert plan.predicted == pytest.approx(cost(5, 5), rel=1e-12)
    assert 2 / 8 < plan.ratio <= 3 / 8 + 1e-7  # the smallest ratio that removes 3 of 8
    np.testing.assert_array_equal(plan.removed[0], [1, 4, 3])  # the least important atoms
    np.testing.assert_array_equal(plan.removed[1], [0, 2, 5])


def test_fill_gives_back_units_while_the_target_holds(chain):
    """Target 0.55: the ratio steps to 3 of each (0.469); c2 can take one back (0.521), then neither
    can (c1 back: 0.625, c2 back: 0.573)."""
    analysis, terms = chain
    plan = select(analysis, [S1, S2], terms, 0.55, scope="uniform")
    assert counts(plan) == [3, 2]
    assert plan.predicted == pytest.approx(cost(5, 6), rel=1e-12)
    np.testing.assert_array_equal(plan.removed[1], [0, 2])  # the more important of the three came back


@pytest.mark.parametrize(("scores", "expected"), [
    ((S1, S2), [2, 3]),  # c1's last removed unit (3, mean 4.5) is worth more than c2's (1, mean 4)
    ((S2, S1), [3, 2]),
])
def test_fill_gives_back_the_most_important_unit_first(chain, scores, expected):
    """From 3 of each (0.469) towards 0.57 either unit alone may come back (0.563, 0.521), not both;
    the one with the higher score over its group's mean wins."""
    analysis, terms = chain
    selector = Selector(analysis, list(scores), "uniform")

    def cost_of(c: np.ndarray) -> float:
        fractions = selector.kept_fraction(c)
        return sum(t.dense * np.prod([fractions.get(s, 1.0) for s in t.slots]) for t in terms) / DENSE

    start = np.array([3, 3])
    assert cost_of(start) == pytest.approx(cost(5, 5), rel=1e-12)
    got, value = _fill(selector, list(scores), start.copy(), cost_of(start), 0.57, cost_of)
    assert got.tolist() == expected
    assert value == pytest.approx(cost(8 - expected[0], 8 - expected[1]), rel=1e-12)


def test_fill_stops_within_half_a_percent(chain):
    analysis, terms = chain
    selector = Selector(analysis, [S1, S2], "uniform")
    start = np.array([3, 3])
    got, value = _fill(selector, [S1, S2], start.copy(), cost(5, 5), cost(5, 5) + 0.004, lambda c: 0.0)
    assert got.tolist() == [3, 3] and value == cost(5, 5)


def test_global_scope_ranks_both_groups_together(chain):
    """Over their group means c2's seven 1s (0.30) rank below every c1 channel (0.74 to 1.26), so a
    global ranking takes c2's channels first: 5 of them leave 0.583 <= 0.6, 4 would leave 0.666."""
    analysis, terms = chain
    s1 = np.arange(10.0, 18.0)
    s2 = np.array([1.0] * 7 + [20.0])
    plan = select(analysis, [s1, s2], terms, 0.6, scope="global")
    assert counts(plan) == [0, 5]
    assert plan.predicted == pytest.approx(cost(8, 3), rel=1e-12)


def test_a_target_of_one_removes_nothing(chain):
    analysis, terms = chain
    plan = select(analysis, [S1, S2], terms, 1.0)
    assert counts(plan) == [0, 0] and plan.predicted == 1.0


def test_bad_and_unreachable_targets(chain):
    analysis, terms = chain
    with pytest.raises(UsageError, match="must be in"):
        select(analysis, [S1, S2], terms, 0.0)
    with pytest.raises(UsageError, match="unknown scope"):
        select(analysis, [S1, S2], terms, 0.5, scope="sideways")
    # every group keeps at least one channel: 1 of 8 each leaves (4608 + 1152 + 20) / 110752 = 0.052
    with pytest.raises(ModelError, match=r"FLOPs target 0.01 is unreachable: .* still leaves 0.052"):
        select(analysis, [S1, S2], terms, 0.01)


def test_round_to_keeps_multiples(chain):
    analysis, terms = chain
    plan = select(analysis, [S1, S2], terms, 0.5, scope="uniform", round_to=4)
    assert counts(plan) == [4, 4]  # 4 of 8 kept: 3 kept is no multiple of 4
    assert plan.predicted == pytest.approx(cost(4, 4), rel=1e-12)
