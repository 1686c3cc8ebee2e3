"""The adjudicator: settles a sample whose reviewers disagree (μ ≥ τ, σ > δ).

It reads the sample and every review (anonymised: "Reviewer 1", ...) and grades the
response on the reviewers' six criteria; the sample is kept if its mean reaches τ
(``adjudicated``), else rejected (``adjudicator_reject``). A reply that cannot be used,
or a request that failed for good, rejects the sample with the failure's kind; the
sample stays marked as disputed, at stage ``adjudicate``, with the adjudicator's name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from ...prompts import load_prompt
from ...structured import Schema, StructuredClient, object_schema
from .decision import exact, keeps, mean
from .roles import Roles
from .settings import CommitteeSettings
from .verdict import RESPONSE_CRITERIA, Adjudication, Failure, Verdict

_SCORE = {"type": "number", "minimum": 0, "maximum": 10}

ADJUDICATION: Schema = object_schema(
    "gra_adjudication",
    {"assessment": {"type": "string"}, **dict.fromkeys(RESPONSE_CRITERIA, _SCORE)},
)


class Params(Protocol):
    def __call__(self, base: Mapping[str, Any], roles: Roles, *parts: object) -> dict[str, Any]:
        """Request parameters for one request of a sample."""
        ...


class Adjudicator:
    """Asks a sample's adjudicator to settle its dispute."""

    def __init__(
        self, client: StructuredClient, settings: CommitteeSettings, params: Params
    ) -> None:
        self.client = client
        self.settings = settings
        self.params = params
        self._prompt = load_prompt("gra/adjudicate", settings.prompts_dir)
        self._review_item = load_prompt("gra/adjudicate_review_item", settings.prompts_dir)

    def _reviews_text(self, verdict: Verdict) -> str:
        return "\n\n".join(
            self._review_item.render(
                number=i,
                score=fmt(review.score),
                scores=", ".join(f"{c} {fmt(s)}" for c, s in review.scores.items()),
                strengths=review.strengths,
                weaknesses=review.weaknesses,
            )[-1]["content"]
            for i, review in enumerate(verdict.reviews, 1)
        )

    async def settle(
        self,
        verdict: Verdict,
        instruction: str,
        response: str,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Decide the disputed ``verdict`` (accepted or rejected when it returns)."""
        roles = verdict.roles
        verdict.disputed = True
        messages = self._prompt.render(
            instruction=instruction,
            response=response,
            reviews=self._reviews_text(verdict),
            mu=fmt(verdict.mu or 0.0),
            sigma=fmt(verdict.sigma or 0.0),
        )
        answer = await self.client.ask(
            messages,
            ADJUDICATION,
            role=roles.adjudicator,
            params=self.params(self.settings.adjudicate_params, roles, "adjudicate"),
            meta={**(meta or {}), "stage": "adjudicate"},
        )
        verdict.count(roles.adjudicator, answer)
        if not answer.ok:
            verdict.fail(Failure.of("adjudicate", roles.adjudicator, answer))
            return
        scores = {c: float(answer.value[c]) for c in RESPONSE_CRITERIA}
        score = mean(exact(v) for v in scores.values())
        keep = keeps(score, self.settings)
        verdict.adjudication = Adjudication(
            roles.adjudicator, float(score), scores, answer.value["assessment"], keep, score
        )
        if keep:
            verdict.status, verdict.path = "accepted", "adjudicated"
        else:
            verdict.reject("adjudicator_reject", "adjudicated")


def fmt(value: float) -> str:
    """A score as the prompts show it: at most two decimals, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
