"""One sample's life: generation (or refinement), the committee, and the records it leaves.

Every random choice of a sample (domain, pool examples, roles) is drawn up front from an
RNG seeded by (run seed, mode, sample index), never from completion order; every request
is a pure function of those draws and earlier replies. With the journal that makes a run
reproducible and resumable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...engine import Engine, Request, Result, book_cost, sum_usd
from ...prompts import load_prompt
from ...structured import Schema, StructuredClient, StructuredResult, object_schema
from .committee import Committee
from .pool import PoolEntry
from .roles import Roles
from .seeds import Seed
from .settings import GraSettings
from .verdict import Failure, Verdict

_KEYWORDS = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "minItems": 3,
    "maxItems": 3,
}
_TEXT = {"type": "string", "minLength": 1}

NEW_TASK: Schema = object_schema("gra_new_task", {"keywords": _KEYWORDS, "instruction": _TEXT})
SUMMARY: Schema = object_schema("gra_summary", {"keywords": _KEYWORDS, "summary": _TEXT})


def annotation_schema(domains: Sequence[str]) -> Schema:
    return object_schema(
        "gra_annotation",
        {
            "domain": {"type": "string", "enum": list(domains)},
            "keywords": _KEYWORDS,
            "summary": _TEXT,
        },
    )


def sample_rng(seed: int, *parts: object) -> random.Random:
    """The RNG of one sample or step: a pure function of the run seed and ``parts``."""
    return random.Random(":".join(map(str, ("asyncsynth-gra", seed, *parts))))


@dataclass(slots=True)
class Candidate:
    """A sample being made, and everything recorded about it."""

    id: str
    index: int
    round: int
    mode: str
    roles: Roles
    domain: str | None = None
    examples: tuple[PoolEntry, ...] = ()
    examples_fell_back: bool = False
    """The domain had no pool pair: the examples come from other domains."""
    seed: Seed | None = None
    attempt: int = 0
    instruction: str | None = None
    response: str | None = None
    generated_keywords: list[str] | None = None
    truncated: bool = False
    verdict: Verdict | None = None
    status: str = "pending"
    """``pending``, ``passed`` (committee accepted; dedup next), ``accepted``, ``rejected``."""
    reason: str | None = None
    stage: str | None = None
    """Where a rejected sample stopped."""
    failures: list[Failure] = field(default_factory=list)
    duplicate_of: str | None = None
    similarity: float | None = None
    keywords: list[str] | None = None
    summary: str | None = None
    summarized_by: str | None = None
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    costs: dict[str, float | None] = field(default_factory=dict)
    """USD the generator's answers cost when made, by model (None: no price)."""

    @property
    def sample(self) -> int:
        """The journal's draw number for this candidate's generator requests."""
        return self.attempt if self.mode == "refine" else self.index

    @property
    def mu(self) -> float | None:
        return self.verdict.mu if self.verdict else None

    def reject(self, reason: str, stage: str) -> None:
        self.status, self.reason, self.stage = "rejected", reason, stage

    def count(self, results: Sequence[Result]) -> None:
        assert self.roles.generator is not None
        book_cost(self.costs, self.roles.generator, results)
        for r in results:
            self.requests += 1
            usage = r.usage or {}
            self.tokens_in += usage.get("prompt_tokens", 0)
            self.tokens_out += usage.get("completion_tokens", 0)

    def row(self) -> dict[str, Any]:
        """The JSON line written to accepted.jsonl or rejected.jsonl."""
        verdict = self.verdict
        roles = self.roles
        row: dict[str, Any] = {
            "id": self.id,
            "instruction": self.instruction,
            "response": self.response,
            "domain": self.domain,
            "keywords": self.keywords or self.generated_keywords,
            "summary": self.summary,
            "mode": self.mode,
            "round": self.round,
            "generator": roles.generator,
            "reviewers": list(roles.reviewers),
            "adjudicator": None,
            "mu": verdict.mu if verdict else None,
            "sigma": verdict.sigma if verdict else None,
            "decision": verdict.path if verdict else None,
        }
        if self.status == "rejected":
            row["reason"] = self.reason
            row["stage"] = self.stage
            if self.duplicate_of is not None:
                row["duplicate_of"] = self.duplicate_of
                row["similarity"] = self.similarity
        generation: dict[str, Any] = {"keywords": self.generated_keywords}
        if self.examples:
            generation["examples"] = [e.id for e in self.examples]
        if self.examples_fell_back:
            generation["examples_from_other_domains"] = True
        if self.seed is not None:
            generation["seed"] = self.seed.source
            generation["original_response"] = self.seed.response
            generation["attempt"] = self.attempt
        if self.truncated:
            generation["truncated"] = True
        row["generation"] = generation
        review = verdict.to_dict() if verdict is not None else None
        if review is not None:
            row["adjudicator"] = review["adjudicator"]
            row["disputed"] = review["disputed"]
            row["review"] = {
                k: review[k] for k in ("checks", "reviews", "adjudication") if review[k]
            }
            if roles.shared:
                row["shared_roles"] = True
        failures = [
            *(f.to_dict() for f in self.failures),
            *(review["failures"] if review is not None else []),
        ]
        if failures:
            row["failures"] = failures
        if self.summarized_by:
            row["summarized_by"] = self.summarized_by
        row["requests"] = self.requests + (verdict.requests if verdict else 0)
        row["tokens"] = {
            "in": self.tokens_in + (verdict.tokens_in if verdict else 0),
            "out": self.tokens_out + (verdict.tokens_out if verdict else 0),
        }
        cost = sum_usd([*self.costs.values(), *(verdict.costs.values() if verdict else ())])
        row["cost_usd"] = None if cost is None else round(cost, 8)
        return row


class SampleMaker:
    """Runs the stages of one candidate (and the annotation and summary helpers)."""

    def __init__(self, engine: Engine, settings: GraSettings) -> None:
        self.engine = engine
        self.settings = settings
        committee = settings.committee
        self.client = StructuredClient(
            engine,
            mode=committee.structured,
            reasks=committee.reasks,
            prompts_dir=settings.prompts_dir,
        )
        self.committee = Committee(engine, committee, client=self.client)
        folder = settings.prompts_dir
        self._instruction = load_prompt("gra/generate_instruction", folder)
        self._response = load_prompt("gra/generate_response", folder)
        self._refine = load_prompt("gra/refine_response", folder)
        self._example = load_prompt("gra/example_pair", folder)
        self._no_examples = load_prompt("gra/no_examples", folder)
        self._annotate = load_prompt("gra/annotate_seed", folder)
        self._summarize = load_prompt("gra/summarize", folder)
        self._annotation = annotation_schema(settings.domains)

    def _params(self, stage: str, roles: Roles, *parts: object) -> dict[str, Any]:
        """``stage``'s request parameters, plus a per-request seed unless one is set."""
        params = dict(self.settings.params[stage])
        if self.settings.committee.request_seed and "seed" not in params:
            params["seed"] = roles.request_seed(stage, *parts)
        return params

    def _meta(self, c: Candidate, stage: str) -> dict[str, Any]:
        return {"sample_id": c.id, "stage": stage}

    def _fail(self, c: Candidate, stage: str, model: str, answer: StructuredResult) -> None:
        failure = Failure.of(stage, model, answer)
        c.failures.append(failure)
        c.reject(failure.kind, stage)

    def _examples_text(self, examples: Sequence[PoolEntry]) -> str:
        if not examples:
            return self._no_examples.render()[-1]["content"]
        return "\n".join(
            self._example.render(
                domain=e.domain, keywords=", ".join(e.keywords), summary=e.summary
            )[-1]["content"]
            for e in examples
        )

    async def _write(self, c: Candidate, stage: str, messages: list[dict[str, str]]) -> bool:
        """A plain-text answer from the generator into ``c.response``."""
        model = c.roles.generator
        assert model is not None
        request = Request(
            messages=messages,
            params=self._params("refine" if stage == "refine" else "generate", c.roles, stage),
            sample=c.sample,
            meta=self._meta(c, stage),
        )
        result = await self.engine.complete(request, role=model)
        c.count([result])
        if not result.ok:
            assert result.error is not None
            error = f"{result.error.kind}: {result.error.message}"
            c.failures.append(Failure(stage, model, "request_error", error))
            c.reject("request_error", stage)
            return False
        text = (result.completion or "").strip()
        if not text:
            c.failures.append(Failure(stage, model, "parse_failure", "the reply is empty"))
            c.reject("parse_failure", stage)
            return False
        c.response = text
        c.truncated = result.finish_reason == "length"
        if c.truncated and self.settings.truncated == "reject":
            c.reject("truncated", stage)
            return False
        return True

    async def generate(self, c: Candidate) -> None:
        """New task -> instruction check -> response -> response scoring and decision.

        The instruction is checked before the response is written: a failed instruction
        costs no response, and the committee sees exactly what it would otherwise.
        """
        model = c.roles.generator
        assert model is not None and c.domain is not None
        messages = self._instruction.render(
            domain=c.domain, examples=self._examples_text(c.examples)
        )
        answer = await self.client.ask(
            messages,
            NEW_TASK,
            role=model,
            params=self._params("generate", c.roles, "instruction"),
            sample=c.sample,
            meta=self._meta(c, "generate"),
        )
        c.count(answer.results)
        if not answer.ok:
            self._fail(c, "generate", model, answer)
            return
        c.instruction = answer.value["instruction"]
        c.generated_keywords = answer.value["keywords"]
        await self.answer(c)

    async def answer(self, c: Candidate, *, check_first: bool = True) -> None:
        """``c.instruction`` checked -> the generator's response -> scoring and decision.

        The second half of :meth:`generate`, for instructions that come from elsewhere
        (the quality benchmark's checkable tasks). ``check_first=False`` writes the
        response before the instruction check, so that even a sample whose instruction
        fails has one (the benchmark checks every response; the pipeline saves the cost)."""
        assert c.instruction is not None
        messages = self._response.render(instruction=c.instruction)
        await self._review(c, messages, "respond", check_first=check_first)

    async def refine(self, c: Candidate) -> None:
        """A seed's instruction check -> its response rewritten -> scoring and decision."""
        assert c.seed is not None
        c.instruction = c.seed.instruction
        messages = self._refine.render(instruction=c.seed.instruction, response=c.seed.response)
        await self._review(c, messages, "refine")

    async def _review(
        self,
        c: Candidate,
        messages: list[dict[str, str]],
        stage: str,
        *,
        check_first: bool = True,
    ) -> None:
        assert c.instruction is not None
        verdict = c.verdict = Verdict(c.roles)
        meta = {"sample_id": c.id}
        if not check_first and not await self._write(c, stage, messages):
            return
        if not await self.committee.check_instruction(verdict, c.instruction, meta=meta):
            c.reject(verdict.reason or "instruction_fail", "review_instruction")
            return
        if check_first and not await self._write(c, stage, messages):
            return
        assert c.response is not None
        await self.committee.score_response(verdict, c.instruction, c.response, meta=meta)
        if verdict.accepted:
            c.status = "passed"
        else:
            c.reject(
                verdict.reason or "low_mean",
                "adjudicate" if verdict.disputed else "review_response",
            )

    async def annotate(self, seed: Seed, model: str, roles: Roles) -> StructuredResult:
        """Domain, keywords and summary of a seed that lacks some of them."""
        messages = self._annotate.render(
            domains=", ".join(self.settings.domains),
            instruction=seed.instruction,
            response=seed.response,
        )
        return await self.client.ask(
            messages,
            self._annotation,
            role=model,
            params=self._params("annotate", roles, seed.index),
            meta={"seed": seed.source, "stage": "annotate"},
        )

    async def summarize(self, c: Candidate, model: str) -> StructuredResult:
        """Keywords and summary of an accepted sample, for the next round's pool."""
        assert c.instruction is not None and c.response is not None
        messages = self._summarize.render(
            domain=c.domain or "", instruction=c.instruction, response=c.response
        )
        return await self.client.ask(
            messages,
            SUMMARY,
            role=model,
            params=self._params("summarize", c.roles, "summary"),
            meta=self._meta(c, "summarize"),
        )


def new_candidate(
    settings: GraSettings, maker: SampleMaker, *, index: int, round_no: int
) -> Candidate:
    """Draw a generate-mode candidate: its domain, then its roles (its pool examples are
    drawn from :func:`examples_rng` when it starts, see :mod:`.pool`)."""
    rng = sample_rng(settings.seed, "generate", index)
    domain = rng.choice(settings.domains)
    roles = maker.committee.draw(rng, draw_generator=True)
    return Candidate(
        id=f"gra-{index:06d}",
        index=index,
        round=round_no,
        mode="generate",
        roles=roles,
        domain=domain,
    )


def examples_rng(settings: GraSettings, c: Candidate) -> random.Random:
    """The RNG that picks candidate ``c``'s pool examples."""
    return sample_rng(settings.seed, "examples", c.index)


def refine_candidate(
    settings: GraSettings, maker: SampleMaker, *, seed: Seed, attempt: int, round_no: int
) -> Candidate:
    """Draw a refine-mode candidate for ``seed`` (its ``attempt``-th rewrite)."""
    rng = sample_rng(settings.seed, "refine", seed.index, attempt)
    roles = maker.committee.draw(rng, draw_generator=True)
    return Candidate(
        id=f"refine-{seed.index:06d}-{attempt}",
        index=seed.index,
        round=round_no,
        mode="refine",
        roles=roles,
        domain=seed.domain,
        seed=seed,
        attempt=attempt,
    )
