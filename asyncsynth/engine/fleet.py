"""A role's endpoints: least-loaded choice, cool-down and probing, taking out what cannot succeed.

A role's endpoints are probed (``GET /models``) when it starts: one that cannot be
reached is named at once and taken out until it answers, and if none of them has
answered anything within the start-up grace the job stops
(:class:`~asyncsynth.engine.errors.EndpointsUnreachable`).

Every endpoint has one :class:`EndpointState`, shared by all roles that list it; a
:class:`Fleet` is a role's view over its endpoints. A request takes a slot with
:meth:`Fleet.acquire` (waiting while every healthy endpoint is full or while all are
down) and gives it back with :meth:`Fleet.release`, which feeds the endpoint's limits
and health:

- failures of the endpoint's own (5xx, drops, timeouts) cool it down, then it is probed
  until it answers again;
- answers that no request can get past (401/403: the key; 404: the model or URL; the
  same 400 or 422 to every request) take it out for the run after ``fail_fast`` in a
  row (:class:`TakenOut`, logged once); its requests go to the role's other endpoints,
  and when none is left :meth:`Fleet.acquire` raises
  :class:`~asyncsynth.engine.errors.EndpointsFailed`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .client import Transport
from .errors import (
    ClientError,
    ConnectError,
    DeadlineExceeded,
    EndpointsFailed,
    EndpointsUnreachable,
    RateLimited,
    RequestError,
    RequestTimeout,
    ServerError,
    StatusError,
)
from .events import (
    EndpointDown,
    EndpointTakenOut,
    EndpointUp,
    Listener,
    ProbeFailed,
    RoleDown,
    Unreachable,
    ignore,
)
from .limits import AdaptiveLimit, RateHeaders, SharedBudget, TokenBucket
from .retry import DEFAULT_FAIL_FAST, backoff, names_rate_limit
from .stats import EndpointStats
from .tokens import TokenCounter

if TYPE_CHECKING:
    from ..config import EndpointConfig

log = logging.getLogger("asyncsynth")

FAILURES_BEFORE_COOLDOWN = 3
"""Consecutive failed attempts (5xx, drops, timeouts) that take an endpoint out of service.

An endpoint with many requests in flight needs a quarter of its concurrency limit in a row,
if that is more: a busy, healthy server answering the odd 5xx stays in service, while one
that fails everything still goes out within a fraction of one round trip of its requests.
An adaptive endpoint's 503s ("overloaded") cut its limit instead, and count only once the
limit is down to one request.
"""
COOLDOWN_FIRST = 0.5
COOLDOWN_MAX = 30.0
PROBE_TIMEOUT = 10.0
NO_MODELS_ROUTE = frozenset({404, 405})
"""Probe answers of a server that lacks ``GET /models`` (it answered: it is up)."""
REDIRECTS = frozenset({301, 302, 303, 307, 308})
ENDPOINT_FAULTS = frozenset({401, 403, 404}) | REDIRECTS
"""Answers about the endpoint (key, permissions, model, URL), never about one request."""
REPEATED_FAULTS = frozenset({400, 422})
"""A request's own fault, unless every request gets the same one (an unsupported param)."""

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]


@dataclass(frozen=True, slots=True)
class TakenOut:
    """Why an endpoint was taken out for the run; ``str()`` is the message shown."""

    endpoint: str
    status: int
    code: str | None
    message: str
    """The server's own message."""
    count: int
    """Answers in a row that decided it."""
    hint: str

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        said = f" ({self.message})" if self.message else ""
        return (
            f"endpoint {self.endpoint!r}: HTTP {self.status}{code} on {self.count} "
            f"requests in a row{said}; {self.hint}"
        )


class EndpointState:
    """One endpoint at run time: its transport, limits, health and counters."""

    def __init__(self, config: EndpointConfig, transport: Transport) -> None:
        self.config = config
        self.name = config.name
        self.transport = transport
        self.limit = AdaptiveLimit(config.max_concurrency, adaptive=config.adaptive)
        self.rpm = TokenBucket(config.rpm) if config.rpm else None
        self.tpm = TokenBucket(config.tpm) if config.tpm else None
        self.tokens = TokenCounter(getattr(transport, "post_root", None), config.model)
        self.shared: SharedBudget | None = None
        """Its limits when shared with other processes (``engine.limits_backend``): then
        the budgets are the backend's, and ``rpm``/``tpm`` only give their shape."""
        self.in_flight = 0
        self.paused_until = 0.0
        self.failures_in_a_row = 0
        self.cooldown = 0.0
        self.down = False
        self.taken_out: TakenOut | None = None
        """Set when the endpoint is out for the rest of the run, and why."""
        self.fault: tuple[int, str] | None = None
        """The last answer no request could get past (status, message), and how often in a row."""
        self.faults_in_a_row = 0
        self.down_since = 0.0
        self.next_probe_at = 0.0
        self.last_error: RequestError | None = None
        """What took it down, then what its last failed probe said."""
        self.url = config.base_url
        self.heard = False
        """Whether it ever gave an HTTP answer other than a completion (probe, error status)."""
        self.stats = EndpointStats(config.name, config.model)
        self.fleets: list[Fleet] = []

    @property
    def answered(self) -> bool:
        """Whether the server has ever answered: a completion, a probe, or any HTTP status."""
        return self.heard or self.stats.requests > 0

    @property
    def free(self) -> int:
        return 0 if self.down else self.limit.slots - self.in_flight

    def budget_wait(self, tokens: float, now: float) -> float:
        """Reserve this request's RPM/TPM budget; seconds to wait (429 pause included)."""
        wait = self.paused_until - now
        if self.rpm is not None:
            wait = max(wait, self.rpm.reserve(1.0, now))
        if self.tpm is not None:
            wait = max(wait, self.tpm.reserve(tokens, now))
        return wait

    def budget_marks(self) -> tuple[float, float]:
        """Budget reserved so far (requests, tokens): tells what was sent after a request."""
        return (
            self.rpm.taken if self.rpm is not None else 0.0,
            self.tpm.taken if self.tpm is not None else 0.0,
        )

    def observe(self, seen: RateHeaders, marks: tuple[float, float] | None, now: float) -> None:
        """Tighten the budget to what the server's ``x-ratelimit-*`` headers say.

        ``marks`` are :meth:`budget_marks` taken when the answered request was sent.
        A limit below the configured one (or any, where none is configured) becomes
        the bucket's size; what remains caps the bucket's level.
        """
        self.rpm = _tightened(
            self.rpm,
            seen.limit_requests,
            seen.remaining_requests,
            marks[0] if marks else None,
            max(0, self.in_flight - 1),
            now,
        )
        self.tpm = _tightened(
            self.tpm, seen.limit_tokens, seen.remaining_tokens, marks[1] if marks else None, 0, now
        )

    def pause(self, seconds: float) -> None:
        """Hold every request to this endpoint for ``seconds`` (a 429 slows the whole endpoint)."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def pauses_on(self, error: RateLimited) -> bool:
        """Whether this 429 holds the whole endpoint, or only its own request.

        A quota is spent (the 429 names a rate limit, ``x-ratelimit-*``, or the endpoint
        has RPM/TPM limits): every request would be refused until it resets, so all of
        them wait. A bare 429 means "too many at once": the adaptive limit is cut (see
        :meth:`Fleet.release`) and only the refused request waits before its retry;
        with ``adaptive = false``, or at one request in flight, nothing else would slow the
        endpoint, so it pauses.
        """
        quota = self.rpm is not None or self.tpm is not None or names_rate_limit(error.headers)
        return quota or not self.config.adaptive or self.limit.slots <= 1


def _tightened(
    bucket: TokenBucket | None,
    limit: float | None,
    remaining: float | None,
    mark: float | None,
    unmarked: float,
    now: float,
) -> TokenBucket | None:
    if limit is not None and limit > 0:
        if bucket is None:
            bucket = TokenBucket(limit, now=now)
        elif limit < bucket.per_minute:
            bucket.resize(limit, now)
    if remaining is not None and bucket is not None:
        sent_since = bucket.taken - mark if mark is not None else unmarked
        bucket.tighten(remaining, sent_since, now)
    return bucket


def _hint(config: EndpointConfig, status: int) -> str:
    if status in (401, 403):
        if not config.api_key_env:
            return "the endpoint wants an API key: set api_key_env (or --api-key-env)"
        allowed = f" (and that it may use model {config.model!r})" if status == 403 else ""
        return f"check {config.api_key_env}{allowed}"
    if status == 404:
        return f"check the model name {config.model!r} and base_url {config.base_url}"
    if status in REDIRECTS:
        return f"base_url {config.base_url} is redirected: set it to where it points"
    return "every request gets this answer: check the request params (params, extra_body)"


class Fleet:
    """The endpoints serving one role."""

    def __init__(
        self,
        role: str,
        endpoints: list[EndpointState],
        spawn: Spawn,
        *,
        fail_fast: int = DEFAULT_FAIL_FAST,
        emit: Listener = ignore,
    ) -> None:
        self.role = role
        self.endpoints = endpoints
        self.fail_fast = fail_fast
        """Answers in a row that take an endpoint out (0: never)."""
        self._spawn = spawn
        self._emit = emit
        self._waiters: deque[anyio.Event] = deque()
        self._woken = 0
        """Waiters woken for a free slot that have not come back for it yet."""
        for ep in endpoints:
            ep.fleets.append(self)

    @property
    def capacity(self) -> int:
        """Upper bound of requests this role can have in flight at once."""
        return sum(int(ep.limit.cap) for ep in self.endpoints)

    def _pick(self) -> EndpointState | None:
        best: EndpointState | None = None
        best_load = math.inf
        for ep in self.endpoints:
            if ep.down:
                continue
            slots = ep.limit.slots
            if ep.in_flight >= slots:
                continue
            load = ep.in_flight / slots
            if load < best_load:
                best, best_load = ep, load
        return best

    def failed(self) -> EndpointsFailed | None:
        """The error to stop with when every endpoint of the role was taken out."""
        reasons = {ep.name: str(ep.taken_out) for ep in self.endpoints if ep.taken_out}
        return EndpointsFailed(self.role, reasons) if len(reasons) == len(self.endpoints) else None

    async def acquire(self, deadline: float) -> EndpointState:
        """A slot on the least-loaded healthy endpoint; waits (until ``deadline``) if none.

        Raises :class:`EndpointsFailed` once every endpoint of the role is taken out.
        """
        ep = self._pick()
        while ep is None:
            if (failed := self.failed()) is not None:
                raise failed
            event = anyio.Event()
            self._waiters.append(event)
            remaining = deadline - time.monotonic()
            try:
                with anyio.move_on_after(remaining) as scope:
                    await event.wait()
            except BaseException:  # cancelled: leave the queue, and pass on a wake-up it got
                self._leave(event)
                self.wake()
                raise
            self._leave(event)
            if scope.cancelled_caught:
                self.wake()
                raise DeadlineExceeded(
                    f"no endpoint of role {self.role!r} was available before the deadline"
                    + (" (all are down)" if all(e.down for e in self.endpoints) else "")
                )
            ep = self._pick()
        ep.in_flight += 1
        return ep

    def _leave(self, event: anyio.Event) -> None:
        """A waiter stops waiting: woken, or giving up (a stale event would swallow a wake-up)."""
        if event.is_set():
            self._woken -= 1
        else:
            with contextlib.suppress(ValueError):
                self._waiters.remove(event)

    def wake(self, *, everyone: bool = False) -> None:
        """Let as many waiters retry as there are free slots not yet promised to one.

        Waiters already woken count against the free slots: without that, a burst of
        releases in one loop tick would wake 1 + 2 + ... + k waiters for k slots.
        ``everyone`` wakes them all (an endpoint was taken out: they must look again).
        """
        waiters = self._waiters
        if not waiters:
            return
        if everyone:
            free = len(waiters)
        else:
            free = sum(max(0, ep.free) for ep in self.endpoints) - self._woken
        while waiters and free > 0:
            waiters.popleft().set()
            self._woken += 1
            free -= 1

    def release(
        self, ep: EndpointState, error: RequestError | None, latency: float, load: int
    ) -> None:
        """Give the slot back and learn from how the attempt went.

        ``load``: requests in flight on ``ep`` when this one was sent, itself included.
        """
        ep.in_flight -= 1
        now = time.monotonic()
        if error is None:
            ep.failures_in_a_row = 0
            ep.cooldown = 0.0
            ep.faults_in_a_row = 0
            ep.limit.on_success(latency, now, load)
        else:
            self._learn(ep, error, now, latency)
        for fleet in ep.fleets:
            fleet.wake()

    def _learn(self, ep: EndpointState, error: RequestError, now: float, latency: float) -> None:
        if ep.taken_out is not None:
            error.reroute = True  # answered after the endpoint was taken out: send it elsewhere
            return
        if isinstance(error, ClientError):
            if not error.retryable:
                self._client_fault(ep, error)
            return
        overloaded = isinstance(error, ServerError) and error.status == 503
        if overloaded or isinstance(error, RateLimited | RequestTimeout):
            sent = now - latency if latency > 0 else None
            ep.limit.on_congestion(now, sent, ep.in_flight)
        if isinstance(error, StatusError):
            ep.heard = True
        if isinstance(error, RateLimited):
            return  # the server is alive; the pause is handled by the retry wait
        if overloaded and ep.limit.adaptive and ep.limit.slots > 1:
            return  # "too many at once": the cut answers it
        if not error.retryable:
            return  # the request's own fault says nothing about the endpoint
        ep.failures_in_a_row += 1
        tolerated = max(FAILURES_BEFORE_COOLDOWN, ep.limit.slots // 4)
        if isinstance(error, ConnectError):
            self._take_down(ep, error, "unreachable")
        elif ep.failures_in_a_row >= tolerated:
            self._take_down(ep, error, "failing")

    def _client_fault(self, ep: EndpointState, error: ClientError) -> None:
        """Count answers no request can get past; take the endpoint out after enough."""
        if not self.fail_fast:
            return
        status = error.status or 0
        if status in ENDPOINT_FAULTS:
            signature = (status, "")
        elif status in REPEATED_FAULTS:
            signature = (status, error.message)
        else:
            return
        if ep.fault == signature and ep.faults_in_a_row:
            ep.faults_in_a_row += 1
        else:
            ep.fault, ep.faults_in_a_row = signature, 1
        if ep.faults_in_a_row >= self.fail_fast:
            self._take_out(ep, error)
        if ep.taken_out is not None or status in ENDPOINT_FAULTS:
            error.reroute = True

    def _take_out(self, ep: EndpointState, error: ClientError) -> None:
        status = error.status or 0
        said = error.message.removeprefix(f"HTTP {status}: ")
        if said == f"HTTP {status}":
            said = ""
        ep.taken_out = TakenOut(
            ep.name, status, error.code, said, ep.faults_in_a_row, _hint(ep.config, status)
        )
        ep.down = True
        log.warning("%s; it is taken out for the rest of the run", ep.taken_out)
        self._emit(EndpointTakenOut(ep.name, error.status, str(ep.taken_out)))
        for fleet in ep.fleets:
            fleet.wake(everyone=True)

    def _take_down(self, ep: EndpointState, error: RequestError, cause: str) -> None:
        if ep.down:
            return
        ep.down = True
        ep.down_since = time.monotonic()
        ep.last_error = error
        ep.cooldown = min(COOLDOWN_MAX, max(COOLDOWN_FIRST, ep.cooldown * 2))
        wait = _schedule_probe(ep)
        emit = self._emit
        emit(
            EndpointDown(
                ep.name, ep.url, cause, error.kind, error.message, ep.failures_in_a_row, wait
            )
        )
        for fleet in ep.fleets:
            if all(e.down for e in fleet.endpoints):
                emit(
                    RoleDown(
                        fleet.role, min(e.next_probe_at for e in fleet.endpoints) - ep.down_since
                    )
                )
        self._spawn(lambda: _probe_until_up(ep, emit))

    # -- start-up -------------------------------------------------------------------------------

    async def first_probe(self, ep: EndpointState) -> None:
        """Probe a newly started endpoint: one that cannot be reached is taken out at once.

        An HTTP answer of any status counts as reachable (a server without ``/models``
        still serves chat); only a refused connection, a DNS or TLS failure, a dropped
        connection or no answer within ``PROBE_TIMEOUT`` take it out, unless a request
        got an answer meanwhile.
        """
        try:
            await ep.transport.models(PROBE_TIMEOUT)
        except StatusError:
            ep.heard = True
        except RequestError as exc:
            if not ep.answered:
                self._take_down(
                    ep, exc, "unreachable" if isinstance(exc, ConnectError) else "first_probe"
                )
        else:
            ep.heard = True

    async def watch_startup(self, grace: float) -> None:
        """Raise :class:`EndpointsUnreachable` if no endpoint has answered after ``grace`` s."""
        await anyio.sleep(grace)
        if any(ep.answered for ep in self.endpoints):
            return
        errors = {
            ep.name: f"{ep.last_error.message} at {ep.url}" if ep.last_error else "no answer"
            for ep in self.endpoints
        }
        detail = "; ".join(f"{name}: {error}" for name, error in errors.items())
        message = (
            f"role {self.role!r}: no endpoint answered within the start-up grace of "
            f"{grace:g}s ({detail})"
        )
        self._emit(Unreachable(self.role, grace, message))
        raise EndpointsUnreachable(message, role=self.role, errors=errors)


def _schedule_probe(ep: EndpointState) -> float:
    """Set the time of ``ep``'s next probe (its cool-down, plus jitter); seconds until it."""
    wait = ep.cooldown + backoff(1, base=ep.cooldown / 4)
    ep.next_probe_at = time.monotonic() + wait
    return wait


async def _probe_until_up(ep: EndpointState, emit: Listener) -> None:
    """Wait out the cool-down, then probe ``/models`` until the endpoint answers."""
    while True:
        await anyio.sleep(max(0.0, ep.next_probe_at - time.monotonic()))
        if ep.taken_out is not None:
            return
        try:
            await ep.transport.models(PROBE_TIMEOUT)
        except RequestError as exc:
            if not (isinstance(exc, StatusError) and exc.status in NO_MODELS_ROUTE):
                ep.cooldown = min(COOLDOWN_MAX, ep.cooldown * 2)
                ep.last_error = exc
                wait = _schedule_probe(ep)
                emit(ProbeFailed(ep.name, ep.url, exc.kind, exc.message, wait))
                continue
        if ep.taken_out is not None:
            return
        ep.down = False
        ep.heard = True
        ep.failures_in_a_row = 0
        emit(EndpointUp(ep.name, time.monotonic() - ep.down_since))
        for fleet in ep.fleets:
            fleet.wake()
        return
