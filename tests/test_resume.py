"""Resume and the request cache: kill -9, Ctrl-C, torn and corrupt journals, invalidation.

The crash tests run ``asyncsynth run`` as a child process against a simulated endpoint
in this process, stop it half way (the sim's request counter is the event waited on),
run the same command again and check the output row by row: exactly one row per
request, each the answer to its own prompt, and no more requests sent the second time
than the first run left unanswered.
"""

from __future__ import annotations

import os
import signal
import sqlite3
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
from asyncsynth.engine.journal import journal_path_for
from asyncsynth.run import RunReport, run_file
from asyncsynth.testing import Reply, ReplyContext, SimServer

ROOT = Path(__file__).resolve().parents[1]
N = 120
CHILD_TIMEOUT = 60.0

SimFactory = Callable[..., SimServer]


# -- helpers ------------------------------------------------------------------------------------


def _write_input(path: Path, count: int = N, **extra: Any) -> list[dict[str, Any]]:
    rows = [{"id": f"r{i}", "prompt": f"prompt number {i}", **extra} for i in range(count)]
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    return rows


def _journal_entries(output: Path) -> int:
    with Journal(journal_path_for(output)) as journal:
        return len(journal)


def _command(input_path: Path, output: Path, url: str, *more: str) -> list[str]:
    code = "from asyncsynth.cli import main; main()"
    return [sys.executable, "-c", code, "run", str(input_path), "-o", str(output),
            "--base-url", url, "--model", "m", "-q", *more]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _start(command: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _finish(command: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return done


def _kill_half_way(sim: SimServer, command: list[str], cwd: Path, sig: int) -> tuple[int, bytes]:
    """Start the command, deliver ``sig`` once the sim has received half the requests."""
    child = _start(command, cwd)
    try:
        sim.wait_for_requests(N // 2, timeout=CHILD_TIMEOUT)
        child.send_signal(sig)
        _, stderr = child.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, stderr


# -- crash and interrupt ------------------------------------------------------------------------


def test_kill_9_half_way_then_the_same_command_sends_only_the_rest(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    sim = sim_factory(latency=0.02)
    rows = _write_input(tmp_path / "in.jsonl")
    output = tmp_path / "out.jsonl"
    command = _command(tmp_path / "in.jsonl", output, sim.url, "--concurrency", "4")

    code, _ = _kill_half_way(sim, command, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    saved = _journal_entries(output)
    assert 0 < saved < N

    sent_before = sim.stats.requests
    _finish(command, tmp_path)
    resent = sim.stats.requests - sent_before

    out = assert_complete(output, rows)
    assert resent <= N - saved
    assert sum(1 for r in out if r.get("cached")) == saved
    assert not (tmp_path / "out.errors.jsonl").exists()


def test_ctrl_c_cancels_in_flight_keeps_answers_and_says_how_to_resume(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    answered = N // 2

    def first_half_only(body: dict[str, Any], ctx: ReplyContext) -> str | Reply:
        # After half the requests the server stalls: Ctrl-C must not wait for it.
        return (
            Reply(delay=600.0) if ctx.n > answered else f"echo: {body['messages'][-1]['content']}"
        )

    concurrency = 8
    sim = sim_factory(latency=0.005, reply=first_half_only)
    rows = _write_input(tmp_path / "in.jsonl")
    output = tmp_path / "out.jsonl"
    command = _command(tmp_path / "in.jsonl", output, sim.url, "--concurrency", str(concurrency))

    child = _start(command, tmp_path)
    try:
        # Once the stalled requests fill every slot, all answered ones have reached the client.
        sim.wait_for_requests(answered + concurrency, timeout=CHILD_TIMEOUT)
        child.send_signal(signal.SIGINT)
        # The stalled requests hang 600 s: a Ctrl-C that awaited them would run past
        # CHILD_TIMEOUT (a tenth of that) and fail here; one that cancels them exits at once.
        _, stderr = child.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert child.returncode == 130
    message = stderr.decode()
    assert "Interrupted." in message
    assert "run the same command again to resume" in message
    assert f"{answered} answers are saved in the journal" in message

    # Consistent: what the output holds is right and journaled; every answer is journaled.
    partial = read_rows(output)
    assert len(partial) <= answered
    for row in partial:
        assert row["completion"] == f"echo: {row['prompt']}"
    assert _journal_entries(output) == answered

    sim.configure(reply=None)
    sent_before = sim.stats.requests
    _finish(command, tmp_path)
    assert sim.stats.requests - sent_before <= N - answered
    assert_complete(output, rows)


def test_torn_wal_tail_is_dropped_and_only_the_lost_answers_are_sent_again(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    sim = sim_factory(latency=0.02)
    rows = _write_input(tmp_path / "in.jsonl")
    output = tmp_path / "out.jsonl"
    command = _command(tmp_path / "in.jsonl", output, sim.url, "--concurrency", "4")

    _kill_half_way(sim, command, tmp_path, signal.SIGKILL)
    wal = Path(f"{journal_path_for(output)}-wal")
    assert wal.stat().st_size > 0  # killed: the answers are still in the write-ahead log
    with sqlite3.connect(f"file:{journal_path_for(output)}?mode=ro", uri=True) as db:
        before = db.execute("SELECT count(*) FROM responses").fetchone()[0]
    # Power loss mid-write: the log ends in the middle of a frame.
    with open(wal, "r+b") as f:
        f.truncate(wal.stat().st_size * 2 // 3 + 5)

    kept = _journal_entries(output)
    assert kept < before

    sent_before = sim.stats.requests
    _finish(command, tmp_path)
    assert sim.stats.requests - sent_before <= N - kept
    out = assert_complete(output, rows)
    assert sum(1 for r in out if r.get("cached")) == kept


# -- damaged journals (in process) ---------------------------------------------------------------


def _config(url: str, **defaults: Any) -> Config:
    return config_from_dict(
        {
            "endpoints": {"a": {"base_url": url, "model": "m"}},
            "engine": {"backoff_base": 0.001, "backoff_max": 0.01},
            "defaults": defaults,
        }
    )


def _run(config: Config, input_path: Path, output: Path, **kwargs: Any) -> RunReport:
    async def go() -> RunReport:
        return await run_file(config, input_path, output, progress=False, **kwargs)

    return anyio.run(go)


def _sent(sim: SimServer, fn: Callable[[], object]) -> int:
    before = sim.stats.requests
    fn()
    return sim.stats.requests - before


def test_a_journal_that_is_not_a_database_is_set_aside_and_everything_resent(
    sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _write_input(tmp_path / "in.jsonl", 20)
    output = tmp_path / "out.jsonl"
    config = _config(sim.url)
    _run(config, tmp_path / "in.jsonl", output)
    journal = journal_path_for(output)
    with open(journal, "r+b") as f:  # overwrite the header and the first pages
        f.write(os.urandom(8192))

    assert _sent(sim, lambda: _run(config, tmp_path / "in.jsonl", output)) == 20
    assert_complete(output, rows)
    assert "is damaged" in caplog.text
    assert list(tmp_path.glob("out.jsonl.journal.sqlite.corrupt-*"))
    assert _journal_entries(output) == 20


def test_a_changed_byte_inside_a_record_is_never_trusted(
    sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _write_input(tmp_path / "in.jsonl", 20)
    output = tmp_path / "out.jsonl"
    config = _config(sim.url)
    _run(config, tmp_path / "in.jsonl", output)
    journal = journal_path_for(output)
    data = bytearray(journal.read_bytes())
    # Bit rot inside one stored answer: the page is still well-formed SQLite.
    at = data.index(b"echo: prompt number 7")
    data[at + len("echo: prompt number ")] = ord("9")
    journal.write_bytes(bytes(data))

    assert _sent(sim, lambda: _run(config, tmp_path / "in.jsonl", output)) == 1
    assert_complete(output, rows)
    assert "failed its checksum" in caplog.text
    assert _sent(sim, lambda: _run(config, tmp_path / "in.jsonl", output)) == 0


# -- what invalidates what -----------------------------------------------------------------------


def test_a_changed_param_invalidates_only_the_requests_it_changes(
    sim: SimServer, tmp_path: Path
) -> None:
    input_path = tmp_path / "in.jsonl"
    rows = _write_input(input_path, 10)
    output = tmp_path / "out.jsonl"
    config = _config(sim.url, temperature=0.5)
    assert _sent(sim, lambda: _run(config, input_path, output)) == 10

    # Two rows get their own max_tokens: those two, and only those, are asked again.
    for row in rows[3], rows[7]:
        row["params"] = {"max_tokens": 5}
    input_path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    assert _sent(sim, lambda: _run(config, input_path, output)) == 2
    assert _sent(sim, lambda: _run(config, input_path, output)) == 0

    # Not part of an answer: API key, replica URL, timeouts, concurrency, retries.
    with SimServer() as replica:
        moved = config_from_dict(
            {
                "endpoints": {
                    "a": {
                        "base_url": replica.url,
                        "model": "m",
                        "api_key_env": "HOME",
                        "timeout": 7,
                        "max_concurrency": 3,
                    }
                },
                "engine": {"max_attempts": 2},
                "defaults": {"temperature": 0.5},
            }
        )
        assert _sent(replica, lambda: _run(moved, input_path, output)) == 0

    # A default every request inherits changes every request; so does the model.
    assert _sent(sim, lambda: _run(_config(sim.url, temperature=0.9), input_path, output)) == 10
    other_model = config_from_dict(
        {
            "endpoints": {"a": {"base_url": sim.url, "model": "m2"}},
            "defaults": {"temperature": 0.5},
        }
    )
    assert _sent(sim, lambda: _run(other_model, input_path, output)) == 10
    assert_complete(output, rows)


def test_samples_are_separate_answers_and_more_samples_send_only_the_new_ones(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    draws = iter(range(1_000_000))
    sim = sim_factory(reply=lambda body, ctx: f"draw {next(draws)}")
    input_path = tmp_path / "in.jsonl"
    output = tmp_path / "out.jsonl"
    config = _config(sim.url, temperature=1.0)

    _write_input(input_path, 4, n=3)
    assert _sent(sim, lambda: _run(config, input_path, output)) == 12
    out = read_rows(output)
    assert sorted((r["id"], r["sample"]) for r in out) == [
        (f"r{i}", s) for i in range(4) for s in range(3)
    ]
    # Identical prompts, distinct draws: nothing collapsed into one cached answer.
    assert len({r["completion"] for r in out}) == 12

    _write_input(input_path, 4, n=5)
    assert _sent(sim, lambda: _run(config, input_path, output)) == 8
    out = read_rows(output)
    assert len(out) == 20 and len({r["completion"] for r in out}) == 20


def test_engine_complete_uses_the_journal_and_sample_index(sim: SimServer, tmp_path: Path) -> None:
    config = _config(sim.url)
    journal = tmp_path / "j.journal.sqlite"

    async def go() -> list[bool]:
        async with Engine(config, journal=journal) as engine:
            first = await engine.complete(Request.from_prompt("hi"))
            again = await engine.complete(Request.from_prompt("hi"))
            other = await engine.complete(Request.from_prompt("hi", sample=1))
        for r in (first, again, other):
            assert r.text() == "echo: hi"
        return [first.cached, again.cached, other.cached]

    assert anyio.run(go) == [False, True, False]
    assert sim.stats.requests == 2


# -- the switches ---------------------------------------------------------------------------------


def test_no_cache_sends_everything_and_leaves_the_journal_alone(
    sim: SimServer, tmp_path: Path
) -> None:
    input_path = tmp_path / "in.jsonl"
    rows = _write_input(input_path, 10)
    output = tmp_path / "out.jsonl"
    config = _config(sim.url)
    _run(config, input_path, output)
    journal = journal_path_for(output)
    stamp = journal.stat().st_mtime_ns

    assert _sent(sim, lambda: _run(config, input_path, output, cache=False)) == 10
    out = assert_complete(output, rows)
    assert not any(r.get("cached") for r in out)
    assert journal.stat().st_mtime_ns == stamp


def test_cache_stats_and_clear(sim: SimServer, tmp_path: Path) -> None:
    input_path = tmp_path / "in.jsonl"
    _write_input(input_path, 10)
    output = tmp_path / "out.jsonl"
    runner = CliRunner()
    args = ["run", str(input_path), "-o", str(output), "--base-url", sim.url, "--model", "m", "-q"]

    assert runner.invoke(main, args).exit_code == 0
    stats = runner.invoke(main, ["cache", "stats", str(output)])
    assert stats.exit_code == 0 and "10 answers" in stats.output

    rerun = runner.invoke(main, [*args, "--no-cache"])
    assert rerun.exit_code == 0 and sim.stats.requests == 20

    cleared = runner.invoke(main, ["cache", "clear", str(journal_path_for(output))])
    assert cleared.exit_code == 0 and "cleared 10 answers" in cleared.output
    assert runner.invoke(main, args).exit_code == 0
    assert sim.stats.requests == 30

    missing = runner.invoke(main, ["cache", "stats", str(tmp_path / "nothing.jsonl")])
    assert missing.exit_code != 0 and "no journal here" in missing.output


def test_key_filter_never_misses_a_stored_key_and_grows_past_its_capacity(
    tmp_path: Path,
) -> None:
    """Lookups skip SQLite for keys never stored: every stored key must still be found,
    before and after the filter is rebuilt larger, after a reopen and after ``clear``."""
    from asyncsynth.engine.client import Completion
    from asyncsynth.engine.journal import KeyFilter, request_key

    answer = Completion("an answer", "stop", {"prompt_tokens": 1, "completion_tokens": 2}, "m")
    keys = [request_key(["m"], [{"role": "user", "content": str(i)}], {}, 0) for i in range(3000)]
    path = tmp_path / "j.sqlite"
    with Journal(path) as journal:
        journal._keys = KeyFilter.of([], 0)
        journal._keys.capacity = 1000  # force rebuilds at this size
        for start in range(0, 2000, 250):
            journal.record((key, answer) for key in keys[start : start + 250])
        assert journal._keys.capacity > 1000
        assert all(journal.get(key) == answer for key in keys[:2000])
        assert all(journal.get(key) is None for key in keys[2000:])
    with Journal(path) as journal:
        assert all(journal.get(key) == answer for key in keys[:2000])
        assert sum(key in journal._keys for key in keys[2000:]) < 20  # ~0.2% false positives
        journal.clear()
        assert all(journal.get(key) is None for key in keys)
        journal.record([(keys[0], answer)])
        assert journal.get(keys[0]) == answer

    short = KeyFilter()
    for i in range(500):
        short.add(f"k{i}".encode())
    assert all(f"k{i}".encode() in short for i in range(500))
