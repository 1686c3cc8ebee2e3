"""S3's labelled data: mining (errors), dev (checkpoint choice), test (reported once).

:func:`load_gold` reads the ``gold``, ``dev``, ``test`` and ``contexts`` sources of the
settings (files or ``hf:`` datasets), splits gold into mining and dev when no dev source
is given, and checks **gold hygiene** before anything trains: exact duplicates (the same
input after lower-casing and dropping punctuation) within and across mining, dev and
test are counted, and with ``gold_duplicates = "remove"`` removed (a repeat within a part
keeps its first copy; a mining or dev row that is also in test, or a mining row also in
dev, is dropped from mining or dev: test stays whole).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...data import (
    Fields,
    QAFields,
    load_examples,
    load_qa_examples,
    load_qa_pool,
    load_texts,
    qa_split,
    stratified_split,
)
from ..runfolder import digest
from .settings import S3Settings
from .tasks import Row, Task, make_task, qa_row

__all__ = ["GoldData", "gold_duplicates", "load_gold"]

_PARTS = ("mining", "dev", "test")


@dataclass
class GoldData:
    """The run's labelled data: mining (errors), dev (selection), test (reported at the end)."""

    mining: list[Row]
    dev: list[Row]
    test: list[Row] | None
    contexts: list[Any] | None
    """The seed's pool: texts (pairs), or (context, answers, starts) triples (QA)."""
    duplicates: dict[str, Any] = field(default_factory=dict)
    """What gold hygiene found (and removed), see :func:`gold_duplicates`."""

    @property
    def needs_span(self) -> bool:
        """QA: some pool contexts come without an answer (the LLM picks a span)."""
        return any(isinstance(c, tuple) and not c[1] for c in self.contexts or ())

    def digest(self) -> dict[str, str]:
        parts = {"mining": self.mining, "dev": self.dev, "test": self.test}
        out = {name: digest(rows) for name, rows in parts.items() if rows is not None}
        if self.contexts is not None:
            out["contexts"] = digest(self.contexts)
        return out


def _classification(settings: S3Settings) -> tuple[list[Row], list[Row], list[Row] | None]:
    fields = Fields(settings.text_field, settings.text_pair_field, settings.label_field)

    def examples(source: str) -> list[Any]:
        return load_examples(
            source,
            fields=fields,
            labels=settings.label_names,
            label_map=settings.label_map,
            base_dir=settings.base_dir,
        )

    gold = examples(settings.gold)
    if settings.dev is not None:
        kept, held = gold, examples(settings.dev)
    else:
        kept, held = stratified_split(gold, settings.dev_fraction, settings.seed)
    test = examples(settings.test) if settings.test is not None else None
    return (
        [_as_row(f"gold-{i}", ex) for i, ex in enumerate(kept)],
        [_as_row(f"dev-{i}", ex) for i, ex in enumerate(held)],
        [_as_row(f"test-{i}", ex) for i, ex in enumerate(test)] if test is not None else None,
    )


def _as_row(ident: str, ex: Any) -> Row:
    row: Row = {"id": ident, "text": ex.text}
    if ex.text_pair is not None:
        row["text_pair"] = ex.text_pair
    row["label"] = ex.label
    return row


def _qa_rows(examples: Sequence[Any], prefix: str) -> list[Row]:
    out = []
    for i, ex in enumerate(examples):
        row = qa_row(f"{prefix}-{i}", ex.context, ex.question, ex.answers[0], ex.answer_starts[0])
        row["answers"] = {"text": list(ex.answers), "answer_start": list(ex.answer_starts)}
        out.append(row)
    return out


def _qa(settings: S3Settings) -> tuple[list[Row], list[Row], list[Row] | None]:
    fields = QAFields(settings.context_field, settings.question_field, settings.answers_field)

    def examples(source: str) -> list[Any]:
        return load_qa_examples(source, fields=fields, base_dir=settings.base_dir)

    gold = examples(settings.gold)
    if settings.dev is not None:
        mining, dev = gold, examples(settings.dev)
    else:
        mining, dev = qa_split(gold, settings.dev_fraction, settings.seed)
    test = examples(settings.test) if settings.test is not None else None
    return (
        _qa_rows(mining, "gold"),
        _qa_rows(dev, "dev"),
        _qa_rows(test, "test") if test is not None else None,
    )


def _contexts(settings: S3Settings, mining: list[Row]) -> list[Any] | None:
    if settings.task == "qa":
        if settings.contexts is None:  # the mining set's contexts and answers
            return [
                (r["context"], (r["answers"]["text"][0],), (r["answers"]["answer_start"][0],))
                for r in mining
            ]
        fields = QAFields(settings.context_field, settings.question_field, settings.answers_field)
        return load_qa_pool(settings.contexts, fields=fields, base_dir=settings.base_dir)
    if settings.contexts is None:
        return None
    return load_texts(settings.contexts, field=settings.context_field, base_dir=settings.base_dir)


def gold_duplicates(
    parts: Mapping[str, Sequence[Row] | None], task: Task, *, remove: bool
) -> tuple[dict[str, list[Row] | None], dict[str, Any]]:
    """Exact duplicates within and across the gold parts; the parts with them removed if asked.

    The report counts rows: ``within`` a part (copies after the first), and ``across``
    pairs of parts (rows of the first part whose input is also in the second).
    """
    keys = {name: [task.key(r) for r in rows] for name, rows in parts.items() if rows is not None}
    within = {name: len(k) - len(set(k)) for name, k in keys.items()}
    across: dict[str, int] = {}
    names = [n for n in _PARTS if n in keys]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            other = set(keys[b])
            across[f"{a}/{b}"] = sum(k in other for k in keys[a])
    report: dict[str, Any] = {"within": within, "across": across, "removed": {}}
    if not remove:
        return {k: list(v) if v is not None else None for k, v in parts.items()}, report
    out: dict[str, list[Row] | None] = {}
    later: set[str] = set()
    for name in reversed(names):  # test first: it stays whole across parts
        seen: set[str] = set()
        kept = []
        for row, key in zip(parts[name] or [], keys[name], strict=True):
            if key in seen or key in later:
                continue
            seen.add(key)
            kept.append(row)
        report["removed"][name] = len(keys[name]) - len(kept)
        out[name] = kept
        later |= seen
    for name in parts:
        out.setdefault(name, None)
    return out, report


def load_gold(settings: S3Settings) -> GoldData:
    """Read the gold, dev, test and context sources, split gold, check its hygiene."""
    if settings.task == "qa":
        mining, dev, test = _qa(settings)
    else:
        mining, dev, test = _classification(settings)
    contexts = _contexts(settings, mining)
    task = make_task(settings, contexts)
    parts, report = gold_duplicates(
        {"mining": mining, "dev": dev, "test": test},
        task,
        remove=settings.gold_duplicates == "remove",
    )
    return GoldData(
        parts["mining"] or [],
        parts["dev"] or [],
        parts["test"],
        contexts,
        report,
    )
