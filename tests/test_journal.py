"""The journal's write path off the event loop: ``record_async`` in a worker thread.

Durable when it returns (another connection reads every answer), stored once even when
cancelled, safe beside a synchronous ``record`` of the same journal, and the WAL stays
bounded by the checkpoints the writer makes in its thread. Answers the engine encodes
itself (``store``) are the records ``record`` makes, and a journaled ``map`` keeps
answering while a commit is under way.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from polling import wait_until

from asyncsynth import Engine, Journal, Request, tune_gc
from asyncsynth.cli import main
from asyncsynth.config import Config
from asyncsynth.engine import journal as journal_module
from asyncsynth.engine.client import Completion
from asyncsynth.engine.engine import COMMIT_ROWS, GC_THRESHOLD
from asyncsynth.engine.journal import encode_record, request_key
from asyncsynth.testing import SimServer

ANSWER = Completion("an answer", "stop", {"prompt_tokens": 1, "completion_tokens": 2}, "m")


def _keys(count: int, start: int = 0) -> list[bytes]:
    return [
        request_key(["m"], [{"role": "user", "content": str(i)}], {}, 0)
        for i in range(start, start + count)
    ]


def test_record_async_is_durable_when_it_returns(tmp_path: Path) -> None:
    keys = _keys(300)
    path = tmp_path / "j.sqlite"

    async def go() -> None:
        with Journal(path) as journal:
            stored = await journal.record_async(
                [(key, ANSWER) for key in keys], spend={"a": (0.5, 900)}
            )
            assert stored == 300
            with Journal(path) as other:  # a second reader sees it all, before any close
                assert len(other) == 300
                assert all(other.get(key) == ANSWER for key in keys)
                assert other.spent() == {"a": (0.5, 900)}
            assert all(journal.get(key) == ANSWER for key in keys)  # and the key filter has them

    anyio.run(go)


def test_record_async_cancelled_stores_the_answers_once(tmp_path: Path) -> None:
    """Cancelled before its thread began, it commits on the spot; never twice, never half."""
    first, second = _keys(50), _keys(50, start=50)
    path = tmp_path / "j.sqlite"

    async def go() -> None:
        with Journal(path) as journal:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await journal.record_async([(key, ANSWER) for key in first], spend={"a": (1.0, 3)})
            assert scope.cancelled_caught

            async with anyio.create_task_group() as tg:  # cancelled while the thread commits
                tg.start_soon(journal.record_async, [(key, ANSWER) for key in second])
                await anyio.sleep(0)
                tg.cancel_scope.cancel()
            assert all(journal.get(key) == ANSWER for key in first)
        with Journal(path) as journal:
            assert len(journal) == 100
            assert journal.spent() == {"a": (1.0, 3)}

    anyio.run(go)


def test_record_and_record_async_together(tmp_path: Path) -> None:
    """``complete`` records on the loop while ``map`` commits in a thread: both land."""
    keys = _keys(2000)
    path = tmp_path / "j.sqlite"

    async def go() -> None:
        with Journal(path) as journal:
            async with anyio.create_task_group() as tg:
                for start in range(0, 1000, 100):
                    tg.start_soon(
                        journal.record_async, [(key, ANSWER) for key in keys[start : start + 100]]
                    )
                for key in keys[1000:]:
                    journal.record([(key, ANSWER)])
            assert len(journal) == 2000

    anyio.run(go)


def test_commits_in_the_worker_thread_keep_the_wal_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints run in the writer's thread: the WAL file never outgrows the checkpoint
    interval and a commit, however much is written."""
    monkeypatch.setattr(journal_module, "_CHECKPOINT_PAGES", 64)
    big = Completion("x" * 2000, "stop", {"prompt_tokens": 1, "completion_tokens": 2}, "m")
    keys = _keys(4000)
    path = tmp_path / "j.sqlite"
    wal = Path(f"{path}-wal")
    largest = 0

    async def go() -> None:
        nonlocal largest
        with Journal(path) as journal:
            for start in range(0, len(keys), 100):
                await journal.record_async([(key, big) for key in keys[start : start + 100]])
                largest = max(largest, wal.stat().st_size)
            assert len(journal) == len(keys)

    anyio.run(go)
    written = len(keys) * 2000
    assert written > 7_000_000
    assert largest < (64 + 160) * 4096  # the interval plus one commit (~100 pages of rows)


def test_store_takes_the_records_record_makes(tmp_path: Path) -> None:
    """One encoding: what the engine stores is byte for byte what ``record`` writes, and
    reads back as the same answer (what it cost when made included)."""
    keys = _keys(3)
    priced = Completion("priced", "length", {"prompt_tokens": 4, "completion_tokens": 5}, "m", 0.25)
    answers = [(keys[0], ANSWER), (keys[1], priced)]
    with Journal(tmp_path / "a.sqlite") as a, Journal(tmp_path / "b.sqlite") as b:
        assert a.record(answers) == 2
        records: list[bytes] = []
        for key, c in answers:
            record = encode_record(key, c.content, c.finish_reason, c.usage, c.model, c.cost)
            records += [key, record]
        assert b.store(records) == 2
        assert b.store([]) == 0
        for journal in (a, b):
            assert journal.get(keys[0]) == ANSWER
            assert journal.get(keys[1]) == priced
            assert journal.get(keys[2]) is None
        read = "SELECT key, value FROM responses ORDER BY key"
        assert a._db.execute(read).fetchall() == b._db.execute(read).fetchall()


def test_a_journaled_map_answers_on_while_a_commit_is_under_way(
    sim: SimServer, config_for: Callable[..., Config], tmp_path: Path
) -> None:
    """Answers wait for their commit in a buffer with room for more than a commit's worth:
    while the first commit is held in the writer, the workers go on answering (before,
    they stopped once ``concurrency`` answers were waiting)."""
    held = threading.Event()
    release = threading.Event()
    write = Journal._write

    def slow_write(
        self: Journal, records: list[bytes], spend: Mapping[str, tuple[float, int]] | None
    ) -> None:
        if not held.is_set():
            held.set()
            release.wait(30)
        write(self, records, spend)

    n = COMMIT_ROWS  # more than one commit's worth would not fit beside a held commit
    results = []

    async def go() -> None:
        async with Engine(
            config_for(sim.url, max_concurrency=4), journal=tmp_path / "j.sqlite"
        ) as engine:
            requests = (Request.from_prompt(f"q{i}", id=str(i)) for i in range(n))

            async def consume() -> None:
                async for result in engine.map(requests):
                    results.append(result)

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await wait_until(held.is_set, timeout=30)
                # the first commit is held; every request is still answered meanwhile
                await wait_until(lambda: engine.totals.done == n, timeout=30)
                assert results == []  # nothing is handed out before its commit
                release.set()
        with Journal(tmp_path / "j.sqlite") as journal:
            assert len(journal) == n

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Journal, "_write", slow_write)
            anyio.run(go)
    finally:
        release.set()
    assert sorted(r.request.id or "" for r in results) == sorted(str(i) for i in range(n))
    assert all(r.ok for r in results)


def test_tune_gc_raises_the_young_threshold_and_the_cli_calls_it(tmp_path: Path) -> None:
    """The CLI's process collects its young generation less often (a journaled map frees
    its answers in bursts); a higher threshold already set is kept, the older ones too."""
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        tune_gc()
        assert gc.get_threshold() == (GC_THRESHOLD, 11, 12)
        gc.set_threshold(3 * GC_THRESHOLD, 11, 12)
        tune_gc()
        assert gc.get_threshold() == (3 * GC_THRESHOLD, 11, 12)
        gc.set_threshold(700, 10, 10)
        result = CliRunner().invoke(main, ["cache", "stats", str(tmp_path / "none.jsonl")])
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert gc.get_threshold() == (GC_THRESHOLD, 10, 10)
    finally:
        gc.set_threshold(*saved)
