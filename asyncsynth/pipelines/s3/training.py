"""Training a student off the event loop: requests and progress keep flowing meanwhile.

The student trains in a worker thread; its progress is handed to the loop as ``train``
events; cancelling the caller (Ctrl-C, a task group's cancel scope) sets the trainer's
``cancel`` event, which stops it before its next step, and waits for it. With
``student.placement = "ray"`` the worker thread drives a Ray task instead
(:mod:`.placement`), and the student that comes back is a :class:`.placement.RemoteStudent`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ...student.config import TrainingCancelled
from .context import RunContext
from .tasks import AnyMetrics, Row

__all__ = ["off_loop", "train"]


async def off_loop(fn: Callable[[], Any], cancel: threading.Event) -> Any:
    """Run ``fn`` in a worker thread; cancelling the caller sets ``cancel`` and waits for it."""
    outcome: list[Any] = []
    failure: list[BaseException] = []

    async def watch() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancel.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            outcome.append(await anyio.to_thread.run_sync(fn))
        except TrainingCancelled:
            await anyio.lowlevel.checkpoint()  # the cancellation that stopped training
            raise
        except Exception as exc:  # re-raised below, outside the task group (no group)
            failure.append(exc)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return outcome[0]


async def train(
    run: RunContext,
    step: str,
    rows: Sequence[Row],
    *,
    predict: Sequence[Row] | None = None,
    keep: bool = False,
) -> tuple[Any, AnyMetrics | None, list[str] | None]:
    """A fresh student on ``rows`` chosen on dev; its dev metrics; its predictions of
    ``predict``. ``keep``: the student will be saved (a Ray placement ships its files)."""
    task, gold = run.task, run.gold
    cancel = threading.Event()

    def progress(entry: dict[str, Any]) -> None:
        anyio.from_thread.run_sync(lambda: run.emit("train", step, **entry))

    def work() -> tuple[Any, AnyMetrics | None, list[str] | None]:
        if run.settings.student.placement == "ray":
            from .placement import RemoteStudent, train_on_ray

            trained = train_on_ray(
                task, rows, gold.dev, predict, keep=keep, progress=progress, cancel=cancel
            )
            dev_metrics = task.score(gold.dev, trained.dev) if trained.dev is not None else None
            return RemoteStudent(trained), dev_metrics, trained.predicted
        student = task.train(rows, gold.dev, progress, cancel)
        dev_metrics = task.score(gold.dev, task.predict(student, gold.dev)) if gold.dev else None
        predicted = task.predict(student, predict) if predict is not None else None
        return student, dev_metrics, predicted

    run.emit("start", step, train_size=len(rows))
    result: tuple[Any, AnyMetrics | None, list[str] | None] = await off_loop(work, cancel)
    return result
