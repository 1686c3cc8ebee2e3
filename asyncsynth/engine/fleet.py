"""A role's endpoints: least-loaded choice, 429 pauses, cool-down of failing endpoints, probing.

Every endpoint has one :class:`EndpointState`, shared by all roles that list it; a
:class:`Fleet` is a role's view over its endpoints. A request takes a slot with
:meth:`Fleet.acquire` (waiting while every healthy endpoint is full or while all are
down) and gives it back with :meth:`Fleet.release`, which feeds the endpoint's
adaptive limit and health.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio

from .client import Transport
from .errors import (
    ConnectError,
    DeadlineExceeded,
    RateLimited,
    RequestError,
    RequestTimeout,
    ServerError,
)
from .limits import AdaptiveLimit, TokenBucket
from .retry import backoff, names_rate_limit
from .stats import EndpointStats

if TYPE_CHECKING:
    from ..config import EndpointConfig

FAILURES_BEFORE_COOLDOWN = 3
"""Consecutive failed attempts (5xx, drops, timeouts) that take an endpoint out of service.

An endpoint with many requests in flight needs a quarter of its concurrency limit in a row,
if that is more: a busy, healthy server answering the odd 5xx stays in service, while one
that fails everything still goes out within a fraction of one round trip of its requests.
"""
COOLDOWN_FIRST = 0.5
COOLDOWN_MAX = 30.0
PROBE_TIMEOUT = 10.0

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class EndpointState:
    """One endpoint at run time: its transport, limits, health and counters."""

    def __init__(self, config: EndpointConfig, transport: Transport) -> None:
        self.config = config
        self.name = config.name
        self.transport = transport
        self.limit = AdaptiveLimit(config.max_concurrency, adaptive=config.adaptive)
        self.rpm = TokenBucket(config.rpm) if config.rpm else None
        self.tpm = TokenBucket(config.tpm) if config.tpm else None
        self.in_flight = 0
        self.paused_until = 0.0
        self.failures_in_a_row = 0
        self.cooldown = 0.0
        self.down = False
        self.stats = EndpointStats(config.name, config.model)
        self.fleets: list[Fleet] = []

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

    def pause(self, seconds: float) -> None:
        """Hold every request to this endpoint for ``seconds`` (a 429 slows the whole endpoint)."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def pauses_on(self, error: RateLimited) -> bool:
        """Whether this 429 holds the whole endpoint, or only its own request.

        A quota is spent (the 429 names a rate limit, ``x-ratelimit-*``; or the endpoint
        has RPM/TPM limits or a known concurrency): every request would be refused until
        it resets, so all of them wait. A bare 429 from an endpoint whose capacity is
        still being learnt means "too many at once": the adaptive limit is cut (see
        :meth:`Fleet.release`) and only the refused request waits before its retry.
        """
        config = self.config
        learning = config.adaptive and config.max_concurrency is None
        quota = self.rpm is not None or self.tpm is not None or names_rate_limit(error.headers)
        return quota or not learning


class Fleet:
    """The endpoints serving one role."""

    def __init__(self, role: str, endpoints: list[EndpointState], spawn: Spawn) -> None:
        self.role = role
        self.endpoints = endpoints
        self._spawn = spawn
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

    async def acquire(self, deadline: float) -> EndpointState:
        """A slot on the least-loaded healthy endpoint; waits (until ``deadline``) if none."""
        ep = self._pick()
        while ep is None:
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

    def wake(self) -> None:
        """Let as many waiters retry as there are free slots not yet promised to one.

        Waiters already woken count against the free slots: without that, a burst of
        releases in one loop tick would wake 1 + 2 + ... + k waiters for k slots.
        """
        waiters = self._waiters
        if not waiters:
            return
        free = sum(max(0, ep.free) for ep in self.endpoints) - self._woken
        while waiters and free > 0:
            waiters.popleft().set()
            self._woken += 1
            free -= 1

    def release(self, ep: EndpointState, error: RequestError | None, latency: float) -> None:
        """Give the slot back and learn from how the attempt went."""
        ep.in_flight -= 1
        now = time.monotonic()
        if error is None:
            ep.failures_in_a_row = 0
            ep.cooldown = 0.0
            ep.limit.on_success(latency, now)
        else:
            self._learn(ep, error, now, latency)
        for fleet in ep.fleets:
            fleet.wake()

    def _learn(self, ep: EndpointState, error: RequestError, now: float, latency: float) -> None:
        congested = isinstance(error, RateLimited | RequestTimeout) or (
            isinstance(error, ServerError) and error.status == 503
        )
        if congested:
            sent = now - latency if latency > 0 else None
            ep.limit.on_congestion(now, sent, ep.in_flight)
        if isinstance(error, RateLimited):
            return  # the server is alive; the pause is handled by the retry wait
        if not error.retryable:
            return  # the request's own fault says nothing about the endpoint
        ep.failures_in_a_row += 1
        tolerated = max(FAILURES_BEFORE_COOLDOWN, ep.limit.slots // 4)
        if isinstance(error, ConnectError) or ep.failures_in_a_row >= tolerated:
            self._take_down(ep)

    def _take_down(self, ep: EndpointState) -> None:
        if ep.down:
            return
        ep.down = True
        ep.cooldown = min(COOLDOWN_MAX, max(COOLDOWN_FIRST, ep.cooldown * 2))
        self._spawn(lambda: _probe_until_up(ep))


async def _probe_until_up(ep: EndpointState) -> None:
    """Wait out the cool-down, then probe ``/models`` until the endpoint answers."""
    while True:
        await anyio.sleep(ep.cooldown + backoff(1, base=ep.cooldown / 4))
        try:
            await ep.transport.models(PROBE_TIMEOUT)
        except RequestError:
            ep.cooldown = min(COOLDOWN_MAX, ep.cooldown * 2)
            continue
        ep.down = False
        ep.failures_in_a_row = 0
        for fleet in ep.fleets:
            fleet.wake()
        return
