"""Latency hiding: a sim answering in 500 ms +- 100 ms, 512 requests in flight.

    python benchmarks/latency.py             # 10,240 requests (20 waves), concurrency 512

Target: asyncsynth >= 0.95x the bare aiohttp loop's throughput.
"""

from __future__ import annotations

import argparse

from _harness import bare_loop, engine_run, sim_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_240)
    parser.add_argument("--concurrency", type=int, default=512)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--jitter", type=float, default=0.1)
    args = parser.parse_args()
    n, c = args.n, args.concurrency
    with sim_process(latency=args.latency, jitter=args.jitter, seed=1) as url:
        base = bare_loop(url, n, c)
        engine = engine_run(url, n, c)
    print(
        f"latency hiding: {n:,} requests, latency {args.latency * 1000:.0f} ms "
        f"+- {args.jitter * 1000:.0f} ms, concurrency {c}"
    )
    print("  " + base.line())
    print("  " + engine.line(base))
    print(f"  asyncsynth / bare: {engine.rate / base.rate:.3f}x (target >= 0.95)")


if __name__ == "__main__":
    main()
