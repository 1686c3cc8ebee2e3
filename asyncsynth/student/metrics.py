"""Classification metrics over label names (pure Python, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ClassMetrics", "Metrics", "compute_metrics"]


@dataclass(frozen=True, slots=True)
class ClassMetrics:
    """Precision, recall and F1 of one class; ``support`` is its count in the gold labels."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True, slots=True)
class Metrics:
    """Accuracy, macro-F1, per-class scores and ``confusion[gold][pred]`` counts over ``n``."""

    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    confusion: dict[str, dict[str, int]]
    n: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (nested dicts of numbers)."""
        return asdict(self)


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def compute_metrics(
    gold: Sequence[str], pred: Sequence[str], labels: Sequence[str] | None = None
) -> Metrics:
    """Score ``pred`` against ``gold``.

    ``labels`` fixes the classes and their order (default: sorted union of both sides);
    a label outside it raises ``ValueError``. Undefined precision/recall/F1 are 0.0, and
    macro-F1 averages only classes that occur in ``gold`` or ``pred``, so a class absent
    from both neither yields NaN nor drags the average down.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length: {len(gold)} != {len(pred)}")
    classes = list(dict.fromkeys(labels)) if labels is not None else sorted({*gold, *pred})
    unknown = {*gold, *pred} - set(classes)
    if unknown:
        raise ValueError(f"labels not in {classes}: {sorted(unknown)}")

    confusion = {g: dict.fromkeys(classes, 0) for g in classes}
    for g, p in zip(gold, pred, strict=True):
        confusion[g][p] += 1

    per_class: dict[str, ClassMetrics] = {}
    f1_present: list[float] = []
    for c in classes:
        tp = confusion[c][c]
        support = sum(confusion[c].values())
        predicted = sum(confusion[g][c] for g in classes)
        precision, recall = _ratio(tp, predicted), _ratio(tp, support)
        f1 = _ratio(2 * tp, support + predicted)
        per_class[c] = ClassMetrics(precision, recall, f1, support)
        if support or predicted:
            f1_present.append(f1)

    n = len(gold)
    correct = sum(confusion[c][c] for c in classes)
    return Metrics(
        accuracy=_ratio(correct, n),
        macro_f1=sum(f1_present) / len(f1_present) if f1_present else 0.0,
        per_class=per_class,
        confusion=confusion,
        n=n,
    )
