"""What the engine tells its listener: typed events, emitted where its state changes.

    def show(event: Event) -> None:
        print(event.kind, event.to_dict())

    async with Engine(config, on_event=show) as engine:
        ...

A listener is any ``Callable[[Event], None]``. It is called synchronously on the event
loop, so it must return quickly; an exception it raises is a bug and propagates. Events
are emitted only where state changes (an endpoint goes down or comes back, a retry is
scheduled, a 429 pauses an endpoint, a role starts), never once per successful request:
a listener costs the happy path nothing. Live figures (requests in flight, limits,
latencies) are read from the engine itself: :class:`EngineStarted` carries it.

Events are frozen dataclasses; :meth:`Event.to_dict` gives their JSON-ready fields (the
``kind`` plus every field but the engine reference). Other parts of asyncsynth emit
events of their own through the same listener: :class:`Wait` for a wait the engine did
not choose per request (a spending cap reached, a batch being polled) and
:class:`CostUpdate` for money spent so far.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .engine import Engine

__all__ = [
    "CostUpdate",
    "EndpointDown",
    "EndpointTakenOut",
    "EndpointUp",
    "EngineStarted",
    "Event",
    "Listener",
    "ProbeFailed",
    "RateLimitPause",
    "Retry",
    "RoleDown",
    "RoleStarted",
    "Unreachable",
    "Wait",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event; ``kind`` is its snake_case name (``endpoint_down``...)."""

    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        """``{"event": kind, **fields}``, ready for JSON (references to live objects left out)."""
        data: dict[str, Any] = {"event": self.kind}
        for f in dataclasses.fields(self):
            if f.metadata.get("live"):
                continue
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data


Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The listener of an engine nobody listens to."""


# -- the engine's own --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineStarted(Event):
    """The engine is open. ``engine`` is there to read live figures from (totals, endpoints)."""

    kind: ClassVar[str] = "engine_started"

    engine: Engine = field(repr=False, compare=False, metadata={"live": True})
    journal: str | None
    """The journal's path, if the engine keeps one."""
    journal_entries: int
    """Answers the journal held when the engine opened (0 without a journal)."""


@dataclass(frozen=True, slots=True)
class RoleStarted(Event):
    """A role's endpoints were started (on its first use)."""

    kind: ClassVar[str] = "role_started"

    role: str
    endpoints: tuple[dict[str, Any], ...]
    """Per endpoint: name, url, model, kind, transport and limits (never the key)."""
    startup_grace: float
    """Seconds the role may go without any endpoint answering before the job stops."""


@dataclass(frozen=True, slots=True)
class EndpointDown(Event):
    """An endpoint was taken out of service until a probe (``GET /models``) answers.

    ``cause``: ``unreachable`` (the connection was refused, DNS or TLS failed),
    ``first_probe`` (it did not answer its first probe), or ``failing`` (it failed
    ``failures`` attempts in a row: a cool-down).
    """

    kind: ClassVar[str] = "endpoint_down"

    endpoint: str
    url: str | None
    cause: str
    error_type: str
    error: str
    failures: int
    next_probe_in: float


@dataclass(frozen=True, slots=True)
class ProbeFailed(Event):
    """A down endpoint did not answer its probe; the next one is ``next_probe_in`` s away."""

    kind: ClassVar[str] = "probe_failed"

    endpoint: str
    url: str | None
    error_type: str
    error: str
    next_probe_in: float


@dataclass(frozen=True, slots=True)
class EndpointUp(Event):
    """A down endpoint answered its probe and takes work again."""

    kind: ClassVar[str] = "endpoint_up"

    endpoint: str
    down_for: float


@dataclass(frozen=True, slots=True)
class EndpointTakenOut(Event):
    """An endpoint was taken out for the rest of the run: its answers say no request to it
    can succeed (a refused key, an unknown model or URL). ``message`` says why and what to
    check."""

    kind: ClassVar[str] = "endpoint_taken_out"

    endpoint: str
    status: int | None
    message: str


@dataclass(frozen=True, slots=True)
class RoleDown(Event):
    """Every endpoint of ``role`` is down: its requests wait for the first to come back."""

    kind: ClassVar[str] = "role_down"

    role: str
    next_probe_in: float


@dataclass(frozen=True, slots=True)
class RateLimitPause(Event):
    """A 429 holds every request to ``endpoint`` for ``seconds``.

    ``server_asked`` is the wait the server asked for (``Retry-After`` and the like),
    ``None`` when it named none and the backoff chose ``seconds``.
    """

    kind: ClassVar[str] = "rate_limit_pause"

    endpoint: str
    seconds: float
    server_asked: float | None
    error: str


@dataclass(frozen=True, slots=True)
class Retry(Event):
    """Attempt ``attempt`` of a request failed; the next one starts in ``wait`` seconds."""

    kind: ClassVar[str] = "retry"

    endpoint: str
    request_id: str | None
    attempt: int
    error_type: str
    error: str
    status: int | None
    wait: float


@dataclass(frozen=True, slots=True)
class Unreachable(Event):
    """No endpoint of ``role`` answered within the start-up grace: the job stops."""

    kind: ClassVar[str] = "unreachable"

    role: str
    grace: float
    message: str


# -- emitted by others through the same listener ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wait(Event):
    """A wait chosen for the whole job: ``reason`` is e.g. ``budget`` or ``batch``.

    ``message`` is shown as it is, once as a log line and then in the display while the
    wait lasts: ``seconds`` when known, else until the next ``Wait`` of the same reason
    (one with ``seconds=0`` ends it).
    """

    kind: ClassVar[str] = "wait"

    reason: str
    message: str
    seconds: float | None = None
    endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class CostUpdate(Event):
    """Money spent so far (in ``currency``), and the cap when one is set."""

    kind: ClassVar[str] = "cost_update"

    spent: float
    budget: float | None = None
    currency: str = "USD"
    projected: float | None = None
    """What the whole job will have cost at this pace (None until it can be told)."""
