"""GRA on a Ray cluster: ``asyncsynth gra CONFIG -o OUT --executor ray[=ADDRESS]``.

The driver runs the rounds as it does alone (sizing, drawing every candidate's domain,
examples and roles, dedup, the pool); what costs requests goes to Ray actors: each
candidate's chain (generate or refine, the instruction check, the response, the scores,
the adjudication; and its summary) runs whole on one actor, as do seed annotations.
Every request is a pure function of the run seed and the earlier replies, so the same
seed gives the same accepted set as a single-process run given the same replies.

Each actor runs its own engine with its own journal (``OUT/gra.journal.ray-<n>.sqlite``);
a candidate always goes to the same actor number (by its id), so running the same command
again with the same ``--actors`` resumes from the journals. An actor that dies is restarted
by Ray and its calls are made again (from its journal). Endpoint budgets are one for every
actor, as with ``run``: through ``--limits-backend``, else a budgets actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import anyio

from ..config import Config
from ..engine import Engine
from ..pipelines.gra.roles import Roles
from ..pipelines.gra.samples import Candidate, SampleMaker
from ..pipelines.gra.seeds import Seed
from ..pipelines.gra.settings import GraSettings
from ..structured import StructuredResult
from .ray_run import RayExecutor, job_budgets, require_ray, start_actors, stop_actors

JOURNAL_PATTERN = "gra.journal.ray-{n}.sqlite"


class GraWorker:
    """A Ray actor making GRA candidates with an engine of its own."""

    def __init__(self, config: Config, settings: GraSettings, journal: str) -> None:
        self.config = config
        self.settings = settings
        self.journal = journal
        self._maker: SampleMaker | None = None
        self._ready = asyncio.Lock()
        self._stop = asyncio.Event()
        self._host: asyncio.Task[None] | None = None

    def pid(self) -> int:
        return os.getpid()

    async def _get(self) -> SampleMaker:
        """The engine is opened (and later closed) by one host task, for anyio's scopes."""
        async with self._ready:
            if self._maker is None:
                opened: asyncio.Future[SampleMaker] = asyncio.get_running_loop().create_future()
                self._host = asyncio.create_task(self._serve(opened))
                self._maker = await opened
        return self._maker

    async def _serve(self, opened: asyncio.Future[SampleMaker]) -> None:
        try:
            async with Engine(self.config, journal=self.journal) as engine:
                opened.set_result(SampleMaker(engine, self.settings))
                await self._stop.wait()
        except BaseException as exc:
            if not opened.done():
                opened.set_exception(exc)
            raise

    async def generate(self, c: Candidate) -> Candidate:
        await (await self._get()).generate(c)
        return c

    async def refine(self, c: Candidate) -> Candidate:
        await (await self._get()).refine(c)
        return c

    async def annotate(self, seed: Seed, model: str, roles: Roles) -> StructuredResult:
        return await (await self._get()).annotate(seed, model, roles)

    async def summarize(self, c: Candidate, model: str) -> StructuredResult:
        return await (await self._get()).summarize(c, model)

    async def close(self) -> None:
        """Close the engine (its journal committed)."""
        self._stop.set()
        if self._host is not None:
            await self._host


class RayMaker:
    """What the rounds ask of a :class:`SampleMaker`, done by the actors.

    Draws (``committee``) stay local: the driver's own maker makes them, as alone.
    """

    def __init__(self, local: SampleMaker, actors: list[Any]) -> None:
        self.local = local
        self.settings = local.settings
        self.committee = local.committee
        self.actors = actors

    def _actor(self, name: str) -> Any:
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        return self.actors[int.from_bytes(digest, "big") % len(self.actors)]

    async def _call(self, name: str, method: str, *args: Any) -> Any:
        ref = getattr(self._actor(name), method).remote(*args)
        return await asyncio.wrap_future(ref.future())

    async def generate(self, c: Candidate) -> None:
        _copy(await self._call(c.id, "generate", c), c)

    async def refine(self, c: Candidate) -> None:
        _copy(await self._call(c.id, "refine", c), c)

    async def annotate(self, seed: Seed, model: str, roles: Roles) -> StructuredResult:
        return await self._call(f"seed-{seed.index}", "annotate", seed, model, roles)

    async def summarize(self, c: Candidate, model: str) -> StructuredResult:
        return await self._call(c.id, "summarize", c, model)


def _copy(made: Candidate, into: Candidate) -> None:
    """What an actor made of a candidate, into the driver's own object."""
    for f in fields(Candidate):
        setattr(into, f.name, getattr(made, f.name))


@contextlib.asynccontextmanager
async def gra_on_ray(
    executor: RayExecutor, config: Config, settings: GraSettings, out_dir: Path, local: Any
) -> Any:
    """The :class:`RayMaker` of a GRA run (``local``: the driver's own maker) for as long
    as the block runs; every actor is ended after it, and a cluster started for it."""
    ray = require_ray()
    owned = executor.connect()
    actors: list[Any] = []
    budgets: Any = None
    try:
        width = executor.width()
        worker_config, budgets = job_budgets(config)
        journals = [str(out_dir / JOURNAL_PATTERN.format(n=n)) for n in range(width)]
        actors = start_actors(
            GraWorker,
            config,
            settings.committee.pool,
            [(worker_config, settings, journal) for journal in journals],
            name="gra",
        )
        yield RayMaker(local, actors)
        with anyio.CancelScope(shield=True):
            for actor in actors:
                await asyncio.wrap_future(actor.close.remote().future())
    finally:
        stop_actors([*actors, budgets])
        if owned:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ray.shutdown)
