"""S3's task kinds behind one small interface: single texts, text pairs, extractive QA.

A :class:`Task` says what differs between them, and nothing else does:

- which field of a row the LLM writes (``text``; ``text_pair``; ``question``) and where
  duplicates of it are looked for (everywhere; among texts for the same context);
- what a seed example is drawn from (a label and ``k`` of its reasons; plus a context
  from the pool; a context and an answer span) and which prompt writes it;
- what an extrapolation keeps of the error (its label; its context; its context and
  answer) and how the answer becomes a row;
- which student learns it (a sequence classifier; an extractive-QA model), how its
  predictions are scored (accuracy; SQuAD exact match and F1) and what counts as an
  error (a wrong label; exact match 0).

Rows are plain dicts, as written to the run's JSONL files: ``id``, ``text``,
``text_pair`` (pairs), ``label`` for classification; ``id``, ``context``, ``question``,
``answers`` (``{"text": [...], "answer_start": [...]}``, SQuAD's shape) for QA.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ...prompts import Prompt
from ...student.config import Example, QAExample
from ...student.metrics import Metrics, QAMetrics, compute_metrics, compute_qa_metrics, squad_exact
from .cleaning import words
from .prompts import PromptSet, join_phrases, label_values, qa_values
from .settings import LabelSpec, S3Settings

if TYPE_CHECKING:
    from ...student.trainer import TrainedQAStudent, TrainedStudent

__all__ = [
    "ClassificationTask",
    "Draw",
    "Parsed",
    "QATask",
    "Row",
    "Task",
    "make_task",
]

Row = dict[str, Any]
Progress = Callable[[dict[str, Any]], None]
AnyMetrics = Metrics | QAMetrics


@dataclass
class Draw:
    """What one seed example is written from: prompt values and what the row keeps."""

    values: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    """``label`` (classification), ``context``, ``answer``/``answer_start`` (QA), ``scope``."""


@dataclass
class Parsed:
    """An answer split into the text to clean and what else it said (QA: the span)."""

    text: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    """Why the answer is unusable before cleaning (``text`` is then None)."""


def scope_of(context: str) -> str:
    return " ".join(words(context))


class Task(Protocol):
    """What differs between S3's task kinds (see the module's docstring)."""

    name: str
    labelled: bool

    def new_text(self, row: Mapping[str, Any]) -> str:
        """The text the LLM writes."""
        ...

    def scope(self, row: Mapping[str, Any]) -> str:
        """Where duplicates of it are looked for."""
        ...

    def label(self, row: Mapping[str, Any]) -> str | None:
        """The label a row was asked for (None without labels)."""
        ...

    def draw(self, rng: random.Random, rationales: Mapping[str, list[str]]) -> Draw: ...

    def seed_prompt(self, prompts: PromptSet, draw: Draw) -> Prompt: ...

    def parse(self, meta: Mapping[str, Any], completion: str | None) -> Parsed: ...

    def seed_row(self, ident: str, meta: Mapping[str, Any], text: str) -> Row: ...

    def extrapolation_values(self, error: Mapping[str, Any]) -> dict[str, Any]: ...

    def extrapolated_row(
        self, ident: str, error: Mapping[str, Any], text: str, source: str
    ) -> Row: ...

    def train(
        self,
        rows: Sequence[Row],
        dev: Sequence[Row],
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> Any:
        """A fresh student trained on ``rows``, its checkpoint chosen on ``dev``."""
        ...

    def predict(self, student: Any, rows: Sequence[Row]) -> list[str]: ...

    def score(self, rows: Sequence[Row], predicted: Sequence[str]) -> AnyMetrics: ...

    def is_error(self, row: Mapping[str, Any], predicted: str) -> bool: ...

    def key(self, row: Mapping[str, Any]) -> str:
        """The normal form of a row's input, for exact duplicates across gold parts."""
        ...


class ClassificationTask:
    """Single texts (``single``) or text pairs (``pair``) with labels."""

    labelled = True

    def __init__(self, settings: S3Settings, contexts: Sequence[str] | None) -> None:
        self.settings = settings
        self.name: str = settings.task
        self.pair = settings.task == "pair"
        self.contexts = list(contexts or ())
        self.labels: dict[str, LabelSpec] = {lab.name: lab for lab in settings.labels}

    def new_text(self, row: Mapping[str, Any]) -> str:
        return str(row["text_pair"] if self.pair else row["text"])

    def scope(self, row: Mapping[str, Any]) -> str:
        return scope_of(row["text"]) if self.pair else ""

    def label(self, row: Mapping[str, Any]) -> str | None:
        return str(row["label"])

    def key(self, row: Mapping[str, Any]) -> str:
        return " ".join(words(row["text"])) + " || " + " ".join(words(row.get("text_pair") or ""))

    def draw(self, rng: random.Random, rationales: Mapping[str, list[str]]) -> Draw:
        settings = self.settings
        label = self.labels[rng.choice(settings.label_names)]
        values = label_values(settings, label)
        meta: dict[str, Any] = {"label": label.name, "scope": ""}
        if settings.k > 0:
            pool = rationales[label.name]
            chosen = rng.sample(pool, min(settings.k, len(pool)))
            values["rationales"] = join_phrases(chosen)
            meta["rationales"] = chosen
        if self.pair:
            context = rng.choice(self.contexts)
            values["context"] = context
            meta.update(context=context, scope=scope_of(context))
        return Draw(values, meta)

    def seed_prompt(self, prompts: PromptSet, draw: Draw) -> Prompt:
        return prompts.seed

    def parse(self, meta: Mapping[str, Any], completion: str | None) -> Parsed:
        return Parsed(completion)

    def seed_row(self, ident: str, meta: Mapping[str, Any], text: str) -> Row:
        extra = {"rationales": meta["rationales"]} if "rationales" in meta else {}
        if self.pair:
            return _row(ident, meta["context"], text, meta["label"], source="seed", **extra)
        return _row(ident, text, None, meta["label"], source="seed", **extra)

    def extrapolation_values(self, error: Mapping[str, Any]) -> dict[str, Any]:
        values = label_values(self.settings, self.labels[error["label"]])
        values["example"] = self.new_text(error)
        if self.pair:
            values["context"] = error["text"]
        return values

    def extrapolated_row(self, ident: str, error: Mapping[str, Any], text: str, source: str) -> Row:
        extra = {"source": source, "from": error["id"], "predicted": error["predicted"]}
        if self.pair:
            return _row(ident, error["text"], text, error["label"], **extra)
        return _row(ident, text, None, error["label"], **extra)

    def train(
        self,
        rows: Sequence[Row],
        dev: Sequence[Row],
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> TrainedStudent:
        from ...student.trainer import train_student

        return train_student(
            [example(r) for r in rows],
            [example(r) for r in dev],
            self.settings.label_names,
            self.settings.student,
            progress=progress,
            cancel=cancel,
        )

    def predict(self, student: Any, rows: Sequence[Row]) -> list[str]:
        return _predictions(student, [example(r) for r in rows])

    def score(self, rows: Sequence[Row], predicted: Sequence[str]) -> Metrics:
        return compute_metrics([r["label"] for r in rows], predicted, self.settings.label_names)

    def is_error(self, row: Mapping[str, Any], predicted: str) -> bool:
        return predicted != row["label"]


_SPAN_ANSWER = re.compile(r"^\s*(?:\*\*)?answer(?:\*\*)?\s*:\s*(.+?)\s*$", re.I | re.M)
_SPAN_QUESTION = re.compile(r"^\s*(?:\*\*)?question(?:\*\*)?\s*:\s*(.+?)\s*$", re.I | re.M)


def find_span(context: str, answer: str) -> int | None:
    """Where ``answer`` occurs in ``context`` (exactly, else ignoring case), or None."""
    answer = answer.strip().strip("\"'“”").strip()
    if not answer:
        return None
    at = context.find(answer)
    if at < 0:
        at = context.lower().find(answer.lower())
    return at if at >= 0 else None


class QATask:
    """Extractive QA (the paper's AdQA): the LLM writes questions for context + answer."""

    name = "qa"
    labelled = False

    def __init__(
        self,
        settings: S3Settings,
        pool: Sequence[tuple[str, tuple[str, ...], tuple[int, ...]]],
    ) -> None:
        self.settings = settings
        self.pool = list(pool)

    def new_text(self, row: Mapping[str, Any]) -> str:
        return str(row["question"])

    def scope(self, row: Mapping[str, Any]) -> str:
        return scope_of(row["context"])

    def label(self, row: Mapping[str, Any]) -> str | None:
        return None

    def key(self, row: Mapping[str, Any]) -> str:
        return " ".join(words(row["context"])) + " || " + " ".join(words(row["question"]))

    def draw(self, rng: random.Random, rationales: Mapping[str, list[str]]) -> Draw:
        context, answers, starts = rng.choice(self.pool)
        meta: dict[str, Any] = {"context": context, "scope": scope_of(context)}
        if answers:
            meta.update(answer=answers[0], answer_start=starts[0])
        else:
            meta["span"] = True  # the LLM picks the answer (seed_span.md)
        return Draw(qa_values(self.settings, context, meta.get("answer")), meta)

    def seed_prompt(self, prompts: PromptSet, draw: Draw) -> Prompt:
        if not draw.meta.get("span"):
            return prompts.seed
        assert prompts.seed_span is not None
        return prompts.seed_span

    def parse(self, meta: Mapping[str, Any], completion: str | None) -> Parsed:
        """The question; when the LLM picked the span, its answer too, checked in the context."""
        if completion is None or not meta.get("span"):
            return Parsed(completion)
        answer, question = _SPAN_ANSWER.search(completion), _SPAN_QUESTION.search(completion)
        if answer is None or question is None:
            return Parsed(None, reason="unparsed")
        at = find_span(meta["context"], answer.group(1))
        if at is None:
            return Parsed(None, reason="answer_not_in_context")
        text = answer.group(1).strip().strip("\"'“”").strip()
        span = meta["context"][at : at + len(text)]
        return Parsed(question.group(1), {"answer": span, "answer_start": at})

    def seed_row(self, ident: str, meta: Mapping[str, Any], text: str) -> Row:
        return qa_row(ident, meta["context"], text, meta["answer"], meta["answer_start"], "seed")

    def extrapolation_values(self, error: Mapping[str, Any]) -> dict[str, Any]:
        values = qa_values(self.settings, error["context"], error["answers"]["text"][0])
        values["example"] = error["question"]
        return values

    def extrapolated_row(self, ident: str, error: Mapping[str, Any], text: str, source: str) -> Row:
        answers = error["answers"]
        first, start = answers["text"][0], answers["answer_start"][0]
        row = qa_row(ident, error["context"], text, first, start, source)
        row.update({"from": error["id"], "predicted": error["predicted"]})
        return row

    def train(
        self,
        rows: Sequence[Row],
        dev: Sequence[Row],
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> TrainedQAStudent:
        from ...student.trainer import train_qa_student

        return train_qa_student(
            [qa_example(r) for r in rows],
            [qa_example(r) for r in dev],
            self.settings.student,
            progress=progress,
            cancel=cancel,
        )

    def predict(self, student: Any, rows: Sequence[Row]) -> list[str]:
        return _predictions(student, [qa_example(r) for r in rows])

    def score(self, rows: Sequence[Row], predicted: Sequence[str]) -> QAMetrics:
        return compute_qa_metrics(predicted, [r["answers"]["text"] for r in rows])

    def is_error(self, row: Mapping[str, Any], predicted: str) -> bool:
        return squad_exact(predicted, row["answers"]["text"]) == 0.0


def _predictions(student: Any, examples: Sequence[Any]) -> list[str]:
    return [str(p) for p in student.predict(examples)]


def _row(ident: str, text: str, text_pair: str | None, label: str, **extra: Any) -> Row:
    row: Row = {"id": ident, "text": text}
    if text_pair is not None:
        row["text_pair"] = text_pair
    row["label"] = label
    row.update(extra)
    return row


def qa_row(
    ident: str,
    context: str,
    question: str,
    answer: str,
    answer_start: int,
    source: str | None = None,
) -> Row:
    """A QA row in SQuAD's shape (``answers`` with ``text`` and ``answer_start`` lists)."""
    row: Row = {
        "id": ident,
        "context": context,
        "question": question,
        "answers": {"text": [answer], "answer_start": [answer_start]},
    }
    if source is not None:
        row["source"] = source
    return row


def example(row: Mapping[str, Any]) -> Example:
    return Example(text=row["text"], text_pair=row.get("text_pair"), label=row["label"])


def qa_example(row: Mapping[str, Any]) -> QAExample:
    answers = row["answers"]
    return QAExample(
        row["context"], row["question"], tuple(answers["text"]), tuple(answers["answer_start"])
    )


def make_task(settings: S3Settings, contexts: Sequence[Any] | None) -> Task:
    """The task of ``settings`` (its pool of contexts from the gold data)."""
    if settings.task == "qa":
        return QATask(settings, contexts or ())
    return ClassificationTask(settings, contexts)
