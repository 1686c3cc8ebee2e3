"""The journal's write path off the event loop: ``record_async`` in a worker thread.

Durable when it returns (another connection reads every answer), stored once even when
cancelled, safe beside a synchronous ``record`` of the same journal, and the WAL stays
bounded by the checkpoints the writer makes in its thread.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from asyncsynth import Journal
from asyncsynth.engine import journal as journal_module
from asyncsynth.engine.client import Completion
from asyncsynth.engine.journal import request_key

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
