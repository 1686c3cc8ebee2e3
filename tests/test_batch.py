"""Batch API mode against the simulated Files + Batches API.

A job split into several batches; ``kill -9`` at each stage (file written, uploaded,
created, polling, downloading) then the same command again: every request submitted
exactly once (the simulator's log says so) and every row answered exactly once; expiry
with partial output; per-line errors retried online; cancel; the hybrid tail and the
batch deadline; ``engine.map`` and ``complete`` over a batch endpoint; a run without
``--batch`` waiting for the batches an earlier run submitted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner
from sample_runs import assert_complete, read_rows

from asyncsynth import Engine, Journal, Request
from asyncsynth.cli import main
from asyncsynth.config import Config, config_from_dict
from asyncsynth.engine.journal import journal_path_for, request_key
from asyncsynth.run import run_file
from asyncsynth.testing import Reply, SimServer

ROOT = Path(__file__).resolve().parents[1]
N = 60
CHILD_TIMEOUT = 60.0
FAST = {"poll_interval": 0.01, "poll_max": 0.02, "collect": 0.02}
ENGINE = {"backoff_base": 0.001, "backoff_max": 0.01, "max_attempts": 4, "deadline": 60.0}
PRICE = {"input": 1.0, "output": 2.0, "batch": 0.5}

SimFactory = Callable[..., SimServer]


# -- helpers ------------------------------------------------------------------------------------


def _rows(path: Path, count: int = N) -> list[dict[str, Any]]:
    rows = [{"id": f"r{i}", "prompt": f"prompt number {i}"} for i in range(count)]
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    return rows


def _keys(rows: list[dict[str, Any]]) -> set[str]:
    """The custom_ids the rows' requests get (their journal keys)."""
    return {
        request_key(["m"], [{"role": "user", "content": r["prompt"]}], {}, 0).hex() for r in rows
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def _config_file(tmp: Path, url: str, *, online: bool = False, **batch: Any) -> Path:
    settings = {**FAST, **batch}
    lines = [
        "[endpoints.api]",
        f'base_url = "{url}"',
        'model = "m"',
        f"price = {_toml_value(PRICE)}",
        *([] if online else ["[endpoints.api.batch]"]),
        *([] if online else [f"{k} = {_toml_value(v)}" for k, v in settings.items()]),
        "[engine]",
        *(f"{k} = {_toml_value(v)}" for k, v in ENGINE.items()),
    ]
    path = tmp / ("online.toml" if online else "batch.toml")
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(url: str, **batch: Any) -> Config:
    table = {"base_url": url, "model": "m", "price": PRICE, "batch": {**FAST, **batch}}
    return config_from_dict({"endpoints": {"api": table}, "engine": ENGINE})


def _command(tmp: Path, config: Path, *more: str) -> list[str]:
    code = "from asyncsynth.cli import main; main()"
    return [sys.executable, "-c", code, "run", str(tmp / "in.jsonl"), "-o", str(tmp / "out.jsonl"),
            "--config", str(config), "-q", *more]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, timeout=120)


def _kill_when(sim: SimServer, command: list[str], cwd: Path, reached: Callable[..., bool]) -> None:
    """Start the command; SIGKILL it once the sim's batch log satisfies ``reached``."""
    child = subprocess.Popen(command, cwd=cwd, env=_env(), stderr=subprocess.PIPE)
    try:
        sim.batches.wait_for(reached, timeout=CHILD_TIMEOUT)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL


def _states(output: Path) -> list[str]:
    with Journal(journal_path_for(output)) as journal:
        return [row["state"] for row in journal.batches()]


# -- a job in several batches -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_job_split_into_several_batches_answers_every_row_once(
    sim: SimServer, tmp_path: Path
) -> None:
    rows = _rows(tmp_path / "in.jsonl", 100)
    report = await run_file(
        _config(sim.url, max_requests=30),
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        progress=False,
    )
    assert report.ok and report.written == 100
    out = assert_complete(tmp_path / "out.jsonl", rows)
    assert all(r["batch"] for r in out)
    log = sim.batches.log
    assert len(log.created) == 4  # 30 + 30 + 30 + 10
    assert set(log.submitted) == _keys(rows) and not log.twice()
    assert sim.stats.requests == 0  # nothing went online
    assert _states(tmp_path / "out.jsonl") == ["done"] * 4
    assert not list((tmp_path / "out.jsonl.batches").iterdir())  # files tidied, here and there
    assert not sim.batches.files


@pytest.mark.anyio
async def test_bytes_per_file_cut_files_too(sim: SimServer, tmp_path: Path) -> None:
    rows = _rows(tmp_path / "in.jsonl", 40)
    await run_file(
        _config(sim.url, max_bytes=2_000), tmp_path / "in.jsonl", tmp_path / "out.jsonl",
        progress=False,
    )  # fmt: skip
    assert_complete(tmp_path / "out.jsonl", rows)
    sizes = [len(sim.batches.batches[b].lines) for b in sim.batches.log.created]
    assert len(sizes) > 1 and sum(sizes) == 40


@pytest.mark.anyio
async def test_engine_map_and_complete_over_a_batch_endpoint(
    sim: SimServer, tmp_path: Path
) -> None:
    config = _config(sim.url)
    async with Engine(config, journal=tmp_path / "j.journal.sqlite") as engine:
        requests = [Request.from_prompt(f"fact {i}", id=str(i)) for i in range(20)]
        results = [r async for r in engine.map(requests)]
        assert {r.request.id for r in results} == {str(i) for i in range(20)}
        assert all(r.ok and r.batch and r.completion == f"echo: fact {r.request.id}"
                   for r in results)  # fmt: skip
        # Two concurrent callers share one batch file (collect), each gets its own answer.
        async with anyio.create_task_group() as tg:
            answers: dict[str, Any] = {}

            async def ask(text: str) -> None:
                answers[text] = await engine.complete(Request.from_prompt(text))

            tg.start_soon(ask, "one")
            tg.start_soon(ask, "two")
        assert {k: r.text() for k, r in answers.items()} == {"one": "echo: one", "two": "echo: two"}
        assert (
            answers["one"].batch and answers["one"].cost == 3.5e-06
        )  # (1 in x $1 + 3 out x $2) x 0.5
        # Asked again: from the journal, at no cost now.
        again = await engine.complete(Request.from_prompt("one"))
        assert again.cached and again.cost == 0 and again.first_cost == answers["one"].cost
    assert len(sim.batches.log.created) == 2


@pytest.mark.anyio
async def test_the_same_request_twice_is_one_line_and_two_rows(
    sim: SimServer, tmp_path: Path
) -> None:
    rows = [{"id": "a", "prompt": "same"}, {"id": "b", "prompt": "same"}]
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    report = await run_file(
        _config(sim.url), tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False
    )
    assert report.ok
    assert sorted(r["id"] for r in read_rows(tmp_path / "out.jsonl")) == ["a", "b"]
    assert sum(sim.batches.log.submitted.values()) == 1


# -- kill -9 at each stage, then resume ---------------------------------------------------------

STAGES = {
    # stage: (sim settings while the first run goes, when to kill, journal state it leaves)
    "file written, upload unanswered": ({"hold": {"upload"}}, "upload", "written"),
    "uploaded, create unanswered": ({"hold": {"create"}}, "create", "creating"),
    "created, the answer lost": ({"hold": {"created"}}, "created", "creating"),
    "polling": ({"paused": True, "processing_time": 1.0}, "retrieve", "submitted"),
    "downloading": ({"hold": {"download"}}, "download", "ended"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_9_at_each_stage_then_resume_submits_each_request_once(
    sim: SimServer, tmp_path: Path, stage: str
) -> None:
    settings, call, state = STAGES[stage]
    rows = _rows(tmp_path / "in.jsonl")
    config = _config_file(tmp_path, sim.url, max_requests=25)  # 3 batches: 25, 25, 10
    sim.batches.configure(**settings)
    command = _command(tmp_path, config)

    _kill_when(sim, command, tmp_path, lambda log: log.calls[call] >= 2)
    assert state in _states(tmp_path / "out.jsonl")

    sim.batches.configure(hold=frozenset(), paused=False, processing_time=0.0)
    done = _run(command, tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    out = assert_complete(tmp_path / "out.jsonl", rows)
    log = sim.batches.log
    assert set(log.submitted) == _keys(rows)
    assert not log.twice(), f"submitted twice: {log.twice()}"
    assert sim.stats.requests == 0  # none sent online either
    assert all(r["batch"] for r in out)
    assert set(_states(tmp_path / "out.jsonl")) <= {"done", "discarded"}


@pytest.mark.anyio
async def test_a_create_whose_answer_is_lost_is_found_not_created_again(
    sim: SimServer, tmp_path: Path
) -> None:
    rows = _rows(tmp_path / "in.jsonl", 20)
    sim.batches.configure(lose={"create", "upload"})  # done, then answered 500, once each
    report = await run_file(
        _config(sim.url), tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False
    )
    assert report.ok
    assert_complete(tmp_path / "out.jsonl", rows)
    log = sim.batches.log
    assert log.calls["upload"] == 2  # a lost upload is simply done again (files cost nothing)
    assert log.calls["create"] == 1 and log.calls["list"] >= 1  # a lost create: found by name
    assert len(log.created) == 1 and not log.twice() and sim.stats.requests == 0


def test_ctrl_c_leaves_submitted_batches_alone_and_a_run_without_batch_waits_for_them(
    sim: SimServer, tmp_path: Path
) -> None:
    rows = _rows(tmp_path / "in.jsonl")
    config = _config_file(tmp_path, sim.url)
    sim.batches.configure(paused=True, processing_time=1.0)
    child = subprocess.Popen(_command(tmp_path, config), cwd=tmp_path, env=_env(),
                             stderr=subprocess.PIPE)  # fmt: skip
    try:
        sim.batches.wait_for(lambda log: log.calls["retrieve"] >= 2, timeout=CHILD_TIMEOUT)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, stderr.decode()
    assert sim.batches.log.calls["cancel"] == 0
    (batch_id,) = sim.batches.log.created
    assert sim.batches.status(batch_id) == "in_progress"

    # The same job, online this time: the 60 requests wait for their batch, none is re-sent.
    sim.batches.configure(paused=False, processing_time=0.0)
    online = _config_file(tmp_path, sim.url, online=True)
    done = _run(_command(tmp_path, online), tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert_complete(tmp_path / "out.jsonl", rows)
    assert sim.stats.requests == 0 and not sim.batches.log.twice()


# -- what a batch does not answer ---------------------------------------------------------------


@pytest.mark.anyio
async def test_expiry_keeps_the_partial_output_and_retries_the_rest(
    sim: SimServer, tmp_path: Path
) -> None:
    rows = _rows(tmp_path / "in.jsonl", 40)
    # Every batch expires with half its lines answered; after two batches a request goes online.
    sim.batches.configure(expire_rate=1.0, expire_at=0.5)
    report = await run_file(
        _config(sim.url, max_attempts=2), tmp_path / "in.jsonl", tmp_path / "out.jsonl",
        progress=False,
    )  # fmt: skip
    assert report.ok
    out = assert_complete(tmp_path / "out.jsonl", rows)
    statuses = [sim.batches.status(b) for b in sim.batches.log.created]
    assert statuses == ["expired", "expired"]
    assert sum(1 for r in out if r.get("batch")) == 20 + 10
    assert sim.stats.requests == 10  # the last quarter, online
    # Only what came back unanswered was submitted again.
    assert sorted(sim.batches.log.submitted.values()).count(2) == 20


@pytest.mark.anyio
async def test_error_lines_are_retried_online_and_a_400_line_fails_its_row(
    sim: SimServer, tmp_path: Path
) -> None:
    _rows(tmp_path / "in.jsonl", 50)

    def reply(body: dict[str, Any], ctx: Any) -> str | Reply:
        text = body["messages"][-1]["content"]
        if text == "prompt number 7":
            return Reply(status=400, content="this prompt is refused")
        return f"echo: {text}"

    sim.configure(reply=reply, seed=3)
    sim.batches.configure(line_error_rate=0.2, seed=3)
    report = await run_file(
        _config(sim.url, max_attempts=1), tmp_path / "in.jsonl", tmp_path / "out.jsonl",
        progress=False,
    )  # fmt: skip
    (batch,) = sim.batches.batches.values()
    errored = len(batch.error_lines)  # lines answered 500 (the 400 one aside)
    assert 0 < errored < 50
    seven_errored = 7 in batch.error_lines  # then its 500 went online, where it got the 400
    assert report.failed == 1
    out = read_rows(tmp_path / "out.jsonl")
    assert len(out) == 49
    assert sum(1 for r in out if not r.get("batch")) == errored - seven_errored
    assert sim.stats.requests == errored  # exactly the 5xx lines went online
    (error,) = read_rows(tmp_path / "out.errors.jsonl")
    assert error["id"] == "r7" and "400" in error["error"]["message"]
    assert error["error"]["type"] == ("ClientError" if seven_errored else "BatchError")


@pytest.mark.anyio
async def test_a_batch_that_fails_validation_goes_online(sim: SimServer, tmp_path: Path) -> None:
    rows = _rows(tmp_path / "in.jsonl", 20)
    sim.batches.configure(fail_rate=1.0)
    report = await run_file(
        _config(sim.url), tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False
    )
    assert report.ok
    out = assert_complete(tmp_path / "out.jsonl", rows)
    assert not any(r.get("batch") for r in out) and sim.stats.requests == 20


@pytest.mark.anyio
async def test_an_endpoint_without_a_batch_api_answers_online(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncsynth.testing import sim_batch

    monkeypatch.setattr(
        sim_batch.BatchSim, "_upload", lambda self, body, keep: sim_batch._not_found("no", keep)
    )
    rows = _rows(tmp_path / "in.jsonl", 20)
    report = await run_file(
        _config(sim.url), tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False
    )
    assert report.ok
    assert_complete(tmp_path / "out.jsonl", rows)
    assert sim.stats.requests == 20 and not sim.batches.log.created


# -- the hybrid tail, the deadline, cancel ------------------------------------------------------


async def _run_advancing(sim: SimServer, config: Config, tmp: Path, seconds: float) -> Any:
    """run_file, moving the (paused) batch clock by ``seconds`` once the first poll came."""

    async def advance() -> None:
        await anyio.to_thread.run_sync(
            lambda: sim.batches.wait_for(lambda log: log.calls["retrieve"] >= 1)
        )
        sim.batches.advance(seconds)

    async with anyio.create_task_group() as tg:
        tg.start_soon(advance)
        return await run_file(config, tmp / "in.jsonl", tmp / "out.jsonl", progress=False)


@pytest.mark.anyio
async def test_online_tail_cancels_a_batch_with_few_stragglers_and_sends_them_online(
    sim: SimServer, tmp_path: Path
) -> None:
    rows = _rows(tmp_path / "in.jsonl", 100)
    sim.batches.configure(paused=True, processing_time=100.0)
    config = _config(sim.url, online_tail=10)

    report = await _run_advancing(sim, config, tmp_path, 95.0)  # 95 answered, then it stalls
    assert report.ok
    out = assert_complete(tmp_path / "out.jsonl", rows)
    assert sim.batches.log.calls["cancel"] == 1
    assert sum(1 for r in out if r.get("batch")) == 95
    assert sim.stats.requests == 5
    assert not sim.batches.log.twice()


@pytest.mark.anyio
async def test_batch_deadline_cancels_the_batch_and_finishes_online(
    sim: SimServer, tmp_path: Path
) -> None:
    rows = _rows(tmp_path / "in.jsonl", 40)
    sim.batches.configure(paused=True, processing_time=100.0)
    config = _config(sim.url, batch_deadline=1.0)

    report = await _run_advancing(sim, config, tmp_path, 25.0)  # a quarter, then nothing
    assert report.ok
    out = assert_complete(tmp_path / "out.jsonl", rows)
    (batch_id,) = sim.batches.log.created
    assert sim.batches.status(batch_id) == "cancelled"
    in_batch = sum(1 for r in out if r.get("batch"))
    assert in_batch == sim.batches.batches[batch_id].done == 10
    assert sim.stats.requests == 40 - in_batch


def test_batches_list_status_cancel_download(sim: SimServer, tmp_path: Path) -> None:
    rows = _rows(tmp_path / "in.jsonl", 30)
    config = _config_file(tmp_path, sim.url)
    sim.batches.configure(paused=True, processing_time=100.0)
    _kill_when(sim, _command(tmp_path, config), tmp_path, lambda log: log.calls["retrieve"] >= 1)
    output = str(tmp_path / "out.jsonl")
    runner = CliRunner()

    listed = runner.invoke(main, ["batches", "list", output])
    assert listed.exit_code == 0, listed.output
    (batch_id,) = sim.batches.log.created
    assert batch_id in listed.output and "submitted" in listed.output

    sim.batches.advance(50.0)  # half answered
    status = runner.invoke(main, ["batches", "status", output, "--config", str(config)])
    assert status.exit_code == 0, status.output
    assert "in_progress" in status.output and "15" in status.output

    cancel = runner.invoke(main, ["batches", "cancel", output, batch_id, "--config", str(config)])
    assert cancel.exit_code == 0, cancel.output
    assert sim.batches.status(batch_id) == "cancelled"

    download = runner.invoke(main, ["batches", "download", output, "--config", str(config)])
    assert download.exit_code == 0, download.output
    assert "15 answers imported, 15 without an answer" in download.output
    with Journal(journal_path_for(output)) as journal:
        assert len(journal) == 15

    # The next run takes the 15 from the journal and sends only the other 15, in a new batch.
    sim.batches.configure(paused=False, processing_time=0.0)
    done = _run(_command(tmp_path, config), tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    out = assert_complete(tmp_path / "out.jsonl", rows)
    assert sum(1 for r in out if r.get("cached")) == 15
    assert len(sim.batches.log.created) == 2
    assert len(sim.batches.batches[sim.batches.log.created[1]].lines) == 15


def test_batch_config_is_validated_with_the_key_named(tmp_path: Path) -> None:
    from asyncsynth.engine.errors import ConfigError

    def endpoint(batch: Any) -> Config:
        table = {"base_url": "http://x/v1", "model": "m", "batch": batch}
        return config_from_dict({"endpoints": {"api": table}})

    with pytest.raises(ConfigError, match=r"endpoints\.api\.batch\.max_requests"):
        endpoint({"max_requests": 0})
    with pytest.raises(ConfigError, match=r"endpoints\.api\.batch\.polling: unknown key"):
        endpoint({"polling": 1})
    on = endpoint(True)
    assert on.endpoints["api"].batch is not None
    assert on.endpoints["api"].batch.max_requests == 50_000


@pytest.mark.anyio
async def test_batch_mode_without_a_journal_is_refused(sim: SimServer) -> None:
    from asyncsynth.engine.errors import ConfigError

    async with Engine(_config(sim.url)) as engine:
        with pytest.raises(ConfigError, match="journal"):
            await engine.complete(Request.from_prompt("x"))


def test_gra_on_batch_endpoints_makes_the_same_data_at_half_the_price(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """A pipeline over batch endpoints: each model's requests go through the Batch API, and
    the run makes what the same run online makes."""
    from asyncsynth.testing.gra_pool import GraScript, pool_config

    sim = sim_factory(reply=GraScript())
    names = list(pool_config(sim.url).endpoints)

    def config(batch: bool) -> Path:
        path = tmp_path / f"gra-{batch}.toml"
        lines = [f'[endpoints.{n}]\nbase_url = "{sim.url}"\nmodel = "{n}"\nadaptive = false\n'
                 f"price = {_toml_value(PRICE)}\n"
                 + (f"batch = {_toml_value(FAST)}\n" if batch else "")
                 for n in names]  # fmt: skip
        path.write_text(
            "".join(lines)
            + "[engine]\n"
            + "".join(f"{k} = {_toml_value(v)}\n" for k, v in ENGINE.items())
            + f'[gra]\npool = {orjson.dumps(names).decode()}\nembedding_model = "none"\n'
        )
        return path

    def gra(batch: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        out = tmp_path / f"out-{batch}"
        args = ["gra", str(config(batch)), "--target", "4", "--out", str(out), "--seed", "1"]
        result = CliRunner().invoke(main, [*args, "-q"])
        assert result.exit_code == 0, result.output
        return read_rows(out / "accepted.jsonl"), orjson.loads((out / "report.json").read_bytes())

    online, online_report = gra(False)
    assert not sim.batches.log.created
    batched, batch_report = gra(True)
    assert sim.batches.log.created  # every stage's requests went through batches
    assert [(r["instruction"], r["response"]) for r in batched] == [
        (r["instruction"], r["response"]) for r in online
    ]
    assert batch_report["tokens"] == online_report["tokens"]
    assert batch_report["cost"]["total_usd"] == pytest.approx(
        online_report["cost"]["total_usd"] * 0.5
    )
