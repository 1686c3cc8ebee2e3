"""The Ray executor on a real local Ray cluster (2 CPUs, on loopback), against the
simulated endpoint. ``run``: every line answered and written exactly once, an actor killed
mid-job, and a driver killed mid-job then run again. ``gra``: the same accepted set as one
process, with an actor killed mid-run too."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from asyncsynth.config import Config
from asyncsynth.distributed.ray_run import WORKER_ACTOR, RayExecutor
from asyncsynth.pipelines.gra import GraSettings, run_gra
from asyncsynth.pipelines.gra.committee import RESPONSE_CRITERIA
from asyncsynth.run import run_file
from asyncsynth.testing import SimServer
from asyncsynth.testing.gra_pool import Call, GraScript, pool_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LINES = 600


@pytest.fixture
def counting_sim() -> Iterator[tuple[SimServer, Counter[str]]]:
    """A sim that counts how often each prompt was asked."""
    asked: Counter[str] = Counter()

    def reply(body: Any, context: Any) -> str:
        prompt = body["messages"][-1]["content"]
        asked[prompt] += 1
        return f"answer to {prompt}"

    with SimServer(latency=0.01, reply=reply) as sim:
        yield sim, asked


def write_input(path: Path, lines: int = LINES) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"prompt": f"p{i}"}) + b"\n" for i in range(lines)))
    return path


def output_ids(path: Path) -> list[str]:
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    for row in rows:
        assert row["completion"] == f"answer to {row['prompt']}"
    return [row["id"] for row in rows]


def every_id(lines: int = LINES) -> list[str]:
    return [f"line-{i}" for i in range(1, lines + 1)]


@contextlib.contextmanager
def one_worker_killed(sim: SimServer, after: int) -> Iterator[list[int]]:
    """SIGKILL one worker actor once ``sim`` has seen ``after`` requests, while the block
    runs; yields a list that then holds the requests seen at the kill."""
    import ray

    killed: list[int] = []

    def kill() -> None:
        sim.wait_for_requests(after, timeout=120)
        names = [n for n in ray.util.list_named_actors() if n.startswith(WORKER_ACTOR)]
        actor = ray.get_actor(sorted(names)[0])
        os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)
        killed.append(sim.stats.requests)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        yield killed
    finally:
        killer.join()


def test_every_line_is_answered_and_written_exactly_once(
    ray_cluster: str,
    counting_sim: tuple[SimServer, Counter[str]],
    config_for: Callable[..., Config],
    tmp_path: Path,
) -> None:
    sim, asked = counting_sim
    source = write_input(tmp_path / "in.jsonl")
    config = config_for(sim.url, max_concurrency=4)  # one budget of 4 for both actors
    out = tmp_path / "out.jsonl"
    report = anyio.run(
        lambda: run_file(config, source, out, progress=False, executor=RayExecutor(actors=2))
    )
    assert report.written == LINES and report.failed == 0
    assert sorted(output_ids(out)) == sorted(every_id())
    assert set(asked) == {f"p{i}" for i in range(LINES)} and set(asked.values()) == {1}
    assert sim.stats.max_in_flight <= 4  # the budgets actor shared the limit
    assert report.stats["actors"] == 2 and report.stats["shards"] == 8


def test_an_actor_killed_mid_job_is_restarted_and_nothing_is_lost_or_doubled(
    ray_cluster: str,
    counting_sim: tuple[SimServer, Counter[str]],
    config_for: Callable[..., Config],
    tmp_path: Path,
) -> None:
    sim, asked = counting_sim
    source = write_input(tmp_path / "in.jsonl")
    config = config_for(sim.url, max_concurrency=4)
    out = tmp_path / "out.jsonl"
    with one_worker_killed(sim, LINES // 4) as killed:
        report = anyio.run(
            lambda: run_file(config, source, out, progress=False, executor=RayExecutor(actors=2))
        )
    assert killed and killed[0] < LINES  # killed while there was work left
    ids = output_ids(out)
    assert len(ids) == LINES and sorted(ids) == sorted(every_id())  # none lost, none twice
    assert report.written == LINES
    assert set(asked) == {f"p{i}" for i in range(LINES)}


def test_a_driver_killed_mid_job_resumes_from_the_shards_journals(
    ray_cluster: str,
    counting_sim: tuple[SimServer, Counter[str]],
    config_for: Callable[..., Config],
    tmp_path: Path,
) -> None:
    import ray

    sim, asked = counting_sim
    sim.configure(latency=0.05)
    source = write_input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    argv = [
        sys.executable, "-m", "asyncsynth", "run", str(source), "-o", str(out),
        "--base-url", sim.url, "--model", "m", "--concurrency", "4",
        "--executor", f"ray={ray_cluster}", "--actors", "2", "-q",
    ]  # fmt: skip
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        sim.wait_for_requests(LINES // 3, timeout=180)
    finally:
        driver.kill()
        driver.communicate()
    first = sim.stats.requests
    assert first < LINES and not out.exists()  # killed mid-job: nothing merged yet

    # Its actors die with it (Ray ends a dead driver's actors); wait until they have.
    deadline = time.monotonic() + 60
    while any(
        a["name"].startswith(WORKER_ACTOR) for a in ray.util.list_named_actors(all_namespaces=True)
    ):
        assert time.monotonic() < deadline, "the dead driver's actors are still alive"
        time.sleep(0.1)

    config = config_for(sim.url, max_concurrency=4)
    report = anyio.run(
        lambda: run_file(config, source, out, progress=False, executor=RayExecutor(actors=2))
    )
    assert sorted(output_ids(out)) == sorted(every_id())
    assert report.written == LINES
    assert report.stats["cached"] > 0  # answers of the first run were not asked again
    assert sum(asked.values()) < 2 * LINES


# -- GRA on Ray ---------------------------------------------------------------------------------


def gra_script() -> GraScript:
    """Reviews decided by the request alone: some instructions fail, some responses are
    disputed and adjudicated either way (so every outcome occurs, deterministically)."""

    def check(call: Call) -> Any:
        if call.model == "a" and int(call.tag, 16) % 2 == 0:
            return {"assessment": "vague", "rationality": True, "completeness": True} | {
                "clarity": False
            }
        return None

    def scores(value: float) -> dict[str, Any]:
        return {"strengths": "s", "weaknesses": "w", **dict.fromkeys(RESPONSE_CRITERIA, value)}

    def adjudicate(call: Call) -> Any:
        return {"assessment": "settled", **scores(9 if int(call.tag, 16) % 2 else 7)}

    return GraScript(
        review_instruction=check,
        review_response=lambda call: scores({"e": 5, "d": 10}.get(call.model, 9)),
        adjudicate=adjudicate,
    )


GRA_FILES = ("accepted.jsonl", "rejected.jsonl", "pool.jsonl")


def gra_outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in GRA_FILES}


def run_gra_here(config: Config, out: Path, executor: RayExecutor | None = None) -> Any:
    settings = GraSettings.from_config(config).with_overrides(target=12, seed=5)
    return anyio.run(lambda: run_gra(config, out, settings=settings, executor=executor))


def test_gra_on_ray_accepts_what_one_process_accepts(ray_cluster: str, tmp_path: Path) -> None:
    with SimServer(reply=gra_script()) as sim:
        config = pool_config(sim.url, concurrency=4)
        alone = run_gra_here(config, tmp_path / "alone")
        spread = run_gra_here(config, tmp_path / "ray", RayExecutor(actors=2))
    assert alone.accepted >= 12 and spread.accepted == alone.accepted
    assert gra_outputs(tmp_path / "ray") == gra_outputs(tmp_path / "alone")
    journals = sorted(p.name for p in (tmp_path / "ray").glob("gra.journal.ray-*.sqlite"))
    assert journals == ["gra.journal.ray-0.sqlite", "gra.journal.ray-1.sqlite"]


def test_gra_on_ray_survives_an_actor_killed_mid_run(ray_cluster: str, tmp_path: Path) -> None:
    with SimServer(reply=gra_script()) as sim:
        config = pool_config(sim.url, concurrency=4)
        alone = run_gra_here(config, tmp_path / "alone")
        before = sim.stats.requests
        with one_worker_killed(sim, before + 20) as killed:
            spread = run_gra_here(config, tmp_path / "ray", RayExecutor(actors=2))
        total = sim.stats.requests
    assert killed and killed[0] < total  # killed with work left
    assert spread.accepted == alone.accepted
    assert gra_outputs(tmp_path / "ray") == gra_outputs(tmp_path / "alone")
