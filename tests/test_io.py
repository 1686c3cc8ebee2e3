"""JSONL input shapes, lazy reading, bad lines, output and error rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncsynth.engine import InputError, RateLimited, Request, Result
from asyncsynth.io import (
    ROLES,
    JsonlWriter,
    SeenIds,
    count_lines,
    error_row,
    output_row,
    parse_row,
    read_jsonl,
    read_requests,
    write_json,
)

USER = [{"role": "user", "content": "hi"}]


def test_messages_row_keeps_its_fields_and_makes_an_id() -> None:
    [request] = parse_row({"messages": USER, "topic": "x", "params": {"temperature": 0}}, 7)
    assert request.messages == USER
    assert request.params == {"temperature": 0}
    assert request.id == "line-7"
    assert request.meta["topic"] == "x"
    assert request.meta["id"] == "line-7"


def test_prompt_row_with_system_and_kept_id() -> None:
    [request] = parse_row({"prompt": "hi", "system": "be brief", "id": 12}, 1)
    assert request.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert request.id == "12"


def test_openai_batch_line() -> None:
    row = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-x", "messages": USER, "max_tokens": 5, "temperature": 0.3},
    }
    [request] = parse_row(row, 1)
    assert request.id == "req-1"
    assert request.messages == USER
    assert request.params == {"max_tokens": 5, "temperature": 0.3}  # model: the endpoint's
    assert request.meta["custom_id"] == "req-1"


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "hi", "n": 3},
        {"custom_id": "c", "body": {"messages": USER, "n": 3}},
    ],
)
def test_n_samples_become_requests_and_rows_with_sample_indices(row: dict[str, Any]) -> None:
    requests = parse_row(row, 1)
    assert [r.sample for r in requests] == [0, 1, 2]
    rows = [output_row(Result(r, completion="x", usage={})) for r in requests]
    assert [r["sample"] for r in rows] == [0, 1, 2]
    errors = [error_row(Result(r, error=RateLimited("x", status=429))) for r in requests]
    assert [r["sample"] for r in errors] == [0, 1, 2]


def test_single_sample_rows_carry_no_sample_field() -> None:
    [request] = parse_row({"prompt": "hi"}, 1)
    assert "sample" not in output_row(Result(request, completion="x", usage={}))


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ([1, 2], "must be a JSON object"),
        ({"text": "hi"}, "needs 'messages', 'prompt'"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"content": "x"}]}, "'role' and 'content'"),
        ({"prompt": 5}, "'prompt' must be a string"),
        ({"prompt": "hi", "params": {"temprature": 1}}, "params.temprature: unknown key"),
        ({"prompt": "hi", "params": 3}, "params: expected a table"),
        ({"prompt": "hi", "n": 0}, "'n' must be a positive integer"),
        ({"prompt": "hi", "n": 10_001}, "'n' = 10,001 asks for more samples than the maximum"),
        (
            {"messages": [{"role": "human", "content": "x"}]},
            "'messages'\\[0\\]: role 'human' is not one of system, developer, user, assistant",
        ),
        (
            {"custom_id": "c", "body": {"messages": [{"role": "function", "content": "x"}]}},
            "body.messages\\[0\\]: role 'function' is not one of",
        ),
        ({"prompt": "hi", "completion": "x"}, "'completion' is reserved"),
        ({"custom_id": "c", "body": "x"}, "'body' must be an object"),
    ],
)
def test_bad_rows_are_refused_with_a_reason(row: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_row(row, 1)


def test_read_requests_is_lazy_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        b'{"prompt": "a"}',
        b"{not json",
        b"",
        b'{"prompt": 3}',
        b'{"prompt": "b", "id": "B"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    bad: list[tuple[InputError, bytes]] = []
    requests = read_requests(path, lambda error, raw: bad.append((error, raw)))
    first = next(requests)  # nothing past line 1 has been read yet
    assert first.id == "line-1"
    assert bad == []
    rest = list(requests)
    assert [r.id for r in rest] == ["B"]
    assert [(e.line, e.source) for e, _ in bad] == [(2, str(path)), (4, str(path))]
    assert str(bad[0][0]).startswith(f"{path}:2: not valid JSON")
    assert str(bad[1][0]) == f"{path}:4: 'prompt' must be a string"
    assert bad[1][1].strip() == b'{"prompt": 3}'


def test_output_and_error_rows() -> None:
    request = Request(USER, id="x", meta={"id": "x", "topic": "t", "messages": USER})
    ok = Result(
        request,
        completion="hello",
        finish_reason="stop",
        usage={"prompt_tokens": 3, "completion_tokens": 2},
        model="m",
        latency_s=0.123456,
        attempts=2,
    )
    row = output_row(ok)
    assert row == {
        "id": "x",
        "topic": "t",
        "messages": USER,
        "completion": "hello",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        "model": "m",
        "latency_s": 0.1235,
        "attempts": 2,
        "cost_usd": None,
    }
    failed = Result(
        request,
        attempts=3,
        error=RateLimited("HTTP 429: slow down", status=429, endpoint="a"),
    )
    assert error_row(failed)["error"] == {
        "type": "RateLimited",
        "status": 429,
        "message": "HTTP 429: slow down",
        "attempts": 3,
        "endpoint": "a",
    }


def test_writer_read_jsonl_and_count_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.jsonl"
    with JsonlWriter(path, lazy=True) as writer:
        assert not path.exists()  # lazy: no file until the first row
        writer.write({"a": 1})
        writer.write({"b": "é"})
    assert writer.rows == 2
    assert [row for _, row in read_jsonl(path)] == [{"a": 1}, {"b": "é"}]
    assert count_lines(path) == 2
    path.write_bytes(b'{"a": 1}\n{"b": 2}')  # no final newline
    assert count_lines(path) == 2
    path.write_bytes(b'{"a": 1}\n\n{oops\n')
    with pytest.raises(InputError, match=r"out\.jsonl:3: not valid JSON"):
        list(read_jsonl(path))


def test_write_json_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    write_json(path, {"x": 1})
    assert orjson.loads(path.read_bytes()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_a_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n{"prompt": "b"}\n')
    bad: list[InputError] = []
    requests = list(read_requests(path, lambda error, raw: bad.append(error)))
    assert [r.messages[0]["content"] for r in requests] == ["a", "b"]
    assert bad == []
    assert [row for _, row in read_jsonl(path)] == [{"prompt": "a"}, {"prompt": "b"}]


def test_batch_body_keys_asyncsynth_does_not_model_pass_through_as_extra_body() -> None:
    row = {
        "custom_id": "r1",
        "body": {
            "model": "x",
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 20,
            "user": "u-1",
            "temperature": 0.2,
        },
    }
    (request,) = parse_row(row, 1)
    assert request.params == {
        "temperature": 0.2,
        "extra_body": {"max_completion_tokens": 20, "user": "u-1"},
    }


def test_every_chat_role_is_accepted() -> None:
    messages = [{"role": role, "content": "x"} for role in ROLES]
    assert parse_row({"messages": messages}, 1)[0].messages == messages


def test_the_largest_n_is_configurable() -> None:
    assert len(parse_row({"prompt": "hi", "n": 3}, 1, max_n=3)) == 3
    with pytest.raises(ValueError, match="maximum of 2 a line"):
        parse_row({"prompt": "hi", "n": 3}, 1, max_n=2)


def _read(path: Path, **options: Any) -> tuple[list[Request], list[InputError]]:
    bad: list[InputError] = []
    requests = list(read_requests(path, lambda error, raw: bad.append(error), **options))
    return requests, bad


def test_duplicate_ids_are_refused_with_both_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    rows = [
        {"prompt": "a", "id": "q1"},
        {"prompt": "b", "id": "q2"},
        {"prompt": "c", "id": "q1"},  # the same id: rows could not be told apart
        {"prompt": "d"},  # line-4
        {"prompt": "e", "id": "line-4"},  # the id made for line 4
        {"custom_id": "q2", "body": {"messages": USER}},  # Batch lines share the ids
        {"prompt": "f", "id": "q3", "n": 2},  # samples of one line are not duplicates
    ]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    requests, bad = _read(path)
    assert [(r.id, r.sample) for r in requests] == [
        ("q1", 0),
        ("q2", 0),
        ("line-4", 0),
        ("q3", 0),
        ("q3", 1),
    ]
    assert [(e.line, str(e).split(": ", 1)[1]) for e in bad] == [
        (
            3,
            "duplicate id 'q1': line 1 has it too, and output rows could not be told apart "
            "(--allow-duplicate-ids sends it anyway)",
        ),
        (
            5,
            "duplicate id 'line-4': line 4 has it too, and output rows could not be told apart "
            "(--allow-duplicate-ids sends it anyway)",
        ),
        (
            6,
            "duplicate id 'q2': line 2 has it too, and output rows could not be told apart "
            "(--allow-duplicate-ids sends it anyway)",
        ),
    ]
    allowed, none = _read(path, allow_duplicate_ids=True)
    assert none == [] and len(allowed) == 8


def test_seen_ids_stay_compact_and_exact_over_many_ids() -> None:
    seen = SeenIds()
    for i in range(50_000):
        assert seen.add(f"id-{i}", i + 1) is None
    assert len(seen) == 50_000
    assert seen.add("id-123", 99_999) == 124  # found after the table grew many times
    assert seen.add("id-49999", 1) == 50_000
    table_bytes = len(seen._hashes) * 8 + len(seen._lines) * 4
    assert table_bytes <= 36 * 50_000  # a few dozen bytes an id, the ids not kept


def test_a_line_that_is_not_utf8_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n{"prompt": "also fine"}\n')
    requests, bad = _read(path)
    assert [r.messages[0]["content"] for r in requests] == ["fine", "also fine"]
    [error] = bad
    assert error.line == 2
    assert str(error) == f"{path}:2: not UTF-8: byte 0xe9 at byte 16 (invalid continuation byte)"
