"""Summaries: a random pool model writes the keywords and summary of each kept sample.

They join the pool that the next round's generators read. With ``summarize_early`` a
sample is summarised the moment the committee passes it, so the end of a round waits
for no summaries (a duplicate's summary is then wasted; the pool is the same either way).
A reply that cannot be used is asked once more of another pool model; a kept sample that
still has no summary stays accepted, is left out of the pool, and is counted in the report.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from .annotate import Tally
from .pool import PoolEntry
from .samples import Candidate, SampleMaker, sample_rng
from .verdict import Failure

Each = Callable[[Sequence[Candidate], Callable[[Candidate], Awaitable[None]]], Awaitable[None]]
"""Runs ``work`` on every candidate, a bounded number at once."""


class Summaries:
    """The summaries of one run's kept samples, and what they cost and lost."""

    def __init__(self, maker: SampleMaker, tally: Tally) -> None:
        self.maker = maker
        self.settings = maker.settings
        self._tally = tally
        self._done: dict[str, tuple[str, Failure | None]] = {}
        self.retried = 0
        self.failed: list[str] = []
        """Ids of kept samples left without a summary."""

    async def summarize(self, c: Candidate) -> None:
        """Write ``c``'s keywords and summary (asking a second model if the first fails)."""
        pool = self.settings.committee.pool
        rng = sample_rng(self.settings.seed, "summarize", c.id)
        model = rng.choice(pool)
        answer = await self.maker.summarize(c, model)
        self._tally("summarize", model, answer.results)
        others = [m for m in pool if m != model]
        if not answer.ok and others:
            self.retried += 1
            c.failures.append(Failure.of("summarize", model, answer))  # stays on the record
            model = rng.choice(others)
            answer = await self.maker.summarize(c, model)
            self._tally("summarize", model, answer.results)
        if answer.ok:
            c.keywords, c.summary = list(answer.value["keywords"]), answer.value["summary"]
            c.summarized_by = model
            self._done[c.id] = (model, None)
        else:
            self._done[c.id] = (model, Failure.of("summarize", model, answer))

    def forget(self) -> None:
        """Drop the summaries of the round's duplicates (they never reach the pool)."""
        self._done.clear()

    async def pool_entries(
        self, kept: Sequence[Candidate], round_no: int, each: Each
    ) -> list[PoolEntry]:
        """The pool entries of the round's kept samples, in sample order (summarising those
        not summarised yet, ``each`` bounding how many at once)."""
        await each([c for c in kept if c.id not in self._done], self.summarize)
        entries: list[PoolEntry] = []
        for c in sorted(kept, key=lambda c: c.index):
            model, failure = self._done.pop(c.id)
            if failure is not None:
                c.failures.append(failure)
                self.failed.append(c.id)
                continue
            assert c.domain is not None and c.keywords is not None and c.summary is not None
            entries.append(
                PoolEntry(
                    c.id, c.domain, tuple(c.keywords), c.summary, "generated", round_no, model
                )
            )
        return entries
