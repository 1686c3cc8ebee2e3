"""Engine overhead: a zero-latency sim, so the client is CPU-bound and cost per request shows.

    python benchmarks/overhead.py            # 20,000 requests, concurrency 64
    python benchmarks/overhead.py --transports   # also httpx and the openai SDK

Targets: asyncsynth >= 0.6x the bare aiohttp loop, <= 0.4 ms client CPU per request;
with the journal on, >= 0.9x of asyncsynth without it; with the live progress display
drawing, within the noise of asyncsynth without it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _harness import Measure, bare_loop, engine_run, sim_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternate runs; best of each is kept"
    )
    parser.add_argument("--transports", action="store_true", help="also measure httpx and openai")
    args = parser.parse_args()
    n, c = args.n, args.concurrency

    best: dict[str, Measure] = {}

    def keep(m: Measure) -> None:
        if m.label not in best or m.rate > best[m.label].rate:
            best[m.label] = m

    with sim_process() as url, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            keep(bare_loop(url, n, c))
            keep(engine_run(url, n, c))
            keep(
                engine_run(
                    url, n, c, label="asyncsynth + journal", journal=str(Path(tmp) / f"j{r}.sqlite")
                )
            )
            keep(engine_run(url, n, c, label="asyncsynth + live display", display=True))
            if args.transports:
                keep(engine_run(url, n, c, label="asyncsynth, httpx transport", transport="httpx"))
                keep(
                    engine_run(
                        url, n, c, label="asyncsynth, openai SDK transport", transport="openai"
                    )
                )

    base = best["bare aiohttp loop"]
    engine = best["asyncsynth Engine.map"]
    journal = best["asyncsynth + journal"]
    print(f"overhead: {n:,} requests, zero-latency sim, concurrency {c} (best of {args.rounds})")
    for m in best.values():
        print("  " + m.line(base))
    print(
        f"  asyncsynth / bare: {engine.rate / base.rate:.2f}x (target >= 0.60); "
        f"client CPU {engine.cpu_ms_per_request:.3f} ms/request (target <= 0.40)"
    )
    print(f"  journal on / off:  {journal.rate / engine.rate:.2f}x (target >= 0.90)")
    shown = best["asyncsynth + live display"]
    print(f"  display on / off:  {shown.rate / engine.rate:.2f}x (target: 1.00 within the noise)")


if __name__ == "__main__":
    main()
