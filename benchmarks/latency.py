"""Latency hiding: a sim answering in 500 ms +- 100 ms, 512 requests in flight.

    python benchmarks/latency.py             # 10,240 requests (20 waves), concurrency 512

Target: asyncsynth with its concurrency fixed at 512 (``adaptive = false``) >= 0.95x the bare
aiohttp loop's throughput. The default, 512 as a ceiling, is measured beside it: it starts at
16 in flight and doubles a round trip, which a short job like this one pays for.
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
        fixed = engine_run(url, n, c, label="asyncsynth, adaptive = false", adaptive=False)
        adaptive = engine_run(url, n, c, label="asyncsynth, adaptive (default)")
    print(
        f"latency hiding: {n:,} requests, latency {args.latency * 1000:.0f} ms "
        f"+- {args.jitter * 1000:.0f} ms, concurrency {c}"
    )
    print("  " + base.line())
    print("  " + fixed.line(base))
    print("  " + adaptive.line(base))
    print(f"  fixed / bare: {fixed.rate / base.rate:.3f}x (target >= 0.95)")
    print(f"  adaptive / bare: {adaptive.rate / base.rate:.3f}x (slow start from 16 included)")


if __name__ == "__main__":
    main()
