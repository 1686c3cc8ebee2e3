"""Rounds of GRA: annotate seeds, make candidates (pipelined), dedup, summarize, grow the pool.

Within a round every candidate is its own coroutine: its review starts the moment its
generation ends and its adjudication the moment its reviews end, with as many
candidates in flight as the pool's endpoints can serve (``max_in_flight``); a sample
the committee passes is summarised at once (``summarize_early``). The round ends when all
its candidates are decided; then the passed ones are deduplicated (in descending
committee mean) and the (keywords, summary) pairs of the kept ones join the pool that
the next round's generators read.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson

from ...config import Config
from ...engine import Engine
from ...engine.errors import ConfigError
from ...progress import summary
from ...structured import known_formats
from ..events import EventKind, OnEvent, PipelineEvent
from ..runfolder import RunFolder
from .committee import Failure, Roles
from .dedup import Deduplicator, Embedder, ExactDeduplicator, SemanticDeduplicator
from .report import build_report
from .samples import (
    Candidate,
    PoolEntry,
    SampleMaker,
    new_candidate,
    refine_candidate,
    sample_rng,
)
from .seeds import Seed, load_seeds
from .settings import GraSettings

JOURNAL_NAME = "gra.journal.sqlite"
MIN_RATE = 0.1
"""Lowest acceptance rate assumed when sizing a round (at most 10x over-generation)."""
MAX_DEFAULT_IN_FLIGHT = 4096


@dataclass
class GraResult:
    """What :func:`run_gra` made and where it wrote it."""

    out_dir: Path
    target: int
    accepted: int
    candidates: int
    rounds: int
    stopped: str
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def target_reached(self) -> bool:
        return self.accepted >= self.target

    @property
    def accepted_path(self) -> Path:
        return self.out_dir / "accepted.jsonl"

    @property
    def rejected_path(self) -> Path:
        return self.out_dir / "rejected.jsonl"

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.json"

    @property
    def pool_path(self) -> Path:
        return self.out_dir / "pool.jsonl"


def _dedup_text(c: Candidate, which: str) -> str:
    if which == "instruction":
        return c.instruction or ""
    if which == "response":
        return c.response or ""
    return f"{c.instruction}\n\n{c.response}"


def make_deduplicator(settings: GraSettings, embedder: Embedder | None = None) -> Deduplicator:
    """Exact matching for ``embedding_model = "none"``, else semantic (loads the model)."""
    if embedder is None and settings.embedding_model.lower() == "none":
        return ExactDeduplicator()
    if embedder is None:
        try:
            from ...student.embeddings import SentenceEmbedder
        except ImportError as exc:
            raise ConfigError(
                f"gra.embedding_model = {settings.embedding_model!r} needs torch and transformers "
                f"(pip install 'asyncsynth[embed]'): {exc}. Set embedding_model = \"none\" to "
                "drop exact duplicates only"
            ) from None
        embedder = SentenceEmbedder(
            settings.embedding_model, batch_size=settings.embedding_batch_size
        )
    return SemanticDeduplicator(embedder, settings.dedup_threshold)


class _Run:
    """The state of one GRA run."""

    def __init__(
        self,
        engine: Engine,
        settings: GraSettings,
        seeds: list[Seed],
        dedup: Deduplicator,
        folder: RunFolder,
        target: int,
        on_event: OnEvent | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.seeds = seeds
        self.dedup = dedup
        self.folder = folder
        self.target = target
        self.on_event = on_event
        self.maker = SampleMaker(engine, settings)
        self.candidates: list[Candidate] = []
        self.pool: list[PoolEntry] = []
        self.rounds: list[dict[str, Any]] = []
        self.annotation: dict[str, Any] = {"needed": 0, "annotated": 0, "failures": []}
        self.usage: dict[str, dict[str, int]] = {
            s: {"requests": 0, "in": 0, "out": 0} for s in ("annotate", "summarize")
        }
        self._summaries: dict[str, tuple[str, Any]] = {}
        self._appended = False
        self._pool_written = 0
        self.round_no = 0
        self.passed_in_round = 0
        self.decided_in_round = 0
        self.round_candidates = 0
        self.accepted_before_round = 0
        self.limit = 1
        self.stopped = "running"
        self.started = time.monotonic()

    @property
    def accepted(self) -> int:
        return sum(c.status == "accepted" for c in self.candidates)

    def emit(self, kind: EventKind, step: str, /, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(PipelineEvent(kind, step, data, "gra"))

    async def open(self) -> None:
        """Start every pool model's endpoints and size the in-flight bound."""
        endpoints: dict[str, int] = {}
        for name in self.settings.committee.pool:
            fleet = await self.engine.fleet(name)
            for ep in fleet.endpoints:
                endpoints[ep.name] = int(ep.limit.cap)
        self.limit = self.settings.max_in_flight or min(
            MAX_DEFAULT_IN_FLIGHT, 2 * sum(endpoints.values())
        )

    async def _each(self, items: Sequence[Any], work: Callable[[Any], Awaitable[None]]) -> None:
        """``work`` on every item, at most ``self.limit`` at once, nothing left running."""
        iterator = iter(items)

        async def worker() -> None:
            for item in iterator:
                await work(item)

        async with anyio.create_task_group() as tg:
            for _ in range(min(self.limit, len(items))):
                tg.start_soon(worker)

    def _tally(self, stage: str, results: Sequence[Any]) -> None:
        usage = self.usage[stage]
        for r in results:
            usage["requests"] += 1
            usage["in"] += (r.usage or {}).get("prompt_tokens", 0)
            usage["out"] += (r.usage or {}).get("completion_tokens", 0)

    # -- seeds --------------------------------------------------------------------------------

    async def annotate_seeds(self) -> None:
        """Give every seed a domain, keywords and summary (asking a pool model when missing)."""
        pool = self.settings.committee.pool
        needed = [s for s in self.seeds if not s.annotated]
        self.annotation["needed"] = len(needed)
        answers: dict[int, tuple[str, Any]] = {}

        async def annotate(seed: Seed) -> None:
            rng = sample_rng(self.settings.seed, "annotate", seed.index)
            model = rng.choice(pool)
            roles = Roles(None, (), model, rng.getrandbits(31))
            answer = await self.maker.annotate(seed, model, roles)
            self._tally("annotate", answer.results)
            answers[seed.index] = (model, answer)

        await self._each(needed, annotate)
        for seed in self.seeds:
            model: str | None = None
            domain, keywords, summary_ = seed.domain, seed.keywords, seed.summary
            if seed.index in answers:
                model, answer = answers[seed.index]
                if not answer.ok:
                    self.annotation["failures"].append(
                        {"seed": seed.source, "model": model, "kind": answer.failure}
                        | {"message": answer.error}
                    )
                    continue
                self.annotation["annotated"] += 1
                domain = domain or answer.value["domain"]
                keywords = keywords or tuple(answer.value["keywords"])
                summary_ = summary_ or answer.value["summary"]
            assert domain is not None and keywords is not None and summary_ is not None
            self.pool.append(
                PoolEntry(
                    f"seed-{seed.index:06d}", domain, tuple(keywords), summary_, "seed", 0, model
                )
            )

    # -- rounds -------------------------------------------------------------------------------

    def _round_size(self, available: int | None = None) -> int:
        """Candidates for the next round: ``round_size``, or enough at the acceptance rate
        seen so far for the remaining target spread over the remaining planned rounds. The
        last planned round adds one standard deviation of margin, so that a little bad luck
        costs a few surplus samples rather than a whole extra round."""
        settings = self.settings
        if settings.round_size:
            n = settings.round_size
        else:
            made, accepted = len(self.candidates), self.accepted
            remaining = self.target - accepted
            rounds_left = max(1, settings.rounds - len(self.rounds))
            need: float = math.ceil(remaining / rounds_left)
            rate = max(accepted / made if made else settings.initial_acceptance, MIN_RATE)
            if rounds_left == 1 and made:
                need += math.sqrt(need * (1 - rate))
            n = max(1, math.ceil(need / rate))
        return min(n, available) if available is not None else n

    async def run(self) -> None:
        settings = self.settings
        attempts = {s.index: 0 for s in self.seeds}
        done_seeds: set[int] = set()
        index = 0
        round_no = 0
        while self.accepted < self.target:
            if round_no >= settings.max_rounds:
                self.stopped = "max_rounds"
                return
            round_no += 1
            self.round_no, self.passed_in_round = round_no, 0
            if settings.mode == "generate":
                pools: dict[str, list[PoolEntry]] = {}
                for entry in self.pool:
                    pools.setdefault(entry.domain, []).append(entry)
                n = self._round_size()
                batch = [
                    new_candidate(
                        settings, self.maker, index=index + i, round_no=round_no, pools=pools
                    )
                    for i in range(n)
                ]
                index += n
                work = self._generate
            else:
                pending = [
                    s
                    for s in self.seeds
                    if s.index not in done_seeds and attempts[s.index] < settings.refine_attempts
                ]
                if not pending:
                    self.stopped = "seeds_exhausted"
                    return
                batch = []
                for seed in pending[: self._round_size(len(pending))]:
                    batch.append(
                        refine_candidate(
                            settings,
                            self.maker,
                            seed=seed,
                            attempt=attempts[seed.index],
                            round_no=round_no,
                        )
                    )
                    attempts[seed.index] += 1
                work = self._refine
            started = time.monotonic()
            self.decided_in_round, self.round_candidates = 0, len(batch)
            self.accepted_before_round = self.accepted
            self.emit(
                "start",
                f"round_{round_no}",
                candidates=len(batch),
                accepted=self.accepted_before_round,
                target=self.target,
            )
            await self._each(batch, work)
            await self._finish_round(batch, round_no, started)
            self._summaries.clear()  # duplicates' early summaries
            self.emit("done", f"round_{round_no}", **self.rounds[-1], accepted_total=self.accepted)
            done_seeds.update(c.index for c in batch if c.status == "accepted" and c.seed)
            self._append_round(batch)
            if batch and all(c.reason == "request_error" for c in batch):
                self.stopped = "all_requests_failed"
                return
        self.stopped = "target_reached"

    async def _finish_round(self, batch: list[Candidate], round_no: int, started: float) -> None:
        self.candidates.extend(batch)
        passed = sorted(
            (c for c in batch if c.status == "passed"), key=lambda c: (-(c.mu or 0.0), c.index)
        )
        texts = [(c.id, _dedup_text(c, self.settings.dedup_text)) for c in passed]
        if isinstance(self.dedup, ExactDeduplicator):
            outcomes = self.dedup.select(texts)
        else:
            outcomes = await anyio.to_thread.run_sync(self.dedup.select, texts)
        kept: list[Candidate] = []
        for c, outcome in zip(passed, outcomes, strict=True):
            if outcome.kept:
                c.status = "accepted"
                kept.append(c)
            else:
                c.reject("duplicate", "dedup")
                c.duplicate_of, c.similarity = outcome.duplicate_of, outcome.similarity
        if self.settings.mode == "generate":
            await self._summarize(sorted(kept, key=lambda c: c.index), round_no)
        self.rounds.append(
            {
                "round": round_no,
                "candidates": len(batch),
                "passed_committee": len(passed),
                "accepted": len(kept),
                "rejected": dict(
                    sorted(
                        {
                            r: sum(c.reason == r for c in batch)
                            for r in {c.reason for c in batch if c.reason}
                        }.items()
                    )
                ),
                "pool_size": len(self.pool),
                "wall_s": round(time.monotonic() - started, 3),
            }
        )

    async def _summarize_one(self, c: Candidate) -> None:
        model = sample_rng(self.settings.seed, "summarize", c.id).choice(
            self.settings.committee.pool
        )
        answer = await self.maker.summarize(c, model)
        self._tally("summarize", answer.results)
        self._summaries[c.id] = (model, answer)

    async def _generate(self, c: Candidate) -> None:
        """One candidate; with ``summarize_early`` its summary is written as soon as the
        committee passes it, so the round's end waits for no summaries (a duplicate's is
        then wasted; the pool is the same either way)."""
        await self.maker.generate(c)
        if c.status == "passed":
            self.passed_in_round += 1
            if self.settings.summarize_early:
                await self._summarize_one(c)
        self._decided()

    async def _refine(self, c: Candidate) -> None:
        await self.maker.refine(c)
        self.passed_in_round += c.status == "passed"
        self._decided()

    def _decided(self) -> None:
        self.decided_in_round += 1
        self.emit(
            "request",
            f"round_{self.round_no}",
            done=self.decided_in_round,
            total=self.round_candidates,
            passed=self.passed_in_round,
            in_flight=min(self.limit, self.round_candidates - self.decided_in_round),
            accepted=self.accepted_before_round,
            target=self.target,
        )

    async def _summarize(self, kept: list[Candidate], round_no: int) -> None:
        """Keywords and summary of every kept sample, into the pool (in sample order)."""
        await self._each([c for c in kept if c.id not in self._summaries], self._summarize_one)
        for c in kept:
            model, answer = self._summaries.pop(c.id)
            if not answer.ok:
                raw = answer.raw
                c.failures.append(
                    Failure(
                        "summarize",
                        model,
                        answer.failure or "parse_failure",
                        answer.error or "",
                        raw[:500] if raw else None,
                    )
                )
                continue
            c.keywords, c.summary = list(answer.value["keywords"]), answer.value["summary"]
            c.summarized_by = model
            assert c.domain is not None
            self.pool.append(
                PoolEntry(
                    c.id, c.domain, tuple(c.keywords), c.summary, "generated", round_no, model
                )
            )

    # -- outputs ------------------------------------------------------------------------------

    def _append_round(self, batch: list[Candidate]) -> None:
        """After a round: its rows appended (the first round of a process truncates), then
        the report. Cheap whatever the run's size; :meth:`write` rewrites all at the end."""
        truncate = not self._appended
        ordered = sorted(batch, key=lambda c: (c.index, c.attempt))
        for name, status in (("accepted.jsonl", "accepted"), ("rejected.jsonl", "rejected")):
            rows = (c.row() for c in ordered if c.status == status)
            self.folder.append_jsonl(name, rows, truncate=truncate)
        new_entries = (e.to_dict() for e in self.pool[self._pool_written :])
        self.folder.append_jsonl("pool.jsonl", new_entries, truncate=truncate)
        self._pool_written = len(self.pool)
        self._appended = True
        self._write_report()

    def write(self) -> dict[str, Any]:
        """Every output, whole and sorted by sample (atomic replacements); the report."""
        ordered = sorted(self.candidates, key=lambda c: (c.index, c.attempt))
        for name, status in (("accepted.jsonl", "accepted"), ("rejected.jsonl", "rejected")):
            self.folder.write_jsonl(name, (c.row() for c in ordered if c.status == status))
        self.folder.write_jsonl("pool.jsonl", (e.to_dict() for e in self.pool))
        return self._write_report()

    def _write_report(self) -> dict[str, Any]:
        engine = summary(self.engine)
        engine["wall_s"] = round(time.monotonic() - self.started, 3)
        report = build_report(
            self.settings,
            self.candidates,
            target=self.target,
            rounds=self.rounds,
            pool_size=len(self.pool),
            annotation=self.annotation,
            usage=self.usage,
            engine=engine,
            structured=known_formats(self.engine),
            stopped=self.stopped,
            seeds=len(self.seeds),
        )
        self.folder.write_json("report.json", report)
        return report


def _remember_formats(engine: Engine, report: Path, pool: Sequence[str]) -> None:
    """On a resumed run, start from the response formats the last run found per endpoint
    (no request is sent again only to be refused)."""
    try:
        found = orjson.loads(report.read_bytes()).get("structured_formats") or {}
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return
    formats = known_formats(engine)
    for target, fmt in found.items():
        if target in pool and fmt in ("json_schema", "json_object", "off"):
            formats.setdefault(target, fmt)


async def run_gra(
    config: Config,
    out_dir: str | os.PathLike[str],
    *,
    settings: GraSettings | None = None,
    on_event: OnEvent | None = None,
    embedder: Embedder | None = None,
) -> GraResult:
    """Run GRA with ``settings`` (default: ``config``'s ``[gra]`` section) into ``out_dir``.

    Writes ``accepted.jsonl``, ``rejected.jsonl``, ``pool.jsonl``, ``report.json`` and
    the journal (``gra.journal.sqlite``) to ``out_dir``: rows are appended after every
    round, and rewritten whole, sorted by sample, at the end. Running it again with the
    same settings resumes: every answered request comes from the journal. ``on_event``
    sees the progress (a :class:`~asyncsynth.pipelines.events.PipelineEvent` per round
    and decided candidate). ``embedder`` replaces the configured embedding model
    (anything with ``embed(texts) -> unit vectors``). Cancelling it leaves the rounds
    already finished on disk.

    To change a few settings of the config: ``GraSettings.from_config(config)
    .with_overrides(target=100, seed=1)``.
    """
    settings = settings or GraSettings.from_config(config)
    seeds = (
        load_seeds(
            settings.seed_data,
            settings.seed_fields,
            domains=settings.domains,
            limit=settings.seed_limit,
        )
        if settings.seed_data
        else []
    )
    if settings.mode == "refine" and not seeds:
        raise ConfigError(f"{config.source}: gra mode 'refine' needs seed data (gra.seed_data)")
    goal = settings.target or (len(seeds) if settings.mode == "refine" else None)
    if goal is None:
        raise ConfigError(f"{config.source}: give a target (--target N or gra.target)")
    dedup = await anyio.to_thread.run_sync(make_deduplicator, settings, embedder)
    folder = RunFolder(out_dir, journal_name=JOURNAL_NAME)
    folder.path.mkdir(parents=True, exist_ok=True)
    async with Engine(config, journal=folder.journal, on_event=on_event) as engine:
        _remember_formats(engine, folder / "report.json", settings.committee.pool)
        run = _Run(engine, settings, seeds, dedup, folder, goal, on_event)
        await run.open()
        if settings.mode == "generate":
            run.emit("start", "annotate", seeds=len(seeds))
            await run.annotate_seeds()
            run.emit("done", "annotate", **run.annotation)
        await run.run()
        run.emit("note", "gra", stopped=run.stopped, accepted=run.accepted, target=goal)
        report = run.write()
    return GraResult(
        out_dir=folder.path,
        target=goal,
        accepted=run.accepted,
        candidates=len(run.candidates),
        rounds=len(run.rounds),
        stopped=run.stopped,
        report=report,
    )
