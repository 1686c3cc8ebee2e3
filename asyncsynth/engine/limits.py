"""Per-endpoint limits: RPM/TPM token buckets and an adaptive concurrency limit.

Both are plain synchronous objects the event loop drives; neither creates tasks.
With ``engine.limits_backend`` named, an endpoint's limits are shared with every process
naming the same endpoint key: :func:`open_limits_backend` gives the backend (from
:mod:`asyncsynth.distributed`), and the engine asks its :class:`SharedBudget` per request.

- :class:`TokenBucket` reserves: ``reserve(n)`` always takes ``n`` (the level may go
  negative) and says how long the caller must wait before sending. Waiters therefore
  never race or wake in herds, and no request is sent that would break the limit.
- :class:`AdaptiveLimit` is AIMD congestion control (as in TCP): slow start, then
  +1 per window of successes; on 429/503/timeouts or latency rising well past its
  baseline the limit is cut, at most once per round trip, never above the cap.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..distributed.budgets import SharedLimits
    from .events import Listener

DEFAULT_CONCURRENCY_CAP = 1024
"""Ceiling when an endpoint names no ``max_concurrency``: adaptation finds the real one."""
INITIAL_UNKNOWN_LIMIT = 8.0
"""Where adaptation starts when the capacity is unknown."""
DECREASE_FACTOR = 0.9
PROBE_SLOWDOWN = 5.0
"""Within one slot of the limit the server last objected to, the limit grows this much slower:
it dwells at the highest level that was accepted and probes past it only now and then."""
LATENCY_FACTOR = 3.0
"""Mean latency this many times the baseline counts as congestion."""
RATE_BURST_SECONDS = 0.5
"""A bucket holds this much of a second's budget: small bursts, never a minute's worth."""


class TokenBucket:
    """Rate ``per_minute / 60`` per second; holds at most ``RATE_BURST_SECONDS`` of it."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, per_minute: float, *, burst_seconds: float = RATE_BURST_SECONDS) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.updated = time.monotonic()

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount``; return the seconds to wait before the taken budget exists."""
        level = min(self.capacity, self.level + (now - self.updated) * self.rate) - amount
        self.level = level
        self.updated = now
        return 0.0 if level >= 0 else -level / self.rate

    def refund(self, amount: float) -> None:
        """Give back budget reserved but not used (e.g. estimate above actual usage)."""
        self.level = min(self.capacity, self.level + amount)


class AdaptiveLimit:
    """How many requests one endpoint may have in flight now."""

    __slots__ = (
        "_ceiling",
        "_last_cut",
        "_lat_base",
        "_lat_mean",
        "adaptive",
        "cap",
        "limit",
        "slow_start",
    )

    def __init__(self, cap: int | None, *, adaptive: bool = True) -> None:
        self.cap = float(cap or DEFAULT_CONCURRENCY_CAP)
        self.adaptive = adaptive
        # A configured cap is trusted until the server objects; an unknown one is probed.
        known = cap is not None or not adaptive
        self.limit = self.cap if known else min(self.cap, INITIAL_UNKNOWN_LIMIT)
        self.slow_start = not known
        self._lat_base = 0.0
        self._lat_mean = 0.0
        self._last_cut = 0.0
        self._ceiling = 0.0

    @property
    def slots(self) -> int:
        return max(1, int(self.limit))

    def on_success(self, latency: float, now: float) -> None:
        if not self.adaptive:
            return
        base = self._lat_base
        if base == 0.0 or latency < base:
            self._lat_base = base = latency
        else:  # let the baseline drift up slowly, so a server that got slower is re-learnt
            self._lat_base = base = base + (latency - base) * 0.001
        self._lat_mean += (latency - self._lat_mean) * 0.05
        if self._lat_mean > LATENCY_FACTOR * base + 0.05:
            self.on_congestion(now)
            return
        if self.slow_start:
            self.limit = min(self.cap, self.limit + 1.0)
            return
        step = 1.0 / self.limit
        if self._ceiling - 1.0 <= self.limit < self._ceiling + 1.0:
            step /= PROBE_SLOWDOWN
        self.limit = min(self.cap, self.limit + step)

    def on_congestion(
        self, now: float, sent: float | None = None, in_flight: int | None = None
    ) -> None:
        """A 429, 503 or timeout (or latency far past its baseline): cut, leave slow start.

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
        elif now - self._last_cut < max(self._lat_mean, 0.01):
            return
        self._last_cut = now
        self.slow_start = False
        self._ceiling = self.limit
        self.limit = max(1.0, self.limit * DECREASE_FACTOR)

    def adopt(self, limit: float, now: float) -> None:
        """Take a limit another process learnt on the same endpoint (a shared budget)."""
        if not self.adaptive:
            return
        limit = max(1.0, min(self.cap, limit))
        if limit < self.limit:
            self._last_cut = now  # a cut made there: refusals already on their way count for it
        self.limit = limit
        self.slow_start = False


class SharedBudget(Protocol):
    """An endpoint's limits shared with other processes, as the engine asks them.

    ``admit`` takes a concurrency slot (under ``slots``, the limit in force) and the
    request's RPM/TPM budget at once, answering an admission whose ``wait`` the engine
    sleeps, then has confirmed (a store that restarted forgot what it reserved);
    ``release`` gives back the slot and the tokens not used (the admission's ``used``,
    when the answer said); ``share`` tells the other processes a concurrency limit
    learnt here. See :class:`asyncsynth.distributed.budgets.SharedBudget`.
    """

    async def admit(self, tokens: float, slots: int | None, deadline: float) -> Any: ...
    async def confirm(self, admission: Any, deadline: float) -> Any: ...
    def release(self, admission: Any) -> None: ...
    def share(self, limit: float) -> None: ...


async def open_limits_backend(url: str, on_event: Listener) -> SharedLimits:
    """The shared backend ``engine.limits_backend`` names, checked to answer now.

    Raises :class:`~asyncsynth.engine.errors.ConfigError` when it cannot be reached or
    its extra is missing.
    """
    from ..distributed.backends import open_backend

    return await open_backend(url, on_event=on_event)
