"""The simulated Files + Batches API: every status, per-line errors, partial output, the log."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import orjson
import pytest

from asyncsynth.testing import Reply, SimServer
from asyncsynth.testing.sim_batch import SimBatchConfig


def _lines(n: int, *, url: str = "/v1/chat/completions", dup: bool = False) -> bytes:
    rows = [
        {"custom_id": "same" if dup else f"c{i}", "method": "POST", "url": url,
         "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}}
        for i in range(n)
    ]  # fmt: skip
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _submit(client: httpx.Client, data: bytes, **extra: Any) -> dict[str, Any]:
    up = client.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", data)})
    assert up.status_code == 200, up.text
    assert up.json()["bytes"] == len(data) and up.json()["purpose"] == "batch"
    body = {"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h", **extra}  # fmt: skip
    created = client.post("/batches", json=body)
    assert created.status_code == 200, created.text
    return dict(created.json())


def _file(client: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = client.get(f"/files/{file_id}/content")
    assert content.status_code == 200
    return [orjson.loads(line) for line in content.content.splitlines()]


@pytest.fixture
def client(sim: SimServer) -> Any:
    with httpx.Client(base_url=sim.url) as c:
        yield c


def test_a_batch_goes_through_every_status_to_its_output(sim: SimServer, client: Any) -> None:
    sim.batches.configure(
        paused=True, validating_time=1.0, processing_time=10.0, finalizing_time=1.0
    )
    batch = _submit(client, _lines(10), metadata={"asyncsynth": "job-1"})
    assert batch["status"] == "validating" and batch["metadata"] == {"asyncsynth": "job-1"}
    seen = []
    for step in (1.0, 5.0, 5.0, 1.0):
        sim.batches.advance(step)
        got = client.get(f"/batches/{batch['id']}").json()
        seen.append((got["status"], got["request_counts"]["completed"]))
    assert seen == [("in_progress", 0), ("in_progress", 5), ("finalizing", 10), ("completed", 10)]
    got = client.get(f"/batches/{batch['id']}").json()
    assert got["error_file_id"] is None and got["completed_at"] is not None
    lines = _file(client, got["output_file_id"])
    assert [line["custom_id"] for line in lines] == [f"c{i}" for i in range(10)]
    first = lines[0]["response"]
    assert first["status_code"] == 200 and lines[0]["error"] is None
    assert first["body"]["choices"][0]["message"]["content"] == "echo: q0"
    assert first["body"]["usage"]["prompt_tokens"] == 1
    assert sim.batches.log.submitted == {f"c{i}": 1 for i in range(10)}
    assert sim.stats.requests == 0  # batch lines are not chat requests


def test_error_lines_go_to_the_error_file_and_replies_are_scripted(sim: SimServer) -> None:
    sim.batches.configure(line_error_rate=0.5, seed=7)
    sim.configure(reply=lambda body, ctx: Reply(status=400, content="no") if
                  body["messages"][0]["content"] == "q3" else "fine")  # fmt: skip
    with httpx.Client(base_url=sim.url) as client:
        batch = _submit(client, _lines(20))
        got = client.get(f"/batches/{batch['id']}").json()
        assert got["status"] == "completed"
        ok = _file(client, got["output_file_id"])
        bad = _file(client, got["error_file_id"])
    errored = sim.batches.batches[batch["id"]].error_lines
    assert {line["custom_id"] for line in bad} == {f"c{i}" for i in errored} | {"c3"}
    assert all(line["response"]["status_code"] in (500, 400) for line in bad)
    assert {line["response"]["body"]["choices"][0]["message"]["content"] for line in ok} == {"fine"}
    assert got["request_counts"] == {"total": 20, "completed": len(ok), "failed": len(bad)}


def test_expiry_answers_part_and_lists_the_rest_as_expired(sim: SimServer, client: Any) -> None:
    sim.batches.configure(expire_rate=1.0, expire_at=0.3)
    batch = _submit(client, _lines(10))
    got = client.get(f"/batches/{batch['id']}").json()
    assert got["status"] == "expired"
    assert len(_file(client, got["output_file_id"])) == 3
    expired = _file(client, got["error_file_id"])
    assert len(expired) == 7
    assert {line["error"]["code"] for line in expired} == {"batch_expired"}
    assert all(line["response"] is None for line in expired)


def test_cancel_keeps_what_was_answered(sim: SimServer, client: Any) -> None:
    sim.batches.configure(paused=True, processing_time=10.0, cancelling_time=2.0)
    batch = _submit(client, _lines(10))
    sim.batches.advance(4.0)
    cancelling = client.post(f"/batches/{batch['id']}/cancel").json()
    assert cancelling["status"] == "cancelling"
    sim.batches.advance(2.0)
    got = client.get(f"/batches/{batch['id']}").json()
    assert got["status"] == "cancelled"
    assert len(_file(client, got["output_file_id"])) == 4
    assert {line["error"]["code"] for line in _file(client, got["error_file_id"])} == {
        "batch_cancelled"
    }
    again = client.post(f"/batches/{batch['id']}/cancel")
    assert again.status_code == 409


def test_validation_fails_a_bad_file_with_the_line_named(sim: SimServer, client: Any) -> None:
    dup = _submit(client, _lines(3, dup=True))
    got = client.get(f"/batches/{dup['id']}").json()
    assert got["status"] == "failed" and got["output_file_id"] is None
    errors = got["errors"]["data"]
    assert [(e["code"], e["line"]) for e in errors] == [("duplicate_custom_id", n) for n in (2, 3)]
    wrong = client.get(f"/batches/{_submit(client, _lines(2, url='/v1/embeddings'))['id']}")
    assert wrong.json()["errors"]["data"][0]["code"] == "invalid_url"
    sim.batches.configure(max_requests=5)
    many = client.get(f"/batches/{_submit(client, _lines(6))['id']}").json()
    assert many["errors"]["data"][0]["code"] == "too_many_requests"
    sim.batches.configure(max_requests=50_000, fail_rate=1.0)
    assert client.get(f"/batches/{_submit(client, _lines(2))['id']}").json()["status"] == "failed"


def test_requests_that_are_refused(sim: SimServer, client: Any) -> None:
    assert client.post("/files", data={"purpose": "fine-tune"},
                       files={"file": ("x", b"{}")}).status_code == 400  # fmt: skip
    assert client.post("/batches", json={"input_file_id": "nope"}).status_code == 400
    up = client.post("/files", data={"purpose": "batch"}, files={"file": ("x", _lines(1))})
    body = {"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions"}
    refused = client.post("/batches", json={**body, "completion_window": "1h"})
    assert refused.status_code == 400 and "24h" in refused.json()["error"]["message"]
    assert client.get("/batches/batch-nope").status_code == 404
    assert client.get("/files/file-nope/content").status_code == 404
    assert client.delete(f"/files/{up.json()['id']}").json()["deleted"] is True
    assert client.delete(f"/files/{up.json()['id']}").status_code == 404


def test_list_pages_newest_first(sim: SimServer, client: Any) -> None:
    ids = [_submit(client, _lines(1))["id"] for _ in range(5)]
    first = client.get("/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get("/batches", params={"limit": 10, "after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == ids[::-1][2:] and not rest["has_more"]


def test_hold_leaves_a_call_unanswered_and_the_log_says_it_came(sim: SimServer) -> None:
    sim.batches.configure(hold={"created"})
    failed: list[BaseException] = []

    def create() -> None:
        with httpx.Client(base_url=sim.url, timeout=0.5) as client:
            try:
                _submit(client, _lines(2))
            except httpx.ReadTimeout as exc:
                failed.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    sim.batches.wait_for(lambda log: log.calls["created"] == 1)
    thread.join()
    assert failed  # no answer came, but the batch exists: the client cannot know
    assert len(sim.batches.log.created) == 1 and sim.batches.log.submitted == {"c0": 1, "c1": 1}


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown hold stages"):
        SimBatchConfig(hold={"uplaod"})
    with pytest.raises(ValueError, match="line_error_rate"):
        SimBatchConfig(line_error_rate=2)
    with SimServer(batch={"processing_time": 3.0}) as server:
        assert server.batches.config.processing_time == 3.0
