"""S3's student on a Ray task (``student.placement = "ray"``): a laptop drives a cluster.

The training rows, the dev set and the rows to predict travel by value to one Ray task
that asks for ``student.num_gpus`` GPUs; it trains there as the local path does (the same
seed, the same config with ``placement = "local"``, so its ``student.json`` is the local
one), predicts there, and sends back the training record, the predictions and, when the
student is kept, its saved files, which :meth:`RemoteStudent.save` writes into the run
folder. Progress comes back through a Ray queue as it happens; an error raised remotely
is re-raised here whole; cancelling the caller cancels the task (its worker is killed).

The task runs :meth:`~.tasks.Task.train`, which imports the student (and torch) inside
the Ray worker: the driver needs neither, only the ``ray`` extra. Where the cluster is
comes from :class:`~asyncsynth.distributed.ray_run.RayExecutor` (``ray_address``, else
``RAY_ADDRESS``, else a local cluster started for the run and stopped after it), as
for ``--executor ray``.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...engine.errors import ConfigError
from ...student.config import StudentConfig, TrainingCancelled
from ..errors import PipelineError

__all__ = ["RemoteStudent", "Trained", "student_cluster", "train_on_ray"]

WHAT = 's3.student.placement = "ray"'
POLL_SECONDS = 0.25
"""How often the driver hands the remote progress on while it waits."""


@dataclass
class Trained:
    """What the remote side sends back."""

    history: list[dict[str, Any]]
    best_epoch: int | None
    best_step: int | None
    train_seconds: float
    dev: list[str] | None
    predicted: list[str] | None
    files: dict[str, bytes] | None


class RemoteStudent:
    """A student trained on Ray: its training record, and its saved files (when kept)."""

    def __init__(self, trained: Trained) -> None:
        self.history = trained.history
        self.best_epoch = trained.best_epoch
        self.best_step = trained.best_step
        self.train_seconds = trained.train_seconds
        self._files = trained.files

    def save(self, path: str | Path) -> Path:
        """Write the files the remote side saved, as :meth:`TrainedStudent.save` does."""
        if self._files is None:
            raise RuntimeError("this student was trained remotely without keeping its files")
        path = Path(path)
        for name, data in self._files.items():
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return path


@contextlib.contextmanager
def student_cluster(student: StudentConfig) -> Iterator[None]:
    """Join (or start) the Ray cluster of a Ray placement; a cluster started here stops after."""
    if student.placement != "ray":
        yield
        return
    from ...distributed.ray_run import RayExecutor, require_ray

    owned = RayExecutor(student.ray_address).connect(WHAT)
    try:
        _check_gpus(require_ray(WHAT), student.gpus)
        yield
    finally:
        if owned:
            require_ray(WHAT).shutdown()


def _check_gpus(ray: Any, wanted: float) -> None:
    """Refuse a request the cluster can never place (Ray would wait for it forever)."""
    have = float(ray.cluster_resources().get("GPU", 0))
    if wanted > have:
        raise ConfigError(
            f"{WHAT}: the Ray cluster has {have:g} GPUs and student.num_gpus asks for "
            f"{wanted:g}; point ray_address (or RAY_ADDRESS) at a cluster with GPUs, or set "
            "num_gpus = 0 to train on its CPUs"
        )


def _remote_work(
    task: Any, rows: list[Any], dev: list[Any], predict: list[Any] | None, keep: bool, queue: Any
) -> Trained:
    """On the Ray worker: train, predict dev and ``predict``, save when kept."""
    student = task.train(rows, dev, queue.put, None)
    files = None
    if keep:
        with tempfile.TemporaryDirectory() as tmp:
            student.save(tmp)
            root = Path(tmp)
            files = {
                p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*"))
                if p.is_file()
            }
    return Trained(
        student.history,
        student.best_epoch,
        student.best_step,
        student.train_seconds,
        task.predict(student, dev) if dev else None,
        task.predict(student, predict) if predict is not None else None,
        files,
    )


def _drain(queue: Any, progress: Callable[[dict[str, Any]], None]) -> None:
    while not queue.empty():
        progress(queue.get_nowait())


def _result(ray: Any, ref: Any) -> Trained:
    try:
        trained: Trained = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the remote error itself, whole
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise
    except ray.exceptions.RayError as exc:  # the worker or its node died, the cluster went
        raise PipelineError(
            f"{WHAT}: the student's Ray task failed ({type(exc).__name__}: {exc}); finished "
            "steps are kept, run the same command again to resume"
        ) from None
    return trained


def train_on_ray(
    task: Any,
    rows: Sequence[Any],
    dev: Sequence[Any],
    predict: Sequence[Any] | None,
    *,
    keep: bool,
    progress: Callable[[dict[str, Any]], None],
    cancel: threading.Event,
) -> Trained:
    """Train ``task``'s student on a Ray task (blocking: call it off the event loop)."""
    from ray.util.queue import Queue

    from ...distributed.ray_run import require_ray

    ray = require_ray(WHAT)
    student = task.settings.student
    local = replace(student, placement="local", ray_address=None, num_gpus=None)
    task = replace_student(task, local)
    queue = Queue(actor_options={"num_cpus": 0})
    try:
        remote = ray.remote(num_gpus=student.gpus, max_retries=0)(_remote_work)
        ref = remote.remote(
            task, list(rows), list(dev), None if predict is None else list(predict), keep, queue
        )
        while not ray.wait([ref], timeout=POLL_SECONDS)[0]:
            _drain(queue, progress)
            if cancel.is_set():
                ray.cancel(ref, force=True)
                raise TrainingCancelled("training cancelled")
        _drain(queue, progress)
        return _result(ray, ref)
    finally:
        queue.shutdown()


def replace_student(task: Any, student: StudentConfig) -> Any:
    """A copy of ``task`` whose settings carry ``student``."""
    import copy

    out = copy.copy(task)
    out.settings = replace(task.settings, student=student)
    return out
