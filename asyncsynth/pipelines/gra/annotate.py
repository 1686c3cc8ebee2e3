"""Seed annotation: a pool model gives each seed that lacks them a domain, keywords and summary.

Annotation streams: :class:`SeedAnnotations` annotates every seed in the background while
round 1 runs, and a candidate that needs a seed not yet annotated has it annotated at
once (see :mod:`.pool`). The model is drawn per seed from the run's seed; a reply that
cannot be used is asked once more of another pool model, and a seed that still has no
annotation is left out of the pool and counted, with its line, in the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio

from ...engine import Result
from ...structured import StructuredResult
from .pool import PoolEntry
from .roles import Roles
from .samples import SampleMaker, sample_rng
from .seeds import Seed

Tally = Callable[[str, str, Sequence[Result]], None]
"""Counts a stage's requests: ``(stage, model, results)``."""


class SeedAnnotations:
    """Every seed's pool entry: given in the data, or annotated on demand or in the background."""

    def __init__(self, seeds: Sequence[Seed], maker: SampleMaker, tally: Tally) -> None:
        self.seeds = seeds
        self.maker = maker
        self.pool = maker.settings.committee.pool
        self.run_seed = maker.settings.seed
        self._tally = tally
        self._entries: dict[int, PoolEntry | None] = {}
        self._started: dict[int, anyio.Event] = {}
        self.needed = 0
        self.annotated = 0
        self.retried = 0
        self.failures: list[dict[str, Any]] = []
        for seed in seeds:
            if seed.annotated:
                self._entries[seed.index] = _entry(seed, None, seed.domain, seed.keywords)
            else:
                self.needed += 1

    @property
    def complete(self) -> bool:
        return len(self._entries) == len(self.seeds)

    def domain_of(self, index: int) -> str | None:
        entry = self._entries.get(index)
        return entry.domain if entry is not None else self.seeds[index].domain

    def known(self, index: int) -> PoolEntry | None:
        return self._entries.get(index)

    def entries(self) -> list[PoolEntry]:
        """The seeds' entries known so far, in seed order."""
        return [e for i in sorted(self._entries) if (e := self._entries[i]) is not None]

    def record(self) -> dict[str, Any]:
        """For the report: what annotation did, and what it lost."""
        return {
            "needed": self.needed,
            "annotated": self.annotated,
            "retried": self.retried,
            "unfinished": len(self.seeds) - len(self._entries),
            "failures": sorted(self.failures, key=lambda f: f["index"]),
        }

    async def entry(self, index: int) -> PoolEntry | None:
        """The seed's entry, annotating it now unless that is done or under way."""
        while index not in self._entries:
            started = self._started.get(index)
            if started is not None:
                await started.wait()
                continue
            done = self._started[index] = anyio.Event()
            try:
                self._entries[index] = await self._annotate(self.seeds[index])
            finally:
                if index not in self._entries:  # cancelled: the next caller starts again
                    del self._started[index]
                done.set()
        return self._entries[index]

    async def run(self, limit: int) -> None:
        """Annotate every seed not yet annotated, ``limit`` at a time, in seed order."""
        pending = iter([s.index for s in self.seeds if s.index not in self._entries])

        async def worker() -> None:
            for index in pending:
                await self.entry(index)

        async with anyio.create_task_group() as tg:
            for _ in range(max(1, limit)):
                tg.start_soon(worker)

    async def _ask(self, seed: Seed, model: str, roles: Roles) -> StructuredResult:
        answer = await self.maker.annotate(seed, model, roles)
        self._tally("annotate", model, answer.results)
        return answer

    async def _annotate(self, seed: Seed) -> PoolEntry | None:
        rng = sample_rng(self.run_seed, "annotate", seed.index)
        model = rng.choice(self.pool)
        roles = Roles(None, (), model, rng.getrandbits(31))
        answer = await self._ask(seed, model, roles)
        models = [model]
        others = [m for m in self.pool if m != model]
        if not answer.ok and others:
            self.retried += 1
            model = rng.choice(others)
            models.append(model)
            answer = await self._ask(seed, model, Roles(None, (), model, roles.seed))
        if not answer.ok:
            self.failures.append(
                {"index": seed.index, "seed": seed.source, "model": model, "models": models}
                | {"kind": answer.failure, "message": answer.error, "cause": answer.cause}
            )
            return None
        self.annotated += 1
        value = answer.value
        return _entry(
            seed,
            model,
            seed.domain or value["domain"],
            seed.keywords or tuple(value["keywords"]),
            seed.summary or value["summary"],
        )


def _entry(
    seed: Seed,
    model: str | None,
    domain: str | None,
    keywords: Sequence[str] | None,
    summary: str | None = None,
) -> PoolEntry:
    summary = summary or seed.summary
    assert domain is not None and keywords is not None and summary is not None
    return PoolEntry(f"seed-{seed.index:06d}", domain, tuple(keywords), summary, "seed", 0, model)
