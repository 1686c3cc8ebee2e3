"""Step ``final``: the student on everything, chosen on dev, then tested once.

Only once the final student is fixed (its checkpoint chosen on dev) is the test set read,
once, for the report. ``test_overlap`` counts training examples that near-duplicate a
test example: reported, never used to filter (the test set influences nothing).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

from .cleaning import NearDuplicateIndex
from .context import RunContext
from .tasks import Row
from .training import off_loop, train

__all__ = ["final_step"]


def _test_overlap(run: RunContext, rows: Sequence[Row]) -> int | None:
    """Training examples that near-duplicate a test example."""
    if run.gold.test is None:
        return None
    cleaning, task = run.settings.cleaning, run.task
    index = NearDuplicateIndex(cleaning.near_duplicate, cleaning.shingle)
    for row in run.gold.test:
        index.add(task.new_text(row), task.scope(row))
    return sum(index.match(task.new_text(row), task.scope(row)) is not None for row in rows)


async def final_step(run: RunContext, rows: Sequence[Row]) -> None:
    """Train the final student (skipped when a run here finished it with these rounds)."""
    step, settings, task = "final", run.settings, run.task
    record = run.done(step)
    saved = record is not None and (record["student_saved"] or not settings.save_student)
    if record is not None and record["rounds"] == settings.rounds and saved:
        run.emit("skip", step)
        return
    test = run.gold.test  # predicted once the student is fixed, with it
    student, dev_metrics, predicted = await train(
        run, step, rows, predict=test, keep=settings.save_student
    )
    test_metrics = None if test is None or predicted is None else task.score(test, predicted)
    if settings.save_student:
        await off_loop(lambda: student.save(run.out / "final" / "student"), threading.Event())
    run.folder.write_jsonl("final/train.jsonl", rows)
    run.folder.write_json(
        "final/metrics.json",
        {
            "train_size": len(rows),
            "dev": dev_metrics.to_dict() if dev_metrics else None,
            "test": test_metrics.to_dict() if test_metrics else None,
            "test_overlap": _test_overlap(run, rows),
            "best_epoch": student.best_epoch,
            "best_step": student.best_step,
            "train_seconds": round(student.train_seconds, 3),
            "history": student.history,
        },
    )
    run.finish(
        step,
        {
            "rounds": settings.rounds,
            "student_saved": settings.save_student,
            "train_size": len(rows),
            "by_source": dict(Counter(row.get("source", "?") for row in rows)),
            "dev": dev_metrics.summary() if dev_metrics else None,
            "test": test_metrics.summary() if test_metrics else None,
            "best_step": student.best_step,
            "train_seconds": round(student.train_seconds, 3),
        },
    )
