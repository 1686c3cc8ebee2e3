"""What every S3 step shares: the run's settings, data, task, folder, engine and cleaner.

A step is a function of a :class:`RunContext` (``rationales.py``, ``seed.py``,
``mining.py``, ``extrapolation.py``, ``final.py``); the context sends requests through
the engine (:meth:`RunContext.ask`), cleans answers (:meth:`RunContext.clean`), passes
them to the reviewer (:meth:`RunContext.review`) and records finished steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ...config import Config
from ...engine import Engine, Request, Result, made_cost
from ..errors import PipelineError
from ..events import EventKind, OnEvent, PipelineEvent
from ..runfolder import RunFolder
from .cleaning import Cleaner, CleaningCounts
from .gold import GoldData
from .prompts import PromptSet
from .settings import S3Settings
from .tasks import Row, Task

__all__ = ["ReviewSample", "Reviewer", "RunContext", "S3Error", "request_stats"]

_REVIEW_SUMMARY = ("mu", "sigma", "path", "reason")


class S3Error(PipelineError):
    """An S3 run cannot go on (too many failed requests, unusable rationales, a stale folder)."""


@dataclass(frozen=True, slots=True)
class ReviewSample:
    """A cleaned new example, as a reviewer sees it."""

    instruction: str
    """The request that asked for it (its messages' text)."""
    response: str
    """The text the LLM wrote, cleaned."""
    generator: str | None
    """The endpoint that wrote it."""
    key: str
    """A stable id (the example's), for reproducible reviewer draws."""


class Reviewer(Protocol):
    """Reviews new examples (``review = "gra"``): one ``(accepted, record)`` per sample."""

    async def __call__(
        self, samples: Sequence[ReviewSample]
    ) -> list[tuple[bool, dict[str, Any]]]: ...


def request_seed(*parts: Any) -> int:
    """A request's ``seed`` parameter, fixed by what it asks for."""
    value = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(value[:4], "big") & 0x7FFFFFFF


def prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


def request_stats(results: Sequence[Result]) -> dict[str, Any]:
    """A step's requests; ``cost_usd``: what its answers cost when made (None: no price)."""
    cost = made_cost(results)
    return {
        "total": len(results),
        "cached": sum(r.cached for r in results),
        "failed": sum(not r.ok for r in results),
        "tokens_in": sum((r.usage or {}).get("prompt_tokens", 0) for r in results),
        "tokens_out": sum((r.usage or {}).get("completion_tokens", 0) for r in results),
        "cost_usd": None if cost is None else round(cost, 6),
    }


MakeRow = Callable[[Mapping[str, Any], str], Row]


class RunContext:
    """One S3 run: its inputs, its folder, its engine and its cleaner."""

    def __init__(
        self,
        config: Config,
        folder: RunFolder,
        settings: S3Settings,
        gold: GoldData,
        task: Task,
        prompts: PromptSet,
        on_event: OnEvent | None,
        reviewer: Reviewer | None,
    ) -> None:
        self.config = config
        self.folder = folder
        self.out = folder.path
        self.settings = settings
        self.gold = gold
        self.task = task
        self.prompts = prompts
        self.on_event = on_event
        self.reviewer = reviewer
        self.engine: Engine | None = None
        reference = [(task.scope(r), task.new_text(r)) for r in (*gold.mining, *gold.dev)]
        self.cleaner = Cleaner(settings.cleaning, reference=reference, nouns=[settings.text_kind])

    # -- events and state -------------------------------------------------------------------

    def emit(self, kind: EventKind, step: str, /, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(PipelineEvent(kind, step, data, "s3"))

    def done(self, step: str) -> dict[str, Any] | None:
        return self.folder.done(step)

    def finish(self, step: str, record: dict[str, Any]) -> None:
        self.emit("done", step, **self.folder.finish(step, record))

    # -- requests ---------------------------------------------------------------------------

    def request(self, messages: list[dict[str, str]], *parts: Any, sample: int = 0) -> Request:
        """A request whose ``seed`` and sample number are fixed by ``parts``."""
        params: dict[str, Any] = {"temperature": self.settings.temperature}
        params.update(self.settings.params)
        if self.settings.request_seed:
            params["seed"] = request_seed(self.settings.seed, *parts)
        return Request(messages=messages, params=params, sample=sample, meta={"step": parts[0]})

    async def ask(self, step: str, requests: list[Request]) -> list[Result]:
        """Send ``requests`` concurrently; results in request order; too many failures raise."""
        assert self.engine is not None
        for i, request in enumerate(requests):
            request.meta["i"] = i
        results: list[Result | None] = [None] * len(requests)
        done = 0
        async for result in self.engine.map(requests, role=self.settings.llm):
            results[result.request.meta["i"]] = result
            done += 1
            self.emit("request", step, done=done, total=len(requests), ok=result.ok)
        final = [r for r in results if r is not None]
        failed = [r for r in final if not r.ok]
        if failed and len(failed) > self.settings.max_failures * len(final):
            raise S3Error(
                f"{step}: {len(failed)} of {len(final)} requests failed "
                f"(first: {failed[0].error}); run again to retry them (answers received are "
                "kept in the journal)"
            )
        return final

    # -- cleaning and review ----------------------------------------------------------------

    def clean(
        self,
        results: Sequence[Result],
        make_row: MakeRow,
        counts: CleaningCounts,
        dropped: list[Row],
    ) -> list[tuple[Row, Result]]:
        """Clean every answer in request order; the kept ones become rows."""
        kept: list[tuple[Row, Result]] = []
        for result in results:
            meta = result.request.meta
            parsed = self.task.parse(meta, result.completion)
            label = meta.get("label")
            if parsed.reason is not None:
                counts.received += 1
                counts.dropped[parsed.reason] += 1
                counts.count_label(label, False)
                dropped.append(
                    {"id": meta["id"], "reason": parsed.reason, "completion": result.completion}
                )
                continue
            cleaned = self.cleaner.clean(
                parsed.text,
                prompt=prompt_text(result.request.messages),
                scope=meta["scope"],
                finish_reason=result.finish_reason,
                counts=counts,
                label=label,
            )
            if cleaned.text is None:
                record: Row = {"id": meta["id"], "reason": cleaned.reason}
                if result.error is not None:
                    record["error"] = str(result.error)
                else:
                    record["completion"] = result.completion
                dropped.append(record)
            else:
                kept.append((make_row({**meta, **parsed.extra}, cleaned.text), result))
        return kept

    async def review(
        self,
        step: str,
        candidates: list[tuple[Row, Result]],
        counts: CleaningCounts,
        dropped: list[Row],
        reviews: list[Row],
    ) -> list[Row]:
        """The candidates the reviewer accepts (all of them without a reviewer).

        Each verdict goes to ``reviews``; kept rows carry a short summary of theirs.
        """
        if self.reviewer is None or not candidates:
            return [row for row, _ in candidates]
        task = self.task
        samples = [
            ReviewSample(
                prompt_text(result.request.messages), task.new_text(row), result.endpoint, row["id"]
            )
            for row, result in candidates
        ]
        verdicts = await self.reviewer(samples)
        kept: list[Row] = []
        for (row, _), (accepted, record) in zip(candidates, verdicts, strict=True):
            reviews.append({"id": row["id"], "accepted": accepted, **record})
            if accepted:
                summary = {k: record[k] for k in _REVIEW_SUMMARY if k in record}
                kept.append({**row, "review": summary})
                continue
            self.cleaner.forget(task.new_text(row), task.scope(row))
            counts.unkeep("review_rejected", task.label(row))
            dropped.append(
                {"id": row["id"], "reason": "review_rejected", "text": task.new_text(row)}
            )
        self.emit("note", step, reviewed=len(samples), accepted=len(kept))
        return kept

    def remember(self, rows: list[Row]) -> list[Row]:
        """Register rows kept by a finished step with the cleaner (for later duplicates)."""
        for row in rows:
            self.cleaner.remember(self.task.new_text(row), self.task.scope(row))
        return rows
