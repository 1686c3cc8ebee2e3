"""Step ``round_<r>/train``: a fresh student, chosen on dev, mines the errors.

The student is trained on the seed and everything added so far; its checkpoint is the
best on the dev set (kept in memory by the trainer, not the last epoch's weights), and
with it the gold **mining** set is predicted: every wrong label (QA: exact match 0) is an
error, written with its gold answer and the prediction to ``round_<r>/errors.jsonl``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ...io import read_rows
from .context import RunContext
from .tasks import Row
from .training import train

__all__ = ["train_round"]


async def train_round(run: RunContext, r: int, rows: Sequence[Row]) -> list[Row]:
    """The errors of round ``r``'s student on the mining set (loaded when finished before)."""
    step, folder = f"round_{r}/train", f"round_{r}"
    if run.done(step):
        run.emit("skip", step)
        return read_rows(run.out / folder / "errors.jsonl")
    student, dev_metrics, predicted = await train(run, step, rows, predict=run.gold.mining)
    assert predicted is not None
    task, mining = run.task, run.gold.mining
    errors = [
        {**row, "predicted": pred}
        for row, pred in zip(mining, predicted, strict=True)
        if task.is_error(row, pred)
    ]
    mining_metrics = task.score(mining, predicted)
    run.folder.write_jsonl(f"{folder}/train.jsonl", rows)
    run.folder.write_json(
        f"{folder}/metrics.json",
        {
            "round": r,
            "train_size": len(rows),
            "dev": dev_metrics.to_dict() if dev_metrics else None,
            "mining": mining_metrics.to_dict(),
            "best_epoch": student.best_epoch,
            "best_step": student.best_step,
            "train_seconds": round(student.train_seconds, 3),
            "history": student.history,
        },
    )
    run.folder.write_jsonl(f"{folder}/errors.jsonl", errors)
    run.finish(
        step,
        {
            "train_size": len(rows),
            "by_source": dict(Counter(row.get("source", "?") for row in rows)),
            "dev": dev_metrics.summary() if dev_metrics else None,
            "mining": mining_metrics.summary(),
            "errors": len(errors),
            "best_step": student.best_step,
            "train_seconds": round(student.train_seconds, 3),
        },
    )
    return errors
