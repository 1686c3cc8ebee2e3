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

Then over the reviewers' scores, mean mu and standard deviation sigma: mu < tau rejects
(``low_mean``); mu >= tau and sigma <= delta accepts (``consensus``); otherwise the
adjudicator reads the sample and every review and scores it the same way: kept if its
score >= tau (``adjudicated``), else rejected (``adjudicator_reject``). A reply that cannot
be parsed after the re-asks is ``parse_failure``; a request that failed for good is
``request_error`` (unless ``min_reviews`` lets the committee decide without it).
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ...engine import Engine
from ...engine.errors import ConfigError
from ...prompts import load_prompt
from ...structured import Schema, StructuredClient, StructuredResult, object_schema
from .settings import CommitteeSettings

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
    "low_mean",
    "adjudicator_reject",
    "parse_failure",
    "request_error",
)
_SCORE = {"type": "number", "minimum": 0, "maximum": 10}
_TEXT = {"type": "string"}
_FLAG = {"type": "boolean"}
_RAW_KEPT = 500
"""Characters of an unusable reply kept in the failure record."""

INSTRUCTION_CHECK: Schema = object_schema(
    "gra_instruction_check",
    {"assessment": _TEXT, **dict.fromkeys(INSTRUCTION_CRITERIA, _FLAG)},
)
RESPONSE_REVIEW: Schema = object_schema(
    "gra_response_review",
    {"strengths": _TEXT, "weaknesses": _TEXT, **dict.fromkeys(RESPONSE_CRITERIA, _SCORE)},
)
ADJUDICATION: Schema = object_schema(
    "gra_adjudication",
    {"assessment": _TEXT, **dict.fromkeys(RESPONSE_CRITERIA, _SCORE)},
)


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Roles:
    """Who does what for one sample. ``shared`` is true when a model holds two roles."""

    generator: str | None
    reviewers: tuple[str, ...]
    adjudicator: str
    seed: int = 0
    """Base of the per-request ``seed`` parameters (drawn with the roles)."""
    shared: bool = False

    def request_seed(self, *parts: object) -> int:
        """A stable 31-bit seed for one request of this sample."""
        text = ":".join(map(str, (self.seed, *parts))).encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "big") >> 1


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
    scores: dict[str, float]
    strengths: str
    weaknesses: str


@dataclass(slots=True)
class Adjudication:
    model: str
    score: float
    scores: dict[str, float]
    assessment: str
    keep: bool


@dataclass(slots=True)
class Failure:
    """A reply that could not be used, or a request that failed for good."""

    stage: str
    model: str
    kind: str
    """``parse_failure`` or ``request_error``."""
    message: str
    raw: str | None = None


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
    adjudication: Adjudication | None = None
    failures: list[Failure] = field(default_factory=list)
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @property
    def disputed(self) -> bool:
        return self.path == "adjudicated" or self.reason == "adjudicator_reject"

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
            "failures": [
                {"stage": f.stage, "model": f.model, "kind": f.kind, "message": f.message}
                | ({"raw": f.raw} if f.raw else {})
                for f in self.failures
            ],
            "requests": self.requests,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
        }
        if self.roles.shared:
            out["shared_roles"] = True
        return out

    def _count(self, answer: StructuredResult) -> None:
        self.requests += len(answer.results)
        self.tokens_in += answer.tokens_in
        self.tokens_out += answer.tokens_out

    def _reject(self, reason: str, path: str | None = None) -> None:
        self.status, self.reason, self.path = "rejected", reason, path or reason


def decide(scores: Sequence[float], settings: CommitteeSettings) -> tuple[str, float, float]:
    """``("low_mean" | "consensus" | "dispute", mu, sigma)`` for the reviewers' scores."""
    mu = statistics.fmean(scores)
    if len(scores) < 2:
        sigma = 0.0
    elif settings.std == "sample":
        sigma = statistics.stdev(scores)
    else:
        sigma = statistics.pstdev(scores)
    mu, sigma = round(mu, 9), round(sigma, 9)  # 8.000000001 is 8: thresholds are inclusive
    if mu < settings.tau:
        return "low_mean", mu, sigma
    if sigma <= settings.delta:
        return "consensus", mu, sigma
    return "dispute", mu, sigma


# -- roles --------------------------------------------------------------------------------------


def draw_roles(
    rng: random.Random,
    settings: CommitteeSettings,
    *,
    generator: str | None = None,
    draw_generator: bool = False,
) -> Roles:
    """Draw a sample's roles from ``rng`` (and nothing else, so a seed fixes them).

    Random assignment: the generator (drawn when ``draw_generator``), then
    ``settings.reviewers`` distinct reviewers among the other models, then an adjudicator
    among the rest. A ``generator`` outside the pool excludes nobody. When the pool is too
    small and ``allow_shared_roles`` is set, roles repeat as little as possible: reviewers
    are first the models that are not the generator, then any; the adjudicator is a model
    with no other role if one is left.
    """
    if settings.assignment == "fixed":
        fixed = settings.fixed
        assert fixed is not None
        gen = fixed.generator if draw_generator else generator
        names = [n for n in (gen, *fixed.reviewers, fixed.adjudicator) if n is not None]
        return Roles(
            gen,
            fixed.reviewers,
            fixed.adjudicator,
            rng.getrandbits(31),
            len(set(names)) != len(names),
        )
    pool = list(settings.pool)
    gen = rng.choice(pool) if draw_generator else generator
    others = [m for m in pool if m != gen]
    n = settings.reviewers
    if len(others) >= n + 1:
        reviewers = rng.sample(others, n)
        rest = [m for m in others if m not in reviewers]
        return Roles(gen, tuple(reviewers), rng.choice(rest), rng.getrandbits(31))
    if not settings.allow_shared_roles:
        raise ConfigError(
            f"{settings.source}: gra.pool ({', '.join(pool)}) has too few models for "
            f"{n} reviewers and an adjudicator distinct from each other"
            + (f" and from the generator {gen!r}" if gen in pool else "")
            + "; add models or set gra.allow_shared_roles = true"
        )
    first = rng.sample(others, min(n, len(others)))
    extra = rng.choices(others or pool, k=n - len(first))
    reviewers = first + extra
    unused = [m for m in others if m not in reviewers]
    adjudicator = rng.choice(unused or others or pool)
    return Roles(gen, tuple(reviewers), adjudicator, rng.getrandbits(31), shared=True)


# -- the committee ------------------------------------------------------------------------------


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
        prompts_dir = settings.prompts_dir
        self._check = load_prompt("gra/review_instruction", prompts_dir)
        self._review = load_prompt("gra/review_response", prompts_dir)
        self._adjudicate = load_prompt("gra/adjudicate", prompts_dir)
        self._review_item = load_prompt("gra/adjudicate_review_item", prompts_dir)

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
        params: Mapping[str, Any],
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
                params=self._params(params, roles, stage, slot),
                sample=repeat,
                meta={**(meta or {}), "stage": stage, "slot": slot},
            )

        async with anyio.create_task_group() as tg:
            for slot, model in enumerate(roles.reviewers):
                tg.start_soon(ask, slot, model)
        done = [a for a in answers if a is not None]
        for answer in done:
            verdict._count(answer)
        return done

    def _usable(
        self, verdict: Verdict, stage: str, answers: list[StructuredResult]
    ) -> list[tuple[str, Any]] | None:
        """(model, value) of the usable answers; ``None`` (and a rejection) if too few."""
        usable: list[tuple[str, Any]] = []
        for model, answer in zip(verdict.roles.reviewers, answers, strict=True):
            if answer.ok:
                usable.append((model, answer.value))
            else:
                verdict.failures.append(_failure(stage, model, answer))
        if len(usable) < self.settings.needed_reviews:
            first = next(f for f in verdict.failures if f.stage == stage)
            verdict._reject(first.kind)
            return None
        return usable

    async def check_instruction(
        self, verdict: Verdict, instruction: str, *, meta: Mapping[str, Any] | None = None
    ) -> bool:
        """Phase 1. True if every reviewer passed the instruction on every criterion."""
        messages = self._check.render(instruction=instruction)
        answers = await self._ask_all(
            verdict,
            "review_instruction",
            messages,
            INSTRUCTION_CHECK,
            self.settings.review_params,
            meta,
        )
        checks = []
        for model, answer in zip(verdict.roles.reviewers, answers, strict=True):
            if answer.ok:
                criteria = {c: bool(answer.value[c]) for c in INSTRUCTION_CRITERIA}
                checks.append(
                    InstructionCheck(
                        model, all(criteria.values()), criteria, answer.value["assessment"]
                    )
                )
        verdict.checks = checks
        if any(not c.passed for c in checks):
            for model, answer in zip(verdict.roles.reviewers, answers, strict=True):
                if not answer.ok:
                    verdict.failures.append(_failure("review_instruction", model, answer))
            verdict._reject("instruction_fail")
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
        answers = await self._ask_all(
            verdict,
            "review_response",
            messages,
            RESPONSE_REVIEW,
            self.settings.review_params,
            meta,
        )
        usable = self._usable(verdict, "review_response", answers)
        if usable is None:
            return verdict
        for model, value in usable:
            scores = {c: float(value[c]) for c in RESPONSE_CRITERIA}
            verdict.reviews.append(
                Review(
                    model,
                    round(statistics.fmean(scores.values()), 4),
                    scores,
                    value["strengths"],
                    value["weaknesses"],
                )
            )
        outcome, verdict.mu, verdict.sigma = decide(
            [r.score for r in verdict.reviews], self.settings
        )
        if outcome == "low_mean":
            verdict._reject("low_mean")
        elif outcome == "consensus":
            verdict.status, verdict.path = "accepted", "consensus"
        else:
            await self._adjudicate_dispute(verdict, instruction, response, meta)
        return verdict

    async def _adjudicate_dispute(
        self,
        verdict: Verdict,
        instruction: str,
        response: str,
        meta: Mapping[str, Any] | None,
    ) -> None:
        roles = verdict.roles
        items = [
            self._review_item.render(
                number=i,
                score=_fmt(review.score),
                scores=", ".join(f"{c} {_fmt(s)}" for c, s in review.scores.items()),
                strengths=review.strengths,
                weaknesses=review.weaknesses,
            )[-1]["content"]
            for i, review in enumerate(verdict.reviews, 1)
        ]
        messages = self._adjudicate.render(
            instruction=instruction,
            response=response,
            reviews="\n\n".join(items),
            mu=_fmt(verdict.mu or 0.0),
            sigma=_fmt(verdict.sigma or 0.0),
        )
        answer = await self.client.ask(
            messages,
            ADJUDICATION,
            role=roles.adjudicator,
            params=self._params(self.settings.adjudicate_params, roles, "adjudicate"),
            meta={**(meta or {}), "stage": "adjudicate"},
        )
        verdict._count(answer)
        if not answer.ok:
            failure = _failure("adjudicate", roles.adjudicator, answer)
            verdict.failures.append(failure)
            verdict._reject(failure.kind)
            return
        scores = {c: float(answer.value[c]) for c in RESPONSE_CRITERIA}
        score = round(statistics.fmean(scores.values()), 4)
        keep = round(score, 9) >= self.settings.tau
        verdict.adjudication = Adjudication(
            roles.adjudicator, score, scores, answer.value["assessment"], keep
        )
        if keep:
            verdict.status, verdict.path = "accepted", "adjudicated"
        else:
            verdict._reject("adjudicator_reject", "adjudicated")


def _failure(stage: str, model: str, answer: StructuredResult) -> Failure:
    raw = answer.raw
    return Failure(
        stage,
        model,
        answer.failure or "parse_failure",
        answer.error or "",
        raw[:_RAW_KEPT] if raw else None,
    )


def _fmt(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)


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
