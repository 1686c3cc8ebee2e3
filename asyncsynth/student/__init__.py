"""Student classifier for S3: fine-tune a small local model on synthetic data.

Needs the ``asyncsynth[student]`` extra (torch + transformers) for :func:`train_student`
and :class:`TrainedStudent`; those are imported lazily, so the data types and
:mod:`asyncsynth.student.metrics` work without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asyncsynth.student.config import (
    TINY_BERT,
    Example,
    StudentConfig,
    TrainingCancelled,
    resolve_model,
)
from asyncsynth.student.metrics import ClassMetrics, Metrics, compute_metrics

if TYPE_CHECKING:
    from asyncsynth.student.trainer import TrainedStudent, train_student

__all__ = [
    "TINY_BERT",
    "ClassMetrics",
    "Example",
    "Metrics",
    "StudentConfig",
    "TrainedStudent",
    "TrainingCancelled",
    "compute_metrics",
    "resolve_model",
    "train_student",
]

_LAZY = frozenset({"TrainedStudent", "train_student"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from asyncsynth.student import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
