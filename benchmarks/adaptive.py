"""Adaptation: servers of hidden capacity under any ceiling, and a fleet losing a replica.

    python benchmarks/adaptive.py                        # every scenario, ~4 minutes
    python benchmarks/adaptive.py --only 429 --ceilings 64,4096
    python benchmarks/adaptive.py --only replicas

1. Hidden capacity. A sim in its own process serves at most ``--capacity`` (64) requests
   at once, ``--latency`` (300 ms) each, and when overloaded either answers 429
   (``Retry-After: 1``), or answers 503, or queues the rest (latency grows with load,
   no errors: vLLM's behaviour). asyncsynth is given no limit, then each ceiling of
   ``--ceilings`` (``--concurrency``: a user's guess, the README's quickstart passes
   256). Targets with every ceiling: goodput >= 0.9x the server's capacity (capacity /
   latency requests a second), <= 1% of requests refused; on the queueing server the
   limit settles near the capacity, where more in flight only adds latency.
   ``adaptive = false`` at the capacity is shown for reference.
2. Replica death. Two sims serve one role; the first is killed (SIGKILL) when half the
   job is done. Target: the job finishes with every row answered, none lost or twice.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import anyio
from _harness import Measure, engine_run, sim_process

from asyncsynth import Engine, Request
from asyncsynth.config import config_from_dict
from asyncsynth.testing import start_process

SERVERS: dict[str, dict[str, Any]] = {
    "429": {},
    "503": {"overload_status": 503},
    "queue": {"queue": True},
}
DESCRIBED = {
    "429": "429 beyond it (Retry-After: 1)",
    "503": "503 beyond it",
    "queue": "queues beyond it (no errors, latency grows)",
}


def hidden_capacity(
    kind: str, capacity: int, latency: float, n: int, ceilings: list[int | None]
) -> bool:
    server_rate = capacity / latency
    rows: list[tuple[Measure, bool]] = []
    with sim_process(capacity=capacity, latency=latency, **SERVERS[kind]) as url:
        for ceiling in ceilings:
            label = f"ceiling {ceiling:,}" if ceiling else "no limit given"
            m = engine_run(url, n, ceiling, label=label, max_attempts=20)
            rows.append((m, True))
        fixed = engine_run(url, n, capacity, label=f"adaptive = false, {capacity}", adaptive=False)
        rows.append((fixed, False))
    print(
        f"{kind} server: takes {capacity} at once, {latency * 1000:.0f} ms each = "
        f"{server_rate:,.0f} req/s, {DESCRIBED[kind]}; {n:,} requests"
    )
    met = True
    for m, judged in rows:
        ok = m.rate / server_rate >= 0.9 and _refused_share(m) <= 0.01
        met &= ok or not judged
        mark = ("met" if ok else "NOT met") if judged else "reference"
        print(f"  {_line(m, server_rate, latency)}  {mark}")
    return met


def _refused_share(m: Measure) -> float:
    return m.refused / max(1, m.requests + m.refused)


def _line(m: Measure, server_rate: float, latency: float) -> str:
    return (
        f"{m.label:<24} {m.rate:6,.0f} req/s = {m.rate / server_rate:.3f}x capacity, "
        f"{m.refused:5,} refused ({_refused_share(m):6.2%}), "
        f"limit {m.limit:6.1f}, p50 latency {m.latency_p50 / latency:4.2f}x, "
        f"ok {m.ok:,}/{m.requests:,}"
    )


def replica_death(n: int, latency: float, per_replica: int = 16) -> None:
    first, url_a = start_process({"latency": latency})
    second, url_b = start_process({"latency": latency})
    config = config_from_dict(
        {
            "endpoints": {
                "a": {"base_url": url_a, "model": "sim", "max_concurrency": per_replica},
                "b": {"base_url": url_b, "model": "sim", "max_concurrency": per_replica},
            },
            "roles": {"gen": ["a", "b"]},
            "engine": {"backoff_base": 0.05, "backoff_max": 1.0},
        }
    )
    answered: Counter[str] = Counter()
    by_endpoint: Counter[str | None] = Counter()
    failed = moved = 0
    killed_at = 0.0

    async def main() -> None:
        nonlocal failed, moved, killed_at
        async with Engine(config) as engine:
            requests = (Request.from_prompt(f"prompt {i}", id=str(i)) for i in range(n))
            done = 0
            async for result in engine.map(requests, role="gen"):
                done += 1
                if result.ok and result.completion == f"echo: prompt {result.request.id}":
                    answered[result.request.id or ""] += 1
                    by_endpoint[result.endpoint] += 1
                    moved += killed_at > 0 and result.attempts > 1
                else:
                    failed += 1
                if done == n // 2:
                    first.kill()
                    killed_at = time.perf_counter()

    start = time.perf_counter()
    try:
        anyio.run(main)
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.terminate()
            process.wait()
    wall = time.perf_counter() - start
    lost = n - len(answered)
    twice = sum(1 for count in answered.values() if count > 1)
    print(
        f"replica death: {n:,} requests over 2 replicas ({latency * 1000:.0f} ms, "
        f"max_concurrency {per_replica} each), replica a killed (SIGKILL) after {n // 2:,} results"
    )
    print(
        f"  finished in {wall:.2f}s; served by a: {by_endpoint['a']:,}, by b: "
        f"{by_endpoint['b']:,} ({moved} cut off by the kill, answered by b on a retry); "
        f"failed {failed}, rows lost {lost}, answered twice {twice} (target: 0 lost)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=[*SERVERS, "replicas"])
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument(
        "--ceilings",
        default="none,64,256,1024,4096",
        help="comma-separated max_concurrency values; 'none' gives no limit",
    )
    parser.add_argument("--replica-requests", type=int, default=4000)
    args = parser.parse_args()
    ceilings = [None if c == "none" else int(c) for c in args.ceilings.split(",")]
    met = True
    for kind in SERVERS:
        if args.only in (None, kind):
            met &= hidden_capacity(kind, args.capacity, args.latency, args.n, ceilings)
    if args.only in (None, *SERVERS):
        verdict = "met" if met else "NOT met"
        print(f"targets (>= 0.9x capacity, <= 1% refused, with every ceiling): {verdict}")
    if args.only in (None, "replicas"):
        replica_death(args.replica_requests, 0.05)


if __name__ == "__main__":
    main()
