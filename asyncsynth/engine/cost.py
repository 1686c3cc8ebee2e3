"""Prices, what answers cost, and hard budgets (``max_cost``, ``max_tokens_total``).

A price is per endpoint, in USD per million tokens::

    price = { input = 0.15, output = 0.60, cached_input = 0.075, batch = 0.5 }

``cached_input`` is what prompt tokens the provider served from its prompt cache cost
(default: ``input``, no discount assumed); ``batch`` multiplies the cost of answers made
through the Batch API (default 1: no discount assumed). An endpoint without a price
costs "unknown": never a guess.

The :class:`Ledger` keeps what a job spent, per endpoint and in all, and what requests
in flight hold. With a cap, a request reserves its worst case (its prompt, counted
generously, plus its ``max_tokens``, at its endpoint's price) before it is sent; a
request that would take spent + held past a cap waits while anything is in flight (the
held worst cases usually come back far smaller) and, when nothing is, the cap is
*reached*: :class:`BudgetExceeded` is raised for it and for every later request, while
what is in flight finishes and is kept.

A journaled job's caps cover the whole job: the journal remembers what its answers cost
(:meth:`~asyncsynth.engine.journal.Journal.spent`), so a re-run with a higher cap goes on
from where the last one stopped, and answers taken from the journal cost nothing again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from .errors import BudgetExceeded, ConfigError
from .events import CostUpdate, Listener, Wait, ignore

if TYPE_CHECKING:
    from .engine import Result

COST_UPDATE_SECONDS = 1.0
"""Spending is told to the listener (``CostUpdate``) at most this often."""
PROMPT_MARGIN = 1.25
"""A reservation counts prompt tokens at this many times the engine's estimate..."""
MESSAGE_OVERHEAD = 4
"""...plus this many tokens a message (role and separators, as chat templates add)."""

_PRICE_KEYS = ("input", "output", "cached_input", "batch")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens; ``batch`` multiplies the cost of Batch API answers."""

    input: float
    """USD per million prompt tokens."""
    output: float
    """USD per million completion tokens."""
    cached_input: float | None = None
    """USD per million prompt tokens the provider served from its prompt cache
    (``usage.prompt_tokens_details.cached_tokens``); unset: priced as ``input``."""
    batch: float = 1.0
    """The multiplier for Batch API answers (OpenAI: 0.5); unset: no discount assumed."""

    def cost(self, usage: Mapping[str, int], *, batch: bool = False) -> float:
        """What an answer with this ``usage`` cost, in USD."""
        prompt = usage.get("prompt_tokens", 0)
        cached = min(usage.get("cached_tokens", 0), prompt)
        cached_price = self.input if self.cached_input is None else self.cached_input
        usd = (
            (prompt - cached) * self.input
            + cached * cached_price
            + usage.get("completion_tokens", 0) * self.output
        ) / 1e6
        return usd * self.batch if batch else usd

    def worst(self, prompt_tokens: float, completion_tokens: float, *, batch: bool) -> float:
        """The most a request can cost: every prompt token uncached, every completion token."""
        usd = (prompt_tokens * self.input + completion_tokens * self.output) / 1e6
        return usd * self.batch if batch else usd

    def to_dict(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in _PRICE_KEYS}


def check_price(value: Any, where: str) -> Price:
    """A ``price`` table of a config (USD per million tokens)."""
    if isinstance(value, Price):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table like {{ input = 0.15, output = 0.6 }}")
    for key in value:
        if key not in _PRICE_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key (known keys: {', '.join(_PRICE_KEYS)})")
    for key in ("input", "output"):
        if key not in value:
            raise ConfigError(f"{where}.{key}: missing required key (USD per million tokens)")
    numbers: dict[str, float] = {}
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ConfigError(f"{where}.{key}: expected a number, got {number!r}")
        if not math.isfinite(number) or number < 0 or (key == "batch" and number == 0):
            bound = "> 0" if key == "batch" else ">= 0"
            raise ConfigError(f"{where}.{key}: must be {bound}, got {number!r}")
        numbers[key] = float(number)
    return Price(**numbers)


def parse_price(text: str, where: str = "--price") -> Price:
    """``input=0.15,output=0.6[,cached_input=0.075][,batch=0.5]`` (a command-line flag)."""
    table: dict[str, float] = {}
    for part in text.split(","):
        name, sep, number = part.partition("=")
        try:
            if not sep:
                raise ValueError
            table[name.strip()] = float(number)
        except ValueError:
            raise ConfigError(
                f"{where}: expected input=USD,output=USD[,cached_input=USD][,batch=FACTOR] "
                f"(per million tokens), got {text!r}"
            ) from None
    return check_price(table, where)


def usd(value: float | None) -> str:
    """``$1.23``, ``$0.50``, ``$0.045``, ``$0.0042``; ``unknown`` for None."""
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    if abs(value) < 0.01:
        return f"${value:.2g}"
    text = f"{value:.3g}"  # cents and below: three significant digits, never fewer than cents
    return f"${text}{'0' * max(0, 4 - len(text))}"


def made_cost(results: Iterable[Result]) -> float | None:
    """What ``results``' answers cost when they were made: a journal answer at its first
    cost, a failed request at nothing; None when one of them has no price."""
    total = 0.0
    for r in results:
        if r.ok:
            cost = r.first_cost if r.cached else r.cost
            if cost is None:
                return None
            total += cost
    return total


def sum_usd(values: Iterable[float | None]) -> float | None:
    """The sum of USD figures, unknown (None) when one of them is."""
    total = 0.0
    for value in values:
        if value is None:
            return None
        total += value
    return total


def book_cost(book: dict[str, float | None], key: str, results: Iterable[Result]) -> None:
    """Add what ``results`` cost when made to ``book[key]`` (a stage's, a model's)."""
    book[key] = sum_usd((book.get(key, 0.0), made_cost(results)))


@dataclass(slots=True)
class Spend:
    """What one scope (the job, or one endpoint) spent and holds in flight."""

    cost: float = 0.0
    """USD of the answers made in this run whose price is known."""
    tokens: int = 0
    """Prompt plus completion tokens of the answers made in this run."""
    batch_cost: float = 0.0
    """The part of ``cost`` answered through the Batch API."""
    unknown: int = 0
    """Answers made in this run at an unknown price."""
    answers: int = 0
    before_cost: float = 0.0
    """USD spent on this job by earlier runs (from the journal)."""
    before_tokens: int = 0
    held_cost: float = 0.0
    held_tokens: float = 0.0
    max_cost: float | None = None
    max_tokens: int | None = None

    def total_cost(self) -> float:
        return self.before_cost + self.cost

    def total_tokens(self) -> int:
        return self.before_tokens + self.tokens


@dataclass(slots=True)
class Hold:
    """A reservation of a request's worst case, given back when it settles."""

    endpoint: str
    cost: float
    tokens: float


@dataclass(slots=True)
class Cached:
    answers: int = 0
    first_cost: float = 0.0
    """What the answers taken from the journal cost when they were first made (known part)."""
    unknown: int = 0


@dataclass
class Ledger:
    """Spending and caps of one engine: the job's and each endpoint's."""

    prices: dict[str, Price | None]
    job: Spend = field(default_factory=Spend)
    endpoints: dict[str, Spend] = field(default_factory=dict)
    cached: Cached = field(default_factory=Cached)
    reached: BudgetExceeded | None = None
    holds: int = 0
    waiting: int = 0
    """Requests waiting for room under a cap (what the display shows as a budget wait)."""
    emit: Listener = ignore
    """Hears ``CostUpdate`` (spending, now and then) and ``Wait`` (a budget wait begins, ends)."""
    _changed: anyio.Event | None = None
    _told: float = 0.0
    _progress: tuple[int, int | None] = (0, None)

    @classmethod
    def for_config(cls, config: Any) -> Ledger:
        """The ledger of a :class:`~asyncsynth.config.Config`: its prices and caps."""
        eps = config.endpoints
        ledger = cls(prices={name: ep.price for name, ep in eps.items()})
        ledger.job.max_cost = config.engine.max_cost
        ledger.job.max_tokens = config.engine.max_tokens_total
        for name, ep in eps.items():
            ledger.endpoints[name] = Spend(max_cost=ep.max_cost, max_tokens=ep.max_tokens_total)
        return ledger

    def check(self, endpoint: str) -> None:
        """Refuse a cost cap over an endpoint without a price: it could not be enforced."""
        scope = self.endpoints.get(endpoint)
        capped = self.job.max_cost is not None or (scope is not None and scope.max_cost is not None)
        if capped and self.prices.get(endpoint) is None:
            raise ConfigError(
                f"endpoints.{endpoint}: a max_cost applies to it but it has no price, so the "
                "cap could not be enforced: give it price = { input = ..., output = ... }"
            )

    @property
    def capped(self) -> bool:
        """Whether any cap is set (reservations are skipped otherwise)."""
        scopes = (self.job, *self.endpoints.values())
        return any(s.max_cost is not None or s.max_tokens is not None for s in scopes)

    def resume(self, spent: Mapping[str, tuple[float, int]]) -> None:
        """Count what earlier runs of this job spent, per endpoint (from the journal)."""
        for name, (cost, tokens) in spent.items():
            self.job.before_cost += cost
            self.job.before_tokens += tokens
            if (scope := self.endpoints.get(name)) is not None:
                scope.before_cost += cost
                scope.before_tokens += tokens

    # -- what answers cost ---------------------------------------------------------------------

    def charge(
        self, endpoint: str, usage: Mapping[str, int], *, batch: bool = False
    ) -> float | None:
        """Record a fresh answer; its cost in USD, or None when the price is unknown."""
        price = self.prices.get(endpoint)
        cost = price.cost(usage, batch=batch) if price is not None else None
        tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        for scope in (self.job, self.endpoints.setdefault(endpoint, Spend())):
            scope.answers += 1
            scope.tokens += tokens
            if cost is None:
                scope.unknown += 1
            else:
                scope.cost += cost
                if batch:
                    scope.batch_cost += cost
        return cost

    def from_journal(self, first_cost: float | None) -> None:
        """An answer taken from the journal: it costs nothing now."""
        self.cached.answers += 1
        if first_cost is None:
            self.cached.unknown += 1
        else:
            self.cached.first_cost += first_cost

    # -- caps -------------------------------------------------------------------------------------

    def _scopes(self, endpoint: str) -> tuple[tuple[str, Spend], ...]:
        scope = self.endpoints.setdefault(endpoint, Spend())
        return (("", self.job), (endpoint, scope))

    def _refusal(self, endpoint: str, cost: float, tokens: float) -> BudgetExceeded | None:
        for name, scope in self._scopes(endpoint):
            key = f"endpoints.{name}." if name else "[engine] "
            cap = f"endpoints.{name}." if name else ""
            if scope.max_cost is not None:
                total = scope.total_cost()
                if total + scope.held_cost + cost > scope.max_cost:
                    flag = "--max-cost" if not name else "the config"
                    return BudgetExceeded(
                        f"{cap}max_cost", scope.max_cost, total, flag=flag, key=f"{key}max_cost"
                    )
            if scope.max_tokens is not None:
                total_tokens = scope.total_tokens()
                if total_tokens + scope.held_tokens + tokens > scope.max_tokens:
                    flag = "--max-tokens-total" if not name else "the config"
                    return BudgetExceeded(
                        f"{cap}max_tokens_total",
                        scope.max_tokens,
                        total_tokens,
                        flag=flag,
                        key=f"{key}max_tokens_total",
                    )
        return None

    def worst_case(
        self, endpoint: str, prompt_tokens: float, messages: int, max_tokens: int, *, batch: bool
    ) -> tuple[float, float]:
        """(USD, tokens) a request may cost at most: the prompt counted generously."""
        prompt = math.ceil(prompt_tokens * PROMPT_MARGIN) + MESSAGE_OVERHEAD * messages
        price = self.prices.get(endpoint)
        cost = price.worst(prompt, max_tokens, batch=batch) if price is not None else 0.0
        return cost, float(prompt + max_tokens)

    def try_reserve(self, endpoint: str, cost: float, tokens: float) -> Hold | BudgetExceeded:
        """Hold ``cost`` and ``tokens`` if every cap allows them, else say which refuses."""
        if self.reached is not None:
            return self.reached
        refusal = self._refusal(endpoint, cost, tokens)
        if refusal is not None:
            return refusal
        return self.hold(endpoint, cost, tokens)

    async def reserve(self, endpoint: str, cost: float, tokens: float) -> Hold:
        """Hold a request's worst case; wait while holds in flight may free room.

        Raises :class:`BudgetExceeded` once it cannot fit with nothing in flight (and
        for every request after that).
        """
        while True:
            outcome = self.try_reserve(endpoint, cost, tokens)
            if isinstance(outcome, Hold):
                return outcome
            if self.reached is None and self.holds > 0:
                await self.wait_for_room(outcome)
                continue
            self.stop(outcome)
            raise outcome

    def hold(self, endpoint: str, cost: float, tokens: float) -> Hold:
        """Hold a worst case whatever the caps say (a request already paid for)."""
        for _, scope in self._scopes(endpoint):
            scope.held_cost += cost
            scope.held_tokens += tokens
        self.holds += 1
        return Hold(endpoint, cost, tokens)

    async def changed(self) -> None:
        """Wait until a hold is given back or the cap is declared reached."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    async def wait_for_room(self, refusal: BudgetExceeded) -> None:
        """Wait for the next change, counted (and told) as a budget wait."""
        self.wait_begins(refusal)
        try:
            await self.changed()
        finally:
            self.wait_ends()

    def wait_begins(self, refusal: BudgetExceeded) -> None:
        """A request waits for room under a cap: the first one tells the listener."""
        self.waiting += 1
        if self.waiting == 1:
            held = f", {usd(self.job.held_cost)} held in flight" if self.job.held_cost else ""
            self.emit(
                Wait(
                    "budget",
                    f"budget: requests wait for room under {refusal.cap} "
                    f"({usd(refusal.spent)} spent{held})",
                )
            )

    def wait_ends(self) -> None:
        self.waiting -= 1
        if not self.waiting:
            self.emit(Wait("budget", "", seconds=0))

    def report(self, done: int, total: int | None, *, force: bool = False) -> None:
        """Tell the listener what the job has spent (at most once a second unless ``force``)."""
        self._progress = (done, total)
        now = time.monotonic()
        if not force and now < self._told + COST_UPDATE_SECONDS:
            return
        if not any(p is not None for p in self.prices.values()):
            return
        self._told = now
        job = self.job
        known = job.answers - job.unknown
        projected = None
        if total is not None and known and not job.unknown:
            projected = job.total_cost() + max(0, total - done) * job.cost / known
        self.emit(CostUpdate(job.total_cost(), job.max_cost, projected=projected))

    def stop(self, refusal: BudgetExceeded) -> None:
        """Declare the cap reached (no request fits and nothing in flight can free room)."""
        if self.reached is None:
            self.reached = refusal
            self._wake()
            self.report(*self._progress, force=True)

    def release(self, hold: Hold) -> None:
        """Give a hold back (the request was answered and charged, or it failed)."""
        for _, scope in self._scopes(hold.endpoint):
            scope.held_cost -= hold.cost
            scope.held_tokens -= hold.tokens
        self.holds -= 1
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # -- reports ----------------------------------------------------------------------------------

    def summary(self, done: int, total: int | None) -> dict[str, Any]:
        """Spent (known part, unknown count), the projection to ``total``, the cached part.

        ``spent_usd`` is None when no answer had a known price (or none was priced at all);
        the projection adds, for the requests not done yet, the mean cost of those made.
        """
        job = self.job
        known = job.answers - job.unknown
        priced = known > 0 or (not job.answers and any(p is not None for p in self.prices.values()))
        projected = None
        if total is not None and known and not job.unknown:
            projected = job.cost + max(0, total - done) * job.cost / known
        return {
            "spent_usd": round(job.cost, 6) if priced else None,
            "batch_usd": round(job.batch_cost, 6),
            "unknown_answers": job.unknown,
            "tokens": job.tokens,
            "before_usd": round(job.before_cost, 6),
            "projected_usd": None if projected is None else round(projected, 6),
            "cached": {
                "answers": self.cached.answers,
                "first_usd": round(self.cached.first_cost, 6),
                "unknown": self.cached.unknown,
            },
            "caps": {"max_cost": job.max_cost, "max_tokens_total": job.max_tokens},
        }

    def endpoint_cost(self, endpoint: str) -> float | None:
        scope = self.endpoints.get(endpoint)
        if scope is None or not scope.answers:
            return 0.0 if self.prices.get(endpoint) is not None else None
        return None if scope.unknown else round(scope.cost, 6)
