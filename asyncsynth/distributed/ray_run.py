"""The Ray executor of ``run``: ``asyncsynth run IN -o OUT --executor ray[=ADDRESS]``.

The driver (the process the user started) cuts the input into shards
(:mod:`~asyncsynth.distributed.shards`), starts ``actors`` Ray actors and hands each a
shard at a time; an actor runs the engine on its shard, reading only its lines, with
the shard's own journal. Endpoint budgets are one for all actors: through the Redis
server of ``engine.limits_backend`` when one is named, else through a budgets actor
the driver starts. When every shard has finished, the driver merges their outputs
into ``OUT``, once.

- Resume is re-running: every shard resumes from its journal (answers it holds are not
  asked again), and the merge is made anew.
- An actor that dies mid-shard (a killed process, a lost node) is restarted by Ray and
  its shard run again, from its journal: nothing is lost, nothing written twice.
- The driver shows one progress display for the whole job (figures gathered from the
  actors twice a second) and exits as ``run`` does.

Where the cluster is: ``address`` (``ray://HOST:10001`` for Ray Client, ``HOST:6379``
or ``auto`` from a node of the cluster), else ``RAY_ADDRESS``, else a local cluster
started for the job and stopped after it. The input file and the output folder must
be on storage every node of the cluster sees (one machine, or a shared file system).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from ..config import Config, EndpointConfig, EngineSettings
from ..engine import Journal
from ..engine.engine import Totals
from ..engine.errors import AsyncsynthError, ConfigError
from ..engine.events import EngineStarted, Event, RoleStarted
from ..engine.journal import journal_path_for
from ..engine.stats import EndpointStats
from ..progress import Progress, summary
from ..run import RunReport, errors_path_for
from .backends import RAY_ACTOR_SCHEME
from .shards import Shard, ShardFolder

SHARDS_PER_ACTOR = 4
"""Shards per actor by default: a finished actor takes the next, so they end together."""
POLL_SECONDS = 0.5
"""How often the driver gathers figures from the actors for the display."""
BUDGETS_ACTOR = "asyncsynth-budgets"
WORKER_ACTOR = "asyncsynth-worker"
"""Actors are named ``asyncsynth-worker-<job>-<n>`` (``ray list actors`` shows them)."""


def require_ray(what: str = "--executor ray") -> Any:
    """The ``ray`` module, or a :class:`ConfigError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"{what} needs the ray extra: pip install 'asyncsynth[ray]'") from None
    return ray


@dataclass(frozen=True, slots=True)
class RayExecutor:
    """Where and how wide to run: the Python API's equivalent of ``--executor ray``.

    ``address``: a Ray cluster (``ray://HOST:10001``, ``HOST:6379``, ``auto``); ``None``
    uses ``RAY_ADDRESS``, else starts a local cluster for the job. ``actors``: how many
    workers (default: the cluster's CPUs). ``shards``: how many pieces the input is cut
    into (default: :data:`SHARDS_PER_ACTOR` per actor; kept from the last run while the
    input is unchanged). ``runtime_env``: Ray's, for the workers (e.g. to install
    asyncsynth on a cluster that lacks it).
    """

    address: str | None = None
    actors: int | None = None
    shards: int | None = None
    runtime_env: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, spec: str, *, actors: int | None = None) -> RayExecutor:
        """From ``--executor``: ``ray`` or ``ray=ADDRESS``."""
        name, _, address = spec.partition("=")
        if name != "ray":
            raise ConfigError(f"--executor: expected ray or ray=ADDRESS, got {spec!r}")
        if _ and not address:
            raise ConfigError("--executor ray=ADDRESS: the address is empty")
        return cls(address or None, actors)

    def check(self, config: Config) -> None:
        """Refuse what cannot be kept across actors: a cost or token cap is counted by each
        process's own ledger, so on several actors a job could spend the cap once per actor."""
        scopes: list[tuple[str, EngineSettings | EndpointConfig]] = [("engine", config.engine)]
        scopes += ((f"endpoints.{n}", ep) for n, ep in config.endpoints.items())
        caps = [
            where
            for where, scope in scopes
            if scope.max_cost is not None or scope.max_tokens_total is not None
        ]
        if caps:
            raise ConfigError(
                f"{config.source}: {caps[0]}: max_cost and max_tokens_total are kept per process, "
                "so --executor ray could spend them once per actor; run without the executor "
                "to cap the job"
            )

    def connect(self, what: str = "--executor") -> bool:
        """Join (or start) the cluster unless this process already did; whether it did now."""
        ray = require_ray(f"{what} ray" if what == "--executor" else what)
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if address is None:
            options["include_dashboard"] = False
        if self.runtime_env:
            options["runtime_env"] = dict(self.runtime_env)
        try:
            _reachable(address)  # Ray itself would retry an address that never answers
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise ConfigError(f"{what}: cannot connect to {where}: {exc}") from None
        return True

    def width(self) -> int:
        """How many actors to start (the cluster's CPUs by default)."""
        if self.actors:
            return self.actors
        cpus = require_ray().cluster_resources().get("CPU", 1)
        return max(1, int(cpus))


CONNECT_SECONDS = 5.0
"""How long a cluster's address may take to accept a connection before it is refused."""


def _reachable(address: str | None) -> None:
    """Raise :class:`ConnectionError` unless ``HOST:PORT`` (or ``ray://HOST:PORT``) accepts
    a connection; ``None``, ``auto`` and ``local`` are Ray's to resolve."""
    if address is None or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # not HOST:PORT: ray.init says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise ConnectionError(exc.strerror or str(exc) or type(exc).__name__) from None


# -- the workers --------------------------------------------------------------------------------


@dataclass(slots=True)
class ShardResult:
    """What a worker reports of one finished shard."""

    index: int
    written: int
    failed: int
    bad_lines: int
    totals: dict[str, int]
    endpoints: dict[str, EndpointStats]
    events: list[Event]
    """Events not yet passed on by a snapshot."""
    peak_rss_mb: float = 0.0
    """The worker process's peak resident memory so far."""


class _Relay(Progress):
    """A silent display inside a worker: it keeps the engine and the events to pass on."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__(quiet=True)
        self.events = events

    def on_event(self, event: Any) -> None:
        super().on_event(event)
        if isinstance(event, Event) and not isinstance(event, EngineStarted):
            self.events.append(event)


class ShardWorker:
    """A Ray actor running ``run`` on one shard at a time (see :func:`run_on_ray`)."""

    def __init__(self, config: Config, role: str | None, cache: bool) -> None:
        self.config = config
        self.role = role
        self.cache = cache
        self.relay: _Relay | None = None
        self.shard = -1
        self.events: list[Event] = []

    def pid(self) -> int:
        return os.getpid()

    async def run_shard(self, shard: Shard) -> ShardResult:
        from ..run import run_file

        self.relay = relay = _Relay(self.events)
        self.shard = shard.index
        report = await run_file(
            self.config,
            shard.input,
            shard.output,
            role=self.role,
            cache=self.cache,
            progress=relay,
            span=shard.span,
        )
        engine = relay.engine
        assert engine is not None
        events, self.events[:] = list(self.events), []
        return ShardResult(
            shard.index,
            report.written,
            report.failed,
            report.bad_lines,
            _totals(engine.totals),
            {name: ep.stats for name, ep in engine.endpoints.items()},
            events,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )

    def snapshot(self) -> dict[str, Any]:
        """Live figures of the shard running now, and the events since the last snapshot."""
        relay = self.relay
        events, self.events[:] = list(self.events), []
        if relay is None or relay.engine is None:
            return {"events": events}
        engine = relay.engine
        now = time.monotonic()
        return {
            "shard": self.shard,
            "totals": _totals(engine.totals),
            "endpoints": {
                name: {
                    "stats": ep.stats,
                    "in_flight": ep.in_flight,
                    "slots": ep.limit.slots,
                    "down": ep.down,
                    "last_error": ep.last_error,
                    "probe_in": max(0.0, ep.next_probe_at - now),
                    "paused_for": max(0.0, ep.paused_until - now),
                    "taken_out": getattr(ep, "taken_out", None),
                }
                for name, ep in engine.endpoints.items()
            },
            "events": events,
        }


def _totals(totals: Totals) -> dict[str, int]:
    return {
        "total": totals.total or 0,
        "done": totals.done,
        "failed": totals.failed,
        "cached": totals.cached,
        "retries": totals.retries,
        "tokens_in": totals.tokens_in,
        "tokens_out": totals.tokens_out,
    }


class BudgetsActor:
    """A Ray actor holding every shared budget of a job in memory (when no Redis is named)."""

    def __init__(self) -> None:
        from .store import MemoryStore

        self.store = MemoryStore()

    async def call(self, ops: list[Any]) -> list[Any]:
        return self.store.execute(ops)

    async def wait_free(self, keys: list[str], timeout: float) -> bool:
        return await self.store.wait_free(keys, timeout)


class ActorStore:
    """The client side of :class:`BudgetsActor`: a store for :class:`SharedLimits`."""

    def __init__(self, name: str) -> None:
        ray = require_ray()
        self.where = f"the job's budgets actor ({name})"
        self._ray = ray
        self._actor = ray.get_actor(name)

    async def call(self, ops: Any) -> list[Any]:
        return await self._ask(self._actor.call.remote(list(ops)))

    async def wait_free(self, keys: Any, timeout: float) -> bool:
        return bool(await self._ask(self._actor.wait_free.remote(list(keys), timeout)))

    async def _ask(self, ref: Any) -> Any:
        from .store import StoreUnavailable

        try:
            return await asyncio.wrap_future(ref.future())
        except (self._ray.exceptions.RayActorError, self._ray.exceptions.ActorUnavailableError):
            raise StoreUnavailable("the budgets actor is restarting") from None

    async def aclose(self) -> None:
        pass


def _remote(cls: type, **options: Any) -> Any:
    return require_ray().remote(**options)(cls) if options else require_ray().remote(cls)


def job_budgets(config: Config) -> tuple[Config, Any]:
    """The config the workers get, and the budgets actor started for them (or ``None``).

    With ``engine.limits_backend`` named, the workers share budgets through it; else
    through a new budgets actor, which :func:`stop_actors` ends with the job.
    """
    if config.engine.limits_backend is not None:
        return config, None
    name = f"{BUDGETS_ACTOR}-{os.getpid()}-{time.time_ns()}"
    budgets = (
        _remote(BudgetsActor, max_restarts=-1, max_task_retries=-1)
        .options(name=name, num_cpus=0)
        .remote()
    )
    url = f"{RAY_ACTOR_SCHEME}://{name}"
    return replace(config, engine=replace(config.engine, limits_backend=url)), budgets


def start_actors(
    cls: type,
    config: Config,
    roles: Iterable[str | None],
    args: list[tuple[Any, ...]],
    *,
    name: str,
) -> list[Any]:
    """One actor of ``cls`` per item of ``args`` (its constructor's arguments), restarted by
    Ray when it dies (its calls made again), sharing the cluster's CPUs, with the API keys
    of the ``roles``' endpoints in their environment; named ``asyncsynth-worker-<job>-<n>``."""
    ray = require_ray()
    cpus = ray.cluster_resources().get("CPU", 1.0)
    options: dict[str, Any] = {
        "max_restarts": -1,
        "max_task_retries": -1,
        "num_cpus": min(1.0, cpus / len(args)),
    }
    env: dict[str, str] = {}
    for role in roles:
        env.update(_key_environment(config, role))
    if env:
        options["runtime_env"] = {"env_vars": env}
    job = f"{name}-{os.getpid()}-{time.time_ns()}"
    worker = _remote(cls)
    return [
        worker.options(name=f"{WORKER_ACTOR}-{job}-{i}", **options).remote(*each)
        for i, each in enumerate(args)
    ]


def stop_actors(actors: list[Any]) -> None:
    """End ``actors`` for good (no restart); those already gone are skipped."""
    ray = require_ray()
    for actor in actors:
        if actor is None:
            continue
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)


# -- the driver ---------------------------------------------------------------------------------


@dataclass
class _Mirror:
    """An endpoint as the display sees it: the sum over every worker."""

    name: str
    config: EndpointConfig
    stats: EndpointStats
    in_flight: int = 0
    limit: _Slots = field(default_factory=lambda: _Slots(0))
    down: bool = False
    last_error: Any = None
    next_probe_at: float = 0.0
    paused_until: float = 0.0
    taken_out: Any = None
    rpm: Any = None
    tpm: Any = None

    @property
    def url(self) -> str | None:
        return self.config.base_url


@dataclass
class _Slots:
    slots: int


class ClusterView:
    """What the driver's display reads in place of an engine: figures of the whole job."""

    def __init__(self, config: Config, shards: list[Shard]) -> None:
        self.config = config
        self.totals = Totals(total=sum(s.span.lines for s in shards))
        self.endpoints: dict[str, _Mirror] = {}
        self._planned = {s.index: s.span.lines for s in shards}
        self._finished: dict[int, ShardResult] = {}
        self._live: dict[int, dict[str, Any]] = {}
        """Per actor: its last snapshot."""
        self.roles: set[str] = set()

    def finished(self, actor: int, result: ShardResult) -> None:
        self._finished[result.index] = result
        self._live.pop(actor, None)
        self._update()

    def live(self, actor: int, snapshot: dict[str, Any]) -> None:
        if "totals" in snapshot and snapshot["shard"] not in self._finished:
            self._live[actor] = snapshot
        self._update()

    def lost(self, actor: int) -> None:
        self._live.pop(actor, None)

    def _update(self) -> None:
        now = time.monotonic()
        sums = dict.fromkeys(("done", "failed", "cached", "retries", "tokens_in", "tokens_out"), 0)
        stats: dict[str, list[EndpointStats]] = {}
        extra = 0  # samples (n > 1) beyond the lines
        for result in self._finished.values():
            for key in sums:
                sums[key] += result.totals[key]
            extra += max(0, result.totals["total"] - self._planned[result.index])
            for name, s in result.endpoints.items():
                stats.setdefault(name, []).append(s)
        mirrors: dict[str, _Mirror] = {}
        for snap in self._live.values():
            for key in sums:
                sums[key] += snap["totals"][key]
            for name, ep in snap["endpoints"].items():
                stats.setdefault(name, []).append(ep["stats"])
                mirror = mirrors.get(name) or self._mirror(name)
                mirrors[name] = mirror
                mirror.in_flight += ep["in_flight"]
                mirror.limit = _Slots(max(mirror.limit.slots, ep["slots"]))
                if ep["down"]:
                    mirror.down, mirror.last_error = True, ep["last_error"]
                    mirror.next_probe_at = now + ep["probe_in"]
                mirror.paused_until = max(mirror.paused_until, now + ep["paused_for"])
                mirror.taken_out = mirror.taken_out or ep["taken_out"]
        for name, parts in stats.items():
            mirror = mirrors.get(name) or self._mirror(name)
            mirror.stats = merged_stats(name, mirror.config.model, parts)
            self.endpoints[name] = mirror
        totals = self.totals
        totals.done, totals.failed, totals.cached = sums["done"], sums["failed"], sums["cached"]
        totals.retries = sums["retries"]
        totals.tokens_in, totals.tokens_out = sums["tokens_in"], sums["tokens_out"]
        totals.total = sum(self._planned.values()) + extra

    def _mirror(self, name: str) -> _Mirror:
        config = self.config.endpoints[name]
        return _Mirror(name, config, EndpointStats(name, config.model))


def merged_stats(name: str, model: str, parts: list[EndpointStats]) -> EndpointStats:
    """One endpoint's counters summed over several engines."""
    out = EndpointStats(name, model)
    for part in parts:
        for key in ("requests", "attempts", "retries", "rate_limited", "failures", "errors"):
            setattr(out, key, getattr(out, key) + getattr(part, key))
        out.tokens_in += part.tokens_in
        out.tokens_out += part.tokens_out
        counts = out.latency.counts
        for index, n in part.latency.counts.items():
            counts[index] = counts.get(index, 0) + n
        out.latency.n += part.latency.n
    return out


async def run_on_ray(
    config: Config,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    executor: RayExecutor,
    *,
    role: str | None = None,
    cache: bool = True,
    display: Progress,
    lines: int | None = None,
) -> RunReport:
    """``run`` on a Ray cluster (see the module's docs); :func:`~asyncsynth.run.run_file`
    with ``executor=`` calls it."""
    ray = require_ray()
    output_path = Path(output_path)
    report = RunReport(output=output_path, errors=errors_path_for(output_path))
    owned = executor.connect()  # in the main thread, where Ray wants to be started
    actors: list[Any] = []
    budgets: Any = None
    try:
        width = executor.width()
        folder = ShardFolder(output_path)
        shards = folder.layout(input_path, executor.shards or SHARDS_PER_ACTOR * width)
        width = min(width, len(shards))
        worker_config, budgets = job_budgets(config)
        actors = start_actors(
            ShardWorker, config, [role], [(worker_config, role, cache)] * width, name="run"
        )
        view = ClusterView(config, shards)
        if lines is not None:
            view.totals.total = lines
        held = sum(_journal_entries(s) for s in shards)
        display.on_event(EngineStarted(view, str(folder.path), held))  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            tg.start_soon(display.run)
            results = await _drive(actors, shards, view, display)
            tg.cancel_scope.cancel()
    finally:
        stop_actors([*actors, budgets])
        if owned:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ray.shutdown)
    folder.merge(shards)
    for result in results:
        report.written += result.written
        report.failed += result.failed
        report.bad_lines += result.bad_lines
    report.stats = summary(view)  # type: ignore[arg-type]
    report.stats["actors"] = width
    report.stats["shards"] = len(shards)
    peak = max((r.peak_rss_mb for r in results), default=0.0)
    report.stats["actor_peak_rss_mb"] = round(peak, 1)
    return report


async def _drive(
    actors: list[Any], shards: list[Shard], view: ClusterView, display: Progress
) -> list[ShardResult]:
    """Give each actor a shard at a time until all are done; gather figures meanwhile."""
    ray = require_ray()
    pending = list(shards)
    results: list[ShardResult] = []
    failure: list[BaseException] = []

    async def work(index: int, actor: Any) -> None:
        while pending and not failure:
            shard = pending.pop(0)
            try:
                result = await asyncio.wrap_future(actor.run_shard.remote(shard).future())
            except ray.exceptions.RayError as exc:
                cause = getattr(exc, "cause", None)
                failure.append(cause if isinstance(cause, AsyncsynthError) else exc)
                tg.cancel_scope.cancel()
                return
            _pass_on(result.events, view, display)
            view.finished(index, result)
            results.append(result)

    async def gather() -> None:
        while True:
            await anyio.sleep(POLL_SECONDS)
            refs = [actor.snapshot.remote() for actor in actors]
            for index, ref in enumerate(refs):
                try:
                    snap = await asyncio.wrap_future(ref.future())
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    view.lost(index)  # restarting: its shard starts over from the journal
                    continue
                _pass_on(snap.get("events", ()), view, display)
                view.live(index, snap)

    async with anyio.create_task_group() as tg:
        tg.start_soon(gather)
        async with anyio.create_task_group() as workers:
            for index, actor in enumerate(actors):
                workers.start_soon(work, index, actor)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    results.sort(key=lambda r: r.index)
    return results


def _pass_on(events: Any, view: ClusterView, display: Progress) -> None:
    """Workers' events to the display; each worker starts the role, so that is shown once."""
    for event in events:
        if isinstance(event, RoleStarted):
            if event.role in view.roles:
                continue
            view.roles.add(event.role)
        display.on_event(event)


def _journal_entries(shard: Shard) -> int:
    path = journal_path_for(shard.output)
    if not path.exists():
        return 0
    with Journal(path) as journal:
        return len(journal)


def _key_environment(config: Config, role: str | None) -> dict[str, str]:
    """The API keys the role's endpoints read, for workers that may not share this environment."""
    env: dict[str, str] = {}
    for name in config.role(role):
        ep = config.endpoints[name]
        if ep.api_key_env and (key := ep.api_key()) is not None:
            env[ep.api_key_env] = key
    return env
