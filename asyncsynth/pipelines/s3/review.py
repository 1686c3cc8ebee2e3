"""``review = "gra"``: S3's new examples pass GRA's peer-review committee before they are added.

The committee (``[gra]`` section: pool, reviewers, tau, delta, ...) reads each example as
a response to the request that asked for it: instruction = the extrapolation (or seed)
prompt, response = the cleaned text. Reviewers and adjudicator are drawn per example
from a generator seeded by the run's seed and the example's id, never the model that
wrote it, so a re-run reproduces every verdict (and, with the journal, sends nothing).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import anyio

from ...config import Config
from ...engine import Engine
from .context import Reviewer, ReviewSample
from .settings import S3Settings

__all__ = ["MAX_CONCURRENT_REVIEWS", "gra_reviewer"]

MAX_CONCURRENT_REVIEWS = 256
"""Samples under review at once; the engine bounds the requests themselves."""


def gra_reviewer(engine: Engine, config: Config, settings: S3Settings) -> Reviewer:
    """A :class:`Reviewer` backed by the GRA committee of ``config``'s ``[gra]`` section."""
    from ..gra.committee import review_sample
    from ..gra.settings import CommitteeSettings

    committee = CommitteeSettings.from_config(config)
    pool = set(committee.pool)

    def generator(sample: ReviewSample) -> str | None:
        for name in (sample.generator, settings.llm):
            if name is not None and name in pool:
                return name
        return None

    async def review(samples: Sequence[ReviewSample]) -> list[tuple[bool, dict[str, Any]]]:
        verdicts: list[tuple[bool, dict[str, Any]]] = [(False, {})] * len(samples)
        limiter = anyio.CapacityLimiter(MAX_CONCURRENT_REVIEWS)

        async def one(i: int, sample: ReviewSample) -> None:
            async with limiter:
                verdict = await review_sample(
                    engine,
                    sample.instruction,
                    sample.response,
                    generator=generator(sample),
                    rng=random.Random(f"{settings.seed}:review:{sample.key}"),
                    settings=committee,
                    meta={"s3": sample.key},
                )
            verdicts[i] = (verdict.accepted, verdict.to_dict())

        async with anyio.create_task_group() as tg:
            for i, sample in enumerate(samples):
                tg.start_soon(one, i, sample)
        return verdicts

    return review
