"""Step ``seed``: ``seed_size`` examples, each written from what its slot drew.

Slot ``j`` draws, from a generator seeded by the run's seed and ``j``, what its example is
written from (a label uniformly and ``k`` of its reasons; for pairs a context of the pool;
for QA a context and its answer span). An answer that cleaning (or the reviewer, with
``review_seed``) drops is asked again **for the same slot**, so for the same label and
context, up to :data:`SEED_ATTEMPTS` times in all: the kept seed keeps the label
distribution that was drawn, and ``cleaning.json`` shows per label what was asked and kept.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ...engine import Request, Result
from ...io import read_rows
from .cleaning import CleaningCounts
from .context import RunContext, S3Error, request_stats
from .prompts import render
from .settings import S3Settings
from .tasks import Draw, Row, Task

__all__ = ["SEED_ATTEMPTS", "seed_draw", "seed_step"]

SEED_ATTEMPTS = 3
"""Requests one seed slot may take: the first, and two more when cleaning drops its answer."""


def seed_draw(
    settings: S3Settings, task: Task, j: int, rationales: Mapping[str, list[str]]
) -> Draw:
    """What seed slot ``j`` is written from (fixed by the run's seed and ``j``)."""
    rng = random.Random(f"{settings.seed}:seed:{j}")
    return task.draw(rng, rationales)


def _request(run: RunContext, j: int, attempt: int, draw: Draw) -> Request:
    size = run.settings.seed_size
    messages = render(run.task.seed_prompt(run.prompts, draw), draw.values)
    parts: tuple[Any, ...] = ("seed", j) if attempt == 0 else ("seed", j, attempt)
    req = run.request(messages, *parts, sample=attempt * size + j)
    req.meta.update({"id": f"seed-{j}", "slot": j, **draw.meta})
    return req


async def seed_step(run: RunContext, rationales: Mapping[str, list[str]]) -> list[Row]:
    """The seed set (loaded when a run here finished the step)."""
    step = "seed"
    if run.done(step):
        run.emit("skip", step)
        return run.remember(read_rows(run.out / "seed.jsonl"))
    size = run.settings.seed_size
    review = run.settings.review_seed
    counts = CleaningCounts()
    draws = {j: seed_draw(run.settings, run.task, j, rationales) for j in range(size)}
    kept: dict[int, Row] = {}
    dropped: list[Row] = []
    reviews: list[Row] = []
    results: list[Result] = []
    pending = list(range(size))
    run.emit("start", step, requests=size)
    for attempt in range(SEED_ATTEMPTS):
        if not pending:
            break
        if attempt:
            run.emit("note", step, asked_again=len(pending), attempt=attempt + 1)
        answers = await run.ask(step, [_request(run, j, attempt, draws[j]) for j in pending])
        results += answers
        candidates = run.clean(answers, _row_maker(run), counts, dropped)
        if review:
            rows = await run.review(step, candidates, counts, dropped, reviews)
        else:
            rows = [row for row, _ in candidates]
        for row in rows:
            kept[int(row["id"].rsplit("-", 1)[1])] = row
        pending = [j for j in pending if j not in kept]
    run.folder.write_jsonl("seed.dropped.jsonl", dropped)
    if review and run.reviewer is not None:
        run.folder.write_jsonl("seed.reviews.jsonl", reviews)
    if not kept:
        raise S3Error(
            f"{step}: cleaning kept none of {counts.received} texts "
            f"(see {run.out / 'seed.dropped.jsonl'})"
        )
    seed = [kept[j] for j in sorted(kept)]
    run.folder.write_jsonl("seed.jsonl", seed)
    record: dict[str, Any] = {"size": len(seed), "slots": size, "unfilled": len(pending)}
    if run.task.labelled:
        record["drawn_by_label"] = dict(Counter(d.meta["label"] for d in draws.values()))
        record["by_label"] = dict(Counter(row["label"] for row in seed))
        record["unfilled_by_label"] = dict(Counter(draws[j].meta["label"] for j in pending))
    record.update(cleaning=counts.to_dict(), requests=request_stats(results))
    run.finish(step, record)
    return seed


def _row_maker(run: RunContext) -> Any:
    def make(meta: Mapping[str, Any], text: str) -> Row:
        return run.task.seed_row(meta["id"], meta, text)

    return make
