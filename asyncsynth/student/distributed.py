"""Several processes for one student (DDP): ``torchrun`` children, the caller's thread waits.

``StudentConfig.processes = N > 1`` makes :func:`~asyncsynth.student.train_student` (and
the QA one) hand the run to ``python -m torch.distributed.run --standalone
--nproc_per_node N``: each child trains one replica (``Trainer`` runs DDP under
``torchrun``: one process per GPU, NCCL; gloo on CPUs); rank 0 reports progress on its
standard output and saves the chosen weights, which the caller loads back. The S3 event
loop keeps one process: only training is spread. Setting ``cancel`` ends the children.

Run as a module (``python -m asyncsynth.student.distributed JOB_DIR``) it is the child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asyncsynth.student.config import Example, QAExample, StudentConfig, TrainingCancelled

__all__ = ["torchrun_command", "train_distributed"]

_MARK = "@@asyncsynth-progress "
_JOB = "job.json"
_OUT = "student"


def torchrun_command(processes: int, job_dir: str) -> list[str]:
    """The command that trains the job in ``job_dir`` on ``processes`` processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "asyncsynth.student.distributed",
        job_dir,
    ]


def _rows(kind: str, examples: Sequence[Any]) -> list[dict[str, Any]]:
    return [asdict(ex) for ex in examples]


def _examples(kind: str, rows: list[dict[str, Any]]) -> list[Any]:
    if kind == "qa":
        return [
            QAExample(r["context"], r["question"], tuple(r["answers"]), tuple(r["answer_starts"]))
            for r in rows
        ]
    return [Example(**r) for r in rows]


def train_distributed(
    kind: str,
    train: Sequence[Any],
    dev: Sequence[Any],
    labels: Sequence[str] | None,
    config: StudentConfig,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: threading.Event | None = None,
) -> Any:
    """Train in ``config.processes`` torchrun children; the student rank 0 chose."""
    from asyncsynth.student.trainer import TrainedQAStudent, TrainedStudent

    with tempfile.TemporaryDirectory(prefix="asyncsynth-ddp-") as job:
        job_file = Path(job) / _JOB
        job_file.write_text(
            json.dumps(
                {
                    "kind": kind,
                    "labels": list(labels) if labels is not None else None,
                    "config": asdict(config),
                    "train": _rows(kind, train),
                    "dev": _rows(kind, dev),
                }
            ),
            encoding="utf-8",
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            torchrun_command(config.processes, job),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        tail: list[str] = []
        stopper = _cancel_watch(proc, cancel)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(_MARK):
                if progress is not None:
                    progress(json.loads(line[len(_MARK) :]))
            else:
                tail = [*tail[-39:], line.rstrip("\n")]
        code = proc.wait()
        stopper.set()
        if cancel is not None and cancel.is_set():
            raise TrainingCancelled("training cancelled (torchrun children ended)")
        if code != 0:
            raise RuntimeError(
                f"torchrun training failed with exit code {code}:\n" + "\n".join(tail[-20:])
            )
        loader = TrainedQAStudent if kind == "qa" else TrainedStudent
        return loader.load(Path(job) / _OUT, device=config.device)


def _cancel_watch(proc: subprocess.Popen[str], cancel: threading.Event | None) -> threading.Event:
    """A thread that ends the children when ``cancel`` is set; set the result to stop it."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            if cancel is not None and cancel.is_set():
                proc.terminate()
                return

    threading.Thread(target=watch, daemon=True, name="asyncsynth-ddp-cancel").start()
    return done


def _child(job_dir: str) -> None:
    from asyncsynth.student.trainer import train_qa_student, train_student

    job = json.loads((Path(job_dir) / _JOB).read_text(encoding="utf-8"))
    kind = job["kind"]
    config = StudentConfig(**job["config"])
    rank = int(os.environ.get("RANK", "0"))

    def progress(entry: dict[str, Any]) -> None:
        if rank == 0:
            print(_MARK + json.dumps(entry), flush=True)

    train, dev = _examples(kind, job["train"]), _examples(kind, job["dev"])
    if kind == "qa":
        student: Any = train_qa_student(train, dev, config, progress=progress)
    else:
        student = train_student(train, dev, job["labels"], config, progress=progress)
    if rank == 0:
        student.save(Path(job_dir) / _OUT)


if __name__ == "__main__":
    _child(sys.argv[1])
