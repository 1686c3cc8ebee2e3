"""What the committee records about one sample: checks, reviews, adjudication, failures.

Scores are kept exact (:class:`~fractions.Fraction`) for the decision; the floats beside
them (``score``, ``mu``, ``sigma``) are for display and the JSON rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ...engine import book_cost
from ...structured import StructuredResult
from .roles import Roles

INSTRUCTION_CRITERIA = ("rationality", "completeness", "clarity")
RESPONSE_CRITERIA = (
    "correctness",
    "clarity",
    "completeness",
    "relevance",
    "coherence",
    "ethicality",
)
REASONS = (
    "instruction_fail",
    "truncated",
    "low_mean",
    "adjudicator_reject",
    "parse_failure",
    "request_error",
)
"""Why the committee (or the generation before it) rejects a sample."""
RAW_KEPT = 500
"""Characters of an unusable reply kept in the failure record."""


@dataclass(slots=True)
class InstructionCheck:
    model: str
    passed: bool
    criteria: dict[str, bool]
    assessment: str


@dataclass(slots=True)
class Review:
    model: str
    score: float
    """The mean of the six criteria (for display: decisions use :attr:`exact`)."""
    scores: dict[str, float]
    strengths: str
    weaknesses: str
    exact: Fraction = Fraction(0)


@dataclass(slots=True)
class Adjudication:
    model: str
    score: float
    scores: dict[str, float]
    assessment: str
    keep: bool
    exact: Fraction = Fraction(0)


@dataclass(slots=True)
class Failure:
    """A reply that could not be used, or a request that failed for good."""

    stage: str
    model: str
    kind: str
    """``parse_failure`` or ``request_error``."""
    message: str
    raw: str | None = None
    cause: str | None = None
    """A parse failure's known cause: ``template_echo`` or ``truncated``."""

    @classmethod
    def of(cls, stage: str, model: str, answer: StructuredResult) -> Failure:
        """The failure of a structured ``answer`` that is not ``ok``."""
        raw = answer.raw
        return cls(
            stage,
            model,
            answer.failure or "parse_failure",
            answer.error or "",
            raw[:RAW_KEPT] if raw else None,
            answer.cause,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": self.stage,
            "model": self.model,
            "kind": self.kind,
            "message": self.message,
        }
        if self.cause:
            out["cause"] = self.cause
        if self.raw:
            out["raw"] = self.raw
        return out


@dataclass(slots=True)
class Verdict:
    """The committee's decision on one sample, with everything that led to it."""

    roles: Roles
    status: str = "pending"
    """``pending`` (phase 1 passed), ``accepted`` or ``rejected``."""
    reason: str | None = None
    """Why it was rejected: one of :data:`REASONS`."""
    path: str | None = None
    """How it was decided: ``instruction_fail``, ``low_mean``, ``consensus``, ``adjudicated``,
    or the failure kind."""
    checks: list[InstructionCheck] = field(default_factory=list)
    reviews: list[Review] = field(default_factory=list)
    mu: float | None = None
    sigma: float | None = None
    disputed: bool = False
    """The reviewers disagreed (σ > δ at μ ≥ τ): the sample went to the adjudicator (whose
    answer may still have failed)."""
    adjudication: Adjudication | None = None
    failures: list[Failure] = field(default_factory=list)
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    costs: dict[str, float | None] = field(default_factory=dict)
    """USD the committee's answers cost when made, by model (None: no price)."""

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (roles, every check, review, adjudication and failure)."""
        adj = self.adjudication
        out: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "path": self.path,
            "generator": self.roles.generator,
            "reviewers": list(self.roles.reviewers),
            "adjudicator": self.roles.adjudicator if self.disputed else None,
            "disputed": self.disputed,
            "mu": self.mu,
            "sigma": self.sigma,
            "checks": [
                {"model": c.model, "passed": c.passed, "criteria": dict(c.criteria)}
                | {"assessment": c.assessment}
                for c in self.checks
            ],
            "reviews": [
                {"model": r.model, "score": r.score, "scores": dict(r.scores)}
                | {"strengths": r.strengths, "weaknesses": r.weaknesses}
                for r in self.reviews
            ],
            "adjudication": None
            if adj is None
            else {
                "model": adj.model,
                "score": adj.score,
                "scores": dict(adj.scores),
                "assessment": adj.assessment,
                "keep": adj.keep,
            },
            "failures": [f.to_dict() for f in self.failures],
            "requests": self.requests,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
        }
        if self.roles.shared:
            out["shared_roles"] = True
        return out

    def count(self, model: str, answer: StructuredResult) -> None:
        """Add ``model``'s ``answer``: its requests, tokens and cost, to this sample's."""
        book_cost(self.costs, model, answer.results)
        self.requests += len(answer.results)
        self.tokens_in += answer.tokens_in
        self.tokens_out += answer.tokens_out

    def reject(self, reason: str, path: str | None = None) -> None:
        self.status, self.reason, self.path = "rejected", reason, path or reason

    def fail(self, failure: Failure) -> None:
        """Reject for ``failure`` (a reply that could not be used, a request that failed)."""
        self.failures.append(failure)
        self.reject(failure.kind)
