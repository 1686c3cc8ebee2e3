"""Fan-out: bounded, streaming, structured concurrency over a role's endpoints.

    async with Engine(config, journal="out.jsonl.journal.sqlite") as engine:
        async for result in engine.map(requests, role="generator"):
            ...
        one = await engine.complete(Request.from_prompt("Hi"), role="reviewer")

``map`` runs a fixed pool of workers, as many as the role can have in flight, each
pulling the next request from the (lazily read) input; results stream out as they
complete, so memory does not grow with the input. The engine knows nothing of GRA
or S3.

When every endpoint of a role is taken out (a bad key, an unknown model: see
``fleet.py``), ``map`` and ``complete`` raise :class:`EndpointsFailed` at once; the
results already handed out are journaled, and no result is made for requests not sent.
"""

from __future__ import annotations

import gc
import os
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import orjson

from .batch import BatchRunner
from .client import Completion, Transport, make_transport
from .cost import Hold, Ledger
from .errors import (
    AsyncsynthError,
    BudgetExceeded,
    ConfigError,
    DeadlineExceeded,
    EndpointsFailed,
    RateLimited,
    RequestError,
    first_leaf,
)
from .events import EngineStarted, Listener, RateLimitPause, Retry, RoleStarted, ignore
from .fleet import EndpointState, Fleet
from .journal import Journal, encode_record, request_key
from .limits import RateHeaders, open_limits_backend
from .retry import is_retryable, retrying, server_wait, wait_for
from .tokens import completion_budget, estimate_prompt_tokens

if TYPE_CHECKING:
    from ..config import Config
    from ..distributed.budgets import SharedLimits

MAX_WORKERS = 4096
COMMIT_ROWS = 256
COMMIT_SECONDS = 0.02
"""A journaled ``map`` commits (and then yields) after this many results or seconds."""

GC_THRESHOLD = 50_000
"""Allocations between young-generation collections once :func:`tune_gc` ran (CPython: 700)."""


def tune_gc() -> None:
    """Let the interpreter collect its young generation every ``GC_THRESHOLD`` allocations.

    For the whole process: the CLI calls it at start (as mypy does); a program of your own
    may call it too. A journaled ``map`` hands results on a commit at a time, so they are
    freed in bursts, and CPython's default threshold then ran about 20 times as many
    collections as without the journal, each one walking every young object (the requests
    in flight): 0.022 ms of a zero-latency request, none with this threshold
    (docs/benchmarks.md). A threshold already set higher is kept.
    """
    young, *older = gc.get_threshold()
    if young < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, *older)


@dataclass(slots=True)
class Request:
    """One chat completion to make. ``meta`` travels to the result untouched."""

    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    sample: int = 0
    """Which draw this is when the same prompt is asked several times (part of the cache key)."""

    @classmethod
    def from_prompt(cls, prompt: str, *, system: str | None = None, **kwargs: Any) -> Request:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        return cls(messages=messages, **kwargs)


@dataclass(slots=True)
class Result:
    """The outcome of a :class:`Request`: a completion, or the error that ended it."""

    request: Request
    completion: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    model: str | None = None
    endpoint: str | None = None
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False
    error: RequestError | None = None
    key: bytes | None = None
    """The journal key, when the engine keeps a journal."""
    cost: float | None = None
    """USD this answer cost in this run (0 from the journal; None: the price is unknown)."""
    first_cost: float | None = None
    """For an answer from the journal: what it cost when it was first made."""
    batch: bool = False
    """Answered through the Batch API."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def text(self) -> str:
        """The completion text; raises the request's error if it failed."""
        if self.error is not None:
            raise self.error
        return self.completion or ""


@dataclass(slots=True)
class Totals:
    """Run-wide counters the progress bar reads."""

    total: int | None = None
    done: int = 0
    failed: int = 0
    cached: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    started: float = field(default_factory=time.monotonic)


class Engine:
    """Sends requests to the endpoints of a :class:`~asyncsynth.config.Config`.

    ``on_event`` hears what changes as it runs (see :mod:`asyncsynth.engine.events`).
    """

    def __init__(
        self,
        config: Config,
        *,
        journal: Journal | str | os.PathLike[str] | None = None,
        transports: dict[str, Transport] | None = None,
        on_event: Listener | None = None,
    ) -> None:
        self.config = config
        self.settings = config.engine
        self._emit = on_event or ignore
        self.totals = Totals()
        self.endpoints: dict[str, EndpointState] = {}
        self._journal_arg = journal
        self.journal: Journal | None = None
        self._transports = dict(transports or {})
        self._fleets: dict[str | None, Fleet] = {}
        self._fleet_lock = anyio.Lock()
        self._key_params: dict[str, dict[str, Any]] = {}
        self._key_base: dict[Fleet, tuple[list[str], dict[str, Any]]] = {}
        self._body_params: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.limits: SharedLimits | None = None
        """The shared backend of ``engine.limits_backend``, when one is named."""
        self.ledger = Ledger.for_config(config)
        self.ledger.emit = self._emit
        """What the job spent and holds in flight; its caps (``max_cost``, ``max_tokens_total``)."""
        self.batches: BatchRunner | None = None
        """Batch API mode, when an endpoint uses it or the journal holds running batches."""

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            if self._journal_arg is not None and self.settings.journal:
                arg = self._journal_arg
                self.journal = arg if isinstance(arg, Journal) else Journal(arg)
                stack.callback(self.journal.close)
                self.ledger.resume(self.journal.spent())
                if self.journal.batch_held() or any(
                    ep.batch is not None for ep in self.config.endpoints.values()
                ):
                    self.batches = BatchRunner(self, self.journal)
                    stack.push_async_callback(self.batches.aclose)
            stack.push_async_callback(self._close_transports)
            if (url := self.settings.limits_backend) is not None:
                self.limits = await open_limits_backend(url, self._emit)
                stack.push_async_callback(self.limits.aclose)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._tg.cancel_scope.cancel)
            if self.limits is not None:
                self._tg.start_soon(self.limits.run)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self.totals.started = time.monotonic()
        journal = self.journal
        entries = len(journal) if journal is not None else 0
        path = str(journal.path) if journal is not None else None
        self._emit(EngineStarted(self, path, entries))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        try:
            await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The engine's background task group wraps what the caller's block raised:
            # hand that exception back as it was raised.
            if exc is not None and group.exceptions == (exc,):
                raise exc from None
            # The engine stopped the job itself (no endpoint answered within the grace).
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], AsyncsynthError):
                raise group.exceptions[0] from None
            raise

    async def _close_transports(self) -> None:
        with anyio.CancelScope(shield=True):
            for ep in self.endpoints.values():
                await ep.transport.aclose()

    # -- endpoints and roles ---------------------------------------------------------------------

    async def fleet(self, role: str | None = None) -> Fleet:
        """The :class:`Fleet` serving ``role``, starting its endpoints on first use."""
        fleet = self._fleets.get(role)
        if fleet is not None:
            return fleet
        if self._stack is None:
            raise RuntimeError("use the engine inside 'async with Engine(config) as engine:'")
        async with self._fleet_lock:
            if role not in self._fleets:
                names = self.config.role(role)
                new = [name for name in names if name not in self.endpoints]
                states = [await self._endpoint(name) for name in names]
                tg = self._tg
                assert tg is not None
                for state in states:
                    self.ledger.check(state.name)
                if self.batches is None and any(ep.config.batch is not None for ep in states):
                    raise ConfigError(
                        f"role {role or names[0]!r} uses the Batch API, which keeps its batches "
                        "in the journal: give the engine a journal (not --no-cache)"
                    )
                roles = self.config.roles
                name = role or (next(iter(roles)) if len(roles) == 1 else names[0])
                fleet = Fleet(
                    name,
                    states,
                    tg.start_soon,
                    fail_fast=self.settings.fail_fast,
                    emit=self._emit,
                )
                self._fleets[role] = fleet
                if self.batches is not None:
                    self.batches.serve(fleet)
                grace = self.settings.startup_grace or self.settings.deadline
                self._emit(RoleStarted(fleet.role, tuple(map(_describe, states)), grace))
                for state in states:
                    if state.name in new:
                        tg.start_soon(fleet.first_probe, state)
                tg.start_soon(fleet.watch_startup, grace)
        return self._fleets[role]

    async def _endpoint(self, name: str) -> EndpointState:
        state = self.endpoints.get(name)
        if state is not None:
            return state
        ep = self.config.endpoints[name]
        transport = self._transports.get(name)
        url = ep.base_url
        if transport is None and ep.kind == "local":
            from ..local import start_local_endpoint

            assert self._stack is not None
            server = await self._stack.enter_async_context(start_local_endpoint(ep))
            transport = server.transport(ep.transport)
            url = server.url
        elif transport is None:
            assert ep.base_url is not None
            transport = make_transport(ep.transport, ep.base_url, ep.api_key(), name=name)
        state = EndpointState(ep, transport)
        state.url = url
        if self.limits is not None and ep.kind != "local":
            state.shared = self.limits.attach(state)
        params = self.config.params_for(name)
        extra = dict(params.pop("extra_body", None) or {})
        self._key_params[name] = {**params, "extra_body": extra} if extra else params
        self._body_params[name] = (params, extra)
        self.endpoints[name] = state
        return state

    # -- one request ----------------------------------------------------------------------------

    async def complete(self, request: Request, *, role: str | None = None) -> Result:
        """Send one request (from the journal if it was answered before)."""
        fleet = await self.fleet(role)
        result = await self._execute(request, fleet)
        self._record([result])
        return result

    def key(self, request: Request, fleet: Fleet) -> bytes:
        """The journal key of ``request`` when sent to ``fleet``'s role."""
        if "n" in request.params and request.params["n"] != 1:
            raise ValueError("n > 1 is expressed as several requests with sample = 0..n-1")
        models, params = self._key_base.get(fleet) or self._key_base_of(fleet)
        if request.params:
            params = {**params, **request.params}
        return request_key(models, request.messages, params, request.sample)

    def _key_base_of(self, fleet: Fleet) -> tuple[list[str], dict[str, Any]]:
        """What every key of the role starts from: its models, its first endpoint's params."""
        models = sorted({ep.config.model for ep in fleet.endpoints})
        base = self._key_base[fleet] = (models, self._key_params[fleet.endpoints[0].name])
        return base

    async def _execute(self, request: Request, fleet: Fleet) -> Result:
        journal = self.journal
        if journal is None:
            return await self._send(request, fleet)
        key = self.key(request, fleet)
        hit = journal.get(key)
        if hit is not None:
            result = self._cached(request, hit)
        elif (batches := self.batches) is not None and (
            fleet in batches.fleets or batches.holding(key)
        ):
            result = await batches.complete(request, key, fleet)
        else:
            result = await self._send(request, fleet)
        result.key = key
        return result

    def _cached(self, request: Request, hit: Completion) -> Result:
        """A journal answer: it costs nothing now (``first_cost``: what it cost when made)."""
        self.totals.cached += 1
        self.ledger.from_journal(hit.cost)
        result = self._result(request, hit, None, 0.0, 0, cached=True)
        result.cost, result.first_cost, result.batch = 0.0, hit.cost, hit.batch
        return result

    async def _send(self, request: Request, fleet: Fleet) -> Result:
        deadline = time.monotonic() + self.settings.deadline
        try:
            completion, ep, latency = await self._attempt(request, fleet, deadline)
            return self._result(request, completion, ep, latency, 1)
        except RequestError as first:
            if not is_retryable(first) or self.settings.max_attempts == 1:
                return self._failed(request, first, 1)
            return await self._retry(request, fleet, deadline, first)

    async def _retry(
        self, request: Request, fleet: Fleet, deadline: float, first: RequestError
    ) -> Result:
        settings = self.settings
        attempts = 1
        pause = wait_for(first, 1, base=settings.backoff_base, cap=settings.backoff_max)
        pause = max(0.0, min(pause, deadline - time.monotonic()))
        emit = self._emit

        def retry_event(error: BaseException, attempt: int, wait: float) -> None:
            if isinstance(error, RequestError):
                kind, message, status = error.kind, error.message, error.status
                emit(Retry(error.endpoint, request.id, attempt, kind, message, status, wait))

        retry_event(first, 1, pause)
        await anyio.sleep(pause)
        try:
            async for attempt in retrying(
                attempts_left=settings.max_attempts - 1,
                deadline=deadline,
                base=settings.backoff_base,
                cap=settings.backoff_max,
                before_wait=retry_event,
            ):
                with attempt:
                    attempts += 1
                    completion, ep, latency = await self._attempt(
                        request, fleet, deadline, retry=True
                    )
            return self._result(request, completion, ep, latency, attempts)
        except RequestError as exc:
            if exc.retryable and time.monotonic() >= deadline:
                exc = DeadlineExceeded(
                    f"deadline of {settings.deadline:g}s ran out; last error: {exc}",
                    endpoint=exc.endpoint,
                )
            return self._failed(request, exc, attempts)

    async def _attempt(
        self, request: Request, fleet: Fleet, deadline: float, *, retry: bool = False
    ) -> tuple[Completion, EndpointState, float]:
        ep = await fleet.acquire(deadline)
        load = ep.in_flight
        error: RequestError | None = None
        latency = start = 0.0
        tokens = 0.0
        marks: tuple[float, float] | None = None
        stats = ep.stats
        stats.attempts += 1
        hold: Hold | None = None
        if retry:  # counted when sent: a last failed attempt is not followed by a retry
            stats.retries += 1
            self.totals.retries += 1
        admission = None
        try:
            if self.ledger.capped:  # the worst case is held until it is answered or fails
                hold = await self.ledger.reserve(ep.name, *self._worst_case(ep, request))
            if ep.shared is not None:  # the budget of every process on this endpoint key
                tokens = await self._tokens(ep, request) if ep.tpm is not None else 0.0
                admission = await ep.shared.admit(tokens, ep.limit.slots, deadline)
                deadline += admission.held  # waiting for the backend is the job's, not its own
                marks = admission.marks
                while (wait := max(admission.wait, ep.paused_until - time.monotonic())) > 0:
                    if time.monotonic() + wait >= deadline:
                        raise DeadlineExceeded(
                            f"rate limits of {ep.name} allow no request before the deadline",
                            endpoint=ep.name,
                        )
                    await anyio.sleep(wait)
                    if admission.wait > 0:  # the reservation must still stand
                        admission = await ep.shared.confirm(admission, deadline)
                        admission.wait = 0.0
            else:
                tokens, marks = await self._await_budget(ep, request, deadline)
            body = self._body(ep, request)
            start = time.monotonic()
            timeout = min(ep.config.timeout, deadline - start)
            if timeout <= 0:
                raise DeadlineExceeded("the request's deadline ran out", endpoint=ep.name)
            completion = await ep.transport.chat(body, timeout)
            latency = time.monotonic() - start
            self._answered(ep, completion, marks, tokens, admission, start + latency)
            completion.cost = self.ledger.charge(ep.name, completion.usage)
            return completion, ep, latency
        except RequestError as exc:
            error = exc
            if start:  # how long it was out: tells the limit whether it left before a cut
                latency = time.monotonic() - start
            stats.errors += 1
            if isinstance(exc, RateLimited):
                self._rate_limited(ep, exc, marks)
            raise
        finally:
            if hold is not None:
                self.ledger.release(hold)
            fleet.release(ep, error, latency, load)
            self._release_shared(ep, admission)

    async def _await_budget(
        self, ep: EndpointState, request: Request, deadline: float
    ) -> tuple[float, tuple[float, float] | None]:
        """Wait until ``ep``'s own rate limits, and any pause after a 429, let ``request`` go.

        Returns the tokens it takes from the TPM budget and the budget marks that rate
        headers are read against: ``(0.0, None)`` for an endpoint with no limit or pause.
        """
        if ep.rpm is None and ep.tpm is None and ep.paused_until <= time.monotonic():
            return 0.0, None
        tokens = await self._tokens(ep, request) if ep.tpm is not None else 0.0
        now = time.monotonic()
        wait = ep.budget_wait(tokens, now)
        marks = ep.budget_marks()
        while wait > 0:
            if now + wait >= deadline:
                raise DeadlineExceeded(
                    f"rate limits of {ep.name} allow no request before the deadline",
                    endpoint=ep.name,
                )
            await anyio.sleep(wait)
            now = time.monotonic()
            wait = ep.paused_until - now  # a 429 may have paused it meanwhile
        return tokens, marks

    def _answered(
        self,
        ep: EndpointState,
        completion: Completion,
        marks: tuple[float, float] | None,
        tokens: float,
        admission: Any,
        now: float,
    ) -> None:
        """What an answer tells the limits: its rate headers, and the tokens it really used."""
        if completion.rate is not None:
            self._observe(ep, completion.rate, marks, now)
        if ep.tpm is not None:
            usage = completion.usage
            if used := usage["prompt_tokens"] + usage["completion_tokens"]:
                if admission is not None:
                    admission.used = used
                else:
                    ep.tpm.refund(tokens - used)  # no usage reported: the estimate stands

    def _rate_limited(
        self, ep: EndpointState, exc: RateLimited, marks: tuple[float, float] | None
    ) -> None:
        """A 429 from ``ep``: learn its rate headers and pause the endpoint if it asks to."""
        ep.stats.rate_limited += 1
        if (seen := RateHeaders.parse(exc.headers)) is not None:
            self._observe(ep, seen, marks, time.monotonic())
        if ep.pauses_on(exc):
            settings = self.settings
            pause = wait_for(exc, 1, base=settings.backoff_base, cap=settings.backoff_max)
            if ep.paused_until <= time.monotonic():  # a new pause, not one more 429
                asked = server_wait(exc.headers)
                self._emit(RateLimitPause(ep.name, pause, asked, exc.message))
            ep.pause(pause)

    def _release_shared(self, ep: EndpointState, admission: Any) -> None:
        """Give the shared budget back its admission (if any), and tell it the limit learnt."""
        if admission is not None:
            assert ep.shared is not None
            ep.shared.release(admission)
            if ep.limit.adaptive:
                ep.shared.share(ep.limit.slots)

    def _observe(
        self, ep: EndpointState, seen: RateHeaders, marks: tuple[float, float] | None, now: float
    ) -> None:
        """What a server's ``x-ratelimit-*`` headers said: to the shared budget, if any."""
        if ep.shared is not None:
            ep.shared.observe_headers(seen, marks)
        else:
            ep.observe(seen, marks, now)

    async def _tokens(self, ep: EndpointState, request: Request) -> float:
        """What a request may cost of a TPM budget: its prompt and its completion budget."""
        max_tokens = request.params.get("max_tokens") or self._body_params[ep.name][0].get(
            "max_tokens"
        )
        return await ep.tokens.prompt_tokens(request.messages) + completion_budget(max_tokens)

    def _worst_case(
        self, ep: EndpointState, request: Request, *, batch: bool = False
    ) -> tuple[float, float]:
        """(USD, tokens) ``request`` may cost at most on ``ep``: what a budget holds for it."""
        prompt, completion = token_estimate(request, self._body_params[ep.name][0])
        return self.ledger.worst_case(
            ep.name, prompt, len(request.messages), completion, batch=batch
        )

    def _body(self, ep: EndpointState, request: Request) -> bytes:
        params, extra = self._body_params[ep.name]
        payload: dict[str, Any] = {"model": ep.config.model, "messages": request.messages}
        payload.update(params)
        if extra:
            payload.update(extra)
        if request.params:
            payload.update(request.params)
            if more := payload.pop("extra_body", None):
                payload.update(more)
        return orjson.dumps(payload)

    def _result(
        self,
        request: Request,
        completion: Completion,
        ep: EndpointState | None,
        latency: float,
        attempts: int,
        *,
        cached: bool = False,
        batch: bool = False,
    ) -> Result:
        usage = completion.usage
        totals = self.totals
        totals.done += 1
        if ep is not None:
            stats = ep.stats
            stats.requests += 1
            stats.tokens_in += usage["prompt_tokens"]
            stats.tokens_out += usage["completion_tokens"]
            if not batch:  # hours in a batch say nothing of the endpoint's latency
                stats.latency.add(latency)
            totals.tokens_in += usage["prompt_tokens"]
            totals.tokens_out += usage["completion_tokens"]
        return Result(
            request,
            completion.content,
            completion.finish_reason,
            usage,
            completion.model,
            ep.name if ep is not None else None,
            latency,
            attempts,
            cached,
            cost=completion.cost,
            batch=batch,
        )

    def _failed(self, request: Request, error: RequestError, attempts: int) -> Result:
        error.attempts = attempts
        self.totals.done += 1
        self.totals.failed += 1
        if (ep := self.endpoints.get(error.endpoint)) is not None:
            ep.stats.failures += 1
        return Result(request, endpoint=error.endpoint or None, attempts=attempts, error=error)

    def _record(self, results: list[Result]) -> None:
        """Journal the fresh successes among ``results``, durably, before anyone sees them.

        Batch answers are journaled as their batch is downloaded, not here.
        """
        if (journal := self.journal) is not None:
            records, spend = self._answers(results)
            journal.store(records, spend=spend)
            self.ledger.report(self.totals.done, self.totals.total)

    async def _record_async(self, results: list[Result]) -> None:
        """:meth:`_record`, committed off the event loop (the workers go on meanwhile)."""
        if (journal := self.journal) is not None:
            records, spend = self._answers(results)
            await journal.store_async(records, spend=spend)
            self.ledger.report(self.totals.done, self.totals.total)

    @staticmethod
    def _answers(results: list[Result]) -> tuple[list[bytes], dict[str, tuple[float, int]]]:
        """The answers among ``results`` to journal, encoded (:meth:`Journal.store`), and
        what they cost by endpoint: no object is made per answer, only their bytes."""
        records: list[bytes] = []
        spend: dict[str, tuple[float, int]] = {}
        for r in results:
            if r.error is None and not r.cached and not r.batch and (key := r.key) is not None:
                usage = r.usage or {}
                records.append(key)
                records.append(
                    encode_record(key, r.completion, r.finish_reason, usage, r.model, r.cost)
                )
                if r.endpoint is not None:
                    cost, tokens = spend.get(r.endpoint, (0.0, 0))
                    spend[r.endpoint] = (
                        cost + (r.cost or 0.0),
                        tokens + usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0),
                    )
        return records, spend

    # -- many requests --------------------------------------------------------------------------

    async def map(
        self,
        requests: Iterable[Request] | AsyncIterable[Request],
        *,
        role: str | None = None,
        concurrency: int | None = None,
    ) -> AsyncIterator[Result]:
        """Send every request, yielding results in completion order.

        At most ``concurrency`` requests (default: what the role's endpoints allow) are
        read ahead of their results; with a journal, up to ``2 * COMMIT_ROWS`` answers
        more wait for their commit, so no worker waits on one. A failed request yields a
        result with ``error`` set; it never stops the others. Leaving the loop early
        cancels what is in flight.
        Raises :class:`EndpointsFailed` when every endpoint of the role was taken out.
        """
        fleet = await self.fleet(role)
        workers = max(1, min(concurrency or fleet.capacity, MAX_WORKERS))
        # With a journal, answers wait for their commit: room for a batch gathering while
        # the one before commits, so no worker waits on SQLite.
        results = _Results(workers + (2 * COMMIT_ROWS if self.journal is not None else 0))
        scope = anyio.CancelScope()
        done = anyio.Event()
        failure: list[BaseException] = []
        assert self._tg is not None
        if (batches := self.batches) is not None and fleet in batches.fleets:
            self._tg.start_soon(batches.feed, requests, fleet, results, scope, done, failure)
        else:
            self._tg.start_soon(
                self._run_workers, requests, fleet, workers, results, scope, done, failure
            )
        try:
            async for batch in self._batches(results):
                for result in batch:
                    yield result
        finally:
            scope.cancel()
            with anyio.CancelScope(shield=True):
                await done.wait()
        if failure:
            raise failure[0]

    async def _batches(self, results: _Results) -> AsyncIterator[list[Result]]:
        """Results as they come, in batches (a batch: what arrived since the last one).

        With a journal, each batch is journaled and committed before it is handed on,
        and closes at ``COMMIT_ROWS`` results or ``COMMIT_SECONDS`` after its first, so
        commits stay cheap at high rates and results never wait long at low ones.
        """
        journal = self.journal
        while batch := await results.take():
            if journal is not None:
                committing = False
                try:
                    closes = time.monotonic() + COMMIT_SECONDS
                    while len(batch) < COMMIT_ROWS and (remaining := closes - time.monotonic()) > 0:
                        more: list[Result] = []
                        with anyio.move_on_after(remaining):
                            more = await results.take()
                        if not more:
                            break
                        batch += more
                    committing = True  # committed even if cancelled now (store_async)
                    await self._record_async(batch)
                except BaseException:  # cancelled (Ctrl-C): keep every answer that arrived
                    self._record(
                        results.take_nowait() if committing else batch + results.take_nowait()
                    )
                    raise
            yield batch

    async def _run_workers(
        self,
        requests: Iterable[Request] | AsyncIterable[Request],
        fleet: Fleet,
        workers: int,
        results: _Results,
        scope: anyio.CancelScope,
        done: anyio.Event,
        failure: list[BaseException],
    ) -> None:
        try:
            with scope:
                async with anyio.create_task_group() as tg:
                    pull = _puller(requests)
                    for _ in range(workers):
                        tg.start_soon(self._worker, pull, fleet, results, failure)
        except Exception as exc:  # a bug, a failing input iterator, every endpoint taken out
            failure.append(_sole(exc))
        finally:
            results.close()
            done.set()

    async def _worker(
        self, pull: _Pull, fleet: Fleet, results: _Results, failure: list[BaseException]
    ) -> None:
        execute = self._execute
        put = results.put
        while True:
            request = await pull()
            if request is None:
                return
            try:
                result = await execute(request, fleet)
            except BudgetExceeded as exc:  # the others finish what they sent; map() raises it
                if not failure:
                    failure.append(exc)
                return
            await put(result)


class _Results:
    """The results the workers hand to ``map``: a bounded buffer, taken in batches.

    Cheaper than a memory stream per result: a worker appends (and waits only when
    ``size`` results are already waiting); ``map`` takes all that arrived at once.
    """

    __slots__ = ("_closed", "_items", "_ready", "_room", "_size")

    def __init__(self, size: int) -> None:
        self._items: deque[Result] = deque()
        self._size = size
        self._ready: anyio.Event | None = None
        self._room: deque[anyio.Event] = deque()
        self._closed = False

    async def put(self, result: Result) -> None:
        """Hand ``result`` over; dropped once closed (the map was left: nobody takes it)."""
        items = self._items
        while len(items) >= self._size and not self._closed:
            room = anyio.Event()
            self._room.append(room)
            await room.wait()
        if self._closed:
            return
        items.append(result)
        if (ready := self._ready) is not None:
            self._ready = None
            ready.set()

    def close(self) -> None:
        """No more results will come: ``take`` returns what is left, then nothing (and a
        batch answered later, after the map was left, is dropped)."""
        self._closed = True
        if (ready := self._ready) is not None:
            self._ready = None
            ready.set()
        while self._room:
            self._room.popleft().set()

    async def take(self) -> list[Result]:
        """Every result waiting, after waiting for one; ``[]`` once closed and empty."""
        while not self._items:
            if self._closed:
                return []
            ready = self._ready = anyio.Event()
            await ready.wait()
        return self.take_nowait()

    def take_nowait(self) -> list[Result]:
        batch = list(self._items)
        self._items.clear()
        room = self._room
        while room:
            room.popleft().set()
        return batch


def _describe(ep: EndpointState) -> dict[str, Any]:
    """What the start of a role says of one of its endpoints (never the key)."""
    config = ep.config
    return {
        "name": ep.name,
        "url": ep.url,
        "model": config.model,
        "kind": config.kind,
        "transport": config.transport,
        "max_concurrency": config.max_concurrency,
        "adaptive": config.adaptive,
        "rpm": config.rpm,
        "tpm": config.tpm,
        "timeout": config.timeout,
    }


def _sole(exc: Exception) -> Exception:
    """The exception as raised, not wrapped by the workers' task group.

    Several workers may find the role's endpoints all taken out in the same moment:
    one :class:`EndpointsFailed` stands for them all.
    """
    while isinstance(exc, ExceptionGroup):
        if len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
            continue
        stopped, rest = exc.split(EndpointsFailed)
        if stopped is None or rest is not None:
            break
        return first_leaf(stopped)
    return exc


_Pull = Callable[[], Awaitable[Request | None]]


def _puller(requests: Iterable[Request] | AsyncIterable[Request]) -> _Pull:
    """A coroutine function returning the next request or ``None``, safe for many workers."""
    if isinstance(requests, AsyncIterable):
        iterator = aiter(requests)
        lock = anyio.Lock()
        finished = False

        async def pull_async() -> Request | None:
            nonlocal finished
            async with lock:
                if finished:
                    return None
                try:
                    return await anext(iterator)
                except StopAsyncIteration:
                    finished = True
                    return None

        return pull_async

    sync_iterator = iter(requests)

    async def pull() -> Request | None:
        return next(sync_iterator, None)

    return pull


def token_estimate(request: Request, params: dict[str, Any]) -> tuple[float, int]:
    """The engine's token estimate of ``request``, split: (prompt tokens, completion budget).

    ``params`` are the endpoint's request params (for its ``max_tokens``).
    """
    completion = request.params.get("max_tokens") or params.get("max_tokens")
    return float(estimate_prompt_tokens(request.messages)), completion_budget(completion)
