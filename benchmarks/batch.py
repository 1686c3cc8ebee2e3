"""Batch API mode: 100,000 requests through the simulated Batch API, beside the same online.

    python benchmarks/batch.py                 # 100,000 requests, best of 3 rounds
    python benchmarks/batch.py --rows 20000 --rounds 1

Each round runs the same ``asyncsynth run`` twice, as separate processes against one
simulated endpoint (its own process): online (concurrency 256, zero latency) and with
the endpoint in batch mode (two files of 50,000, polled every 0.2 s). Measured for each
whole client process: CPU time per request, peak RSS, wall time, and the cost the run
reports at gpt-4o-mini's prices (0.15 / 0.60 USD per million tokens, batch x0.5), so the
cost ratio batch / online is read from the runs themselves, not assumed.

Targets: batch mode costs <= 0.2 ms of client CPU per request and stays under 250 MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from _harness import prompt, sim_process

PRICE = "{ input = 0.15, output = 0.60, batch = 0.5 }"


@dataclass
class Round:
    cpu_ms: float
    peak_mb: float
    wall_s: float
    spent_usd: float
    rows: int


def _config(tmp: Path, url: str) -> Path:
    path = tmp / "bench.toml"
    path.write_text(
        f"""
[endpoints.online]
base_url = "{url}"
model = "sim"
max_concurrency = 256
adaptive = false
price = {PRICE}

[endpoints.batch]
base_url = "{url}"
model = "sim"
price = {PRICE}
[endpoints.batch.batch]
poll_interval = 0.2
poll_max = 0.5
"""
    )
    return path


def _run(role: str, config: Path, src: Path, tmp: Path, rows: int) -> Round:
    out = tmp / f"{role}.jsonl"
    for stale in tmp.glob(f"{role}.jsonl*"):  # every round starts without a journal
        if stale.is_file():
            stale.unlink()
    stats = tmp / f"{role}.stats.json"
    cmd = [sys.executable, "-m", "asyncsynth", "run", str(src), "-o", str(out),
           "--config", str(config), "--role", role, "-q", "--stats-json", str(stats)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the {role} run failed with status {status}")
    data = orjson.loads(stats.read_bytes())
    written = sum(1 for _ in out.open("rb"))
    if written != rows:
        raise SystemExit(f"the {role} run wrote {written:,} rows of {rows:,}")
    cpu = usage.ru_utime + usage.ru_stime
    return Round(1000 * cpu / rows, usage.ru_maxrss / 1024, wall, data["cost"]["spent_usd"], rows)


def _line(label: str, runs: list[Round]) -> str:
    best = min(runs, key=lambda r: r.cpu_ms)
    cpu = [r.cpu_ms for r in runs]
    spread = f" (spread {min(cpu):.3f}-{max(cpu):.3f})" if len(runs) > 1 else ""
    peak = max(r.peak_mb for r in runs)
    wall = statistics.median(r.wall_s for r in runs)
    return (
        f"{label:<8} cpu {best.cpu_ms:6.3f} ms/request{spread}  peak {peak:6.1f} MB"
        f"  wall {wall:6.2f} s  spent ${best.spent_usd:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, sim_process(batch={}) as url:
        tmp = Path(tmp_name)
        src = tmp / "input.jsonl"
        with src.open("wb") as f:
            for i in range(args.rows):
                f.write(orjson.dumps({"id": str(i), "prompt": prompt(i)}) + b"\n")
        config = _config(tmp, url)
        online: list[Round] = []
        batch: list[Round] = []
        for _ in range(args.rounds):
            online.append(_run("online", config, src, tmp, args.rows))
            batch.append(_run("batch", config, src, tmp, args.rows))
    print(f"{args.rows:,} requests, best of {args.rounds} (CPU of the whole client process)")
    print(_line("online", online))
    print(_line("batch", batch))
    ratio = batch[0].spent_usd / online[0].spent_usd
    cpu = min(r.cpu_ms for r in batch) / min(r.cpu_ms for r in online)
    print(f"cost batch / online = {ratio:.3f}   client CPU batch / online = {cpu:.2f}x")


if __name__ == "__main__":
    main()
