"""``report.json``: acceptance, rejection reasons, adjudication, reviewers, domains, tokens."""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .committee import REASONS
from .samples import Candidate
from .settings import GraSettings

if TYPE_CHECKING:
    from ..events import PipelineEvent

REJECTION_REASONS = (*REASONS, "duplicate")


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _stats(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "std": None}
    return {
        "n": len(values),
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.pstdev(values), 4) if len(values) > 1 else 0.0,
    }


def _histogram(values: Sequence[float]) -> dict[str, int]:
    counts = Counter(min(10, max(0, math.floor(v + 0.5))) for v in values)
    return {str(b): counts.get(b, 0) for b in range(11)}


def _reasons(cands: Sequence[Candidate]) -> dict[str, int]:
    counts = Counter(c.reason for c in cands if c.status == "rejected")
    return {r: counts.get(r, 0) for r in REJECTION_REASONS}


def _models(settings: GraSettings, cands: Sequence[Candidate]) -> dict[str, Any]:
    tau = settings.committee.tau
    out: dict[str, dict[str, Any]] = {}
    for name in settings.committee.pool:
        out[name] = {
            "generator": {"candidates": 0, "passed_committee": 0, "accepted": 0},
            "reviewer": {
                "instruction_checks": 0,
                "instruction_passes": 0,
                "instruction_agreement": None,
                "reviews": 0,
                "score": None,
                "score_histogram": None,
                "decision_agreement": None,
                "mean_abs_deviation": None,
            },
            "adjudicator": {"adjudications": 0, "kept": 0, "mean_score": None},
            "failures": {"parse_failure": 0, "request_error": 0},
        }
    scores: dict[str, list[float]] = defaultdict(list)
    deviations: dict[str, list[float]] = defaultdict(list)
    agree_check: dict[str, list[bool]] = defaultdict(list)
    agree_score: dict[str, list[bool]] = defaultdict(list)
    adj_scores: dict[str, list[float]] = defaultdict(list)
    for c in cands:
        gen = c.roles.generator
        if gen in out:
            g = out[gen]["generator"]
            g["candidates"] += 1
            g["passed_committee"] += c.status in ("passed", "accepted") or c.reason == "duplicate"
            g["accepted"] += c.status == "accepted"
        for failure in c.failures:
            if failure.model in out:
                out[failure.model]["failures"][failure.kind] += 1
        v = c.verdict
        if v is None:
            continue
        for failure in v.failures:
            if failure.model in out:
                out[failure.model]["failures"][failure.kind] += 1
        phase1 = all(ch.passed for ch in v.checks)
        for ch in v.checks:
            if ch.model in out:
                r = out[ch.model]["reviewer"]
                r["instruction_checks"] += 1
                r["instruction_passes"] += ch.passed
                agree_check[ch.model].append(ch.passed == phase1)
        kept = v.accepted
        for review in v.reviews:
            if review.model not in out:
                continue
            scores[review.model].append(review.score)
            agree_score[review.model].append((round(review.score, 9) >= tau) == kept)
            others = [o.score for o in v.reviews if o is not review]
            if others:
                deviations[review.model].append(abs(review.score - statistics.fmean(others)))
        if (adj := v.adjudication) is not None and adj.model in out:
            a = out[adj.model]["adjudicator"]
            a["adjudications"] += 1
            a["kept"] += adj.keep
            adj_scores[adj.model].append(adj.score)
    for name, entry in out.items():
        g = entry["generator"]
        g["acceptance"] = _rate(g["accepted"], g["candidates"])
        r = entry["reviewer"]
        r["reviews"] = len(scores[name])
        r["score"] = _stats(scores[name])
        r["score_histogram"] = _histogram(scores[name])
        checks = agree_check[name]
        r["instruction_agreement"] = _rate(sum(checks), len(checks))
        agree = agree_score[name]
        r["decision_agreement"] = _rate(sum(agree), len(agree))
        if deviations[name]:
            r["mean_abs_deviation"] = round(statistics.fmean(deviations[name]), 4)
        if adj_scores[name]:
            entry["adjudicator"]["mean_score"] = round(statistics.fmean(adj_scores[name]), 4)
    return out


def _domains(cands: Sequence[Candidate]) -> dict[str, Any]:
    by: dict[str, list[Candidate]] = defaultdict(list)
    for c in cands:
        by[c.domain or "unlabelled"].append(c)
    return {
        domain: {
            "candidates": len(group),
            "accepted": sum(c.status == "accepted" for c in group),
            "acceptance": _rate(sum(c.status == "accepted" for c in group), len(group)),
            "rejected": {k: v for k, v in _reasons(group).items() if v},
        }
        for domain, group in sorted(by.items())
    }


def _adjudication(cands: Sequence[Candidate]) -> dict[str, Any]:
    scored = [c for c in cands if c.verdict is not None and c.verdict.mu is not None]
    disputed = [c for c in scored if c.verdict is not None and c.verdict.disputed]
    failed = [
        c
        for c in scored
        if c.verdict is not None and any(f.stage == "adjudicate" for f in c.verdict.failures)
    ]
    kept = sum(1 for c in disputed if c.verdict is not None and c.verdict.accepted)
    return {
        "scored": len(scored),
        "disputed": len(disputed) + len(failed),
        "rate": _rate(len(disputed) + len(failed), len(scored)),
        "kept": kept,
        "rejected": len(disputed) - kept,
        "failed": len(failed),
        "keep_rate": _rate(kept, len(disputed)),
    }


def build_report(
    settings: GraSettings,
    cands: Sequence[Candidate],
    *,
    target: int,
    rounds: Sequence[Mapping[str, Any]],
    pool_size: int,
    annotation: Mapping[str, Any],
    usage: Mapping[str, Mapping[str, int]],
    engine: Mapping[str, Any],
    structured: Mapping[str, str],
    stopped: str,
    seeds: int,
) -> dict[str, Any]:
    """The run's report as a JSON-ready dict (see the README for every field)."""
    committee = settings.committee
    accepted = [c for c in cands if c.status == "accepted"]
    gen_in = sum(c.tokens_in for c in cands)
    gen_out = sum(c.tokens_out for c in cands)
    rev_in = sum(c.verdict.tokens_in for c in cands if c.verdict)
    rev_out = sum(c.verdict.tokens_out for c in cands if c.verdict)
    by_stage = {
        "annotate": dict(usage.get("annotate", {"requests": 0, "in": 0, "out": 0})),
        "generate": {"requests": sum(c.requests for c in cands), "in": gen_in, "out": gen_out},
        "review": {
            "requests": sum(c.verdict.requests for c in cands if c.verdict),
            "in": rev_in,
            "out": rev_out,
        },
        "summarize": dict(usage.get("summarize", {"requests": 0, "in": 0, "out": 0})),
    }
    total_in = sum(s["in"] for s in by_stage.values())
    total_out = sum(s["out"] for s in by_stage.values())
    shared = sum(1 for c in cands if c.roles.shared)
    return {
        "mode": settings.mode,
        "seed": settings.seed,
        "target": target,
        "accepted": len(accepted),
        "target_reached": len(accepted) >= target,
        "stopped": stopped,
        "candidates": len(cands),
        "acceptance": _rate(len(accepted), len(cands)),
        "passed_committee": sum(c.status == "accepted" or c.reason == "duplicate" for c in cands),
        "rejected": _reasons(cands),
        "adjudication": _adjudication(cands),
        "rounds": list(rounds),
        "pool": {"size": pool_size, "seeds": seeds, "annotation": dict(annotation)},
        "domains": _domains(cands),
        "models": _models(settings, cands),
        "tokens": {
            "in": total_in,
            "out": total_out,
            "per_accepted": round((total_in + total_out) / len(accepted), 1) if accepted else None,
            "by_stage": by_stage,
        },
        "committee": {
            "pool": list(committee.pool),
            "reviewers": committee.reviewers,
            "tau": committee.tau,
            "delta": committee.delta,
            "std": committee.std,
            "min_reviews": committee.needed_reviews,
            "assignment": committee.assignment,
            "allow_shared_roles": committee.allow_shared_roles,
            "samples_with_shared_roles": shared,
            **(
                {
                    "note": "the pool is smaller than 1 generator + reviewers + 1 adjudicator: "
                    f"{shared} samples had a model in two roles"
                }
                if shared
                else {}
            ),
        },
        "dedup": {
            "embedding_model": settings.embedding_model,
            "threshold": settings.dedup_threshold,
            "text": settings.dedup_text,
        },
        "structured_formats": dict(structured),
        "engine": dict(engine),
    }


def describe(event: PipelineEvent) -> tuple[str, bool] | None:
    """A console line for ``event`` and whether it is transient (a progress redraw)."""
    kind, step, data = event.kind, event.step, event.data
    if kind == "request":
        return (
            f"  {step}: {data['done']:,}/{data['total']:,} candidates decided, "
            f"{data['in_flight']:,} in flight, {data['passed']:,} passed the committee; "
            f"accepted {data['accepted']:,}/{data['target']:,}",
            True,
        )
    if kind == "start" and step == "annotate":
        return (f"annotating {data['seeds']:,} seeds" if data["seeds"] else None), False
    if kind == "start":
        return (
            f"{step}: {data['candidates']:,} candidates "
            f"(accepted so far {data['accepted']:,} of {data['target']:,})",
            False,
        )
    if kind == "done" and step == "annotate":
        if not data["needed"]:
            return None
        done, needed, failed = data["annotated"], data["needed"], len(data["failures"])
        return f"annotate: {done:,} of {needed:,} seeds ({failed} failed)", False
    if kind == "done":
        rejected = ", ".join(f"{n:,} {reason}" for reason, n in data["rejected"].items())
        return (
            f"{step}: {data['accepted']:,} accepted of {data['candidates']:,} "
            f"(rejected: {rejected or 'none'}); {data['accepted_total']:,} in all",
            False,
        )
    return None
