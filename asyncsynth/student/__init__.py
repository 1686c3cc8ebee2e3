"""Student models for S3: fine-tune a small local classifier or extractive-QA model.

Needs the ``asyncsynth[student]`` extra (torch, transformers, accelerate) for
:func:`train_student`, :func:`train_qa_student` and the trained students; those are
imported lazily, so the data types, :mod:`asyncsynth.student.metrics` and
:mod:`asyncsynth.student.device` work without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asyncsynth.student.config import (
    TINY_BERT,
    Example,
    QAExample,
    StudentConfig,
    TrainingCancelled,
    resolve_model,
    weights_fingerprint,
)
from asyncsynth.student.device import Hardware, choose_hardware
from asyncsynth.student.metrics import (
    ClassMetrics,
    Metrics,
    QAMetrics,
    compute_metrics,
    compute_qa_metrics,
    normalize_answer,
)

if TYPE_CHECKING:
    from asyncsynth.student.trainer import (
        TrainedQAStudent,
        TrainedStudent,
        train_qa_student,
        train_student,
    )

__all__ = [
    "TINY_BERT",
    "ClassMetrics",
    "Example",
    "Hardware",
    "Metrics",
    "QAExample",
    "QAMetrics",
    "StudentConfig",
    "TrainedQAStudent",
    "TrainedStudent",
    "TrainingCancelled",
    "choose_hardware",
    "compute_metrics",
    "compute_qa_metrics",
    "normalize_answer",
    "resolve_model",
    "train_qa_student",
    "train_student",
    "weights_fingerprint",
]

_LAZY = frozenset({"TrainedQAStudent", "TrainedStudent", "train_qa_student", "train_student"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from asyncsynth.student import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
