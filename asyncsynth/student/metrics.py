"""Student metrics, pure Python (no torch): classification over label names, and SQuAD's
exact match and F1 for extractive QA."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ClassMetrics",
    "Metrics",
    "QAMetrics",
    "compute_metrics",
    "compute_qa_metrics",
    "normalize_answer",
    "squad_exact",
    "squad_f1",
]


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

    def summary(self) -> dict[str, Any]:
        """The headline figures (for reports)."""
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "n": self.n}


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


# -- extractive QA (SQuAD) ------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normal form: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, gold: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer."""
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(g) for g in gold)) if gold else 0.0


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, gold: Sequence[str]) -> float:
    """Token F1 of the prediction against its best-matching gold answer."""
    return max((_f1(prediction, g) for g in gold), default=0.0)


@dataclass(frozen=True, slots=True)
class QAMetrics:
    """SQuAD exact match and F1 (fractions, the mean over ``n`` questions)."""

    exact_match: float
    f1: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        return self.to_dict()


def compute_qa_metrics(predictions: Sequence[str], gold: Sequence[Sequence[str]]) -> QAMetrics:
    """Exact match and F1 of ``predictions`` against every question's gold answers."""
    if len(predictions) != len(gold):
        raise ValueError(f"{len(predictions)} predictions for {len(gold)} questions")
    n = len(gold)
    if not n:
        return QAMetrics(0.0, 0.0, 0)
    em = sum(squad_exact(p, g) for p, g in zip(predictions, gold, strict=True))
    f1 = sum(squad_f1(p, g) for p, g in zip(predictions, gold, strict=True))
    return QAMetrics(em / n, f1 / n, n)
