"""Adaptation: a server of hidden capacity, and a fleet that loses a replica half way.

    python benchmarks/adaptive.py                    # both scenarios, ~30 s
    python benchmarks/adaptive.py --only capacity    # or: --only replicas

1. Hidden capacity. A sim in its own process serves at most ``--capacity`` (64)
   requests at once and answers 429 beyond that; asyncsynth is given no concurrency
   limit and must find it (AIMD). Targets: goodput >= 0.85x the server's capacity
   (capacity / latency requests a second) and <= 5% of requests answered 429. The same
   job told the capacity (``max_concurrency = 64``) is shown for reference.
2. Replica death. Two sims serve one role; the first is killed (SIGKILL) when half the
   job is done. Target: the job finishes with every row answered, none lost or twice.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import anyio
from _harness import Measure, engine_run, sim_process

from asyncsynth import Engine, Request
from asyncsynth.config import config_from_dict
from asyncsynth.testing import start_process


def hidden_capacity(capacity: int, latency: float, seconds: float) -> None:
    server_rate = capacity / latency
    n = int(server_rate * seconds)
    with sim_process(capacity=capacity, latency=latency) as url:
        adaptive = engine_run(url, n, None, label="asyncsynth, no limit given")
        told = engine_run(url, n, capacity, label=f"asyncsynth, max_concurrency={capacity}")
    print(
        f"hidden capacity: {n:,} requests; the server takes {capacity} at once, "
        f"{latency * 1000:.0f} ms each = {server_rate:,.0f} req/s, 429 beyond"
    )
    for m in (adaptive, told):
        print(f"  {_capacity_line(m, server_rate)}")
    print(
        "  targets (no limit given): goodput >= 0.85x capacity, <= 5% answered 429: "
        + (
            "met"
            if adaptive.rate / server_rate >= 0.85 and _share_429(adaptive) <= 0.05
            else "NOT met"
        )
    )


def _share_429(m: Measure) -> float:
    return m.status_429 / max(1, m.requests + m.status_429)


def _capacity_line(m: Measure, server_rate: float) -> str:
    return (
        f"{m.label:<36} {m.rate:7,.0f} req/s = {m.rate / server_rate:.3f}x capacity, "
        f"{m.status_429:,} answered 429 ({_share_429(m):.2%} of requests), "
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
    parser.add_argument("--only", choices=["capacity", "replicas"])
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--replica-requests", type=int, default=4000)
    args = parser.parse_args()
    if args.only in (None, "capacity"):
        hidden_capacity(args.capacity, args.latency, args.seconds)
    if args.only in (None, "replicas"):
        replica_death(args.replica_requests, args.latency / 2)


if __name__ == "__main__":
    main()
