"""Step ``round_<r>/extrapolate``: new examples like each error, with its gold answer.

Per error, ``extrapolate_per_error`` requests ask for a new example similar to it, with
its gold label (a pair keeps its context; a QA error keeps its context and answer, and
the LLM writes a new question); the answers are cleaned, reviewed by the GRA committee
when asked (``review = "gra"``), and added to the training set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ...io import read_rows
from .cleaning import CleaningCounts
from .context import RunContext, request_stats
from .prompts import render
from .tasks import Row

__all__ = ["extrapolate_step"]


async def extrapolate_step(run: RunContext, r: int, errors: Sequence[Row]) -> list[Row]:
    """The examples added in round ``r`` (loaded when a run here finished the step)."""
    step, folder = f"round_{r}/extrapolate", f"round_{r}"
    if run.done(step):
        run.emit("skip", step)
        return run.remember(read_rows(run.out / folder / "added.jsonl"))
    task = run.task
    per_error = run.settings.extrapolate_per_error
    requests = []
    for error in errors:
        messages = render(run.prompts.extrapolate, task.extrapolation_values(error))
        for j in range(per_error):
            sample = (r - 1) * per_error + j
            req = run.request(messages, "extrapolate", error["id"], sample, sample=sample)
            req.meta.update(
                id=f"r{r}-{error['id']}-{j}",
                error=error,
                scope=task.scope(error),
                label=task.label(error),
            )
            requests.append(req)
    run.emit("start", step, errors=len(errors), requests=len(requests))
    results = await run.ask(step, requests) if requests else []

    def make_row(meta: Mapping[str, Any], text: str) -> Row:
        return task.extrapolated_row(meta["id"], meta["error"], text, f"round_{r}")

    counts = CleaningCounts()
    dropped: list[Row] = []
    reviews: list[Row] = []
    candidates = run.clean(results, make_row, counts, dropped)
    added = await run.review(step, candidates, counts, dropped, reviews)
    if run.reviewer is not None:
        run.folder.write_jsonl(f"{folder}/reviews.jsonl", reviews)
    run.folder.write_jsonl(f"{folder}/dropped.jsonl", dropped)
    run.folder.write_jsonl(f"{folder}/added.jsonl", added)
    record: dict[str, Any] = {"errors": len(errors), "added": len(added)}
    if task.labelled:
        record["by_label"] = dict(Counter(row["label"] for row in added))
    record.update(cleaning=counts.to_dict(), requests=request_stats(results))
    run.finish(step, record)
    return added
