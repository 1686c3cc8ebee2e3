"""The one progress display of every command, its log lines, and the end-of-run summary.

A :class:`Progress` is the listener of the engine's events (:mod:`asyncsynth.engine.events`)
and of a pipeline's, and shows what the job is doing and why it waits:

- at the start, a short block: the command's input and outputs, the journal and how many
  answers it already holds, and each role's endpoints (URL, model, limits, transport);
- on a terminal, a live display drawn with rich: the overall bar, then one line per
  endpoint (state, in flight / limit, req/s, 429s, p50), redrawn four times a second;
- elsewhere (a log file, ``nohup``, cron, CI), plain lines: one for each event worth
  knowing at once (an endpoint down or back, every endpoint of a role down, a 429 pause,
  a wait), and a status line every ``interval`` seconds;
- ``verbose`` adds a line per retry and per failed probe;
- ``log_json`` writes every event, every status line and the summary as JSON lines;
- at the end, the summary as a table.

Drawing reads counters the engine keeps anyway, from its own task: requests pay nothing
for it (``benchmarks/overhead.py`` measures a run with the live display against one
without).
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TextIO

import anyio
import orjson

from .engine.cost import usd
from .engine.events import (
    CostUpdate,
    EndpointDown,
    EndpointTakenOut,
    EndpointUp,
    EngineStarted,
    Event,
    ProbeFailed,
    RateLimitPause,
    Retry,
    RoleDown,
    RoleStarted,
    Wait,
)

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.table import Table

    from .engine import Engine
    from .engine.fleet import EndpointState

DEFAULT_LOG_INTERVAL = 30.0
"""Seconds between two status lines when stderr is not a terminal."""
REFRESH_SECONDS = 0.25
"""Seconds between two redraws of the live display."""
RATE_WINDOW = 10.0
"""Rates (req/s, tokens/s) and the ETA are measured over about this many seconds."""

Describe = Callable[[Any], "tuple[str, bool] | None"]
"""Turns a pipeline's event into ``(text, transient)``: a transient text is the pipeline's
current stage (shown in the live display and the status lines), any other one a log line."""


# -- formatting ---------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _seconds(value: float) -> str:
    """A wait, the way people say it: ``0.6s``, ``20s``, ``2m05s``."""
    if value < 10:
        return f"{value:.1f}s"
    if value < 60:
        return f"{value:.0f}s"
    m, s = divmod(int(value), 60)
    return f"{m}m{s:02d}s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}ms"


def failure_reason(error_type: str, message: str) -> str:
    """A short reason for a transport failure: ``connection refused``, ``DNS lookup failed``..."""
    text = message.lower()
    if error_type == "ConnectError":
        if "refused" in text or "errno 111" in text:
            return "connection refused"
        if "reset" in text or "errno 104" in text:
            return "connection reset"
        if any(s in text for s in ("name or service", "nodename", "name resolution", "getaddr")):
            return "DNS lookup failed"
        if "ssl" in text or "certificate" in text or "tls" in text:
            return "TLS failed"
        return message
    if error_type == "RequestTimeout":
        return message  # "no answer within 10s"
    if error_type == "ConnectionDropped":
        return "connection dropped"
    return message


def _limits(ep: Mapping[str, Any]) -> str:
    cap, adaptive = ep["max_concurrency"], ep["adaptive"]
    if cap is None:
        parts = ["concurrency learnt" if adaptive else "concurrency unbounded"]
    else:
        parts = [f"concurrency {'<=' if adaptive else ''}{cap}"]
    if ep["rpm"]:
        parts.append(f"{ep['rpm']:,g} rpm")
    if ep["tpm"]:
        parts.append(f"{ep['tpm']:,g} tpm")
    parts.append(f"timeout {ep['timeout']:g}s")
    return ", ".join(parts)


def describe_event(event: Event) -> tuple[str, bool] | None:
    """The log line of an engine event and whether it shows only with ``verbose``."""
    if isinstance(event, EndpointDown):
        reason = failure_reason(event.error_type, event.error)
        again = f"probing again in {_seconds(event.next_probe_in)}"
        if event.cause == "failing":
            return (
                f"endpoint {event.endpoint!r}: {event.failures} failures in a row ({reason}); "
                f"cooling down, {again}",
                False,
            )
        first = "first probe: " if event.cause == "first_probe" else ""
        return f"endpoint {event.endpoint!r}: {first}{reason} at {event.url}; {again}", False
    if isinstance(event, ProbeFailed):
        reason = failure_reason(event.error_type, event.error)
        return (
            f"endpoint {event.endpoint!r}: still down ({reason}); "
            f"next probe in {_seconds(event.next_probe_in)}",
            True,
        )
    if isinstance(event, EndpointTakenOut):
        return f"{event.message}; taken out for the rest of the run", False
    if isinstance(event, EndpointUp):
        return f"endpoint {event.endpoint!r} is back (down {_seconds(event.down_for)})", False
    if isinstance(event, RoleDown):
        return (
            f"role {event.role!r}: every endpoint is down; its requests wait, "
            f"next probe in {_seconds(event.next_probe_in)}",
            False,
        )
    if isinstance(event, RateLimitPause):
        asked = event.server_asked
        why = f"server asks {_seconds(asked)}" if asked is not None else "backing off"
        return (
            f"endpoint {event.endpoint!r}: rate limited, {why}; "
            f"every request to it waits {_seconds(event.seconds)}",
            False,
        )
    if isinstance(event, Retry):
        what = f"request {event.request_id}" if event.request_id else "a request"
        return (
            f"retry: {what} on {event.endpoint!r}, attempt {event.attempt} failed "
            f"({event.error}); next attempt in {_seconds(event.wait)}",
            True,
        )
    if isinstance(event, Wait):
        return event.message, False
    return None  # the start block, costs and the stop (the command reports that) show elsewhere


# -- the display --------------------------------------------------------------------------------


class Progress:
    """What every command shows while it runs; the listener of its engine and pipeline.

    Use it as a context manager (it closes the JSON log) and run :meth:`run` in a task
    group beside the job, cancelling it when the job ends; then call :meth:`finish`::

        with Progress(title="run") as progress:
            async with Engine(config, on_event=progress.on_event) as engine:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(progress.run)
                    ...  # the job
                    tg.cancel_scope.cancel()
            progress.finish(summary(engine))

    ``live`` is decided by whether ``stream`` is a terminal unless given; ``quiet``
    shows nothing (the JSON log is still written).
    """

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        live: bool | None = None,
        quiet: bool = False,
        verbose: bool = False,
        interval: float = DEFAULT_LOG_INTERVAL,
        log_json: str | os.PathLike[str] | None = None,
        title: str = "run",
        describe: Describe | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"the log interval must be > 0 seconds, got {interval!r}")
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = not quiet and (self.stream.isatty() if live is None else live)
        self.verbose = verbose
        self.interval = interval
        self.title = title
        self.describe = describe
        self.engine: Engine | None = None
        self.stage: str | None = None
        """The pipeline's current stage (its latest transient line)."""
        self.cost: CostUpdate | None = None
        self._roles: dict[str, tuple[str, ...]] = {}
        self._waits: dict[str, tuple[Wait, float]] = {}
        self._samples: deque[tuple[float, int, int, dict[str, int]]] = deque()
        self._started = time.monotonic()
        self._live: Live | None = None
        self._json: io.BufferedWriter | None = None
        if log_json is not None:
            path = Path(log_json)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._json = path.open("wb")

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop drawing and close the JSON log."""
        self._stop_live()
        if self._json is not None:
            self._json.close()
            self._json = None

    async def run(self) -> None:
        """Draw until cancelled: the live display, or a status line every ``interval`` s."""
        if self.quiet and self._json is None:
            return
        tick = min(REFRESH_SECONDS, self.interval) if self.live else self.interval
        next_status = time.monotonic() + self.interval
        if self.live:
            self._start_live()
        try:
            while True:
                await anyio.sleep(tick)
                if self._live is not None:
                    self._live.update(self._render(self.status()), refresh=True)
                if time.monotonic() >= next_status - 1e-3:
                    next_status += self.interval
                    self._status_line()
        finally:
            self._stop_live()

    def finish(self, stats: Mapping[str, Any]) -> None:
        """The job is over: the summary table (unless quiet) and the JSON summary."""
        if self._json is not None:
            self._write_json(self.status())
            self._write_json({"event": "summary", **stats})
        if not self.quiet:
            self._console().print(summary_table(stats))
            self.stream.write(summary_sentence(stats) + "\n")
            self.stream.flush()

    def header(self, text: str, *details: tuple[str, str]) -> None:
        """The first lines of the start block: the command, then ``(label, value)`` lines."""
        if self._json is not None:
            self._write_json({"event": "start", "title": text, **dict(details)})
        self._block(text, *(f"  {label:<8} {value}" for label, value in details))

    # -- events ----------------------------------------------------------------------------------

    def on_event(self, event: Any) -> None:
        """The listener: give it to ``Engine(on_event=...)`` and to a pipeline's ``on_event``."""
        if not isinstance(event, Event):
            self._pipeline_event(event)
            return
        if self._json is not None:
            self._write_json(event.to_dict())
        if isinstance(event, EngineStarted):
            self.engine = event.engine
            self._samples.clear()
            self._samples.append((time.monotonic(), 0, 0, {}))
            if event.journal is not None:
                held = event.journal_entries
                state = f"{held:,} answers kept, resuming" if held else "empty, a fresh start"
                self._block(f"  {'journal':<8} {event.journal} ({state})")
        elif isinstance(event, RoleStarted):
            self._roles[event.role] = tuple(ep["name"] for ep in event.endpoints)
            head = f"  {'role':<8} {event.role}: "
            self._block(
                *(
                    f"{head if i == 0 else ' ' * len(head)}{ep['name']}  {ep['url']}  "
                    f"model {ep['model']}  {_limits(ep)}  {ep['transport']}"
                    for i, ep in enumerate(event.endpoints)
                )
            )
        elif isinstance(event, CostUpdate):
            self.cost = event
        elif isinstance(event, Wait):
            self._waits[event.reason] = (event, time.monotonic())
        line = describe_event(event)
        if line is not None and line[0] and (self.verbose or not line[1]):
            self._say(line[0])

    def _pipeline_event(self, event: Any) -> None:
        """A pipeline's event: a step that starts becomes the stage, ``describe`` says more."""
        if self._json is not None:
            data = event.to_dict() if hasattr(event, "to_dict") else _plain(event)
            self._write_json({"event": "pipeline", **data})
        if getattr(event, "kind", None) == "start" and getattr(event, "step", None):
            self.stage = event.step
        line = self.describe(event) if self.describe is not None else None
        if line is None:
            return
        text, transient = line
        if not text:
            return
        if transient:
            self.stage = text.strip()
        else:
            self._say(text)

    # -- figures ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The figures shown now (a JSON status line holds exactly these)."""
        now = time.monotonic()
        data: dict[str, Any] = {"event": "status", "elapsed_s": round(now - self._started, 3)}
        if self.stage is not None:
            data["stage"] = self.stage
        engine = self.engine
        if engine is None:
            return data
        totals = engine.totals
        endpoints = list(engine.endpoints.values())
        counts = {ep.name: ep.stats.requests for ep in endpoints}
        samples = self._samples
        samples.append((now, totals.done, totals.tokens_in + totals.tokens_out, counts))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        then, done0, tokens0, counts0 = samples[0]
        span = now - then
        rate = (totals.done - done0) / span if span > 0 else 0.0
        remaining = (totals.total - totals.done) if totals.total else None
        data |= {
            "done": totals.done,
            "total": totals.total,
            "failed": totals.failed,
            "retries": totals.retries,
            "cached": totals.cached,
            "in_flight": sum(ep.in_flight for ep in endpoints),
            "req_per_s": round(rate, 2),
            "tok_per_s": round((totals.tokens_in + totals.tokens_out - tokens0) / span, 1)
            if span > 0
            else 0.0,
            "eta_s": round(remaining / rate, 1) if remaining is not None and rate > 0 else None,
        }
        if self.cost is not None:
            cost = self.cost
            data["cost"] = {"spent": cost.spent, "budget": cost.budget, "projected": cost.projected}
        data["endpoints"] = [
            _endpoint_status(ep, now, (counts[ep.name] - counts0.get(ep.name, 0)) / span)
            if span > 0
            else _endpoint_status(ep, now, 0.0)
            for ep in endpoints
        ]
        for ep in data["endpoints"]:  # the roles it serves, when they are not just itself
            roles = [r for r, names in self._roles.items() if ep["endpoint"] in names]
            ep["roles"] = [] if roles == [ep["endpoint"]] else roles
        data["roles_down"] = {
            role: round(max(0.0, min(engine.endpoints[n].next_probe_at for n in names) - now), 1)
            for role, names in self._roles.items()
            if names and all(n in engine.endpoints and engine.endpoints[n].down for n in names)
        }
        data["waits"] = [
            event.message
            for event, since in self._waits.values()
            if event.message and (event.seconds is None or now < since + event.seconds)
        ]
        return data

    # -- output ----------------------------------------------------------------------------------

    def note(self, text: str) -> None:
        """A log line of the command's own (a skipped input line...), stamped with the time."""
        self._say(text)

    def _say(self, text: str) -> None:
        if self.quiet:
            return
        line = f"{time.strftime('%H:%M:%S')} {text}"
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _block(self, *lines: str) -> None:
        """Lines of the start block, as they are (no time stamp)."""
        if self.quiet:
            return
        if self._live is not None:
            for line in lines:
                self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write("".join(line + "\n" for line in lines))
            self.stream.flush()

    def _status_line(self) -> None:
        data = self.status()
        if self._json is not None:
            self._write_json(data)
        if not self.live:
            self._say(status_line(self.title, data))

    def _write_json(self, record: Mapping[str, Any]) -> None:
        assert self._json is not None
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        line = {"time": stamp, "t": round(time.monotonic() - self._started, 3), **record}
        self._json.write(orjson.dumps(line, default=str) + b"\n")
        self._json.flush()

    def _console(self) -> Console:
        from rich.console import Console

        return Console(
            file=self.stream,
            force_terminal=self.live,
            width=None if self.live else 200,
            highlight=False,
            soft_wrap=False,
        )

    def _start_live(self) -> None:
        from rich.live import Live

        self._live = Live(
            console=self._console(),
            # Redrawn from the event loop (never from rich's refresh thread), so the engine's
            # counters are read only between two of its steps.
            auto_refresh=False,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def _stop_live(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()
            if self.engine is not None and not self.quiet:
                self.stream.write(status_line(self.title, self.status()) + "\n")
                self.stream.flush()

    def _render(self, data: Mapping[str, Any]) -> RenderableType:
        """The live frame: the stage, the bar, one line per endpoint, what everyone waits for.

        Lines of :class:`rich.text.Text` with columns aligned here: a rich ``Table`` lays
        itself out again on every frame, at about ten times the cost.
        """
        from rich.console import Group
        from rich.text import Text

        def one_line(text: str = "", style: str = "") -> Text:  # cut, never wrapped
            return Text(text, style=style, no_wrap=True, overflow="ellipsis")

        lines: list[RenderableType] = []
        if self.stage is not None:
            lines.append(one_line(f"{self.title}: {self.stage}", "bold"))
        if "done" not in data:
            return Group(*lines) if lines else one_line(f"{self.title}: starting")
        total, done = data["total"], data["done"]
        head = one_line()
        if total:
            filled = int(BAR_WIDTH * min(1.0, done / total))
            head.append("━" * filled, "bar.finished" if done >= total else "bar.complete")
            head.append("━" * (BAR_WIDTH - filled) + " ", "bar.back")
        head.append(_overall(data))
        lines.append(head)
        if data["endpoints"]:
            header = ("endpoint", "state", "in flight", "req/s", "429s", "p50")
            rows = [
                (
                    _named(ep),
                    ep["state"] + (f": {ep['detail']}" if ep["detail"] else ""),
                    f"{ep['in_flight']}/{ep['limit']}",
                    f"{ep['req_per_s']:,.0f}",
                    f"{ep['rate_limited']:,}",
                    _ms(ep["latency_p50"]),
                )
                for ep in data["endpoints"]
            ]
            widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

            def line(cells: tuple[str, ...]) -> str:
                left = [c.ljust(w) for c, w in zip(cells[:2], widths, strict=False)]
                right = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
                return "  " + "  ".join(left + right)

            lines.append(one_line(line(header), "dim"))
            for ep, row in zip(data["endpoints"], rows, strict=True):
                lines.append(one_line(line(row), _STATE_STYLES.get(ep["state"], "yellow")))
        for role, wait in data["roles_down"].items():
            message = f"  role {role}: every endpoint is down; next probe in {_seconds(wait)}"
            lines.append(one_line(message, "red"))
        for message in data["waits"]:
            lines.append(one_line(f"  {message}", "yellow"))
        return Group(*lines)


_STATE_STYLES = {"ok": "", "down": "red", "out": "red"}
BAR_WIDTH = 28


def _plain(event: Any) -> dict[str, Any]:
    """Best-effort JSON fields of an event that has no ``to_dict``."""
    import dataclasses

    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    return {"value": repr(event)}


def _bucket_waits(bucket: Any, now: float) -> bool:
    """Whether a token bucket holds requests back now (its level is below zero)."""
    return bucket is not None and bucket.level + (now - bucket.updated) * bucket.rate < 0


def _endpoint_status(ep: EndpointState, now: float, rate: float) -> dict[str, Any]:
    state, detail = "ok", ""
    if (out := ep.taken_out) is not None:
        state, detail = "out", f"HTTP {out.status}"
    elif ep.down:
        error = ep.last_error
        reason = failure_reason(error.kind, error.message) if error is not None else "down"
        state, detail = "down", f"{reason}; probe in {_seconds(max(0.0, ep.next_probe_at - now))}"
    elif ep.paused_until > now:
        state, detail = "paused", f"rate limited, {_seconds(ep.paused_until - now)} left"
    elif _bucket_waits(ep.rpm, now):
        state, detail = "throttled", f"{ep.config.rpm:,g} rpm"
    elif _bucket_waits(ep.tpm, now):
        state, detail = "throttled", f"{ep.config.tpm:,g} tpm"
    return {
        "endpoint": ep.name,
        "state": state,
        "detail": detail,
        "in_flight": ep.in_flight,
        "limit": ep.limit.slots,
        "req_per_s": round(rate, 2),
        "requests": ep.stats.requests,
        "rate_limited": ep.stats.rate_limited,
        "latency_p50": ep.stats.latency.percentile(50),
    }


def _overall(data: Mapping[str, Any]) -> str:
    total, done = data["total"], data["done"]
    count = f"{done:,}/{total:,} {100 * min(1.0, done / total):.0f}%" if total else f"{done:,} done"
    parts = [
        count,
        f"{data['req_per_s']:,.0f} req/s",
        f"{data['tok_per_s']:,.0f} tok/s",
        f"{data['failed']:,} failed",
        f"{data['retries']:,} retries",
    ]
    if data["cached"]:
        parts.append(f"{data['cached']:,} cached")
    if cost := data.get("cost"):
        budget = f" of {usd(cost['budget'])}" if cost["budget"] is not None else ""
        projected = f" (-> {usd(p)})" if (p := cost.get("projected")) else ""
        parts.append(f"{usd(cost['spent'])}{budget}{projected}")
    parts.append(f"elapsed {_duration(data['elapsed_s'])}")
    if total:
        parts.append(f"ETA {_duration(data['eta_s'])}")
    return " · ".join(parts)


def _named(ep: Mapping[str, Any]) -> str:
    """An endpoint's name, with the roles it serves when they have names of their own."""
    roles = ep.get("roles")
    return f"{ep['endpoint']} [{', '.join(roles)}]" if roles else ep["endpoint"]


def status_line(title: str, data: Mapping[str, Any]) -> str:
    """One line of plain text with the figures of :meth:`Progress.status`."""
    head = f"{title}: {data['stage']}" if "stage" in data else title
    if "done" not in data:
        return f"{head} · {_duration(data['elapsed_s'])}"
    parts = [f"{head} {_overall(data)}"]
    for ep in data["endpoints"]:
        if ep["state"] == "down":
            parts.append(f"{_named(ep)} down ({ep['detail']})")
            continue
        state = "" if ep["state"] == "ok" else f"{ep['state']} ({ep['detail']}), "
        parts.append(
            f"{_named(ep)} {state}{ep['in_flight']}/{ep['limit']} in flight, "
            f"{ep['req_per_s']:,.0f} req/s, {ep['rate_limited']:,} 429s, "
            f"p50 {_ms(ep['latency_p50'])}"
        )
    for role, wait in data["roles_down"].items():
        parts.append(f"role {role}: every endpoint down, next probe in {_seconds(wait)}")
    parts.extend(data["waits"])
    return " | ".join(parts)


# -- the summary --------------------------------------------------------------------------------


def summary(engine: Engine) -> dict[str, Any]:
    """Per-endpoint and overall figures of the run so far."""
    t = engine.totals
    wall = time.monotonic() - t.started
    ledger = getattr(engine, "ledger", None)  # a Ray job's view has none: no cost figures
    priced = ledger is not None and any(ledger.prices.get(n) is not None for n in engine.endpoints)
    return {
        "wall_s": round(wall, 3),
        "requests": t.done,
        "failed": t.failed,
        "cached": t.cached,
        "retries": t.retries,
        "tokens_in": t.tokens_in,
        "tokens_out": t.tokens_out,
        "req_per_s": round(t.done / wall, 2) if wall > 0 else None,
        "cost": ledger.summary(t.done, t.total) if ledger is not None else None,
        "endpoints": [
            {**ep.stats.to_dict(), "cost": ledger.endpoint_cost(name)}
            if priced and ledger is not None
            else ep.stats.to_dict()
            for name, ep in engine.endpoints.items()
        ],
    }


_SUMMARY_COLUMNS = (
    ("endpoint", "endpoint", str),
    ("requests", "requests", "{:,}".format),
    ("retries", "retries", "{:,}".format),
    ("429s", "rate_limited", "{:,}".format),
    ("failed", "failures", "{:,}".format),
    ("tok in", "tokens_in", "{:,}".format),
    ("tok out", "tokens_out", "{:,}".format),
    ("p50", "latency_p50", _ms),
    ("p95", "latency_p95", _ms),
    ("p99", "latency_p99", _ms),
    ("cost", "cost", usd),
)


def summary_table(data: Mapping[str, Any]) -> Table:
    """The per-endpoint summary as a rich table (a ``cost`` column when endpoints have one)."""
    from rich import box
    from rich.table import Table

    endpoints = data["endpoints"]
    columns = [c for c in _SUMMARY_COLUMNS if c[1] != "cost" or any("cost" in e for e in endpoints)]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for i, (title, _, _) in enumerate(columns):
        table.add_column(title, justify="left" if i == 0 else "right", no_wrap=True)
    for ep in endpoints:
        table.add_row(*(fmt(ep.get(key)) for _, key, fmt in columns))
    return table


def summary_sentence(data: Mapping[str, Any]) -> str:
    cached = f", {data['cached']:,} from the journal" if data["cached"] else ""
    sentence = (
        f"{data['requests']:,} requests in {_duration(data['wall_s'])} "
        f"({data['req_per_s'] or 0:,.1f} req/s), {data['failed']:,} failed{cached}"
    )
    cost = data.get("cost")
    if cost is None or (cost["spent_usd"] is None and not cost["unknown_answers"]):
        return sentence  # nothing priced and nothing made: say nothing of money
    return f"{sentence}\n{format_cost(cost)}"


def format_cost(cost: Mapping[str, Any]) -> str:
    """``cost: $1.23 spent (batch $0.40); cached: 4,000 answers, $0 now, $1.20 when first made``."""
    spent = cost["spent_usd"]
    parts = [f"cost: {usd(spent)} spent" if spent is not None else "cost: unknown (no price)"]
    if spent is not None and cost["batch_usd"]:
        parts[0] += f" (batch {usd(cost['batch_usd'])})"
    if spent is not None and cost["unknown_answers"]:
        parts[0] += f" + {cost['unknown_answers']:,} answers at an unknown price"
    if cost["before_usd"]:
        parts.append(f"{usd(cost['before_usd'] + (spent or 0))} on this job in all")
    if (projected := cost["projected_usd"]) is not None and spent is not None and projected > spent:
        parts.append(f"{usd(projected)} projected for the whole job")
    cached = cost["cached"]
    if cached["answers"]:
        first = usd(cached["first_usd"]) if not cached["unknown"] else "unknown"
        parts.append(f"cached: {cached['answers']:,} answers, $0 now, {first} when first made")
    return "; ".join(parts)


def format_summary(data: Mapping[str, Any]) -> str:
    """The summary as plain text: the table, then one sentence of totals."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=200, color_system=None, highlight=False)
    console.print(summary_table(data))
    table = "\n".join(line.rstrip() for line in buffer.getvalue().splitlines() if line.strip())
    return f"{table}\n{summary_sentence(data)}"
