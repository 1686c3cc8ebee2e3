"""Per-endpoint limits: RPM/TPM token buckets and the adaptive concurrency limit.

Plain synchronous objects the event loop drives; none creates tasks. The fleet asks
them (through :class:`~asyncsynth.engine.fleet.EndpointState`) and tells them what
happened. With ``engine.limits_backend`` named, an endpoint's limits are shared with
every process naming the same endpoint key: :func:`open_limits_backend` gives the backend
(from :mod:`asyncsynth.distributed`) and the engine asks its :class:`SharedBudget` per
request in place of the buckets, whose shape it takes.

- :class:`TokenBucket` reserves: ``reserve(n)`` always takes ``n`` (the level may go
  negative) and says how long the caller must wait before sending, so waiters never
  race or wake in herds. It is sized so that **no 60 s window, sliding or fixed, holds
  more than the configured amount**, with a second of slack for network delays (see
  :data:`WINDOW_MARGIN`). Providers' ``x-ratelimit-*`` headers (:class:`RateHeaders`)
  tighten it at run time when they say less than the config.
- :class:`AdaptiveLimit` finds how many requests an endpoint takes at once, never past
  its ceiling (``max_concurrency``): slow start, then +1 a round trip; cut on 429, 503
  and timeouts (loss, as TCP's AIMD) and on latency that grows with load (a queueing
  server such as vLLM answers everything, only later: as TCP Vegas, the limit keeps a
  small queue there, where more in flight stops buying throughput).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..distributed.budgets import SharedLimits
    from .events import Listener

# -- rate limits ------------------------------------------------------------------------------

WINDOW = 60.0
"""Seconds of the window that providers' RPM/TPM limits count over."""
WINDOW_MARGIN = 1.0
"""The buckets keep every ``WINDOW + WINDOW_MARGIN`` seconds within the limit, so a server
counting arrivals still sees at most the limit in its 60 s when network delays vary by up
to this much. The price: a sustained rate of (limit - burst) / 61 per second, 1.6% below
limit / 60."""
RATE_BURST_SECONDS = 0.5
"""A bucket holds this much of a second's budget (at least one request): small bursts."""


class TokenBucket:
    """A budget of ``per_minute`` (requests or tokens) that no 60 s window exceeds.

    It holds ``burst`` at most and refills at ``rate`` a second, with
    ``burst + rate * (WINDOW + WINDOW_MARGIN) <= per_minute``: whatever the callers do,
    the amounts sent in any such window add up to no more than ``per_minute``. What was
    reserved in the last ``WINDOW`` is remembered, so that the server's word on what
    is left (:meth:`tighten`) can be told apart from what this client sent.
    """

    __slots__ = (
        "_recent",
        "_recent_total",
        "burst",
        "level",
        "per_minute",
        "rate",
        "taken",
        "updated",
    )

    def __init__(
        self,
        per_minute: float,
        *,
        burst_seconds: float = RATE_BURST_SECONDS,
        now: float | None = None,
    ) -> None:
        self._size(per_minute, burst_seconds)
        self.level = self.burst
        self.updated = time.monotonic() if now is None else now
        self.taken = 0.0
        """Everything ever reserved: a mark to tell what was sent after a given request."""
        self._recent: deque[tuple[float, float]] = deque()
        self._recent_total = 0.0

    def _size(self, per_minute: float, burst_seconds: float = RATE_BURST_SECONDS) -> None:
        self.per_minute = per_minute
        self.burst = min(per_minute, max(1.0, per_minute * burst_seconds / WINDOW))
        # Integral amounts (requests) stay within the window even when burst is all of it.
        self.rate = max(per_minute - self.burst, per_minute / 2) / (WINDOW + WINDOW_MARGIN)

    def resize(self, per_minute: float, now: float) -> None:
        """Become a bucket of ``per_minute``: what the last window spent counts against it."""
        level = self._refill(now)
        self._size(per_minute)
        self.level = min(level, self.burst - self._spent(now))

    def _refill(self, now: float) -> float:
        level = min(self.burst, self.level + (now - self.updated) * self.rate)
        self.level = level
        self.updated = now
        return level

    def _spent(self, now: float) -> float:
        """What was reserved (or seen spent) in the last ``WINDOW`` seconds."""
        recent = self._recent
        while recent and recent[0][0] <= now - WINDOW:
            self._recent_total -= recent.popleft()[1]
        return self._recent_total

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount``; return the seconds to wait before the taken budget exists."""
        level = self._refill(now) - amount
        self.level = level
        self.taken += amount
        self._spent(now)
        self._recent.append((now, amount))
        self._recent_total += amount
        return 0.0 if level >= 0 else -level / self.rate

    def refund(self, amount: float) -> None:
        """Give back budget reserved but not used (or take more: a negative ``amount``)."""
        self.level = min(self.burst, self.level + amount)

    def tighten(self, remaining: float, sent_since: float, now: float) -> None:
        """The server says ``remaining`` is left of its window, before ``sent_since`` more.

        What the server counted beyond this client's own reservations (another process
        on the same key, a count of its own) is spent budget: it comes off the level
        now and is remembered for a window, so it is taken off once, not per answer.
        """
        counted = self.per_minute - remaining
        unexplained = counted - (self._spent(now) - sent_since)
        if unexplained > 0:
            self.level = self._refill(now) - unexplained
            self._recent.append((now, unexplained))
            self._recent_total += unexplained


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """What a provider's ``x-ratelimit-*`` headers say: limits and what is left of them."""

    limit_requests: float | None = None
    remaining_requests: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateHeaders | None:
        """From response headers (any case); ``None`` when they say nothing of the kind."""
        values: dict[str, float] = {}
        for name, value in headers.items():
            lowered = name.lower()
            if lowered.startswith("x-ratelimit-") and lowered in _RATE_FIELDS:
                try:
                    number = float(value)
                except ValueError:
                    continue
                if math.isfinite(number) and number >= 0:
                    values[_RATE_FIELDS[lowered]] = number
        return cls(**values) if values else None


_RATE_FIELDS = {
    "x-ratelimit-limit-requests": "limit_requests",
    "x-ratelimit-remaining-requests": "remaining_requests",
    "x-ratelimit-limit-tokens": "limit_tokens",
    "x-ratelimit-remaining-tokens": "remaining_tokens",
}
RATE_HEADER_NAMES = tuple(_RATE_FIELDS)


# -- concurrency ------------------------------------------------------------------------------

DEFAULT_CONCURRENCY_CAP = 1024
"""Ceiling when an endpoint names no ``max_concurrency``: adaptation finds the real level."""
INITIAL_LIMIT = 16.0
"""Where adaptation starts (or at the ceiling, when that is lower)."""
DECREASE_FACTOR = 0.9
"""A refusal (429, 503, timeout) cuts the limit by 10%..."""
REFUSED_AGAIN_STEP = 2.0
"""...or by this many slots when it came at the level of the last refusal."""
SLOW_START_LEAD = 1.5
"""In slow start the limit stays within this factor of the most requests ever answered at
once: answers that come back late (a busy client machine, a slow network) cannot let it
run far past what the server was seen to take before the first refusal arrives."""
PROBE_SLOWDOWN = 5.0
"""Within one slot of the limit the server last objected to, the limit grows this much slower:
it dwells at the highest level that was accepted and probes past it only now and then."""
QUEUE_TARGET = 0.2
"""A queueing server is left with this much latency over its no-load latency (a small
queue keeps it busy); the limit grows only below it."""
QUEUE_LIMIT = 0.5
"""Latency this much over the no-load latency (plus :data:`QUEUE_SLACK`) means requests
queue at the server: the limit is cut back to where the latency would be at the target."""
QUEUE_SLACK = 0.025
"""Seconds of latency growth never counted as queueing (the client's own event loop)."""


class AdaptiveLimit:
    """How many requests one endpoint may have in flight now: at most ``ceiling``.

    The fleet reports every answer: :meth:`on_success` with its latency and ``load`` (how
    many were in flight when it was sent), :meth:`on_congestion` for a refusal. With
    ``adaptive=False`` the limit is the ceiling and stays there.
    """

    __slots__ = (
        "_base",
        "_check",
        "_last_cut",
        "_load",
        "_refused_at",
        "_rtt",
        "_served",
        "adaptive",
        "cap",
        "limit",
        "slow_start",
    )

    def __init__(self, cap: int | None, *, adaptive: bool = True) -> None:
        self.cap = float(cap or DEFAULT_CONCURRENCY_CAP)
        """The ceiling: the configured ``max_concurrency``, else :data:`DEFAULT_CONCURRENCY_CAP`."""
        self.adaptive = adaptive
        self.limit = min(self.cap, INITIAL_LIMIT) if adaptive else self.cap
        self.slow_start = adaptive
        self._served = 0
        self._rtt = 0.0
        self._load = 0.0
        self._base = 0.0
        self._last_cut = 0.0
        self._refused_at = 0.0
        self._check: list[float] | None = None
        """After a cut for latency: [cut at, limit before, latency sum, samples]."""

    @property
    def slots(self) -> int:
        return max(1, int(self.limit))

    @property
    def latency(self) -> float:
        """The smoothed latency of recent answers (seconds; 0 before the first)."""
        return self._rtt

    def on_success(self, latency: float, now: float, load: int) -> None:
        """An answer after ``latency`` seconds to a request sent with ``load`` in flight."""
        if not self.adaptive:
            return
        if load > self._served:
            self._served = load
        limit = self.limit
        # Latency and load smoothed alike (over about half a round trip's answers), so
        # that their ratio pairs each latency with the load that caused it.
        if self._rtt == 0.0:
            self._rtt, self._load = latency, float(load)
        else:
            weight = min(0.5, 2.0 / (limit + 1.0))
            self._rtt += (latency - self._rtt) * weight
            self._load += (load - self._load) * weight
        rtt = self._rtt
        if self._check is not None and self._checked(latency, now, load):
            return
        base = self._base
        if base == 0.0 or rtt < base:
            self._base = base = rtt
        if rtt > base * (1.0 + QUEUE_LIMIT) + QUEUE_SLACK:
            if self._check is None and now - self._last_cut >= rtt:
                self._cut_for_latency(now, rtt, base)
            return
        if rtt > base * (1.0 + QUEUE_TARGET) + QUEUE_SLACK or self._check is not None:
            self.slow_start = False  # latency rises with load: stop doubling, hold
            return
        if self.slow_start:
            limit = min(limit + 1.0, SLOW_START_LEAD * max(self._served, INITIAL_LIMIT))
        else:
            step = 1.0 / limit
            if self._refused_at - 1.0 <= limit < self._refused_at + 1.0:
                step /= PROBE_SLOWDOWN
            limit = min(limit + step, self._served + 1.0)
        self.limit = min(self.cap, max(self.limit, limit))

    def _cut_for_latency(self, now: float, rtt: float, base: float) -> None:
        """Back to where latency would be at the target, then see whether it falls.

        A queueing server serves ``load * base / latency`` at once (the rest wait):
        the limit goes to that plus the target's small queue.
        """
        self._check = [now, self.limit, 0.0, 0.0]
        target = self._load * (base * (1.0 + QUEUE_TARGET) + QUEUE_SLACK) / rtt
        self.limit = max(1.0, min(self.limit, target))
        self.slow_start = False
        self._last_cut = now

    def _checked(self, latency: float, now: float, load: int) -> bool:
        """Judge a latency cut on the answers sent after it, within the new limit.

        True while still judging.

        If their latency fell, the server was queueing our requests and the cut stands.
        If not, the latency was not ours to fix (a slower server, a busy client machine):
        the old limit comes back and the latency seen now becomes the no-load latency.
        """
        check = self._check
        assert check is not None
        if now - latency < check[0] or load > self.limit + 1.0:
            return False  # sent before the cut: says nothing of it
        check[2] += latency
        check[3] += 1
        if check[3] < max(2.0, self.limit / 2):
            return True
        mean = check[2] / check[3]
        self._check = None
        if mean > self._base * (1.0 + QUEUE_LIMIT) + QUEUE_SLACK:
            self.limit = max(self.limit, check[1])
            self._base = self._rtt = mean
        return True

    def on_congestion(
        self, now: float, sent: float | None = None, in_flight: int | None = None
    ) -> None:
        """A 429, 503 or timeout: cut, leave slow start.

        For a refused request sent at ``sent`` with ``in_flight`` others still out:

        - sent after the last cut: refused even at the reduced limit, so cut again at
          once (refusals come back fast; waiting a round trip would let a burst of
          doomed requests through);
        - sent before it: that cut answered for it; but the server took no more than
          what is still out, so the limit never stays above ``in_flight``. After a
          burst past the capacity (slow start overshoots while answers are on their
          way) the limit so falls to what the server accepted, sending nothing more
          while the refusals come back.

        Without ``sent``, the limit is cut at most once per round trip.
        """
        if not self.adaptive:
            return
        if sent is not None:
            if sent < self._last_cut:
                if in_flight is not None:
                    self.limit = max(1.0, min(self.limit, float(in_flight)))
                return
        elif now - self._last_cut < max(self._rtt, 0.01):
            return
        self._last_cut = now
        self._check = None
        self.slow_start = False
        limit = self.limit
        # Refused where the last refusal was: the capacity is known and steady, so step
        # just below it; anywhere else (the first time, or the capacity fell) cut by 10%.
        again = abs(limit - self._refused_at) < 1.0
        self._refused_at = limit
        self.limit = max(1.0, limit - REFUSED_AGAIN_STEP if again else limit * DECREASE_FACTOR)

    def adopt(self, limit: float, now: float) -> None:
        """Take a limit another process learnt on the same endpoint (a shared budget),
        never past the ceiling; a lower one counts as a cut made here."""
        if not self.adaptive:
            return
        limit = max(1.0, min(self.cap, limit))
        if limit < self.limit:
            self._last_cut = now  # refusals already on their way count for that cut
            self._check = None
        self.limit = limit
        self.slow_start = False


class SharedBudget(Protocol):
    """An endpoint's limits shared with other processes, as the engine asks them.

    ``admit`` takes a concurrency slot (under ``slots``, the limit in force) and the
    request's RPM/TPM budget at once, answering an admission whose ``wait`` the engine
    sleeps, then has confirmed (a store that restarted forgot what it reserved);
    ``release`` gives back the slot and the tokens not used (the admission's ``used``,
    when the answer said); ``share`` tells the other processes a concurrency limit
    learnt here; ``observe_headers`` what a provider's ``x-ratelimit-*`` headers said,
    given the admission's ``marks``. See :class:`asyncsynth.distributed.budgets.SharedBudget`.
    """

    async def admit(self, tokens: float, slots: int | None, deadline: float) -> Any: ...
    async def confirm(self, admission: Any, deadline: float) -> Any: ...
    def release(self, admission: Any) -> None: ...
    def share(self, limit: float) -> None: ...
    def observe_headers(self, seen: RateHeaders, marks: tuple[float, float] | None) -> None: ...


async def open_limits_backend(url: str, on_event: Listener) -> SharedLimits:
    """The shared backend ``engine.limits_backend`` names, checked to answer now.

    Raises :class:`~asyncsynth.engine.errors.ConfigError` when it cannot be reached or
    its extra is missing.
    """
    from ..distributed.backends import open_backend

    return await open_backend(url, on_event=on_event)
