"""Past one process: shared budgets through Redis, and the Ray executor of ``run``.

    python benchmarks/distributed.py shared   # (a) 2 and 4 processes on one 600 rpm budget
    python benchmarks/distributed.py ray      # (b) run on 1, 2 and 4 Ray actors vs one process

(a) Two and four ``asyncsynth run`` processes on one endpoint whose server allows 600 rpm,
counted strictly over a sliding window: once sharing the budget through a real
``redis-server`` (``--limits-backend``), once each told 600 rpm on its own. Printed side by
side: answers 429, combined rate against the limit. ``--window`` scales the server's window
(and the budget with it: 600 rpm is 10 requests per second in any window) so that a run
lasting a few windows takes seconds, not minutes.

(b) ``run`` over ``--requests`` lines (100,000 by default) against a sim in its own process:
the single-process engine, then ``--executor ray`` with 1, 2 and 4 actors on a local Ray
cluster started once for all of them (its start is not counted; each run's actors' is).
Printed: throughput, CPU per request and peak memory of the driver and of an actor. On a
2-core machine more actors cannot go faster; the point is the cost per request and that
every line is answered exactly once.

Needs the redis and ray extras, and Debian's redis-server for (a).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from asyncsynth.testing import SimServer, start_process
from asyncsynth.testing.services import RedisServer

RPM = 600.0


def write_prompts(path: Path, n: int, tag: str = "") -> Path:
    with open(path, "wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"prompt": f"{tag}{i}: one sentence about {i}."}) + b"\n")
    return path


def run_argv(source: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "asyncsynth", "run", str(source), "-o", str(out),
        "--base-url", url, "--model", "sim", "-q", "--no-cache",
        "--stats-json", f"{out}.stats.json", *extra,
    ]  # fmt: skip


def waited(process: subprocess.Popen[bytes]) -> tuple[int, Any]:
    """Wait for ``process``; its exit status and resource usage."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage


# -- (a) shared budgets ------------------------------------------------------------------------


def shared(args: argparse.Namespace) -> None:
    per_window = RPM / 60 * args.window
    limit = RPM / 60
    print(
        f"(a) one budget of {RPM:.0f} rpm: the server allows {per_window:.0f} requests in any "
        f"{args.window:g} s (sliding), {args.windows:g} windows of work per run"
    )
    print(f"{'processes':>9}  {'budget':<26} {'429s':>6} {'answered':>9} {'rate/limit':>11}")
    folder = Path(tempfile.mkdtemp(prefix="asyncsynth-bench-"))
    try:
        with RedisServer(folder / "redis") as redis:
            for processes in (2, 4):
                for backend in (redis.url, None):
                    times: list[float] = []

                    def arrived(body: Any, context: Any, times: list[float] = times) -> str:
                        times.append(time.monotonic())
                        return "ok"

                    n = int(limit * args.window * args.windows / processes)
                    with SimServer(
                        latency=0.02, rpm=per_window, rate_window="sliding",
                        window=args.window, reply=arrived,
                    ) as sim:  # fmt: skip
                        running = []
                        for i in range(processes):
                            source = write_prompts(folder / f"in{i}.jsonl", n, tag=f"p{i}-")
                            extra = ["--rpm", str(RPM), "--max-attempts", "20"]
                            if backend is not None:
                                extra += ["--limits-backend", backend]
                            argv = run_argv(source, folder / f"out{i}.jsonl", sim.url, *extra)
                            running.append(subprocess.Popen(argv, stderr=subprocess.DEVNULL))
                        for process in running:
                            waited(process)
                        refused = sim.stats.responses_by_status.get(429, 0)
                        ok = sim.stats.responses_by_status.get(200, 0)
                    rate = (len(times) - 1) / (max(times) - min(times)) if len(times) > 1 else 0
                    label = "shared through Redis" if backend else f"each told {RPM:.0f} rpm"
                    print(
                        f"{processes:>9}  {label:<26} {refused:>6,} {ok:>9,} {rate / limit:>10.3f}x"
                    )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- (b) the Ray executor ----------------------------------------------------------------------


def ray_runs(args: argparse.Namespace) -> None:
    import ray

    folder = Path(tempfile.mkdtemp(prefix="asr", dir="/tmp"))
    source = write_prompts(folder / "in.jsonl", args.requests)
    sim, url = start_process({"latency": 0.0})
    try:
        ray.init(
            num_cpus=os.cpu_count() or 2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=str(folder / "ray"),
        )
        address = ray.get_runtime_context().gcs_address
        print(
            f"(b) run over {args.requests:,} lines, sim in its own process, "
            f"{os.cpu_count()} cores; best of {args.repeat}"
        )
        print(
            f"{'':<22} {'req/s':>8} {'vs 1 proc':>9} {'cpu ms/req':>11} "
            f"{'driver MB':>10} {'actor MB':>9} {'spread':>7}"
        )
        base = None
        for actors in (0, 1, 2, 4):
            rates, best = [], None
            for _ in range(args.repeat):
                out = folder / f"out{actors}.jsonl"
                extra = ["--concurrency", "256"]
                if actors:
                    extra += ["--executor", f"ray={address}", "--actors", str(actors)]
                shutil.rmtree(f"{out}.shards", ignore_errors=True)
                started = time.monotonic()
                process = subprocess.Popen(run_argv(source, out, url, *extra))
                code, usage = waited(process)
                wall = time.monotonic() - started
                stats = orjson.loads(Path(f"{out}.stats.json").read_bytes())
                lines = out.read_bytes().count(b"\n")
                assert code == 0 and lines == args.requests, (code, lines)
                rates.append(args.requests / wall)
                if best is None or rates[-1] > best[0]:
                    cpu = (usage.ru_utime + usage.ru_stime) / args.requests * 1000
                    best = (rates[-1], cpu, usage.ru_maxrss / 1024, stats)
            assert best is not None
            rate, cpu, driver_mb, stats = best
            base = base or rate
            label = f"ray, {actors} actor{'s' * (actors > 1)}" if actors else "one process"
            actor_mb = f"{stats['actor_peak_rss_mb']:.0f}" if actors else "-"
            spread = (max(rates) - min(rates)) / max(rates) * 100
            print(
                f"{label:<22} {rate:>8,.0f} {rate / base:>8.2f}x {cpu:>11.3f} "
                f"{driver_mb:>10.0f} {actor_mb:>9} {spread:>6.0f}%"
            )
        print("(cpu ms/req: the driver process only; actors' CPU is in their own processes)")
    finally:
        ray.shutdown()
        sim.terminate()
        sim.wait()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    a = sub.add_parser("shared", help="(a) shared budgets through Redis")
    a.add_argument("--window", type=float, default=60.0, help="the server's window, seconds")
    a.add_argument("--windows", type=float, default=3.0, help="work per run, in windows")
    b = sub.add_parser("ray", help="(b) the Ray executor")
    b.add_argument("--requests", type=int, default=100_000)
    b.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    shared(args) if args.part == "shared" else ray_runs(args)


if __name__ == "__main__":
    main()
