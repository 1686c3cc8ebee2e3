"""Rate limits: a sim enforcing an RPM limit (429 beyond it), asyncsynth told the same RPM.

    python benchmarks/ratelimit.py           # 6,000 rpm for ~30 s

Targets: 0 requests answered 429; achieved rate >= 0.95x the limit. The bare loop,
which knows no limits, is shown for contrast: it is answered 429 at once.
"""

from __future__ import annotations

import argparse

from _harness import bare_loop, engine_run, sim_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=float, default=6_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.02)
    args = parser.parse_args()
    n = int(args.rpm / 60 * args.seconds)
    with sim_process(rpm=args.rpm, latency=args.latency) as url:
        engine = engine_run(url, n, args.concurrency, rpm=args.rpm)
        base = bare_loop(url, n, args.concurrency, label="bare aiohttp loop (no limiter)")
    limit = args.rpm / 60
    print(
        f"rate limit: {n:,} requests, server and client limit {args.rpm:,.0f} rpm ({limit:.0f}/s)"
    )
    print(f"  bare loop: {base.requests - base.ok:,} of {base.requests:,} answered 429")
    print(
        f"  asyncsynth: {engine.status_429} answered 429 (target 0); "
        f"{engine.rate:,.1f} req/s = {engine.rate / limit:.3f}x the limit (target >= 0.95)"
    )


if __name__ == "__main__":
    main()
