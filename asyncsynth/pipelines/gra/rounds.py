"""Rounds of GRA: size a round, draw its candidates, run them pipelined, finish it.

Within a round every candidate is its own coroutine: its review starts the moment its
generation ends and its adjudication the moment its reviews end, with as many candidates
in flight as the pool's endpoints can serve (``max_in_flight``). The round ends when all
its candidates are decided; then the passed ones are deduplicated (:func:`.dedup_round`)
and the (keywords, summary) pairs of the kept ones join the pool (:mod:`.summarize`) that
the next round's generators read (:mod:`.pool`).

A run stops when the target is reached, after ``max_rounds`` rounds, when the
``time_budget`` is spent (no new candidate starts; the round in flight finishes), when a
whole round failed on requests, or (refine mode) when every seed has had its attempts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ...engine import Engine, Result, book_cost
from ..events import EventKind, OnEvent, PipelineEvent
from .annotate import SeedAnnotations
from .dedup import Deduplicator, dedup_round
from .pool import PoolEntry, RoundPool
from .samples import (
    Candidate,
    SampleMaker,
    examples_rng,
    new_candidate,
    refine_candidate,
    sample_rng,
)
from .seeds import Seed
from .settings import GraSettings
from .summarize import Summaries

MIN_RATE = 0.1
"""Lowest acceptance rate assumed when sizing a round (at most 10x over-generation)."""
MAX_DEFAULT_IN_FLIGHT = 4096
STOPS = (
    "target_reached",
    "max_rounds",
    "time_budget",
    "all_requests_failed",
    "seeds_exhausted",
)
"""Why a run stopped (``report.json``'s ``stopped``)."""


def round_size(
    settings: GraSettings,
    *,
    target: int,
    made: int,
    accepted: int,
    rounds_done: int,
    available: int | None = None,
) -> int:
    """Candidates for the next round: ``round_size``, or enough at the acceptance rate seen
    so far for the remaining target spread over the remaining planned rounds. The last
    planned round adds one standard deviation of margin, so that a little bad luck costs a
    few surplus samples rather than a whole extra round. At most ``available``."""
    if settings.round_size:
        n = settings.round_size
    else:
        remaining = target - accepted
        rounds_left = max(1, settings.rounds - rounds_done)
        need: float = math.ceil(remaining / rounds_left)
        rate = max(accepted / made if made else settings.initial_acceptance, MIN_RATE)
        if rounds_left == 1 and made:
            need += math.sqrt(need * (1 - rate))
        n = max(1, math.ceil(need / rate))
    return min(n, available) if available is not None else n


@dataclass
class Usage:
    """Requests, tokens and cost of the steps outside the candidates (annotation, summaries)."""

    by_stage: dict[str, dict[str, int]] = field(
        default_factory=lambda: {
            s: {"requests": 0, "in": 0, "out": 0} for s in ("annotate", "summarize")
        }
    )
    costs: dict[str, dict[str, float | None]] = field(
        default_factory=lambda: {"annotate": {}, "summarize": {}}
    )
    """USD by stage, then by model, as the answers cost when made (None: no price)."""

    def tally(self, stage: str, model: str, results: Sequence[Result]) -> None:
        book_cost(self.costs[stage], model, results)
        usage = self.by_stage[stage]
        for r in results:
            usage["requests"] += 1
            usage["in"] += (r.usage or {}).get("prompt_tokens", 0)
            usage["out"] += (r.usage or {}).get("completion_tokens", 0)


class Rounds:
    """One run's rounds and everything they made."""

    def __init__(
        self,
        engine: Engine,
        settings: GraSettings,
        seeds: Sequence[Seed],
        dedup: Deduplicator,
        *,
        target: int,
        on_event: OnEvent | None = None,
        on_round: Callable[[list[Candidate]], None] | None = None,
        maker: SampleMaker | None = None,
    ) -> None:
        """``maker``: who makes the candidates (default: a :class:`SampleMaker` on
        ``engine``; the Ray executor's sends them to its actors)."""
        self.engine = engine
        self.settings = settings
        self.seeds = seeds
        self.dedup = dedup
        self.target = target
        self.on_event = on_event
        self.on_round = on_round
        self.maker = maker or SampleMaker(engine, settings)
        self.usage = Usage()
        self.annotations = SeedAnnotations(seeds, self.maker, self.usage.tally)
        self.summaries = Summaries(self.maker, self.usage.tally)
        self.candidates: list[Candidate] = []
        self.generated: list[PoolEntry] = []
        self.rounds: list[dict[str, Any]] = []
        self.fallbacks: dict[str, int] = {}
        self.stopped = "running"
        self.limit = 1
        self.started = time.monotonic()
        self._next_index = 0
        self._attempts = {s.index: 0 for s in seeds}
        self._done_seeds: set[int] = set()
        self._progress = {"done": 0, "total": 0, "passed": 0}

    # -- helpers ------------------------------------------------------------------------------

    @property
    def accepted(self) -> int:
        return sum(c.status == "accepted" for c in self.candidates)

    def emit(self, kind: EventKind, step: str, /, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(PipelineEvent(kind, step, data, "gra"))

    def _over_budget(self) -> bool:
        budget = self.settings.time_budget
        return budget is not None and time.monotonic() - self.started >= budget

    async def each(
        self, items: Sequence[Any], work: Callable[[Any], Awaitable[None]], *, budget: bool = False
    ) -> None:
        """``work`` on every item, at most ``self.limit`` at once, nothing left running; with
        ``budget``, no item starts once the time budget is spent."""
        iterator = iter(items)

        async def worker() -> None:
            for item in iterator:
                if budget and self._over_budget():
                    return
                await work(item)

        async with anyio.create_task_group() as tg:
            for _ in range(min(self.limit, len(items))):
                tg.start_soon(worker)

    async def open(self) -> None:
        """Start every pool model's endpoints and size the in-flight bound."""
        slots = 0
        for name in self.settings.committee.pool:
            fleet = await self.engine.fleet(name)
            slots += sum(int(ep.limit.cap) for ep in fleet.endpoints)
        self.limit = self.settings.max_in_flight or min(MAX_DEFAULT_IN_FLIGHT, 2 * slots)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Rounds until a stop; in generate mode, seed annotation streams alongside."""
        if self.settings.mode == "refine":
            await self._rounds()
            return
        self.emit("start", "annotate", seeds=len(self.seeds), needed=self.annotations.needed)
        if self.annotations.complete:
            self.emit("done", "annotate", **self.annotations.record())
            await self._rounds()
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._annotate)
            await self._rounds()
            tg.cancel_scope.cancel()

    async def _annotate(self) -> None:
        """Annotate the seeds in the background (half the in-flight bound), while round 1
        annotates at once the seeds its candidates reach first."""
        await self.annotations.run(max(1, self.limit // 2))
        self.emit("done", "annotate", **self.annotations.record())

    async def _rounds(self) -> None:
        while self.accepted < self.target:
            if len(self.rounds) >= self.settings.max_rounds:
                self.stopped = "max_rounds"
                return
            if self._over_budget():
                self.stopped = "time_budget"
                return
            batch, work = self._draw(len(self.rounds) + 1)
            if not batch:
                self.stopped = "seeds_exhausted"
                return
            await self._run_round(batch, work)
            if batch and all(c.reason == "request_error" for c in batch):
                self.stopped = "all_requests_failed"
                return
        self.stopped = "target_reached"

    def _draw(self, round_no: int) -> tuple[list[Candidate], Callable[[Any], Awaitable[None]]]:
        """The next round's candidates, and the work that makes each."""
        settings = self.settings
        sized = {
            "target": self.target,
            "made": len(self.candidates),
            "accepted": self.accepted,
            "rounds_done": len(self.rounds),
        }
        if settings.mode == "generate":
            n = round_size(settings, **sized)
            first, self._next_index = self._next_index, self._next_index + n
            batch = [
                new_candidate(settings, self.maker, index=i, round_no=round_no)
                for i in range(first, first + n)
            ]
            pool = RoundPool(
                sample_rng(settings.seed, "pool", round_no),
                self.annotations,
                len(self.seeds),
                self.generated,
            )
            return batch, lambda c: self._generate(c, pool)
        pending = [
            s
            for s in self.seeds
            if s.index not in self._done_seeds
            and self._attempts[s.index] < settings.refine_attempts
        ]
        batch = []
        for seed in pending[: round_size(settings, **sized, available=len(pending))]:
            attempt = self._attempts[seed.index]
            self._attempts[seed.index] += 1
            batch.append(
                refine_candidate(
                    settings, self.maker, seed=seed, attempt=attempt, round_no=round_no
                )
            )
        return batch, self._refine

    async def _run_round(
        self, batch: list[Candidate], work: Callable[[Any], Awaitable[None]]
    ) -> None:
        round_no = batch[0].round
        started = time.monotonic()
        self._progress = {"done": 0, "total": len(batch), "passed": 0, "accepted": self.accepted}
        self.emit(
            "start",
            f"round_{round_no}",
            candidates=len(batch),
            accepted=self.accepted,
            target=self.target,
        )
        await self.each(batch, work, budget=True)
        batch[:] = [c for c in batch if c.status != "pending"]  # never started: over budget
        self.candidates.extend(batch)
        kept = await dedup_round(batch, self.dedup, self.settings.dedup_text)
        if self.settings.mode == "generate":
            self.generated += await self.summaries.pool_entries(kept, round_no, self.each)
        self.summaries.forget()  # duplicates' early summaries
        self._done_seeds.update(c.index for c in batch if c.status == "accepted" and c.seed)
        record = _round_record(batch, round_no, len(kept), self._pool_size(), started)
        self.rounds.append(record)
        self.emit("done", f"round_{round_no}", **record, accepted_total=self.accepted)
        if self.on_round is not None:
            self.on_round(batch)

    def _pool_size(self) -> int:
        return len(self.annotations.entries()) + len(self.generated)

    # -- one candidate ------------------------------------------------------------------------

    async def _generate(self, c: Candidate, pool: RoundPool) -> None:
        assert c.domain is not None
        drawn = await pool.draw(
            examples_rng(self.settings, c), c.domain, self.settings.examples_per_prompt
        )
        c.examples, c.examples_fell_back = drawn.entries, drawn.fell_back
        if drawn.fell_back:
            self.fallbacks[c.domain] = self.fallbacks.get(c.domain, 0) + 1
        await self.maker.generate(c)
        if c.status == "passed" and self.settings.summarize_early:
            await self.summaries.summarize(c)
        self._decided(c)

    async def _refine(self, c: Candidate) -> None:
        await self.maker.refine(c)
        self._decided(c)

    def _decided(self, c: Candidate) -> None:
        """A candidate of the round is decided: the counts so far (``accepted``: before the
        round; ``in_flight``: candidates under way)."""
        progress = self._progress
        progress["done"] += 1
        progress["passed"] += c.status == "passed"
        in_flight = min(self.limit, progress["total"] - progress["done"])
        self.emit(
            "request", f"round_{c.round}", **progress, in_flight=in_flight, target=self.target
        )

    def losses(self) -> dict[str, Any]:
        """What the run could not do and went on without (for the report)."""
        failures = self.annotations.failures
        return {
            "annotation_failed": sorted(f["seed"] for f in failures),
            "annotation_retried": self.annotations.retried,
            "summary_failed": sorted(self.summaries.failed),
            "summary_retried": self.summaries.retried,
            "domain_fallbacks": dict(sorted(self.fallbacks.items())),
        }


def _round_record(
    batch: Sequence[Candidate], round_no: int, kept: int, pool_size: int, started: float
) -> dict[str, Any]:
    reasons = sorted({c.reason for c in batch if c.reason})
    return {
        "round": round_no,
        "candidates": len(batch),
        "passed_committee": sum(c.status == "accepted" or c.reason == "duplicate" for c in batch),
        "accepted": kept,
        "rejected": {r: sum(c.reason == r for c in batch) for r in reasons},
        "pool_size": pool_size,
        "wall_s": round(time.monotonic() - started, 3),
    }
