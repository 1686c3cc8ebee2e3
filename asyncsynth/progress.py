"""The progress bar on stderr and the end-of-run summary (also as JSON)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import anyio

from .engine import Engine
from .engine.cost import usd

REFRESH_SECONDS = 0.2


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def progress_line(engine: Engine, width: int = 24) -> str:
    t = engine.totals
    elapsed = max(time.monotonic() - t.started, 1e-9)
    rate = t.done / elapsed
    tokens = (t.tokens_in + t.tokens_out) / elapsed
    if t.total:
        frac = min(1.0, t.done / t.total)
        filled = int(frac * width)
        bar = "█" * filled + "·" * (width - filled)
        eta = (t.total - t.done) / rate if rate > 0 else None
        head = f"{bar} {t.done}/{t.total}"
        tail = f" ETA {_duration(eta)}"
    else:
        head, tail = f"{t.done} done", ""
    cached = f" cached {t.cached}" if t.cached else ""
    return (
        f"{head} {rate:,.0f} req/s {tokens:,.0f} tok/s retries {t.retries} "
        f"errors {t.failed}{cached}{cost_part(engine)} {_duration(elapsed)}{tail}"
    )


def cost_part(engine: Engine) -> str:
    """`` $0.42 (-> $1.30)``: spent and projected, when a price is known; batches waited on."""
    t = engine.totals
    costs = engine.ledger.summary(t.done, t.total)
    part = ""
    if costs["spent_usd"] is not None:
        projected = costs["projected_usd"]
        part = f" {usd(costs['spent_usd'])}" + (f" (-> {usd(projected)})" if projected else "")
    if engine.ledger.waiting:
        part += f" budget wait {engine.ledger.waiting}"
    if (batches := engine.batches) is not None and (state := batches.state())["batches"]:
        done = sum(b["completed"] for b in state["batches"])
        total = sum(b["total"] for b in state["batches"])
        part += f" batches {len(state['batches'])} ({done}/{total})"
    return part


class ProgressBar:
    """Redraws one status line while a job runs; silent unless ``stream`` is a terminal."""

    def __init__(self, engine: Engine, *, stream: TextIO | None = None, enabled: bool = True):
        self.engine = engine
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()

    async def run(self) -> None:
        """Redraw until cancelled (run it in a task group and cancel it when done)."""
        if not self.enabled:
            return
        try:
            while True:
                self.draw()
                await anyio.sleep(REFRESH_SECONDS)
        finally:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()

    def draw(self) -> None:
        self.stream.write("\r\x1b[2K" + progress_line(self.engine))
        self.stream.flush()


def summary(engine: Engine) -> dict[str, Any]:
    """Per-endpoint and overall figures of the run so far."""
    t = engine.totals
    wall = time.monotonic() - t.started
    return {
        "wall_s": round(wall, 3),
        "requests": t.done,
        "failed": t.failed,
        "cached": t.cached,
        "retries": t.retries,
        "tokens_in": t.tokens_in,
        "tokens_out": t.tokens_out,
        "req_per_s": round(t.done / wall, 2) if wall > 0 else None,
        "cost": engine.ledger.summary(t.done, t.total),
        "endpoints": [
            {**ep.stats.to_dict(), "cost_usd": engine.ledger.endpoint_cost(name)}
            for name, ep in engine.endpoints.items()
        ],
    }


def format_summary(data: dict[str, Any]) -> str:
    """The summary as an aligned text table."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:,.0f}ms"

    header = (
        "endpoint",
        "requests",
        "retries",
        "429s",
        "failed",
        "tok in",
        "tok out",
        "cost",
        "p50",
        "p95",
        "p99",
    )
    rows = [header]
    for ep in data["endpoints"]:
        rows.append(
            (
                ep["endpoint"],
                f"{ep['requests']:,}",
                f"{ep['retries']:,}",
                f"{ep['rate_limited']:,}",
                f"{ep['failures']:,}",
                f"{ep['tokens_in']:,}",
                f"{ep['tokens_out']:,}",
                usd(ep.get("cost_usd")),
                ms(ep["latency_p50"]),
                ms(ep["latency_p95"]),
                ms(ep["latency_p99"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    cached = f", {data['cached']:,} from the journal" if data["cached"] else ""
    lines.append(
        f"{data['requests']:,} requests in {_duration(data['wall_s'])} "
        f"({data['req_per_s'] or 0:,.1f} req/s), {data['failed']:,} failed{cached}"
    )
    if (cost := data.get("cost")) is not None:
        lines.append(format_cost(cost))
    return "\n".join(lines)


def format_cost(cost: dict[str, Any]) -> str:
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
