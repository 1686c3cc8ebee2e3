"""What a budget store does: the operations every shared-budget store performs atomically.

A *budget* is the state that several processes share for one endpoint key: a rate
budget for requests and one for tokens (each a generic cell rate algorithm: one
*theoretical arrival time*, exactly a token bucket kept as one number), the
concurrency slots held now (each a lease that expires unless renewed, so the slots of
a killed process come back), the concurrency limit one process learnt, and an
*epoch*: a token made when the budget is first written, so a process can tell that a
store restarted empty under it.

Stores: :class:`MemoryStore` here (one Python object: the reference, and what the Ray
budgets actor holds), and :class:`~asyncsynth.distributed.redis_store.RedisStore`
(the same operations as one Lua script, run atomically by Redis). Both are checked
against the same tests. A store runs every operation on its own clock, so the clocks
of the machines that share it never matter; what it answers is relative (seconds to
wait, seconds until a lease ends).

The operations, with the arguments the client (:mod:`~asyncsynth.distributed.budgets`)
sends, in this order:

``admit(key, member, slots, lease, r_cost, r_burst, r_rate, t_cost, t_burst, t_rate, epoch)``
    Take a slot for ``member`` when fewer than ``slots`` are held (``slots`` 0: no
    concurrency limit), then reserve ``r_cost`` requests and ``t_cost`` tokens (a rate
    of 0: no such limit). A reservation always takes its amount and says how long to
    wait before the taken budget exists, so waiters never race. A budget seen for the
    first time starts *empty*: whatever a store forgot when it restarted, nothing is
    sent beyond the limit. Answers :class:`Admitted`; refused (all slots held), it
    reserves nothing.
``release(key, member, t_refund, t_burst, t_rate)``
    Give the slot back (and tell waiting processes), and return ``t_refund`` tokens
    reserved but not used (negative: take more).
``renew(key, lease, epoch, *members)``
    Hold ``members``' slots for another ``lease`` seconds (and hold them again if the
    store lost them). Answers ``(epoch, learnt, learnt_version)``.
``share(key, limit, epoch)``
    Publish a concurrency limit learnt by one process; answers its version.
``observe(key, kind, new_burst, new_rate, remaining, mark, burst, rate, epoch)``
    What a provider's ``x-ratelimit-*`` headers said of the ``kind`` (``"r"`` or ``"t"``)
    budget: a lower limit (``new_rate`` > 0) becomes its shape for every process; and
    ``remaining`` (>= 0), counted before the reservations after ``mark``, caps its level.
``epoch(key)``
    The budget's epoch, or ``None`` if the store has no such budget (any more).
``ping()``
    Nothing; answers ``"pong"``.

The learnt *shape* of a rate budget (a provider's ``x-ratelimit-limit-*`` below the
configured limit) is kept with it: ``r_burst``/``r_rate`` (and ``t_*``) passed by a
client are used unless the budget holds a lower rate learnt by any process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import anyio

KEY_TTL = 120.0
"""Seconds a budget nobody touches is kept: longer than any rate window or lease."""


class StoreUnavailable(Exception):
    """The store cannot be reached (or answered nothing usable): try again later."""


class Admitted(NamedTuple):
    """What ``admit`` answers."""

    granted: bool
    wait: float
    """Seconds until the reserved rate budget exists (0: send now)."""
    r_mark: float
    """Requests ever reserved on this budget, this one included (see ``observe``)."""
    t_mark: float
    in_use: int
    """Slots held now (this one included when granted): the load on the endpoint."""
    learnt: float | None
    learnt_version: int
    epoch: str
    retry_in: float
    """Refused: seconds until the first held lease ends (a slot frees by then at the latest)."""


Op = tuple[Any, ...]


@dataclass
class _Rate:
    tat: float
    """Theoretical arrival time: the moment the bucket would be full again."""
    taken: float = 0.0
    burst: float | None = None
    """The learnt shape, when one process saw a lower limit than configured."""
    rate: float | None = None


@dataclass
class _Budget:
    epoch: str
    touched: float
    rates: dict[str, _Rate] = field(default_factory=dict)
    slots: dict[str, float] = field(default_factory=dict)
    """Member -> when its lease ends."""
    learnt: float | None = None
    learnt_version: int = 0


def shape(rate: _Rate, burst: float, per_second: float) -> tuple[float, float]:
    """The shape in force: the learnt one when it is tighter than the caller's."""
    if rate.rate is not None and rate.burst is not None and rate.rate < per_second:
        return rate.burst, rate.rate
    return burst, per_second


class MemoryStore:
    """Every budget in one process's memory: the reference semantics of a store.

    Not shared between processes by itself: the Ray executor keeps one in an actor
    that every worker asks. ``clock`` is for tests.
    """

    where = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._budgets: dict[str, _Budget] = {}
        self._freed: dict[str, list[anyio.Event]] = {}

    # -- the Store protocol of distributed.budgets, for tasks of one event loop ------------

    async def call(self, ops: Sequence[Op]) -> list[Any]:
        return self.execute(ops)

    async def wait_free(self, keys: Collection[str], timeout: float) -> bool:
        """Wait up to ``timeout`` s for a slot of one of ``keys`` to be given back."""
        event = anyio.Event()
        for key in keys:
            self._freed.setdefault(key, []).append(event)
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
        finally:
            for key in keys:
                waiting = self._freed.get(key, [])
                with contextlib.suppress(ValueError):
                    waiting.remove(event)
                if not waiting:
                    self._freed.pop(key, None)
        return event.is_set()

    async def aclose(self) -> None:
        pass

    def execute(self, ops: Sequence[Op]) -> list[Any]:
        """Run ``ops`` in order, as one batch; their answers in the same order."""
        now = self._clock()
        self._forget_idle(now)
        return [getattr(self, f"_{op[0]}")(now, *op[1:]) for op in ops]

    def _forget_idle(self, now: float) -> None:
        idle = [key for key, b in self._budgets.items() if now - b.touched > KEY_TTL]
        for key in idle:
            del self._budgets[key]

    def _budget(self, key: str, now: float, epoch: str) -> _Budget:
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = _Budget(epoch, now)
        budget.touched = now
        return budget

    # -- operations (each takes the store's ``now`` first) ---------------------------------

    def _ping(self, now: float) -> str:
        return "pong"

    def _epoch(self, now: float, key: str) -> str | None:
        budget = self._budgets.get(key)
        return budget.epoch if budget is not None else None

    def _admit(
        self,
        now: float,
        key: str,
        member: str,
        slots: int,
        lease: float,
        r_cost: float,
        r_burst: float,
        r_rate: float,
        t_cost: float,
        t_burst: float,
        t_rate: float,
        epoch: str,
    ) -> Admitted:
        budget = self._budget(key, now, epoch)
        held = budget.slots
        if slots > 0:
            for name in [m for m, ends in held.items() if ends <= now]:
                del held[name]
            if len(held) >= slots and member not in held:
                retry = min(held.values()) - now
                return Admitted(
                    False, 0.0, 0.0, 0.0, len(held), budget.learnt, budget.learnt_version,
                    budget.epoch, max(0.0, retry),
                )  # fmt: skip
            held[member] = now + lease
        wait = 0.0
        marks = [0.0, 0.0]
        for i, (kind, cost, burst, per_second) in enumerate(
            (("r", r_cost, r_burst, r_rate), ("t", t_cost, t_burst, t_rate))
        ):
            if per_second <= 0:
                continue
            rate = budget.rates.get(kind)
            if rate is None:  # a budget seen for the first time starts empty
                rate = budget.rates[kind] = _Rate(now + burst / per_second)
            burst, per_second = shape(rate, burst, per_second)
            rate.tat = max(rate.tat, now) + cost / per_second
            rate.taken += cost
            marks[i] = rate.taken
            wait = max(wait, rate.tat - now - burst / per_second)
        return Admitted(
            True, wait, marks[0], marks[1], len(held) if slots > 0 else 0, budget.learnt,
            budget.learnt_version, budget.epoch, 0.0,
        )  # fmt: skip

    def _release(
        self, now: float, key: str, member: str, t_refund: float, t_burst: float, t_rate: float
    ) -> int:
        budget = self._budgets.get(key)
        if budget is None:
            return 0
        budget.touched = now
        freed = budget.slots.pop(member, None) is not None
        if t_refund and t_rate > 0 and (rate := budget.rates.get("t")) is not None:
            _, per_second = shape(rate, t_burst, t_rate)
            rate.tat = max(max(rate.tat, now) - t_refund / per_second, now)
        if freed:
            for event in self._freed.pop(key, ()):
                event.set()
        return int(freed)

    def _renew(
        self, now: float, key: str, lease: float, epoch: str, *members: str
    ) -> tuple[str, float | None, int]:
        budget = self._budget(key, now, epoch)
        for member in members:
            budget.slots[member] = now + lease
        return budget.epoch, budget.learnt, budget.learnt_version

    def _share(self, now: float, key: str, limit: float, epoch: str) -> int:
        budget = self._budget(key, now, epoch)
        budget.learnt = float(limit)
        budget.learnt_version += 1
        return budget.learnt_version

    def _observe(
        self,
        now: float,
        key: str,
        kind: str,
        new_burst: float,
        new_rate: float,
        remaining: float,
        mark: float,
        burst: float,
        per_second: float,
        epoch: str,
    ) -> int:
        budget = self._budget(key, now, epoch)
        rate = budget.rates.get(kind)
        if rate is None:
            rate = budget.rates[kind] = _Rate(now + burst / per_second)
        burst, per_second = shape(rate, burst, per_second)
        level = burst - (max(rate.tat, now) - now) * per_second
        if 0 < new_rate < per_second:
            rate.burst, rate.rate = new_burst, new_rate
            burst, per_second = new_burst, new_rate
            level = min(level, burst)
        if remaining >= 0:
            level = min(level, remaining - (rate.taken - mark))
        rate.tat = now + (burst - level) / per_second
        return 1
