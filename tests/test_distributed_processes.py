"""Shared budgets across real processes: ``asyncsynth run`` processes on one real
``redis-server``, against a simulated endpoint that counts strictly over a sliding window.

The sim's window is 4 s (200 requests in any 4 s: 50 a second) rather than a provider's
60 s, so that it binds within a short test; a short window is the harder case for the
clients (the same rate, far less room for bunching).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner

from asyncsynth.cli import main
from asyncsynth.distributed import SharedLimits, budget_key
from asyncsynth.distributed.budgets import LEASE
from asyncsynth.testing import SimServer
from asyncsynth.testing.services import RedisServer, free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

WINDOW = 4.0
PER_WINDOW = 200
LIMIT = PER_WINDOW / WINDOW
"""Requests a second the strict server allows."""
RPM = LIMIT * 60


@pytest.fixture
def strict_sim() -> Iterator[tuple[SimServer, list[float]]]:
    """A sim allowing 200 requests in every 4 s (sliding), and the arrival times it answered."""
    arrivals: list[float] = []

    def arrived(body: Any, context: Any) -> str:
        arrivals.append(time.monotonic())
        return "ok"

    with SimServer(
        latency=0.01, rpm=PER_WINDOW, rate_window="sliding", window=WINDOW, reply=arrived
    ) as sim:
        yield sim, arrivals


def start_runs(
    tmp_path: Path, url: str, backend: str | None, processes: int, requests: int, **options: Any
) -> list[subprocess.Popen[bytes]]:
    """``processes`` ``asyncsynth run`` processes, ``requests`` prompts each, on one endpoint."""
    started = []
    for i in range(processes):
        source = tmp_path / f"in{i}.jsonl"
        source.write_bytes(
            b"".join(orjson.dumps({"prompt": f"p{i}-{j}"}) + b"\n" for j in range(requests))
        )
        argv = [
            sys.executable, "-m", "asyncsynth", "run", str(source),
            "-o", str(tmp_path / f"out{i}.jsonl"), "--base-url", url, "--model", "m",
            "--rpm", str(options.get("rpm", RPM)),
            "--concurrency", str(options.get("concurrency", 16)),
            "-q", "--no-cache", "--log-json", str(tmp_path / f"log{i}.jsonl"),
        ]  # fmt: skip
        if backend is not None:
            argv += ["--limits-backend", backend]
        started.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return started


def finish(processes: list[subprocess.Popen[bytes]]) -> list[tuple[int, str]]:
    """Wait for every process; (exit status, stderr) of each."""
    done = []
    for process in processes:
        _, err = process.communicate(timeout=300)
        done.append((process.returncode, err.decode(errors="replace")))
    return done


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def answered(tmp_path: Path, i: int) -> set[str]:
    rows = [orjson.loads(line) for line in (tmp_path / f"out{i}.jsonl").read_bytes().splitlines()]
    return {row["id"] for row in rows}


def combined_rate(arrivals: list[float]) -> float:
    times = sorted(arrivals)
    return (len(times) - 1) / (times[-1] - times[0])


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_on_one_budget_share_it_without_a_429(
    processes: int,
    redis_server: RedisServer,
    strict_sim: tuple[SimServer, list[float]],
    tmp_path: Path,
) -> None:
    sim, arrivals = strict_sim
    each = 500 // processes  # about 10 s at the limit: the window binds more than twice
    running = start_runs(tmp_path, sim.url, redis_server.url, processes, each)
    try:
        outcomes = finish(running)
    finally:
        stop_all(running)
    assert [code for code, _ in outcomes] == [0] * processes, outcomes
    for i in range(processes):
        assert len(answered(tmp_path, i)) == each
    total = each * processes
    assert sim.stats.responses_by_status == {200: total}  # not one 429
    assert combined_rate(arrivals) >= 0.95 * LIMIT


def test_processes_each_told_the_limit_without_a_backend_get_429s(
    strict_sim: tuple[SimServer, list[float]], tmp_path: Path
) -> None:
    """The control: the same two processes, each believing it owns the budget."""
    sim, _ = strict_sim
    running = start_runs(tmp_path, sim.url, None, 2, 250)
    try:
        finish(running)
    finally:
        stop_all(running)
    assert sim.stats.responses_by_status.get(429, 0) > 0


def test_slots_of_a_process_killed_while_holding_them_come_back_within_the_lease(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with SimServer(latency=600.0) as sim:  # nothing is answered: the slots stay held
        running = start_runs(tmp_path, sim.url, redis_server.url, 1, 8, concurrency=4)
        try:
            sim.wait_for_requests(4, timeout=60)
            key = budget_key(sim.url, "m", None)

            async def check() -> None:
                from asyncsynth.distributed.redis_store import RedisStore

                limits = await SharedLimits(RedisStore(redis_server.url)).open()
                budget = limits.budget(key, rpm=None, tpm=None, slots=True)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(limits.run)
                    refused = await limits.ask(("admit", key, "probe", 4, LEASE, *[0.0] * 6, "e"))
                    assert not refused.granted and refused.in_use == 4
                    assert 0 < refused.retry_in <= LEASE  # renewed: held for a lease at most
                    os.kill(running[0].pid, signal.SIGKILL)
                    running[0].wait()
                    deadline = anyio.current_time() + 3 * LEASE
                    # every slot of the killed process comes back, without any release
                    held = [await budget.admit(0.0, 4, deadline) for _ in range(4)]
                    assert all(a.member for a in held) and held[-1].load == 4
                    tg.cancel_scope.cancel()
                await limits.aclose()

            anyio.run(check)
        finally:
            stop_all(running)


def test_a_redis_restarted_mid_run_never_lets_the_limit_be_exceeded(
    redis_server: RedisServer, strict_sim: tuple[SimServer, list[float]], tmp_path: Path
) -> None:
    sim, _ = strict_sim
    running = start_runs(tmp_path, sim.url, redis_server.url, 2, 200)
    try:
        sim.wait_for_requests(100, timeout=120)
        redis_server.restart()  # same port, empty: every budget and lease forgotten
        outcomes = finish(running)
    finally:
        stop_all(running)
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert len(answered(tmp_path, 0)) == len(answered(tmp_path, 1)) == 200
    assert sim.stats.responses_by_status == {200: 400}  # nothing beyond the limit
    for i in range(2):  # each process saw the outage, and the store come back
        events = [
            orjson.loads(line) for line in (tmp_path / f"log{i}.jsonl").read_bytes().splitlines()
        ]
        waits = [e for e in events if e.get("event") == "wait" and e["reason"] == "limits_backend"]
        assert waits and waits[-1]["seconds"] == 0, waits


def test_an_unreachable_redis_at_start_is_a_config_error_exit_2(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "hi"}\n')
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(
        main,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--base-url",
         "http://127.0.0.1:9/v1", "--model", "m", "--limits-backend", url, "-q"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"the limits backend {url} cannot be reached" in result.output
    assert not (tmp_path / "out.jsonl").exists()
