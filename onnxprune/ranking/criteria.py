"""Channel-importance criteria: a registry of name -> scoring function.

A criterion turns an analysed model (and, for data-driven ones, calibration samples) into one
score per atom of every coupled group; higher means more important. ``--criterion`` and
``criterion=`` accept every registered name, and ``needs_data`` makes the options ask for
``--calib``. Adding a criterion is one function here and one test::

    @register("l2", help="squared L2 norm of the group's weights")
    def l2(analysis, samples):
        return magnitude_scores(analysis, "l2")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..structure.analyze import Analysis
from .score import calibrated_scores, magnitude_scores

Scores = list[np.ndarray]
ScoreFn = Callable[[Analysis, "dict[str, np.ndarray] | None"], Scores]


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: its scoring function and whether it needs calibration samples."""

    name: str
    score: ScoreFn
    needs_data: bool = False
    help: str = ""


CRITERIA: dict[str, Criterion] = {}


def register(name: str, *, needs_data: bool = False, help: str = "") -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: register ``fn(analysis, samples) -> scores`` under ``name``."""
    def add(fn: ScoreFn) -> ScoreFn:
        CRITERIA[name] = Criterion(name, fn, needs_data, help)
        return fn
    return add


def score_groups(analysis: Analysis, criterion: str = "l2", samples: dict[str, np.ndarray] | None = None) -> Scores:
    """Importance of every group's atoms by ``criterion`` (samples: calibration inputs by name)."""
    found = CRITERIA.get(criterion)
    if found is None:
        raise UsageError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if found.needs_data and samples is None:
        raise UsageError(f"--criterion {criterion} needs calibration data: give --calib PATH")
    return found.score(analysis, samples)


@register("l1", help="L1 norm of the group's weights along the channel")
def l1(analysis: Analysis, samples: dict | None) -> Scores:
    return magnitude_scores(analysis, "l1")


@register("l2", help="squared L2 norm of the group's weights along the channel")
def l2(analysis: Analysis, samples: dict | None) -> Scores:
    return magnitude_scores(analysis, "l2")


@register("act", needs_data=True, help="activation-weighted: w^2 * E[x^2] where the channel enters a layer")
def act(analysis: Analysis, samples: dict | None) -> Scores:
    return calibrated_scores(analysis, samples, "act")


@register("obs", needs_data=True, help="second-order OBS saliency w^2 / [H^-1]_jj from each layer's Hessian")
def obs(analysis: Analysis, samples: dict | None) -> Scores:
    return calibrated_scores(analysis, samples, "obs")


__all__ = ["CRITERIA", "Criterion", "register", "score_groups"]
