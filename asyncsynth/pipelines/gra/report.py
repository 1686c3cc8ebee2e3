"""``report.json``: acceptance, rejection reasons, adjudication, reviewers, domains, losses, tokens;
and :func:`explain`, the same in plain words for the end of a run."""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...engine import sum_usd
from ...engine.cost import usd
from .decision import keeps
from .samples import Candidate
from .settings import GraSettings
from .verdict import REASONS, Failure, Verdict

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


def _failures(c: Candidate) -> Iterator[Failure]:
    yield from c.failures
    if c.verdict is not None:
        yield from c.verdict.failures


class _ModelTally:
    """Per pool model: its work as generator, reviewer and adjudicator, and its failures."""

    def __init__(self, settings: GraSettings) -> None:
        self.settings = settings
        self.generator: dict[str, Counter[str]] = defaultdict(Counter)
        self.checks: dict[str, Counter[str]] = defaultdict(Counter)
        self.failures: dict[str, Counter[str]] = defaultdict(Counter)
        self.scores: dict[str, list[float]] = defaultdict(list)
        self.deviations: dict[str, list[float]] = defaultdict(list)
        self.agree_check: dict[str, list[bool]] = defaultdict(list)
        self.agree_score: dict[str, list[bool]] = defaultdict(list)
        self.adjudications: dict[str, Counter[str]] = defaultdict(Counter)
        self.adj_scores: dict[str, list[float]] = defaultdict(list)

    def add(self, c: Candidate) -> None:
        if c.roles.generator is not None:
            g = self.generator[c.roles.generator]
            g["candidates"] += 1
            g["passed_committee"] += c.status in ("passed", "accepted") or c.reason == "duplicate"
            g["accepted"] += c.status == "accepted"
        for failure in _failures(c):
            self.failures[failure.model][failure.kind] += 1
        if c.verdict is not None:
            self._verdict(c.verdict)

    def _verdict(self, v: Verdict) -> None:
        phase1 = all(ch.passed for ch in v.checks)
        for ch in v.checks:
            self.checks[ch.model]["checks"] += 1
            self.checks[ch.model]["passes"] += ch.passed
            self.agree_check[ch.model].append(ch.passed == phase1)
        for review in v.reviews:
            self.scores[review.model].append(review.score)
            self.agree_score[review.model].append(
                keeps(review.exact, self.settings.committee) == v.accepted
            )
            others = [o.score for o in v.reviews if o is not review]
            if others:
                self.deviations[review.model].append(abs(review.score - statistics.fmean(others)))
        if (adj := v.adjudication) is not None:
            self.adjudications[adj.model]["adjudications"] += 1
            self.adjudications[adj.model]["kept"] += adj.keep
            self.adj_scores[adj.model].append(adj.score)

    def entry(self, name: str) -> dict[str, Any]:
        g = self.generator[name]
        scores, checks, agree = self.scores[name], self.agree_check[name], self.agree_score[name]
        deviations, adj = self.deviations[name], self.adjudications[name]
        return {
            "generator": {
                "candidates": g["candidates"],
                "passed_committee": g["passed_committee"],
                "accepted": g["accepted"],
                "acceptance": _rate(g["accepted"], g["candidates"]),
            },
            "reviewer": {
                "instruction_checks": self.checks[name]["checks"],
                "instruction_passes": self.checks[name]["passes"],
                "instruction_agreement": _rate(sum(checks), len(checks)),
                "reviews": len(scores),
                "score": _stats(scores),
                "score_histogram": _histogram(scores),
                "decision_agreement": _rate(sum(agree), len(agree)),
                "mean_abs_deviation": round(statistics.fmean(deviations), 4)
                if deviations
                else None,
            },
            "adjudicator": {
                "adjudications": adj["adjudications"],
                "kept": adj["kept"],
                "mean_score": round(statistics.fmean(self.adj_scores[name]), 4)
                if self.adj_scores[name]
                else None,
            },
            "failures": {
                "parse_failure": self.failures[name]["parse_failure"],
                "request_error": self.failures[name]["request_error"],
            },
        }


def _models(settings: GraSettings, cands: Sequence[Candidate]) -> dict[str, Any]:
    tally = _ModelTally(settings)
    for c in cands:
        tally.add(c)
    return {name: tally.entry(name) for name in settings.committee.pool}


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
    verdicts = [c.verdict for c in cands if c.verdict is not None]
    scored = [v for v in verdicts if v.mu is not None]
    disputed = [v for v in scored if v.disputed]
    kept = sum(v.accepted for v in disputed)
    rejected = sum(v.reason == "adjudicator_reject" for v in disputed)
    return {
        "scored": len(scored),
        "disputed": len(disputed),
        "rate": _rate(len(disputed), len(scored)),
        "kept": kept,
        "rejected": rejected,
        "failed": len(disputed) - kept - rejected,
        "keep_rate": _rate(kept, kept + rejected),
    }


def _failure_summary(cands: Sequence[Candidate]) -> dict[str, Any]:
    """Unusable replies and failed requests, by kind, cause and stage."""
    kinds: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    stages: dict[str, Counter[str]] = defaultdict(Counter)
    echoed = 0
    for c in cands:
        found = list(_failures(c))
        for f in found:
            kinds[f.kind] += 1
            stages[f.stage][f.kind] += 1
            if f.cause:
                causes[f.cause] += 1
        echoed += any(f.cause == "template_echo" for f in found)
    return {
        "parse_failure": kinds["parse_failure"],
        "request_error": kinds["request_error"],
        "causes": dict(sorted(causes.items())),
        "samples_with_template_echo": echoed,
        "by_stage": {s: dict(sorted(k.items())) for s, k in sorted(stages.items())},
    }


def _tokens(cands: Sequence[Candidate], usage: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    verdicts = [c.verdict for c in cands if c.verdict is not None]
    empty = {"requests": 0, "in": 0, "out": 0}
    by_stage = {
        "annotate": dict(usage.get("annotate", empty)),
        "generate": {
            "requests": sum(c.requests for c in cands),
            "in": sum(c.tokens_in for c in cands),
            "out": sum(c.tokens_out for c in cands),
        },
        "review": {
            "requests": sum(v.requests for v in verdicts),
            "in": sum(v.tokens_in for v in verdicts),
            "out": sum(v.tokens_out for v in verdicts),
        },
        "summarize": dict(usage.get("summarize", empty)),
    }
    total_in = sum(s["in"] for s in by_stage.values())
    total_out = sum(s["out"] for s in by_stage.values())
    accepted = sum(c.status == "accepted" for c in cands)
    return {
        "in": total_in,
        "out": total_out,
        "per_accepted": round((total_in + total_out) / accepted, 1) if accepted else None,
        "by_stage": by_stage,
    }


def _cost(
    settings: GraSettings,
    cands: Sequence[Candidate],
    costs: Mapping[str, Mapping[str, float | None]],
) -> dict[str, Any]:
    """USD as the answers cost when made (a resumed run's journal answers at their first
    cost, so the figures do not change on resume), in all, per accepted sample, by stage and
    by model; None where a model has no price."""
    verdicts = [c.verdict for c in cands if c.verdict is not None]
    books: dict[str, list[Mapping[str, float | None]]] = {
        "annotate": [costs.get("annotate", {})],
        "generate": [c.costs for c in cands],
        "review": [v.costs for v in verdicts],
        "summarize": [costs.get("summarize", {})],
    }
    by_model: dict[str, float | None] = {}
    for stage_books in books.values():
        for book in stage_books:
            for model, value in book.items():
                by_model[model] = sum_usd((by_model.get(model, 0.0), value))
    by_stage = {
        stage: sum_usd(v for book in stage_books for v in book.values())
        for stage, stage_books in books.items()
    }
    total = sum_usd(by_stage.values())
    accepted = sum(c.status == "accepted" for c in cands)
    pool = [m for m in settings.committee.pool if m in by_model]
    pool += [m for m in by_model if m not in pool]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 8)

    return {
        "total_usd": rounded(total),
        "per_accepted_usd": rounded(total / accepted) if total is not None and accepted else None,
        "by_stage": {stage: rounded(v) for stage, v in by_stage.items()},
        "by_model": {m: rounded(by_model[m]) for m in pool},
    }


def _committee(settings: GraSettings, cands: Sequence[Candidate]) -> dict[str, Any]:
    committee = settings.committee
    shared = sum(1 for c in cands if c.roles.shared)
    out: dict[str, Any] = {
        "pool": list(committee.pool),
        "reviewers": committee.reviewers,
        "tau": committee.tau,
        "delta": committee.delta,
        "std": committee.std,
        "min_reviews": committee.needed_reviews,
        "assignment": committee.assignment,
        "allow_shared_roles": committee.allow_shared_roles,
        "samples_with_shared_roles": shared,
    }
    if shared:
        out["note"] = (
            "the pool is smaller than 1 generator + reviewers + 1 adjudicator: "
            f"{shared} samples had a model in two roles"
        )
    return out


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
    costs: Mapping[str, Mapping[str, float | None]] | None = None,
    structured: Mapping[str, str],
    stopped: str,
    seeds: int,
    seed_format: str | None = None,
    seed_rows: int = 0,
    losses: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's report as a JSON-ready dict (see the README for every field)."""
    accepted = sum(c.status == "accepted" for c in cands)
    return {
        "mode": settings.mode,
        "seed": settings.seed,
        "target": target,
        "accepted": accepted,
        "target_reached": accepted >= target,
        "stopped": stopped,
        "bounds": {"max_rounds": settings.max_rounds, "time_budget": settings.time_budget},
        "candidates": len(cands),
        "acceptance": _rate(accepted, len(cands)),
        "passed_committee": sum(c.status == "accepted" or c.reason == "duplicate" for c in cands),
        "rejected": _reasons(cands),
        "adjudication": _adjudication(cands),
        "failures": _failure_summary(cands),
        "losses": dict(losses or {}),
        "rounds": list(rounds),
        "pool": {
            "size": pool_size,
            "seeds": seeds,
            "seed_rows": seed_rows,
            "seed_format": seed_format,
            "annotation": dict(annotation),
        },
        "domains": _domains(cands),
        "models": _models(settings, cands),
        "tokens": _tokens(cands, usage),
        "cost": _cost(settings, cands, costs or {}),
        "committee": _committee(settings, cands),
        "dedup": {
            "embedding_model": settings.embedding_model,
            "threshold": settings.dedup_threshold,
            "text": settings.dedup_text,
        },
        "structured_formats": dict(structured),
        "engine": dict(engine),
    }


# -- in plain words -----------------------------------------------------------------------------

_WHY = {
    "instruction_fail": "a reviewer found the instruction irrational, incomplete or unclear",
    "truncated": "the response was cut at the token limit (raise gra.params.generate.max_tokens, "
    'or set gra.truncated = "review" to review such responses anyway)',
    "low_mean": "the reviewers' mean score was below tau = {tau:g}",
    "adjudicator_reject": "the reviewers disagreed and the adjudicator scored it below "
    "tau = {tau:g}",
    "parse_failure": "a model's reply could not be read as the JSON asked for, even after "
    "re-asking",
    "request_error": "a request failed for good (rejected.jsonl: failures[].message)",
    "duplicate": "it repeats a sample kept before it ({dedup})",
}
_STOPPED = {
    "target_reached": "the target was reached",
    "max_rounds": "gra.max_rounds = {max_rounds} rounds were done",
    "time_budget": "the time budget of {time_budget:g} s was spent (gra.time_budget)",
    "all_requests_failed": "every request of a round failed",
    "seeds_exhausted": "every seed had its refine attempts (gra.refine_attempts)",
}


def explain(report: Mapping[str, Any]) -> list[str]:
    """The run in plain words: why it stopped, why samples were rejected, what was lost."""
    bounds = report.get("bounds", {})
    stop = _STOPPED.get(report["stopped"], report["stopped"]).format(**bounds)
    lines = [
        f"Stopped because {stop}: {report['accepted']:,} of {report['candidates']:,} "
        f"candidates accepted (target {report['target']:,})."
    ]
    rejected = {r: n for r, n in report["rejected"].items() if n}
    if rejected:
        lines.append("Why samples were rejected:")
        width = len(f"{max(rejected.values()):,}")
        tau = report["committee"]["tau"]
        dedup = report["dedup"]
        similar = (
            "the same text"
            if dedup["embedding_model"] == "none"
            else f"cosine similarity >= {dedup['threshold']:g}"
        )
        for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1]):
            why = _WHY.get(reason, reason).format(tau=tau, dedup=similar)
            lines.append(f"  {n:>{width},}  {reason}: {why}")
    lines += _echo_hint(report)
    lines += _losses(report)
    lines += _cost_line(report)
    return lines


def _cost_line(report: Mapping[str, Any]) -> list[str]:
    cost = report.get("cost") or {}
    if cost.get("total_usd") is None:
        return []
    stages = ", ".join(f"{s} {usd(v)}" for s, v in cost["by_stage"].items() if v)
    models = ", ".join(f"{m} {usd(v)}" for m, v in cost["by_model"].items())
    each = cost.get("per_accepted_usd")
    return [
        f"Cost (as made, journal answers included): {usd(cost['total_usd'])}"
        + (f", {usd(each)} per accepted sample" if each is not None else "")
        + (f"; by stage: {stages}" if stages else "")
        + (f"; by model: {models}" if models else "")
        + "."
    ]


def _echo_hint(report: Mapping[str, Any]) -> list[str]:
    failures = report.get("failures", {})
    echoed = failures.get("samples_with_template_echo", 0)
    if not echoed:
        return []
    replies = failures.get("causes", {}).get("template_echo", 0)
    return [
        f"Hint: {replies:,} replies (in {echoed:,} samples) only repeated the prompt's <...> "
        'placeholders, e.g. "<one sentence>", instead of answering. Models this small often '
        "copy the reply template; larger models (examples/gra/vllm.toml) do not, and more "
        "re-asks (gra.reasks) sometimes help."
    ]


def _losses(report: Mapping[str, Any]) -> list[str]:
    losses = report.get("losses", {})
    lines = []
    if failed := losses.get("annotation_failed"):
        lines.append(
            f"{len(failed):,} seeds could not be annotated (left out of the pool): "
            + ", ".join(failed[:3])
            + (" ..." if len(failed) > 3 else "")
        )
    if failed := losses.get("summary_failed"):
        lines.append(
            f"{len(failed):,} accepted samples have no summary (left out of the pool): "
            + ", ".join(failed[:3])
            + (" ..." if len(failed) > 3 else "")
        )
    if fallbacks := losses.get("domain_fallbacks"):
        counts = ", ".join(f"{d} {n:,}" for d, n in fallbacks.items())
        lines.append(
            f"Domains with no pool pair yet (their generators saw other domains' pairs): {counts}"
        )
    return lines


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
    if step == "annotate":
        return _describe_annotate(kind, data)
    if kind == "start":
        return (
            f"{step}: {data['candidates']:,} candidates "
            f"(accepted so far {data['accepted']:,} of {data['target']:,})",
            False,
        )
    if kind == "done":
        rejected = ", ".join(f"{n:,} {reason}" for reason, n in data["rejected"].items())
        return (
            f"{step}: {data['accepted']:,} accepted of {data['candidates']:,} "
            f"(rejected: {rejected or 'none'}); {data['accepted_total']:,} in all",
            False,
        )
    return None


def _describe_annotate(kind: str, data: Mapping[str, Any]) -> tuple[str, bool] | None:
    if not data["needed"]:
        return None
    if kind == "start":
        return (
            f"annotating {data['needed']:,} of {data['seeds']:,} seeds (alongside round 1)",
            False,
        )
    if kind == "done":
        done, needed, failed = data["annotated"], data["needed"], len(data["failures"])
        return f"annotate: {done:,} of {needed:,} seeds ({failed} failed)", False
    return None
