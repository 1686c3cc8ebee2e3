"""The committee's rule, decided on exact values.

Over the reviewers' scores (each the mean of six criteria), mean μ and standard
deviation σ: μ < τ rejects (``low_mean``); μ ≥ τ and σ ≤ δ accepts (``consensus``);
otherwise the adjudicator decides (``dispute``). Scores and thresholds are compared as
exact fractions of the decimals written (``8.1`` is 81/10, never 8.0999...), and σ ≤ δ
as σ² ≤ δ², so a committee whose exact mean is τ, or whose deviation is δ, is never
flipped by rounding. Floats are made only for display.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from .settings import CommitteeSettings

Score = int | float | Fraction


def exact(value: Score) -> Fraction:
    """``value`` as the exact fraction of the decimal it was written as."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    if not math.isfinite(value):
        raise ValueError(f"a score must be finite, got {value!r}")
    return Fraction(repr(float(value)))


def mean(values: Iterable[Score]) -> Fraction:
    """The exact mean of ``values`` (one reviewer's six criteria, or the reviewers' scores)."""
    exacts = [exact(v) for v in values]
    if not exacts:
        raise ValueError("the mean of no scores")
    return sum(exacts, Fraction(0)) / len(exacts)


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: str
    """``low_mean``, ``consensus`` or ``dispute``."""
    mu: Fraction
    variance: Fraction

    @property
    def mu_float(self) -> float:
        return float(self.mu)

    @property
    def sigma_float(self) -> float:
        return math.sqrt(self.variance)


def judge(scores: Sequence[Score], settings: CommitteeSettings) -> Decision:
    """The committee's :class:`Decision` over the reviewers' ``scores``, exactly."""
    exacts = [exact(s) for s in scores]
    mu = mean(exacts)
    squares = sum(((s - mu) ** 2 for s in exacts), Fraction(0))
    if len(exacts) < 2:
        variance = Fraction(0)
    elif settings.std == "sample":
        variance = squares / (len(exacts) - 1)
    else:
        variance = squares / len(exacts)
    if mu < exact(settings.tau):
        return Decision("low_mean", mu, variance)
    if variance <= exact(settings.delta) ** 2:
        return Decision("consensus", mu, variance)
    return Decision("dispute", mu, variance)


def decide(scores: Sequence[Score], settings: CommitteeSettings) -> tuple[str, float, float]:
    """``("low_mean" | "consensus" | "dispute", mu, sigma)`` for the reviewers' scores.

    Decided exactly (see the module docstring); ``mu`` and ``sigma`` are for display."""
    decision = judge(scores, settings)
    return decision.outcome, decision.mu_float, decision.sigma_float


def keeps(score: Score, settings: CommitteeSettings) -> bool:
    """Whether an adjudicator's (or a reviewer's) score reaches τ, exactly."""
    return exact(score) >= exact(settings.tau)
