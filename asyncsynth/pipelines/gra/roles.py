"""Who does what for one sample: the generator, the reviewers and the adjudicator.

Random assignment (the paper's best): the generator, then ``reviewers`` distinct models
among the others, then an adjudicator among the rest, all drawn from one RNG so that a
seed fixes them. ``assignment = "fixed"`` names the three roles once for every sample.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from ...engine.errors import ConfigError
from .settings import CommitteeSettings


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
    are first the models that are not the generator, then any models of the pool (the
    generator too: two reviews by one model at temperature 0 would be one review twice);
    the adjudicator is a model with no other role if one is left.
    """
    if settings.assignment == "fixed":
        assert settings.fixed is not None
        return _fixed(rng, settings, settings.fixed.generator if draw_generator else generator)
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
    rest = [m for m in pool if m not in first]  # the generator, when it is in the pool
    extra = rng.sample(rest, min(n - len(first), len(rest)))
    extra += rng.choices(pool, k=n - len(first) - len(extra))
    reviewers = first + extra
    unused = [m for m in others if m not in reviewers]
    adjudicator = rng.choice(unused or others or pool)
    return Roles(gen, tuple(reviewers), adjudicator, rng.getrandbits(31), shared=True)


def _fixed(rng: random.Random, settings: CommitteeSettings, generator: str | None) -> Roles:
    fixed = settings.fixed
    assert fixed is not None
    names = [n for n in (generator, *fixed.reviewers, fixed.adjudicator) if n is not None]
    shared = len(set(names)) != len(names)
    return Roles(generator, fixed.reviewers, fixed.adjudicator, rng.getrandbits(31), shared)
