"""The pool generators read: (keywords, summary) pairs by domain, from seeds and kept samples.

Each round draws its candidates' examples from the pool as it stood when the round began:
every seed, and the samples kept in earlier rounds. Seeds that lack a domain, keywords or
a summary are annotated by a pool model, and that streams: a candidate waits only for the
seeds it looks at, never for the whole seed set.

How a candidate picks its ``k`` examples of domain ``d`` is a pure function of the run's
seed and the replies, never of timing: the round's pool is shuffled once; the candidate
starts at a random place in that order and takes the first ``k`` pairs of domain ``d``
(waiting for a seed's annotation when it reaches one not yet annotated, and skipping seeds
whose annotation failed). A domain with no pair at all falls back to the first ``k`` pairs
of any domain, and the fallback is counted.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class PoolEntry:
    """A (keywords, summary) pair of a domain's pool, from a seed or an accepted sample."""

    id: str
    domain: str
    keywords: tuple[str, ...]
    summary: str
    origin: str
    """``seed`` or ``generated``."""
    round: int = 0
    model: str | None = None
    """The model that wrote the keywords and summary (``None``: given in the seed data)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "domain": self.domain,
            "keywords": list(self.keywords),
            "summary": self.summary,
            "origin": self.origin,
            "round": self.round,
            "model": self.model,
        }


class SeedEntries(Protocol):
    """The seeds' pool entries, annotated on demand (see :mod:`.annotate`)."""

    @property
    def complete(self) -> bool:
        """Every seed's entry is known (annotated, given, or failed)."""
        ...

    def domain_of(self, index: int) -> str | None:
        """The seed's domain if known without asking (given in the data, or annotated)."""
        ...

    def known(self, index: int) -> PoolEntry | None:
        """The seed's entry once known (``None``: not known yet, or failed)."""
        ...

    async def entry(self, index: int) -> PoolEntry | None:
        """The seed's entry, annotating it now if needed (``None``: its annotation failed)."""
        ...


@dataclass(frozen=True, slots=True)
class Examples:
    entries: tuple[PoolEntry, ...]
    fell_back: bool = False
    """The candidate's domain had no pair: these come from other domains."""


class RoundPool:
    """The pool as one round sees it: every seed (annotated on demand) and earlier rounds' pairs."""

    def __init__(
        self, rng: random.Random, seeds: SeedEntries, count: int, generated: Sequence[PoolEntry]
    ) -> None:
        order: list[int | PoolEntry] = [*range(count), *generated]
        rng.shuffle(order)
        self._order = order
        self._seeds = seeds
        self._positions: dict[str | None, list[int]] | None = None

    def __len__(self) -> int:
        return len(self._order)

    def _entry_now(self, item: int | PoolEntry) -> PoolEntry | None:
        return item if isinstance(item, PoolEntry) else self._seeds.known(item)

    def _resolved(self) -> dict[str | None, list[int]] | None:
        """Positions of each domain's pairs in the round's order (``None``: all of them),
        once every seed is known."""
        if self._positions is None and self._seeds.complete:
            positions: dict[str | None, list[int]] = {None: []}
            for pos, item in enumerate(self._order):
                entry = self._entry_now(item)
                if entry is not None:
                    positions.setdefault(entry.domain, []).append(pos)
                    positions[None].append(pos)
            self._positions = positions
        return self._positions

    async def draw(self, rng: random.Random, domain: str, k: int) -> Examples:
        """``k`` examples of ``domain`` (fewer if it has fewer), from a random start."""
        if not self._order:
            return Examples(())
        start = rng.randrange(len(self._order))
        found = await self._scan(start, domain, k)
        if found:
            return Examples(tuple(found))
        others = await self._scan(start, None, k)
        return Examples(tuple(others), fell_back=bool(others))

    async def _scan(self, start: int, domain: str | None, k: int) -> list[PoolEntry]:
        """The first ``k`` pairs of ``domain`` (any: ``None``) from ``start`` on, wrapping."""
        positions = self._resolved()
        if positions is not None:
            return self._pick(positions.get(domain, []), start, k)
        n = len(self._order)
        found: list[PoolEntry] = []
        for step in range(n):
            item = self._order[(start + step) % n]
            if isinstance(item, PoolEntry):
                entry: PoolEntry | None = item
            elif domain is not None and self._seeds.domain_of(item) not in (None, domain):
                continue  # its domain is known without asking: no need to wait for it
            else:
                entry = await self._seeds.entry(item)
            if entry is not None and domain in (None, entry.domain):
                found.append(entry)
                if len(found) == k:
                    break
        return found

    def _pick(self, ordered: list[int], start: int, k: int) -> list[PoolEntry]:
        """:meth:`_scan` once every seed is known: the same answer, by bisection."""
        i = bisect.bisect_left(ordered, start)
        out: list[PoolEntry] = []
        tail = ordered[i : i + k]
        for pos in [*tail, *ordered[: min(i, k - len(tail))]]:
            entry = self._entry_now(self._order[pos])
            assert entry is not None
            out.append(entry)
        return out
