"""GRA: Generator-Reviewer-Adjudicator synthesis with a committee of small LLMs (arXiv 2504.12322).

The committee, reusable by other pipelines (S3's ``--review gra``)::

    from asyncsynth.pipelines.gra import CommitteeSettings, Verdict, review_sample

    settings = CommitteeSettings.from_config(config)   # [gra]: pool, reviewers, tau, delta...
    verdict: Verdict = await review_sample(
        engine,                      # an open asyncsynth.Engine
        instruction,                 # str
        response,                    # str
        generator="qwen",            # pool model that wrote it (excluded from review) or None
        rng=random.Random(seed),     # draws the reviewers and the adjudicator
        settings=settings,
        meta={"id": "s3-17"},        # optional; copied into every request's meta
    )
    verdict.accepted                 # bool
    verdict.reason                   # None | "instruction_fail" | "truncated" | "low_mean" |
                                     # "adjudicator_reject" | "parse_failure" | "request_error"
    verdict.path                     # "consensus" | "adjudicated" | the rejection reason
    verdict.mu, verdict.sigma        # committee mean and deviation (None if not scored)
    verdict.roles                    # Roles(generator, reviewers, adjudicator, seed, shared)
    verdict.to_dict()                # JSON-ready provenance: checks, reviews, adjudication

For finer control, ``Committee(engine, settings)`` offers ``draw(rng, generator=...)``,
``review(instruction, response, roles)`` and the two phases ``check_instruction`` and
``score_response`` on a ``Verdict(roles)``; ``decide(scores, settings)`` is the pure rule
(decided on exact fractions: a mean of exactly tau is tau).

The whole pipeline::

    result = await run_gra(config, out_dir="out", target=1000, seed=0)
"""

from .committee import (
    ADJUDICATION,
    INSTRUCTION_CHECK,
    INSTRUCTION_CRITERIA,
    REASONS,
    RESPONSE_CRITERIA,
    RESPONSE_REVIEW,
    Adjudication,
    Committee,
    Failure,
    InstructionCheck,
    Review,
    Roles,
    Verdict,
    decide,
    draw_roles,
    review_sample,
)
from .dedup import DedupOutcome, ExactDeduplicator, SemanticDeduplicator, make_deduplicator
from .pipeline import JOURNAL_NAME, GraResult, run_gra
from .report import explain
from .seeds import Seed, Seeds, load_seeds
from .settings import DEFAULT_DOMAINS, CommitteeSettings, FixedRoles, GraSettings

__all__ = [
    "ADJUDICATION",
    "DEFAULT_DOMAINS",
    "INSTRUCTION_CHECK",
    "INSTRUCTION_CRITERIA",
    "JOURNAL_NAME",
    "REASONS",
    "RESPONSE_CRITERIA",
    "RESPONSE_REVIEW",
    "Adjudication",
    "Committee",
    "CommitteeSettings",
    "DedupOutcome",
    "ExactDeduplicator",
    "Failure",
    "FixedRoles",
    "GraResult",
    "GraSettings",
    "InstructionCheck",
    "Review",
    "Roles",
    "Seed",
    "Seeds",
    "SemanticDeduplicator",
    "Verdict",
    "decide",
    "draw_roles",
    "explain",
    "load_seeds",
    "make_deduplicator",
    "review_sample",
    "run_gra",
]
