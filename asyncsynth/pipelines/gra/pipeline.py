"""``run_gra``: GRA from a config to a run folder (the steps live in their own modules).

seeds.py      read seed data (JSONL or hf:), in the formats users have
annotate.py   give seeds a domain, keywords and summary (streams into round 1)
pool.py       the (keywords, summary) pairs each round's generators read
rounds.py     size a round, draw its candidates, run them pipelined, stop
samples.py    one candidate: generate (or refine), then the committee
committee.py  the reviewers: instruction check, response scores (decision.py: the rule)
adjudicate.py the adjudicator settles disputes
dedup.py      drop near-duplicates of what was kept
summarize.py  keywords and summary of kept samples, for the pool
outputs.py    the run folder: rows, pool, fingerprint
report.py     report.json, and the plain-words account of a run
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from ...config import Config
from ...engine import Engine
from ...engine.errors import ConfigError
from ...progress import summary
from ...structured import known_formats
from ..events import OnEvent
from ..runfolder import RunFolder
from .dedup import Embedder, make_deduplicator
from .outputs import Outputs, open_folder
from .pool import PoolEntry
from .report import build_report
from .rounds import Rounds
from .samples import SampleMaker
from .seeds import Seeds, load_seeds
from .settings import GraSettings

if TYPE_CHECKING:
    from ...distributed.ray_run import RayExecutor

__all__ = ["JOURNAL_NAME", "GraResult", "make_deduplicator", "run_gra"]

JOURNAL_NAME = "gra.journal.sqlite"


@dataclass
class GraResult:
    """What :func:`run_gra` made and where it wrote it."""

    out_dir: Path
    target: int
    accepted: int
    candidates: int
    rounds: int
    stopped: str
    """Why the run stopped: ``target_reached``, ``max_rounds``, ``time_budget``,
    ``all_requests_failed`` or ``seeds_exhausted``."""
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


def read_seeds(settings: GraSettings) -> Seeds:
    """The run's seeds as its settings say (none without ``seed_data``)."""
    if not settings.seed_data:
        return Seeds()
    return load_seeds(
        settings.seed_data,
        settings.seed_fields,
        domains=settings.domains,
        limit=settings.seed_limit,
        seed_format=settings.seed_format,
        input_template=settings.seed_input_template,
        domain_map=settings.domain_map,
        seed=settings.seed,
    )


class _Writer:
    """Writes the outputs and the report of a run as its rounds end."""

    def __init__(self, engine: Engine, rounds: Rounds, folder: RunFolder, seeds: Seeds) -> None:
        self.engine = engine
        self.rounds = rounds
        self.outputs = Outputs(folder)
        self.seeds = seeds

    def pool(self) -> list[PoolEntry]:
        return [*self.rounds.annotations.entries(), *self.rounds.generated]

    def round_done(self, batch: Sequence[Any]) -> None:
        self.outputs.append_round(batch, self.pool())
        self.report()

    def finish(self) -> dict[str, Any]:
        self.outputs.write_all(self.rounds.candidates, self.pool())
        return self.report()

    def report(self) -> dict[str, Any]:
        run = self.rounds
        engine = summary(self.engine)
        engine["wall_s"] = round(time.monotonic() - run.started, 3)
        report = build_report(
            run.settings,
            run.candidates,
            target=run.target,
            rounds=run.rounds,
            pool_size=len(self.pool()),
            annotation=run.annotations.record(),
            usage=run.usage.by_stage,
            costs=run.usage.costs,
            engine=engine,
            structured=known_formats(self.engine),
            stopped=run.stopped,
            seeds=len(self.seeds),
            seed_format=self.seeds.format if self.seeds.rows else None,
            seed_rows=self.seeds.rows,
            losses=run.losses(),
        )
        self.outputs.write_report(report)
        return report


@contextlib.asynccontextmanager
async def _maker(
    engine: Engine, settings: GraSettings, out_dir: Path, executor: RayExecutor | None
) -> AsyncIterator[Any]:
    """Who makes the candidates: this process, or the executor's Ray actors."""
    local = SampleMaker(engine, settings)
    if executor is None:
        yield local
        return
    from ...distributed.ray_gra import gra_on_ray

    async with gra_on_ray(executor, engine.config, settings, out_dir, local) as maker:
        yield maker


async def run_gra(
    config: Config,
    out_dir: str | os.PathLike[str],
    *,
    settings: GraSettings | None = None,
    on_event: OnEvent | None = None,
    embedder: Embedder | None = None,
    executor: RayExecutor | None = None,
) -> GraResult:
    """Run GRA with ``settings`` (default: ``config``'s ``[gra]`` section) into ``out_dir``.

    Writes ``accepted.jsonl``, ``rejected.jsonl``, ``pool.jsonl``, ``report.json``,
    ``state.json`` and the journal (``gra.journal.sqlite``) to ``out_dir``: rows are
    appended after every round, and rewritten whole, sorted by sample, at the end. Running
    it again with the same settings resumes: every answered request comes from the
    journal (a folder of another setup is refused, naming what changed; the target and
    the bounds may change). ``on_event`` sees the progress (a
    :class:`~asyncsynth.pipelines.events.PipelineEvent` per step, round and decided
    candidate). ``embedder`` replaces the configured embedding model (anything with
    ``embed(texts) -> unit vectors``). Cancelling it leaves the rounds already finished on
    disk. ``executor``: make the candidates on a Ray cluster (see
    :mod:`asyncsynth.distributed.ray_gra`); the rounds, dedup and pool stay here.

    To change a few settings of the config: ``GraSettings.from_config(config)
    .with_overrides(target=100, seed=1)``.
    """
    settings = settings or GraSettings.from_config(config)
    if executor is not None:
        executor.check(config)
    seeds = read_seeds(settings)
    if settings.mode == "refine" and not seeds:
        raise ConfigError(f"{config.source}: gra mode 'refine' needs seed data (gra.seed_data)")
    goal = settings.target or (len(seeds) if settings.mode == "refine" else None)
    if goal is None:
        raise ConfigError(f"{config.source}: give a target (--target N or gra.target)")
    dedup = await anyio.to_thread.run_sync(make_deduplicator, settings, embedder)
    folder = RunFolder(out_dir, journal_name=JOURNAL_NAME)
    open_folder(folder, config, settings, seeds)
    async with Engine(config, journal=folder.journal, on_event=on_event) as engine:
        _remember_formats(engine, folder / "report.json", settings.committee.pool)
        async with _maker(engine, settings, folder.path, executor) as maker:
            rounds = Rounds(
                engine, settings, seeds, dedup, target=goal, on_event=on_event, maker=maker
            )
            writer = _Writer(engine, rounds, folder, seeds)
            rounds.on_round = writer.round_done
            await rounds.open()
            await rounds.run()
        rounds.emit("note", "gra", stopped=rounds.stopped, accepted=rounds.accepted, target=goal)
        report = writer.finish()
    return GraResult(
        out_dir=folder.path,
        target=goal,
        accepted=rounds.accepted,
        candidates=len(rounds.candidates),
        rounds=len(rounds.rounds),
        stopped=rounds.stopped,
        report=report,
    )
