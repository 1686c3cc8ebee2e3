"""The S3 loop: rationales, seed synthesis, then rounds of train, mine errors, extrapolate.

Steps, each written atomically into the output folder and recorded in ``state.json``
when finished (a re-run loads finished steps and goes on from the first unfinished one):

- ``rationales``: per label, ``rationales.samples`` requests for ``rationales.count``
  reasons (only when ``k > 0``);
- ``seed``: ``seed_size`` examples, each of a label drawn uniformly (and, for text
  pairs, a context drawn from the pool), written from ``k`` of the label's reasons;
- ``round_<r>/train``: a fresh student trained on the seed and everything added so far,
  its checkpoint chosen on the dev set; it labels the mining set and every miss is an error;
- ``round_<r>/extrapolate``: per error, ``extrapolate_per_error`` requests for a new
  example like it with its gold label (the context of a pair is kept); cleaned, reviewed
  by the GRA committee if asked, added;
- ``final``: the student trained on all of it, chosen on dev, then evaluated once on the
  test set.

Every request goes through the engine with the run's journal, and its content (and
``seed`` parameter) is fixed by the run's seed, so a crash in the middle of a step
re-sends nothing already answered; training is deterministic given the seed.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ...config import Config
from ...data import Fields, load_examples, load_texts, stratified_split
from ...engine import ConfigError, Engine, Request, Result
from ...io import read_json, read_rows, write_json, write_jsonl
from ...student.config import Example, TrainingCancelled
from ...student.metrics import Metrics, compute_metrics
from ..errors import PipelineError
from ..events import EventKind, OnEvent, PipelineEvent
from ..runfolder import RunFolder, digest
from .cleaning import Cleaner, CleaningCounts, NearDuplicateIndex, words
from .settings import LabelSpec, S3Settings, load_s3_settings
from .tasks import PromptSet, join_phrases, label_values, load_prompt_set, parse_rationales, render

if TYPE_CHECKING:
    from ...student.trainer import TrainedStudent

__all__ = [
    "GoldData",
    "ReviewSample",
    "Reviewer",
    "S3Error",
    "S3Result",
    "load_gold",
    "run_s3",
]

JOURNAL_FILE = "s3.journal.sqlite"
SEED_REQUESTS_FACTOR = 3
"""The seed step asks again for what cleaning dropped, up to this many times seed_size."""
RATIONALE_REASKS = 2
"""Times a label whose answers held no usable reason is asked again (new samples) before failing."""
_REVIEW_SUMMARY = ("mu", "sigma", "path", "reason")
RESUMABLE_CHANGES = frozenset({"rounds", "max_failures", "save_student", "student.device"})
"""Settings a resumed run may change: the other ones would make finished steps stale."""

Row = dict[str, Any]


class S3Error(PipelineError):
    """An S3 run cannot go on (too many failed requests, unusable rationales, a stale folder)."""


@dataclass(frozen=True, slots=True)
class ReviewSample:
    """A cleaned new example, as a reviewer sees it."""

    instruction: str
    """The request that asked for it (its messages' text)."""
    response: str
    """The text the LLM wrote, cleaned."""
    generator: str | None
    """The endpoint that wrote it."""
    key: str
    """A stable id (the example's), for reproducible reviewer draws."""


class Reviewer(Protocol):
    """Reviews new examples (``review = "gra"``): one ``(accepted, record)`` per sample."""

    async def __call__(
        self, samples: Sequence[ReviewSample]
    ) -> list[tuple[bool, dict[str, Any]]]: ...


# -- gold data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldData:
    """The run's labelled data: mining (errors), dev (selection), test (reported at the end)."""

    mining: list[Row]
    dev: list[Row]
    test: list[Row] | None
    contexts: list[str] | None

    def digest(self) -> dict[str, str]:
        parts = {"mining": self.mining, "dev": self.dev, "test": self.test}
        out = {name: digest(rows) for name, rows in parts.items() if rows is not None}
        if self.contexts is not None:
            out["contexts"] = digest(self.contexts)
        return out


def _rows(examples: Sequence[Example], prefix: str) -> list[Row]:
    return [_row(f"{prefix}-{i}", ex.text, ex.text_pair, ex.label) for i, ex in enumerate(examples)]


def _row(ident: str, text: str, text_pair: str | None, label: str, **extra: Any) -> Row:
    row: Row = {"id": ident, "text": text}
    if text_pair is not None:
        row["text_pair"] = text_pair
    row["label"] = label
    row.update(extra)
    return row


def _example(row: Row) -> Example:
    return Example(text=row["text"], text_pair=row.get("text_pair"), label=row["label"])


def load_gold(settings: S3Settings) -> GoldData:
    """Read the gold, dev, test and context sources and split gold into mining and dev."""
    fields = Fields(settings.text_field, settings.text_pair_field, settings.label_field)

    def examples(source: str) -> list[Example]:
        return load_examples(
            source,
            fields=fields,
            labels=settings.label_names,
            label_map=settings.label_map,
            base_dir=settings.base_dir,
        )

    gold = examples(settings.gold)
    if settings.dev is not None:
        mining, dev = gold, examples(settings.dev)
    else:
        mining, dev = stratified_split(gold, settings.dev_fraction, settings.seed)
    test = examples(settings.test) if settings.test is not None else None
    contexts = None
    if settings.contexts is not None:
        contexts = load_texts(
            settings.contexts, field=settings.context_field, base_dir=settings.base_dir
        )
    return GoldData(
        _rows(mining, "gold"),
        _rows(dev, "dev"),
        _rows(test, "test") if test is not None else None,
        contexts,
    )


# -- the run --------------------------------------------------------------------------------


def _request_seed(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _metrics_summary(metrics: Metrics) -> dict[str, Any]:
    return {"accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1, "n": metrics.n}


def _prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


class _Run:
    def __init__(
        self,
        config: Config,
        out: Path,
        settings: S3Settings,
        gold: GoldData,
        prompts: PromptSet,
        on_event: OnEvent | None,
        reviewer: Reviewer | None,
    ) -> None:
        self.config = config
        self.folder = RunFolder(out, journal_name=JOURNAL_FILE)
        self.out = out
        self.settings = settings
        self.gold = gold
        self.prompts = prompts
        self.on_event = on_event
        self.reviewer = reviewer
        self.labels: dict[str, LabelSpec] = {lab.name: lab for lab in settings.labels}
        self.pair = settings.task == "pair"
        self.engine: Engine | None = None
        reference = [(self._scope(r), self._new_text(r)) for r in (*gold.mining, *gold.dev)]
        self.cleaner = Cleaner(settings.cleaning, reference=reference, nouns=[settings.text_kind])

    # -- plumbing -------------------------------------------------------------------------------

    def emit(self, kind: EventKind, step: str, /, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(PipelineEvent(kind, step, data, "s3"))

    def _scope(self, row: Mapping[str, Any]) -> str:
        """Where duplicates are looked for: everything (single), the same context (pairs)."""
        return " ".join(words(row["text"])) if self.pair else ""

    def _new_text(self, row: Mapping[str, Any]) -> str:
        """The text the LLM writes: the text, or the second text of a pair."""
        return row["text_pair"] if self.pair else row["text"]

    def _fingerprint(self) -> dict[str, Any]:
        return {
            **self.settings.fingerprint(),
            "data": self.gold.digest(),
            "prompts": {name: digest(text) for name, text in self.prompts.texts().items()},
        }

    def open_state(self) -> None:
        self.folder.open(
            self._fingerprint(), resumable=RESUMABLE_CHANGES, atomic={"labels"}, what="S3 run"
        )

    def done(self, step: str) -> dict[str, Any] | None:
        return self.folder.done(step)

    def finish(self, step: str, record: dict[str, Any]) -> None:
        self.emit("done", step, **self.folder.finish(step, record))

    async def ask(self, step: str, requests: list[Request]) -> list[Result]:
        """Send ``requests`` concurrently; results in request order; too many failures raise."""
        assert self.engine is not None
        for i, request in enumerate(requests):
            request.meta["i"] = i
        results: list[Result | None] = [None] * len(requests)
        done = 0
        async for result in self.engine.map(requests, role=self.settings.llm):
            results[result.request.meta["i"]] = result
            done += 1
            self.emit("request", step, done=done, total=len(requests), ok=result.ok)
        final = [r for r in results if r is not None]
        failed = [r for r in final if not r.ok]
        if failed and len(failed) > self.settings.max_failures * len(final):
            error = failed[0].error
            raise S3Error(
                f"{step}: {len(failed)} of {len(final)} requests failed (first: {error}); "
                "run again to retry them (answers received are kept in the journal)"
            )
        return final

    def request(self, messages: list[dict[str, str]], *parts: Any, sample: int = 0) -> Request:
        params: dict[str, Any] = {"temperature": self.settings.temperature}
        params.update(self.settings.params)
        if self.settings.request_seed:
            params["seed"] = _request_seed(self.settings.seed, *parts)
        return Request(messages=messages, params=params, sample=sample, meta={"step": parts[0]})

    @staticmethod
    def request_stats(results: Sequence[Result]) -> dict[str, int]:
        return {
            "total": len(results),
            "cached": sum(r.cached for r in results),
            "failed": sum(not r.ok for r in results),
            "tokens_in": sum((r.usage or {}).get("prompt_tokens", 0) for r in results),
            "tokens_out": sum((r.usage or {}).get("completion_tokens", 0) for r in results),
        }

    # -- steps ----------------------------------------------------------------------------------

    async def rationales(self) -> dict[str, list[str]]:
        step, path = "rationales", self.out / "rationales.json"
        settings = self.settings
        if settings.k == 0:
            return {}
        if self.done(step):
            self.emit("skip", step)
            return {k: list(v) for k, v in read_json(path).items()}
        prompt = self.prompts.rationales
        assert prompt is not None
        messages = {
            label.name: render(
                prompt, {**label_values(settings, label), "count": settings.rationales.count}
            )
            for label in settings.labels
        }
        per_ask = settings.rationales.samples
        found: dict[str, list[str]] = {label.name: [] for label in settings.labels}
        results: list[Result] = []
        empty = list(found)
        for ask in range(1 + RATIONALE_REASKS):  # a label left with no usable reason: ask again
            requests = []
            for name in empty:
                for s in range(ask * per_ask, (ask + 1) * per_ask):
                    req = self.request(messages[name], step, name, s, sample=s)
                    req.meta["label"] = name
                    requests.append(req)
            self.emit("start" if ask == 0 else "note", step, requests=len(requests), ask=ask + 1)
            for result in await self.ask(step, requests):
                results.append(result)
                if result.ok:
                    label = result.request.meta["label"]
                    seen = {r.casefold() for r in found[label]}
                    found[label] += [
                        r for r in parse_rationales(result.text()) if r.casefold() not in seen
                    ]
            empty = [name for name, reasons in found.items() if not reasons]
            if not empty:
                break
        write_json(path, found)
        if empty:
            raise S3Error(
                f"{step}: the LLM gave no usable reasons for {', '.join(empty)} in "
                f"{1 + RATIONALE_REASKS} tries (see {path}); check the rationales prompt, "
                "or set k = 0 to write the seed without them"
            )
        self.finish(
            step,
            {
                "per_label": {k: len(v) for k, v in found.items()},
                "requests": self.request_stats(results),
            },
        )
        return found

    def _seed_request(self, i: int, rationales: Mapping[str, list[str]]) -> Request:
        settings = self.settings
        rng = random.Random(f"{settings.seed}:seed:{i}")
        label = self.labels[rng.choice(settings.label_names)]
        values = label_values(settings, label)
        meta: dict[str, Any] = {"id": f"seed-{i}", "label": label.name, "scope": ""}
        if settings.k > 0:
            pool = rationales[label.name]
            chosen = rng.sample(pool, min(settings.k, len(pool)))
            values["rationales"] = join_phrases(chosen)
            meta["rationales"] = chosen
        if self.pair:
            assert self.gold.contexts is not None
            context = rng.choice(self.gold.contexts)
            values["context"] = context
            meta.update(context=context, scope=" ".join(words(context)))
        req = self.request(render(self.prompts.seed, values), "seed", i, sample=i)
        req.meta.update(meta)
        return req

    def clean(
        self,
        results: Sequence[Result],
        make_row: Callable[[Mapping[str, Any], str], Row],
        counts: CleaningCounts,
        dropped: list[Row],
    ) -> list[tuple[Row, Result]]:
        """Clean every answer in request order; the kept ones become rows."""
        kept: list[tuple[Row, Result]] = []
        for result in results:
            meta = result.request.meta
            cleaned = self.cleaner.clean(
                result.completion,
                prompt=_prompt_text(result.request.messages),
                scope=meta["scope"],
                finish_reason=result.finish_reason,
                counts=counts,
            )
            if cleaned.text is None:
                record: Row = {"id": meta["id"], "reason": cleaned.reason}
                if result.error is not None:
                    record["error"] = str(result.error)
                else:
                    record["completion"] = result.completion
                dropped.append(record)
            else:
                kept.append((make_row(meta, cleaned.text), result))
        return kept

    async def review(
        self,
        step: str,
        candidates: list[tuple[Row, Result]],
        counts: CleaningCounts,
        dropped: list[Row],
        reviews: list[Row],
    ) -> list[Row]:
        """The candidates the reviewer accepts (all of them without a reviewer).

        Each verdict goes to ``reviews``; kept rows carry a short summary of theirs.
        """
        if self.reviewer is None or not candidates:
            return [row for row, _ in candidates]
        samples = [
            ReviewSample(
                _prompt_text(result.request.messages),
                self._new_text(row),
                result.endpoint,
                row["id"],
            )
            for row, result in candidates
        ]
        verdicts = await self.reviewer(samples)
        kept: list[Row] = []
        for (row, _), (accepted, record) in zip(candidates, verdicts, strict=True):
            reviews.append({"id": row["id"], "accepted": accepted, **record})
            if accepted:
                summary = {k: record[k] for k in _REVIEW_SUMMARY if k in record}
                kept.append({**row, "review": summary})
                continue
            self.cleaner.forget(self._new_text(row), self._scope(row))
            counts.kept -= 1
            counts.dropped["review_rejected"] += 1
            dropped.append(
                {"id": row["id"], "reason": "review_rejected", "text": self._new_text(row)}
            )
        self.emit("note", step, reviewed=len(samples), accepted=len(kept))
        return kept

    async def seed(self, rationales: Mapping[str, list[str]]) -> list[Row]:
        step, path = "seed", self.out / "seed.jsonl"
        if self.done(step):
            self.emit("skip", step)
            return self.remember(read_rows(path))
        size = self.settings.seed_size
        review = self.settings.review_seed
        counts = CleaningCounts()
        rows: list[Row] = []
        dropped: list[Row] = []
        reviews: list[Row] = []
        results: list[Result] = []
        start, want = 0, size
        self.emit("start", step, requests=size)
        while want > 0 and start < SEED_REQUESTS_FACTOR * size:
            want = min(want, SEED_REQUESTS_FACTOR * size - start)
            requests = [self._seed_request(i, rationales) for i in range(start, start + want)]
            answers = await self.ask(step, requests)
            results += answers
            candidates = self.clean(answers, self._seed_row, counts, dropped)
            if review:
                rows += await self.review(step, candidates, counts, dropped, reviews)
            else:
                rows += [row for row, _ in candidates]
            start += want
            want = size - len(rows)
        write_jsonl(self.out / "seed.dropped.jsonl", dropped)
        if review and self.reviewer is not None:
            write_jsonl(self.out / "seed.reviews.jsonl", reviews)
        if not rows:
            raise S3Error(
                f"{step}: cleaning kept none of {counts.received} texts "
                f"(see {self.out / 'seed.dropped.jsonl'})"
            )
        write_jsonl(path, rows)
        self.finish(
            step,
            {
                "size": len(rows),
                "by_label": dict(Counter(row["label"] for row in rows)),
                "cleaning": counts.to_dict(),
                "requests": self.request_stats(results),
            },
        )
        return rows

    def _seed_row(self, meta: Mapping[str, Any], text: str) -> Row:
        extra = {"rationales": meta["rationales"]} if "rationales" in meta else {}
        if self.pair:
            return _row(meta["id"], meta["context"], text, meta["label"], source="seed", **extra)
        return _row(meta["id"], text, None, meta["label"], source="seed", **extra)

    def remember(self, rows: list[Row]) -> list[Row]:
        """Register rows kept by a finished step with the cleaner (for later duplicates)."""
        for row in rows:
            self.cleaner.remember(self._new_text(row), self._scope(row))
        return rows

    async def train(
        self, step: str, rows: Sequence[Row], *, mine: bool
    ) -> tuple[TrainedStudent, Metrics | None, list[str] | None]:
        """Train a fresh student off the event loop; dev metrics and mining-set predictions."""
        settings = self.settings
        train = [_example(row) for row in rows]
        dev = [_example(row) for row in self.gold.dev]
        mining = [_example(row) for row in self.gold.mining] if mine else None
        cancel = threading.Event()

        def progress(entry: dict[str, Any]) -> None:
            anyio.from_thread.run_sync(lambda: self.emit("train", step, **entry))

        def work() -> tuple[TrainedStudent, Metrics | None, list[str] | None]:
            from ...student.trainer import train_student

            student = train_student(
                train, dev, settings.label_names, settings.student, progress=progress, cancel=cancel
            )
            dev_metrics = student.evaluate(dev) if dev else None
            predicted = student.predict(mining) if mining is not None else None
            return student, dev_metrics, predicted

        self.emit("start", step, train_size=len(train))
        return await _off_loop(work, cancel)

    async def train_round(self, r: int, rows: Sequence[Row]) -> list[Row]:
        """Step ``round_<r>/train``: train, choose on dev, mine errors on the mining set."""
        step, folder = f"round_{r}/train", self.out / f"round_{r}"
        if self.done(step):
            self.emit("skip", step)
            return read_rows(folder / "errors.jsonl")
        student, dev_metrics, predicted = await self.train(step, rows, mine=True)
        assert predicted is not None
        mining = self.gold.mining
        errors = [
            {**row, "predicted": pred}
            for row, pred in zip(mining, predicted, strict=True)
            if pred != row["label"]
        ]
        mining_metrics = compute_metrics(
            [row["label"] for row in mining], predicted, self.settings.label_names
        )
        write_jsonl(folder / "train.jsonl", rows)
        write_json(
            folder / "metrics.json",
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
        write_jsonl(folder / "errors.jsonl", errors)
        self.finish(
            step,
            {
                "train_size": len(rows),
                "by_source": dict(Counter(row.get("source", "?") for row in rows)),
                "dev": _metrics_summary(dev_metrics) if dev_metrics else None,
                "mining": _metrics_summary(mining_metrics),
                "errors": len(errors),
                "best_step": student.best_step,
                "train_seconds": round(student.train_seconds, 3),
            },
        )
        return errors

    async def extrapolate(self, r: int, errors: Sequence[Row]) -> list[Row]:
        """Step ``round_<r>/extrapolate``: new examples like each error, with its gold label."""
        step, folder = f"round_{r}/extrapolate", self.out / f"round_{r}"
        if self.done(step):
            self.emit("skip", step)
            return self.remember(read_rows(folder / "added.jsonl"))
        settings = self.settings
        per_error = settings.extrapolate_per_error
        requests = []
        for error in errors:
            values = label_values(settings, self.labels[error["label"]])
            values["example"] = self._new_text(error)
            if self.pair:
                values["context"] = error["text"]
            messages = render(self.prompts.extrapolate, values)
            for j in range(per_error):
                sample = (r - 1) * per_error + j
                req = self.request(messages, "extrapolate", error["id"], sample, sample=sample)
                req.meta.update(id=f"r{r}-{error['id']}-{j}", error=error, scope=self._scope(error))
                requests.append(req)
        self.emit("start", step, errors=len(errors), requests=len(requests))
        results = await self.ask(step, requests) if requests else []

        def make_row(meta: Mapping[str, Any], text: str) -> Row:
            error = meta["error"]
            extra = {"source": f"round_{r}", "from": error["id"], "predicted": error["predicted"]}
            if self.pair:
                return _row(meta["id"], error["text"], text, error["label"], **extra)
            return _row(meta["id"], text, None, error["label"], **extra)

        counts = CleaningCounts()
        dropped: list[Row] = []
        reviews: list[Row] = []
        candidates = self.clean(results, make_row, counts, dropped)
        added = await self.review(step, candidates, counts, dropped, reviews)
        if self.reviewer is not None:
            write_jsonl(folder / "reviews.jsonl", reviews)
        write_jsonl(folder / "dropped.jsonl", dropped)
        write_jsonl(folder / "added.jsonl", added)
        self.finish(
            step,
            {
                "errors": len(errors),
                "added": len(added),
                "by_label": dict(Counter(row["label"] for row in added)),
                "cleaning": counts.to_dict(),
                "requests": self.request_stats(results),
            },
        )
        return added

    async def final(self, rows: Sequence[Row]) -> None:
        """Step ``final``: the student on everything, chosen on dev, then tested once."""
        step, folder = "final", self.out / "final"
        record = self.done(step)
        saved = record is not None and (record["student_saved"] or not self.settings.save_student)
        if record is not None and record["rounds"] == self.settings.rounds and saved:
            self.emit("skip", step)
            return
        student, dev_metrics, _ = await self.train(step, rows, mine=False)
        # The student is fixed now (checkpoint chosen on dev): only from here on is the test
        # set looked at, once, for the report.
        test_metrics = None
        if self.gold.test is not None:
            test = [_example(row) for row in self.gold.test]
            test_metrics = await _off_loop(lambda: student.evaluate(test), threading.Event())
        if self.settings.save_student:
            await _off_loop(lambda: student.save(folder / "student"), threading.Event())
        write_jsonl(folder / "train.jsonl", rows)
        write_json(
            folder / "metrics.json",
            {
                "train_size": len(rows),
                "dev": dev_metrics.to_dict() if dev_metrics else None,
                "test": test_metrics.to_dict() if test_metrics else None,
                "test_overlap": self._test_overlap(rows),
                "best_epoch": student.best_epoch,
                "best_step": student.best_step,
                "train_seconds": round(student.train_seconds, 3),
                "history": student.history,
            },
        )
        self.finish(
            step,
            {
                "rounds": self.settings.rounds,
                "student_saved": self.settings.save_student,
                "train_size": len(rows),
                "by_source": dict(Counter(row.get("source", "?") for row in rows)),
                "dev": _metrics_summary(dev_metrics) if dev_metrics else None,
                "test": _metrics_summary(test_metrics) if test_metrics else None,
                "best_step": student.best_step,
                "train_seconds": round(student.train_seconds, 3),
            },
        )

    def _test_overlap(self, rows: Sequence[Row]) -> int | None:
        """Training examples that near-duplicate a test example (reported, never removed)."""
        if self.gold.test is None:
            return None
        index = NearDuplicateIndex(
            self.settings.cleaning.near_duplicate, self.settings.cleaning.shingle
        )
        for row in self.gold.test:
            index.add(self._new_text(row), self._scope(row))
        return sum(index.match(self._new_text(row), self._scope(row)) is not None for row in rows)

    # -- the whole run --------------------------------------------------------------------------

    async def run(self, engine: Engine) -> dict[str, Any]:
        self.engine = engine
        rationales = await self.rationales()
        rows = await self.seed(rationales)
        for r in range(1, self.settings.rounds + 1):
            errors = await self.train_round(r, rows)
            rows = [*rows, *await self.extrapolate(r, errors)]
            if not errors:
                self.emit("note", f"round_{r}/train", converged=True)
                break
        await self.final(rows)
        from .report import write_report

        return write_report(self.out, self.settings, self.gold, self.folder.state)


async def _off_loop(fn: Callable[[], Any], cancel: threading.Event) -> Any:
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


@dataclass
class S3Result:
    """What :func:`run_s3` made and where it wrote it."""

    out_dir: Path
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.json"

    @property
    def final(self) -> dict[str, Any]:
        """The final student: train size, dev and test metrics."""
        final: dict[str, Any] = self.report["final"]
        return final

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """Per round: train size, dev and mining metrics, errors, examples added."""
        rounds: list[dict[str, Any]] = self.report["rounds"]
        return rounds


async def run_s3(
    config: Config,
    out_dir: str | os.PathLike[str],
    *,
    settings: S3Settings | None = None,
    on_event: OnEvent | None = None,
    reviewer: Reviewer | None = None,
) -> S3Result:
    """Run (or resume) S3 into the folder ``out_dir``; the report is also ``report.json``.

    ``settings`` defaults to the config's ``[s3]`` section. ``on_event`` sees the progress
    (a :class:`~asyncsynth.pipelines.events.PipelineEvent` per step, answer and epoch).
    ``reviewer`` reviews new examples; by default ``review = "gra"`` uses the GRA committee
    of the config's ``[gra]`` section. Everything is checked (config, data, prompts) before
    the first request.
    """
    settings = settings or load_s3_settings(config)
    try:
        config.role(settings.llm)
    except ConfigError as exc:
        raise ConfigError(f"{config.source}: s3.llm: {exc}") from None
    gold = load_gold(settings)
    prompts = load_prompt_set(settings)
    _check_student_extra()
    out = Path(out_dir)
    run = _Run(config, out, settings, gold, prompts, on_event, reviewer)
    run.open_state()
    failure: Exception | None = None
    async with Engine(config, journal=run.folder.journal) as engine:
        try:
            if run.reviewer is None and settings.review == "gra":
                from .review import gra_reviewer

                run.reviewer = gra_reviewer(engine, config, settings)
            report = await run.run(engine)
        except Exception as exc:  # raised below, not wrapped in the engine's exception group
            failure = exc
    if failure is not None:
        raise failure
    return S3Result(out, report)


def _check_student_extra() -> None:
    import importlib.util

    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"S3 trains a student and needs {' and '.join(missing)}: "
            "pip install 'asyncsynth[student]'"
        )
