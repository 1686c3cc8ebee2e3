"""Shared pieces of the engine benchmarks: a sim in its own process, the bare baseline, runs.

The baseline every engine benchmark compares against, in the same run, over the same
server: a bare aiohttp loop with a semaphore, parsing each answer with orjson.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import orjson

from asyncsynth import Engine, Progress, Request, single_endpoint_config
from asyncsynth.testing import start_process


@dataclass
class Measure:
    label: str
    requests: int
    ok: int
    wall_s: float
    cpu_s: float
    status_429: int = 0
    refused: int = 0
    """Attempts that failed (429, 503, ...), from the engine's counters."""
    limit: float = 0.0
    """The endpoint's concurrency limit at the end."""
    latency_p50: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.wall_s

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / max(self.requests, 1)

    def line(self, baseline: Measure | None = None) -> str:
        ratio = f"{self.rate / baseline.rate:5.2f}x" if baseline else "  1.00x"
        return (
            f"{self.label:<34} {self.rate:9,.0f} req/s {ratio}  "
            f"cpu {self.cpu_ms_per_request:5.3f} ms/req  wall {self.wall_s:6.2f}s  "
            f"ok {self.ok:,}/{self.requests:,}"
        )


@contextlib.contextmanager
def sim_process(**config: Any) -> Iterator[str]:
    """A sim in a child process (its own core); yields its base URL."""
    process, url = start_process(config)
    try:
        yield url
    finally:
        process.terminate()
        process.wait()


def prompt(i: int) -> str:
    return f"Write one sentence about the number {i}."


def bare_loop(url: str, n: int, concurrency: int, *, label: str = "bare aiohttp loop") -> Measure:
    """The baseline: aiohttp, a semaphore, orjson; no limits, no retries."""

    async def main() -> int:
        sem = asyncio.Semaphore(concurrency)
        ok = 0
        chat_url = f"{url}/chat/completions"
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(i: int) -> None:
                nonlocal ok
                body = orjson.dumps(
                    {"model": "sim", "messages": [{"role": "user", "content": prompt(i)}]}
                )
                try:
                    async with session.post(chat_url, data=body, headers=headers) as resp:
                        data = orjson.loads(await resp.read())
                        if resp.status == 200 and data["choices"][0]["message"]["content"]:
                            ok += 1
                finally:
                    sem.release()

            tasks = set()
            for i in range(n):
                await sem.acquire()
                task = asyncio.create_task(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*tasks)
        return ok

    return _timed(label, n, lambda: asyncio.run(main()))


def engine_run(
    url: str,
    n: int,
    concurrency: int | None,
    *,
    label: str = "asyncsynth Engine.map",
    transport: str = "http1",
    journal: str | None = None,
    rpm: float | None = None,
    adaptive: bool = True,
    max_attempts: int | None = None,
    display: bool = False,
) -> Measure:
    """``display``: with the live progress display drawing (to /dev/null, as to a terminal)."""
    config = single_endpoint_config(
        base_url=url,
        model="sim",
        max_concurrency=concurrency,
        transport=transport,
        rpm=rpm,
        adaptive=adaptive,
    )
    if max_attempts is not None:
        from dataclasses import replace

        config = replace(config, engine=replace(config.engine, max_attempts=max_attempts))
    seen: dict[str, float] = {}

    async def main() -> int:
        ok = 0
        with open(os.devnull, "w") as sink, Progress(stream=sink, live=display) as progress:
            listener = progress.on_event if display else None
            async with Engine(config, journal=journal, on_event=listener) as engine:
                engine.totals.total = n
                requests = (Request.from_prompt(prompt(i), id=str(i)) for i in range(n))
                async with anyio.create_task_group() as tg:
                    if display:
                        tg.start_soon(progress.run)
                    async for result in engine.map(requests):
                        ok += result.ok
                    tg.cancel_scope.cancel()
                ep = engine.endpoints["default"]
                seen.update(
                    status_429=ep.stats.rate_limited,
                    refused=ep.stats.errors,
                    limit=ep.limit.limit,
                    latency_p50=ep.stats.latency.percentile(50) or 0.0,
                )
        return ok

    measure = _timed(label, n, lambda: anyio.run(main))
    measure.status_429 = int(seen["status_429"])
    measure.refused = int(seen["refused"])
    measure.limit = seen["limit"]
    measure.latency_p50 = seen["latency_p50"]
    return measure


def _timed(label: str, n: int, fn: Any) -> Measure:
    cpu0, t0 = time.process_time(), time.perf_counter()
    ok = fn()
    return Measure(label, n, ok, time.perf_counter() - t0, time.process_time() - cpu0)
