"""Endpoint budgets shared by every process that names the same endpoint key.

One :class:`SharedLimits` per process is the client of a budget store (Redis, or the
Ray executor's budgets actor; :mod:`~asyncsynth.distributed.store` says what a store
does). The engine asks it, per endpoint, for a :class:`SharedBudget` and, per request:

- :meth:`SharedBudget.admit`: a concurrency slot (when the endpoint has a limit) and
  the request's RPM and TPM budget, both in one atomic step of the store; it answers
  how long to wait before sending, as the engine's own buckets do;
- :meth:`SharedBudget.confirm` after such a wait: whether the store still holds the
  reservation (it does, unless it restarted empty meanwhile: then it is made again);
- :meth:`SharedBudget.release`: the slot back, and the tokens reserved but not used.

What many tasks ask at once travels in one round trip (a pipeline); a slot given back
wakes the processes waiting for one. Held slots are leases renewed every
``lease / 3`` seconds: a process killed while holding slots loses them within
``lease`` seconds. A concurrency limit learnt by one process (:meth:`SharedBudget.share`)
reaches the others with their next answer.

When the store cannot be reached mid-run, nothing is admitted: every request waits,
the engine's listener hears a :class:`~asyncsynth.engine.events.Wait` (reason
``limits_backend``), and sending resumes when the store answers again (a second
``Wait``, with ``seconds=0``, ends the first). A limit that cannot be checked is never
exceeded. Unreachable at start, :meth:`SharedLimits.open` raises
:class:`~asyncsynth.engine.errors.ConfigError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from ..engine.errors import ConfigError, DeadlineExceeded
from ..engine.events import Listener, Wait, ignore
from ..engine.limits import RateHeaders, TokenBucket
from .store import Admitted, Op, StoreUnavailable

if TYPE_CHECKING:
    from ..engine.fleet import EndpointState

LEASE = 10.0
"""Seconds a held slot stays held without renewal (renewed every third of it)."""
SLOT_POLL = 0.5
"""A process waiting for a slot asks again at least this often (a missed wake-up costs this)."""
RECONNECT_FIRST = 0.05
RECONNECT_MAX = 1.0
"""Backoff between attempts to reach a store that went away."""
WAIT_REASON = "limits_backend"


class Store(Protocol):
    """A budget store, as the client sees it (see :mod:`~asyncsynth.distributed.store`)."""

    where: str
    """What to call it in messages (a URL without its password)."""

    async def call(self, ops: Sequence[Op]) -> list[Any]:
        """Run ``ops`` atomically each, in order; raise :class:`StoreUnavailable` if away."""
        ...

    async def wait_free(self, keys: Collection[str], timeout: float) -> bool:
        """Wait up to ``timeout`` s for a slot of ``keys`` to be given back (by anyone)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Shape:
    """A rate budget: it holds ``burst`` at most and refills ``rate`` a second."""

    burst: float
    rate: float


def budget_key(base_url: str | None, model: str, api_key: str | None) -> str:
    """The default key of an endpoint's budget: its URL, model and a key id, hashed.

    The key id is a hash of the API key: processes on one key share a budget, processes
    on two keys do not, and neither the key nor anything that reveals it is stored.
    """
    key_id = hashlib.blake2b((api_key or "").encode(), digest_size=8).hexdigest()
    text = f"{(base_url or '').rstrip('/')}\n{model}\n{key_id if api_key else ''}"
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass(slots=True)
class Admission:
    """One request's place in a shared budget, from :meth:`SharedBudget.admit`."""

    member: str | None
    """Its slot, if the budget limits concurrency."""
    tokens: float
    wait: float
    """Seconds until the reserved budget exists (the engine sleeps them)."""
    marks: tuple[float, float]
    """Requests and tokens ever reserved on the budget, this request included."""
    load: int
    """Slots held across every process when it was admitted (itself included)."""
    slots: int
    """The concurrency limit it was admitted under (0: none)."""
    epoch: str
    held: float = 0.0
    """Seconds it waited for an unreachable store (not a limit: a request's deadline
    does not count them)."""
    used: float | None = None
    """Tokens the answer said it used (set by the engine; the rest is given back)."""


class _Call:
    """One operation waiting for its answer from the flusher."""

    __slots__ = ("done", "error", "op", "reply")

    def __init__(self, op: Op) -> None:
        self.op = op
        self.done = anyio.Event()
        self.reply: Any = None
        self.error: BaseException | None = None


class SharedLimits:
    """One process's client of a budget store: the backend the engine's limits ask.

    Use :meth:`open` (it checks the store answers), then run :meth:`run` in a task group
    for as long as budgets are in use, and :meth:`aclose` at the end.
    """

    def __init__(self, store: Store, *, lease: float = LEASE, on_event: Listener = ignore) -> None:
        self.store = store
        self.where = store.where
        self.lease = lease
        self.emit = on_event
        self.id = secrets.token_hex(6)
        self._serial = itertools.count()
        self._budgets: dict[str, SharedBudget] = {}
        self._outbox: list[_Call | Op] = []
        self._wake = anyio.Event()
        self._down_since: float | None = None
        self._downtime = 0.0
        self._someone_waits = anyio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self, where: str = "engine.limits_backend") -> SharedLimits:
        """Check the store answers now; raise :class:`ConfigError` naming ``where`` if not."""
        try:
            await self.store.call([("ping",)])
        except StoreUnavailable as exc:
            await self.store.aclose()
            raise ConfigError(
                f"{where}: the limits backend {self.where} cannot be reached ({exc}); "
                "start it, or run without a shared backend"
            ) from None
        return self

    async def run(self) -> None:
        """Send what the budgets ask, renew held slots, and watch for freed ones."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._flush_forever)
            tg.start_soon(self._renew_forever)
            tg.start_soon(self._watch_forever)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.store.aclose()

    def budget(
        self, key: str, *, rpm: Shape | None, tpm: Shape | None, slots: bool
    ) -> SharedBudget:
        """The shared budget named ``key`` (one object per key in this process)."""
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = SharedBudget(self, key, rpm, tpm, slots)
        return budget

    def attach(self, endpoint: EndpointState) -> SharedBudget:
        """The shared budget of an engine's endpoint: its ``budget_key`` (else its URL,
        model and key id), the shape of its own buckets, its concurrency when limited or
        learnt; a limit another process learnt is adopted by its adaptive limit."""
        config = endpoint.config
        key = config.budget_key or budget_key(config.base_url, config.model, config.api_key())
        limit = endpoint.limit
        budget = self.budget(
            key,
            rpm=_shape(endpoint.rpm),
            tpm=_shape(endpoint.tpm),
            slots=config.max_concurrency is not None or limit.adaptive,
        )
        budget.on_learnt = lambda value: limit.adopt(value, time.monotonic())
        return budget

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def downtime(self) -> float:
        """Seconds the store has been unreachable in all, the present outage included."""
        since = self._down_since
        return self._downtime + (time.monotonic() - since if since is not None else 0.0)

    # -- talking to the store -------------------------------------------------------------------

    def new_id(self) -> str:
        return f"{self.id}:{next(self._serial)}"

    async def ask(self, op: Op) -> Any:
        """Send ``op`` with the next batch and wait for its answer (through any outage)."""
        call = _Call(op)
        self._outbox.append(call)
        self._wake.set()
        await call.done.wait()
        if call.error is not None:
            raise call.error
        return call.reply

    def post(self, op: Op) -> None:
        """Send ``op`` with the next batch; nobody waits for its answer."""
        self._outbox.append(op)
        self._wake.set()

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            batch, self._outbox = self._outbox, []
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[_Call | Op]) -> None:
        """One round trip for ``batch``; while the store is away, hold it and retry."""
        delay = RECONNECT_FIRST
        while True:
            ops = [item.op if isinstance(item, _Call) else item for item in batch]
            try:
                replies = await self.store.call(ops)
            except StoreUnavailable as exc:
                self._went_down(str(exc))
                await anyio.sleep(delay)
                delay = min(RECONNECT_MAX, delay * 2)
                # Retry what is safe to run twice (a refund is not: it is dropped), then
                # whatever was asked meanwhile; first of all, hold our slots again, in
                # case the store lost them.
                later, self._outbox = self._outbox, []
                rest = [_retry_form(item) for item in [*batch, *later] if not _renewal(item)]
                batch = [*self._renewals(), *rest]
                continue
            except Exception as exc:  # a bug or a refused script: every caller hears it
                for item in batch:
                    if isinstance(item, _Call):
                        item.error = exc
                        item.done.set()
                raise
            break
        if self._down_since is not None:
            self._came_back()
        for item, reply in zip(batch, replies, strict=True):
            op = item.op if isinstance(item, _Call) else item
            self._learn(op, reply)
            if isinstance(item, _Call):
                item.reply = reply
                item.done.set()

    def _learn(self, op: Op, reply: Any) -> None:
        """Every answer that names a budget's epoch or learnt limit updates it here."""
        name = op[0]
        if name == "admit":
            budget = self._budgets.get(op[1])
            if budget is not None:
                budget._seen(reply.epoch, reply.learnt, reply.learnt_version)
        elif name == "renew":
            budget = self._budgets.get(op[1])
            if budget is not None:
                budget._seen(*reply)
        elif name == "share":
            budget = self._budgets.get(op[1])
            if budget is not None:
                budget.learnt_version = max(budget.learnt_version, int(reply))

    def _went_down(self, reason: str) -> None:
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self.emit(
            Wait(
                WAIT_REASON,
                f"limits backend {self.where} unreachable ({reason}): no request is sent "
                "until it answers again",
            )
        )

    def _came_back(self) -> None:
        since, self._down_since = self._down_since, None
        assert since is not None
        away = time.monotonic() - since
        self._downtime += away
        self.emit(Wait(WAIT_REASON, f"limits backend {self.where} is back after {away:.1f}s", 0.0))

    def _renewals(self) -> list[Op]:
        return [op for budget in self._budgets.values() if (op := budget._renewal()) is not None]

    async def _renew_forever(self) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            for op in self._renewals():
                self.post(op)

    async def _watch_forever(self) -> None:
        """Wake a waiting request when any process gives back a slot it waits for."""
        while True:
            waiting = [b for b in self._budgets.values() if b._waiters]
            if not waiting:
                self._someone_waits = anyio.Event()
                await self._someone_waits.wait()
                continue
            if self.down:  # the flusher is reaching it again; waiters ask again then
                await anyio.sleep(RECONNECT_FIRST)
                continue
            try:
                freed = await self.store.wait_free([b.key for b in waiting], SLOT_POLL)
            except StoreUnavailable:
                await anyio.sleep(RECONNECT_FIRST)
                continue
            if freed:
                for budget in waiting:
                    budget._wake_one()


def _shape(bucket: Any) -> Shape | None:
    """The shape of one of the engine's token buckets (they are sized for a 60 s window)."""
    if bucket is None:
        return None
    burst = getattr(bucket, "burst", None)
    return Shape(burst if burst is not None else bucket.capacity, bucket.rate)


def _renewal(item: _Call | Op) -> bool:
    return not isinstance(item, _Call) and item[0] == "renew"


def _retry_form(item: _Call | Op) -> _Call | Op:
    """What of ``item`` may be sent again after a batch whose fate is unknown."""
    op = item.op if isinstance(item, _Call) else item
    if op[0] == "release" and op[3]:
        return (*op[:3], 0.0, *op[4:])  # the slot, not the refund: never give back twice
    return item


@dataclass(eq=False)
class SharedBudget:
    """One endpoint key's budget, as this process uses it."""

    limits: SharedLimits
    key: str
    rpm: Shape | None
    tpm: Shape | None
    slots: bool
    """Whether it limits concurrency (else admission only reserves rate budget)."""
    epoch: str | None = None
    learnt: float | None = None
    learnt_version: int = 0
    on_learnt: Callable[[float], None] | None = None
    """Called with a concurrency limit another process learnt (the engine adopts it)."""
    _held: set[str] = field(default_factory=set)
    _waiters: deque[anyio.Event] = field(default_factory=deque)

    def _seen(self, epoch: str | None, learnt: float | None, version: int) -> None:
        if epoch is not None:
            self.epoch = epoch
        if version > self.learnt_version and learnt is not None:
            self.learnt_version = version
            self.learnt = learnt
            if self.on_learnt is not None:
                self.on_learnt(learnt)

    def _renewal(self) -> Op | None:
        if not self._held:
            return None
        return ("renew", self.key, self.limits.lease, self.limits.new_id(), *sorted(self._held))

    def _wake_one(self) -> None:
        while self._waiters:
            event = self._waiters.popleft()
            if not event.is_set():
                event.set()
                return

    async def admit(self, tokens: float, slots: int | None, deadline: float) -> Admission:
        """A slot (when ``slots``, the limit in force, is given) and this request's budget.

        Waits while every slot is held (until ``deadline``: then
        :class:`~asyncsynth.engine.errors.DeadlineExceeded`) and while the store is
        away (for as long as it takes: that wait is the whole job's).
        """
        limits = self.limits
        held_under = slots if self.slots and slots else 0  # the concurrency limit, if one holds
        member = limits.new_id() if held_under else None
        rpm, tpm = self.rpm, self.tpm
        op = (
            "admit", self.key, member or "", held_under, limits.lease,
            1.0 if rpm else 0.0, rpm.burst if rpm else 0.0, rpm.rate if rpm else 0.0,
            float(tokens) if tpm else 0.0, tpm.burst if tpm else 0.0, tpm.rate if tpm else 0.0,
            limits.new_id(),
        )  # fmt: skip
        away = limits.downtime()
        while True:
            reply: Admitted = await limits.ask(op)
            held = limits.downtime() - away  # waiting for the store, not for a limit
            if reply.granted:
                if member is not None:
                    self._held.add(member)
                return Admission(
                    member, tokens, reply.wait, (reply.r_mark, reply.t_mark), reply.in_use,
                    held_under, reply.epoch, held,
                )  # fmt: skip
            remaining = deadline + held - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"every concurrency slot of the shared budget stayed held "
                    f"({reply.in_use} of {slots}) until the deadline"
                )
            event = anyio.Event()
            self._waiters.append(event)
            limits._someone_waits.set()
            with anyio.move_on_after(min(remaining, SLOT_POLL, max(reply.retry_in, 0.001))):
                await event.wait()
            if not event.is_set():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(event)

    async def confirm(self, admission: Admission, deadline: float) -> Admission:
        """After waiting ``admission.wait``: the same admission if the store still holds it,
        else a new one (the store restarted empty, forgetting every reservation)."""
        epoch = await self.limits.ask(("epoch", self.key))
        if epoch == admission.epoch:
            return admission
        admission.used = None
        self.release(admission)
        again = await self.admit(admission.tokens, admission.slots or None, deadline)
        again.held += admission.held
        return again

    def release(self, admission: Admission) -> None:
        """Give the slot back, and the tokens not used (``admission.used`` unset: the
        estimate stands)."""
        member = admission.member
        used = admission.used
        refund = admission.tokens - used if used and self.tpm else 0.0
        if member is None and not refund:
            return
        if member is not None:
            self._held.discard(member)
        tpm = self.tpm
        self.limits.post(
            ("release", self.key, member or "", refund, tpm.burst if tpm else 0.0,
             tpm.rate if tpm else 0.0)
        )  # fmt: skip
        if member is not None:
            self._wake_one()

    def share(self, limit: float) -> None:
        """Tell every process the concurrency limit this one learnt."""
        if self.learnt is not None and math.isclose(limit, self.learnt):
            return
        self.learnt = limit
        self.limits.post(("share", self.key, float(limit), self.limits.new_id()))

    def observe_headers(self, seen: RateHeaders, marks: tuple[float, float] | None) -> None:
        """What a provider's ``x-ratelimit-*`` headers said, for every process: a limit
        below the configured one becomes the budget's shape (sized as the engine's own
        buckets are); what remains caps its level. ``marks``: the admission's."""
        for kind, limit, remaining, mark in (
            ("r", seen.limit_requests, seen.remaining_requests, marks[0] if marks else None),
            ("t", seen.limit_tokens, seen.remaining_tokens, marks[1] if marks else None),
        ):
            base = self.rpm if kind == "r" else self.tpm
            shape = None
            if limit:
                lower = _shape(TokenBucket(limit))
                if base is None or (lower is not None and lower.rate < base.rate):
                    shape = lower
            if shape is not None or remaining is not None:
                self.observe(kind, shape, remaining, mark)

    def observe(
        self,
        kind: str,
        shape: Shape | None,
        remaining: float | None,
        mark: float | None,
    ) -> None:
        """Share what a provider's ``x-ratelimit-*`` headers said of the ``kind`` budget
        (``"r"`` or ``"t"``): a lower limit's ``shape``, what ``remaining`` counted before
        the reservations after ``mark``."""
        base = self.rpm if kind == "r" else self.tpm
        if base is None and shape is None:
            return
        base = base or shape
        assert base is not None
        self.limits.post(
            ("observe", self.key, kind, shape.burst if shape else 0.0,
             shape.rate if shape else 0.0,
             -1.0 if remaining is None or mark is None else float(remaining),
             float(mark or 0.0), base.burst, base.rate, self.limits.new_id())
        )  # fmt: skip
