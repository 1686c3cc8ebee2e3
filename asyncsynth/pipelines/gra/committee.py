"""The peer-review committee: reviewers check and score a sample, an adjudicator settles disputes.

Reusable outside GRA (S3's ``--review gra``)::

    settings = CommitteeSettings.from_config(config)          # the [gra] section
    verdict = await review_sample(
        engine, instruction, response, generator="qwen", rng=random.Random(7), settings=settings
    )
    verdict.accepted, verdict.reason, verdict.mu, verdict.to_dict()

Two phases, each with all reviewers at once:

1. instruction check: pass/fail on rationality, completeness and clarity; any fail rejects
   (``instruction_fail``);
2. response scoring: 0-10 on correctness, clarity, completeness, relevance, coherence and
   ethicality, with strengths and weaknesses; a reviewer's score is the mean of the six.

Then the rule of :mod:`.decision` (exact: μ < τ rejects, μ ≥ τ and σ ≤ δ accepts, else
:mod:`.adjudicate`). A reply that cannot be parsed after the re-asks is ``parse_failure``
(a reply that only repeats the prompt's ``<...>`` placeholders is one); a request that
failed for good is ``request_error`` (unless ``min_reviews`` lets the committee decide
without it).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import anyio

from ...engine import Engine
from ...prompts import load_prompt
from ...structured import Schema, StructuredClient, StructuredResult, object_schema
from .adjudicate import ADJUDICATION, Adjudicator
from .decision import decide, exact, judge, mean
from .roles import Roles, draw_roles
from .settings import CommitteeSettings
from .verdict import (
    INSTRUCTION_CRITERIA,
    REASONS,
    RESPONSE_CRITERIA,
    Adjudication,
    Failure,
    InstructionCheck,
    Review,
    Verdict,
)

__all__ = [
    "ADJUDICATION",
    "INSTRUCTION_CHECK",
    "INSTRUCTION_CRITERIA",
    "REASONS",
    "RESPONSE_CRITERIA",
    "RESPONSE_REVIEW",
    "Adjudication",
    "Committee",
    "Failure",
    "InstructionCheck",
    "Review",
    "Roles",
    "Verdict",
    "decide",
    "draw_roles",
    "review_sample",
]

_SCORE = {"type": "number", "minimum": 0, "maximum": 10}
_TEXT = {"type": "string"}
_FLAG = {"type": "boolean"}

INSTRUCTION_CHECK: Schema = object_schema(
    "gra_instruction_check",
    {"assessment": _TEXT, **dict.fromkeys(INSTRUCTION_CRITERIA, _FLAG)},
)
RESPONSE_REVIEW: Schema = object_schema(
    "gra_response_review",
    {"strengths": _TEXT, "weaknesses": _TEXT, **dict.fromkeys(RESPONSE_CRITERIA, _SCORE)},
)


class Committee:
    """Runs the two review phases and the adjudication against an :class:`Engine`."""

    def __init__(
        self,
        engine: Engine,
        settings: CommitteeSettings,
        *,
        client: StructuredClient | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.client = client or StructuredClient(
            engine,
            mode=settings.structured,
            reasks=settings.reasks,
            prompts_dir=settings.prompts_dir,
        )
        self._check = load_prompt("gra/review_instruction", settings.prompts_dir)
        self._review = load_prompt("gra/review_response", settings.prompts_dir)
        self.adjudicator = Adjudicator(self.client, settings, self._params)

    def draw(
        self, rng: random.Random, *, generator: str | None = None, draw_generator: bool = False
    ) -> Roles:
        return draw_roles(rng, self.settings, generator=generator, draw_generator=draw_generator)

    async def review(
        self,
        instruction: str,
        response: str,
        roles: Roles,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """Both phases, then the committee's decision (and adjudication if disputed)."""
        verdict = Verdict(roles)
        if await self.check_instruction(verdict, instruction, meta=meta):
            await self.score_response(verdict, instruction, response, meta=meta)
        return verdict

    def _params(self, base: Mapping[str, Any], roles: Roles, *parts: object) -> dict[str, Any]:
        params = dict(base)
        if self.settings.request_seed and "seed" not in params:
            params["seed"] = roles.request_seed(*parts)
        return params

    async def _ask_all(
        self,
        verdict: Verdict,
        stage: str,
        messages: list[dict[str, str]],
        schema: Schema,
        meta: Mapping[str, Any] | None,
    ) -> list[StructuredResult]:
        """Every reviewer at once; answers in reviewer order."""
        roles = verdict.roles
        answers: list[StructuredResult | None] = [None] * len(roles.reviewers)

        async def ask(slot: int, model: str) -> None:
            repeat = roles.reviewers[:slot].count(model)  # a shared model's second review
            answers[slot] = await self.client.ask(
                messages,
                schema,
                role=model,
                params=self._params(self.settings.review_params, roles, stage, slot),
                sample=repeat,
                meta={**(meta or {}), "stage": stage, "slot": slot},
            )

        async with anyio.create_task_group() as tg:
            for slot, model in enumerate(roles.reviewers):
                tg.start_soon(ask, slot, model)
        for model, answer in zip(roles.reviewers, answers, strict=True):
            if answer is not None:
                verdict.count(model, answer)
        return [a for a in answers if a is not None]

    def _usable(
        self, verdict: Verdict, stage: str, answers: list[StructuredResult]
    ) -> list[tuple[str, Any]] | None:
        """(model, value) of the usable answers; ``None`` (and a rejection) if too few."""
        usable: list[tuple[str, Any]] = []
        for model, answer in zip(verdict.roles.reviewers, answers, strict=True):
            if answer.ok:
                usable.append((model, answer.value))
            else:
                verdict.failures.append(Failure.of(stage, model, answer))
        if len(usable) < self.settings.needed_reviews:
            first = next(f for f in verdict.failures if f.stage == stage)
            verdict.reject(first.kind)
            return None
        return usable

    async def check_instruction(
        self, verdict: Verdict, instruction: str, *, meta: Mapping[str, Any] | None = None
    ) -> bool:
        """Phase 1. True if every reviewer passed the instruction on every criterion."""
        messages = self._check.render(instruction=instruction)
        answers = await self._ask_all(
            verdict, "review_instruction", messages, INSTRUCTION_CHECK, meta
        )
        for model, answer in zip(verdict.roles.reviewers, answers, strict=True):
            if answer.ok:
                criteria = {c: bool(answer.value[c]) for c in INSTRUCTION_CRITERIA}
                passed = all(criteria.values())
                check = InstructionCheck(model, passed, criteria, answer.value["assessment"])
                verdict.checks.append(check)
        if any(not c.passed for c in verdict.checks):
            for model, answer in zip(verdict.roles.reviewers, answers, strict=True):
                if not answer.ok:
                    verdict.failures.append(Failure.of("review_instruction", model, answer))
            verdict.reject("instruction_fail")
            return False
        return self._usable(verdict, "review_instruction", answers) is not None

    async def score_response(
        self,
        verdict: Verdict,
        instruction: str,
        response: str,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """Phase 2 and the decision; call after :meth:`check_instruction` passed."""
        messages = self._review.render(instruction=instruction, response=response)
        answers = await self._ask_all(verdict, "review_response", messages, RESPONSE_REVIEW, meta)
        usable = self._usable(verdict, "review_response", answers)
        if usable is None:
            return verdict
        for model, value in usable:
            scores = {c: float(value[c]) for c in RESPONSE_CRITERIA}
            score = mean(exact(v) for v in scores.values())
            review = Review(
                model, float(score), scores, value["strengths"], value["weaknesses"], score
            )
            verdict.reviews.append(review)
        decision = judge([r.exact for r in verdict.reviews], self.settings)
        verdict.mu, verdict.sigma = decision.mu_float, decision.sigma_float
        if decision.outcome == "low_mean":
            verdict.reject("low_mean")
        elif decision.outcome == "consensus":
            verdict.status, verdict.path = "accepted", "consensus"
        else:
            await self.adjudicator.settle(verdict, instruction, response, meta)
        return verdict


async def review_sample(
    engine: Engine,
    instruction: str,
    response: str,
    *,
    generator: str | None,
    rng: random.Random,
    settings: CommitteeSettings,
    meta: Mapping[str, Any] | None = None,
) -> Verdict:
    """Draw reviewers (never ``generator``) and an adjudicator from ``rng``, review, decide.

    ``generator``: the pool model that wrote the sample (excluded from its review), or
    ``None``. The same ``rng`` state and replies give the same verdict; with a journal,
    reviewing the same sample again sends nothing.
    """
    committee = Committee(engine, settings)
    roles = committee.draw(rng, generator=generator)
    return await committee.review(instruction, response, roles, meta=meta)
