"""Memory: `asyncsynth run` over 1,000,000 input rows stays small (input read lazily,
results written as they complete, constant-size statistics, journal on disk).

    python benchmarks/memory.py              # 1,000,000 rows, zero-latency sim

Target: peak RSS of the asyncsynth process <= 250 MB. The bare aiohttp loop reading the
same file lazily is measured too, as the floor, and ``run --allow-duplicate-ids``, which
keeps no table of the ids seen (the one part that grows with the input).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from _harness import sim_process

BARE = r"""
import asyncio, sys, aiohttp, orjson
async def main(url, path, concurrency):
    sem = asyncio.Semaphore(concurrency)
    tasks = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one(line):
            try:
                row = orjson.loads(line)
                msg = {"role": "user", "content": row["prompt"]}
                body = orjson.dumps({"model": "sim", "messages": [msg]})
                async with s.post(url + "/chat/completions", data=body,
                                  headers={"Content-Type": "application/json"}) as r:
                    orjson.loads(await r.read())
            finally:
                sem.release()
        with open(path, "rb") as f:
            for line in f:
                await sem.acquire()
                t = asyncio.create_task(one(line)); tasks.add(t); t.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (peak RSS in MB, wall seconds) of that process alone."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:4]} failed with status {status}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sim_process() as url:
        src = Path(tmp) / "input.jsonl"
        with open(src, "wb") as f:
            for i in range(args.rows):
                f.write(
                    orjson.dumps({"prompt": f"Write one sentence about the number {i}."}) + b"\n"
                )

        def run(out: Path, *flags: str) -> tuple[float, float]:
            command = [sys.executable, "-m", "asyncsynth", "run", str(src), "-o", str(out)]
            command += ["--base-url", url, "--model", "sim", "--quiet"]
            return peak_rss_mb([*command, "--concurrency", str(args.concurrency), *flags])

        out = Path(tmp) / "out.jsonl"
        ours, ours_s = run(out)
        with open(out, "rb") as f:
            rows = sum(1 for _ in f)
        unchecked, unchecked_s = run(Path(tmp) / "unchecked.jsonl", "--allow-duplicate-ids")
        bare, bare_s = peak_rss_mb(
            [sys.executable, "-c", BARE, url, str(src), str(args.concurrency)]
        )
    print(f"memory: {args.rows:,} input rows, zero-latency sim, concurrency {args.concurrency}")
    print(f"  bare aiohttp loop (lazy read)   peak RSS {bare:6.1f} MB  wall {bare_s:6.1f}s")
    print(
        f"  asyncsynth run (with journal)   peak RSS {ours:6.1f} MB  wall {ours_s:6.1f}s  "
        f"rows written {rows:,}"
    )
    print(
        f"  the same, --allow-duplicate-ids  peak RSS {unchecked:6.1f} MB  wall {unchecked_s:6.1f}s"
        "  (no table of the ids seen)"
    )
    print(
        f"  asyncsynth peak RSS: {ours:.0f} MB (target <= 250 MB), "
        f"{ours / bare:.2f}x the bare loop's"
    )


if __name__ == "__main__":
    main()
