"""Tests of the simulated OpenAI-compatible endpoint (asyncsynth.testing)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from asyncsynth.testing import Reply, ReplyContext, SimServer, start_process
from asyncsynth.testing.sim import _format_reset

pytest_plugins = ["pytester"]  # the sim fixtures come from tests/conftest.py

SimFactory = Callable[..., SimServer]
_Response = tuple[int, dict[str, str], bytes]


def _chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "test-model", "messages": [{"role": "user", "content": content}], **extra}


def _post(server: SimServer, body: Any, timeout: float = 5.0) -> httpx.Response:
    return httpx.post(f"{server.url}/chat/completions", json=body, timeout=timeout)


def _content(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


def _raw(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: sim\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _raw_chat(content: str) -> bytes:
    return _raw("POST", "/v1/chat/completions", orjson.dumps(_chat(content)))


def _connect(server: SimServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _read_responses(sock: socket.socket, count: int) -> list[_Response]:
    """Read ``count`` HTTP responses (Content-Length framed) from ``sock``."""
    buf = b""
    out: list[_Response] = []
    while len(out) < count:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            status_line, *lines = buf[:end].decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
            body_end = end + 4 + int(headers.get("content-length", "0"))
            if len(buf) >= body_end:
                out.append((int(status_line.split()[1]), headers, buf[end + 4 : body_end]))
                buf = buf[body_end:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return out


def _is_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_echo_reply_and_usage(sim: SimServer) -> None:
    body = {
        "model": "m1",
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "hello world"}]},
        ],
    }
    response = _post(sim, body)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "m1"
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "echo: hello world"},
            "finish_reason": "stop",
        }
    ]
    # prompt: 7 + 5 + 2 + 11 = 25 chars -> 7 tokens; "echo: hello world": 17 chars -> 5 tokens
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert sim.stats.requests == 1
    assert sim.stats.responses_by_status == {200: 1}


def test_path_without_v1_and_default_model(sim: SimServer) -> None:
    url = sim.url.removesuffix("/v1") + "/chat/completions"
    response = httpx.post(url, json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200
    assert response.json()["model"] == "sim-model"
    assert _content(response) == "echo: x"


@pytest.mark.parametrize("kind", ["json_object", "json_schema"])
def test_json_response_format(sim: SimServer, kind: str) -> None:
    response = _post(sim, _chat("data", response_format={"type": kind}))
    assert orjson.loads(_content(response)) == {"echo": "data"}


def test_models(sim_factory: SimFactory) -> None:
    server = sim_factory(model="custom")
    response = httpx.get(f"{server.url}/models")
    assert response.json() == {"object": "list", "data": [{"id": "custom", "object": "model"}]}


def test_unknown_path_is_404(sim: SimServer) -> None:
    response = httpx.get(f"{sim.url}/nope")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "/v1/nope" in response.json()["error"]["message"]


def test_invalid_json_is_400(sim: SimServer) -> None:
    response = httpx.post(f"{sim.url}/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert "invalid JSON" in response.json()["error"]["message"]
    assert _post(sim, {"model": "no messages"}).status_code == 400


def test_scripted_429_with_retry_after(sim_factory: SimFactory) -> None:
    seen: list[ReplyContext] = []

    def reply(body: dict[str, Any], ctx: ReplyContext) -> str | Reply:
        seen.append(ctx)
        if ctx.n == 1:
            return Reply(status=429, content="slow down", headers={"Retry-After": "7"})
        return "scripted " + body["messages"][-1]["content"]

    server = sim_factory(reply=reply)
    first = _post(server, _chat("a"))
    assert first.status_code == 429
    assert first.headers["retry-after"] == "7"
    assert first.json()["error"]["message"] == "slow down"
    second = _post(server, _chat("b"))
    assert _content(second) == "scripted b"
    assert seen == [
        ReplyContext(1, "/v1/chat/completions"),
        ReplyContext(2, "/v1/chat/completions"),
    ]
    assert server.stats.responses_by_status == {429: 1, 200: 1}


def test_scripted_body_headers_and_finish_reason(sim_factory: SimFactory) -> None:
    replies = iter(
        [
            Reply(content="cut", finish_reason="length", headers={"x-extra": "1"}),
            Reply(status=503, body={"custom": True}),
        ]
    )
    server = sim_factory(reply=lambda body, ctx: next(replies))
    first = _post(server, _chat())
    assert first.headers["x-extra"] == "1"
    assert first.json()["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "cut"},
        "finish_reason": "length",
    }
    second = _post(server, _chat())
    assert (second.status_code, second.json()) == (503, {"custom": True})


def test_scripted_faults(sim_factory: SimFactory) -> None:
    replies = iter([Reply(drop=True), Reply(malformed=True), Reply(hang=True)])
    server = sim_factory(reply=lambda body, ctx: next(replies))
    with pytest.raises(httpx.RemoteProtocolError):
        _post(server, _chat())
    with pytest.raises(ValueError):
        _post(server, _chat()).json()
    with pytest.raises(httpx.ReadTimeout):
        _post(server, _chat(), timeout=0.2)
    stats = server.stats
    assert (stats.dropped, stats.malformed, stats.hung) == (1, 1, 1)


def test_n_choices(sim: SimServer) -> None:
    data = _post(sim, _chat("abcd", n=3)).json()
    assert [choice["index"] for choice in data["choices"]] == [0, 1, 2]
    assert data["usage"]["completion_tokens"] == 3 * 3  # "echo: abcd" is 10 chars


def test_hook_exception_is_500(sim_factory: SimFactory) -> None:
    def reply(body: dict[str, Any], ctx: ReplyContext) -> str:
        raise RuntimeError("boom")

    server = sim_factory(reply=reply)
    response = _post(server, _chat())
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "RuntimeError: boom"
    assert server.stats.hook_errors == ["RuntimeError: boom"]
    assert server.stats.in_flight == 0


def test_capacity_answers_429_beyond_it(sim_factory: SimFactory) -> None:
    server = sim_factory(capacity=2, latency=60.0)
    held = [_connect(server), _connect(server)]
    try:
        for i, sock in enumerate(held):
            sock.sendall(_raw_chat(f"held {i}"))
        server.wait_for_requests(2)
        response = _post(server, _chat())
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert server.stats.in_flight == 2
        assert server.stats.max_in_flight == 2
    finally:
        for sock in held:
            sock.close()


def test_rpm_limit(sim_factory: SimFactory) -> None:
    server = sim_factory(rpm=6)  # one request per 10 s, bucket of 1
    assert _post(server, _chat()).status_code == 200
    limited = _post(server, _chat())
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 10
    assert re.fullmatch(r"\d+(\.\d+)?s|\d+ms", limited.headers["x-ratelimit-reset-requests"])
    assert "x-ratelimit-reset-tokens" not in limited.headers
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"


def test_tpm_limit(sim_factory: SimFactory) -> None:
    server = sim_factory(tpm=60)  # one token per second
    # 1 prompt token + 10 max_tokens: the bucket holds at least one request's worth
    assert _post(server, _chat("x", max_tokens=10)).status_code == 200
    limited = _post(server, _chat("x", max_tokens=10))
    assert limited.status_code == 429
    assert 10 <= int(limited.headers["retry-after"]) <= 11
    assert re.fullmatch(r"1[01](\.\d+)?s", limited.headers["x-ratelimit-reset-tokens"])


def test_capacity_can_answer_503_instead(sim_factory: SimFactory) -> None:
    server = sim_factory(capacity=1, latency=60.0, overload_status=503)
    with _connect(server) as held:
        held.sendall(_raw_chat("held"))
        server.wait_for_requests(1)
        response = _post(server, _chat())
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "server_overloaded"


def test_queueing_capacity_delays_instead_of_refusing(sim_factory: SimFactory) -> None:
    """Two slots of 0.2 s and six requests at once: three waves, no error (vLLM's way)."""
    server = sim_factory(capacity=2, latency=0.2, queue=True)

    async def main() -> list[tuple[int, float]]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> tuple[int, float]:
                start = time.monotonic()
                async with session.post(f"{server.url}/chat/completions", json=_chat()) as r:
                    await r.read()
                    return r.status, time.monotonic() - start

            return await asyncio.gather(*(one(i) for i in range(6)))

    answers = asyncio.run(main())
    assert [status for status, _ in answers] == [200] * 6
    latencies = sorted(latency for _, latency in answers)
    assert latencies[-1] >= 0.55  # the third wave waited for two before it
    assert server.stats.max_queue_wait >= 0.35
    assert server.stats.max_in_flight == 6


@pytest.mark.parametrize("kind", ["sliding", "fixed"])
def test_strict_windows_count_every_request_of_the_window(
    kind: str, sim_factory: SimFactory
) -> None:
    server = sim_factory(rpm=3, rate_window=kind, window=0.6)
    statuses = [_post(server, _chat()).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    time.sleep(0.65)  # the window has moved on (this is the sim's own clock, not a sync)
    assert _post(server, _chat()).status_code == 200


def test_sliding_window_refuses_until_the_oldest_request_leaves(sim_factory: SimFactory) -> None:
    server = sim_factory(rpm=2, rate_window="sliding", window=30.0)
    assert [_post(server, _chat()).status_code for _ in range(2)] == [200, 200]
    limited = _post(server, _chat())
    assert limited.status_code == 429
    assert 29 <= int(limited.headers["retry-after"]) <= 30


def test_ratelimit_headers_and_spent_budget(sim_factory: SimFactory) -> None:
    server = sim_factory(rpm=100, tpm=10_000, rate_window="sliding", ratelimit_headers=True)
    first = _post(server, _chat("abcd", max_tokens=10))  # 1 prompt token + 10
    assert first.headers["x-ratelimit-limit-requests"] == "100"
    assert first.headers["x-ratelimit-remaining-requests"] == "99"
    assert first.headers["x-ratelimit-limit-tokens"] == "10000"
    assert first.headers["x-ratelimit-remaining-tokens"] == "9989"
    assert first.headers["x-ratelimit-reset-requests"] in ("59.999s", "1m0s")  # all back in 60 s
    server.spend(requests=90)  # another client on the same key
    second = _post(server, _chat())
    assert second.headers["x-ratelimit-remaining-requests"] == "8"


def test_api_key_and_strict_model(sim_factory: SimFactory) -> None:
    server = sim_factory(api_key="sk-right", strict_model=True, model="m")
    url = f"{server.url}/chat/completions"
    wrong = httpx.post(url, json=_chat(), headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(url, json=_chat()).status_code == 401
    right = {"Authorization": "Bearer sk-right"}
    unknown = httpx.post(url, json=_chat(), headers=right)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "The model `test-model` does not exist."
    ok = httpx.post(url, json={**_chat(), "model": "m"}, headers=right)
    assert ok.status_code == 200


def test_tokenize_route(sim_factory: SimFactory) -> None:
    server = sim_factory(tokenize=True)
    root = server.url.removesuffix("/v1")
    messages = [{"role": "user", "content": "x" * 40}]
    answer = httpx.post(f"{root}/tokenize", json={"model": "m", "messages": messages}).json()
    assert answer["count"] == 10 and len(answer["tokens"]) == 10
    assert httpx.post(f"{root}/tokenize", json={"prompt": "abcdefgh"}).json()["count"] == 2
    assert server.stats.tokenize_requests == 2
    plain = sim_factory()
    assert httpx.post(f"{plain.url.removesuffix('/v1')}/tokenize", json={}).status_code == 404


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (0.0001, "1ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (360, "6m0s"),
        (3725, "1h2m5s"),
    ],
)
def test_format_reset(seconds: float, text: str) -> None:
    assert _format_reset(seconds) == text


def test_drop_closes_connection(sim_factory: SimFactory) -> None:
    server = sim_factory(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        _post(server, _chat())
    assert server.stats.dropped == 1
    assert server.stats.requests == 1


def test_hang_times_out_client(sim_factory: SimFactory) -> None:
    server = sim_factory(hang_rate=1.0)
    with pytest.raises(httpx.ReadTimeout):
        _post(server, _chat(), timeout=0.3)
    assert server.stats.hung == 1


def test_malformed_body(sim_factory: SimFactory) -> None:
    server = sim_factory(malformed_rate=1.0)
    response = _post(server, _chat())
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert server.stats.malformed == 1


def test_seeded_faults_are_reproducible(sim_factory: SimFactory) -> None:
    def outcomes(server: SimServer) -> list[str]:
        result = []
        with httpx.Client(base_url=server.url) as client:
            for _ in range(40):
                result.append(outcome(client))
        return result

    def outcome(client: httpx.Client) -> str:
        try:
            response = client.post("/chat/completions", json=_chat())
        except httpx.RemoteProtocolError:
            return "drop"
        try:
            response.json()
        except ValueError:
            return "malformed"
        return str(response.status_code)

    faults = {"error_rate": 0.3, "drop_rate": 0.1, "malformed_rate": 0.1, "seed": 7}
    first = outcomes(sim_factory(**faults))
    assert first == outcomes(sim_factory(**faults))
    assert {"200", "drop", "malformed"} <= set(first)
    assert set(first) - {"200", "drop", "malformed"} <= {"500", "502", "503"}


def test_latency_delays_reply(sim_factory: SimFactory) -> None:
    server = sim_factory(latency=0.1)
    start = time.perf_counter()
    assert _post(server, _chat()).status_code == 200
    assert time.perf_counter() - start >= 0.1


def test_down_then_up(sim: SimServer) -> None:
    port = sim.port
    with _connect(sim) as idle:
        sim.down()
        assert _is_closed(idle)
    with pytest.raises(ConnectionRefusedError):
        _connect(sim)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{sim.url}/models")
    sim.up()
    assert sim.port == port
    assert httpx.get(f"{sim.url}/models").status_code == 200


def test_keep_alive_many_sequential_requests(sim: SimServer) -> None:
    with httpx.Client(base_url=sim.url) as client:
        for i in range(300):
            response = client.post("/chat/completions", json=_chat(f"q{i}"))
            assert _content(response) == f"echo: q{i}"
    assert sim.stats.connections == 1
    assert sim.stats.requests == 300


def test_pipelined_requests_answered_in_order(sim_factory: SimFactory) -> None:
    # The first reply is delayed, so later ones are ready first but must wait for it.
    server = sim_factory(reply=lambda body, ctx: Reply(delay=0.05 if ctx.n == 1 else None))
    payload = b"".join(_raw_chat(f"p{i}") for i in range(3))
    payload += _raw("GET", "/v1/models") + _raw_chat("p3") + _raw("GET", "/missing")
    with _connect(server) as sock:
        sock.sendall(payload)
        responses = _read_responses(sock, 6)
    statuses = [status for status, _, _ in responses]
    assert statuses == [200, 200, 200, 200, 200, 404]
    contents = [
        orjson.loads(body)["choices"][0]["message"]["content"]
        for _, _, body in responses[:3] + responses[4:5]
    ]
    assert contents == ["echo: p0", "echo: p1", "echo: p2", "echo: p3"]
    assert orjson.loads(responses[3][2])["object"] == "list"


def test_request_split_across_writes(sim: SimServer) -> None:
    request = _raw_chat("split")
    with _connect(sim) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in (request[:10], request[10:60], request[60:-5], request[-5:]):
            sock.sendall(piece)
        [(status, _, body)] = _read_responses(sock, 1)
    assert status == 200
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "echo: split"


def test_expect_100_continue(sim: SimServer) -> None:
    body = orjson.dumps(_chat("big"))
    head = _raw("POST", "/v1/chat/completions", body, "Expect: 100-continue\r\n")[: -len(body)]
    with _connect(sim) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        [(status, _, _)] = _read_responses(sock, 1)
    assert status == 200


def test_chunked_body_rejected(sim: SimServer) -> None:
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    )
    with _connect(sim) as sock:
        sock.sendall(request)
        [(status, headers, _)] = _read_responses(sock, 1)
        assert _is_closed(sock)
    assert status == 400
    assert headers["connection"] == "close"


def test_connection_close_header(sim: SimServer) -> None:
    with _connect(sim) as sock:
        sock.sendall(_raw("GET", "/v1/models", headers="Connection: close\r\n"))
        [(status, headers, _)] = _read_responses(sock, 1)
        assert _is_closed(sock)
    assert (status, headers["connection"]) == (200, "close")


def test_record_and_configure(sim_factory: SimFactory) -> None:
    server = sim_factory(record=True)
    _post(server, _chat("one"))
    assert server.stats.bodies == [_chat("one")]
    server.configure(model="changed", error_rate=1.0)
    assert httpx.get(f"{server.url}/models").json()["data"][0]["id"] == "changed"
    assert _post(server, _chat()).status_code in (500, 502, 503)
    with pytest.raises(TypeError):
        server.configure(no_such_field=1)
    with pytest.raises(ValueError):
        server.configure(drop_rate=0.5)  # error_rate + drop_rate > 1


def test_wait_for_requests_timeout(sim: SimServer) -> None:
    with pytest.raises(TimeoutError):
        sim.wait_for_requests(1, timeout=0.05)


def test_async_mode() -> None:
    async def main() -> None:
        async with SimServer(model="async-model") as server, aiohttp.ClientSession() as session:

            async def ask(i: int) -> str:
                async with session.post(f"{server.url}/chat/completions", json=_chat(f"a{i}")) as r:
                    return (await r.json())["choices"][0]["message"]["content"]

            answers = asyncio.gather(*(ask(i) for i in range(20)))
            await server.wait_for_requests_async(20)
            assert await answers == [f"echo: a{i}" for i in range(20)]
            server.down()
            with pytest.raises(aiohttp.ClientConnectionError):
                await ask(0)
            server.up()
            assert await ask(1) == "echo: a1"

    asyncio.run(main())


def test_thread_server_from_another_loop(sim: SimServer) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(base_url=sim.url) as client:
            request = asyncio.ensure_future(client.post("/chat/completions", json=_chat()))
            await sim.wait_for_requests_async(1)
            assert (await request).status_code == 200

    asyncio.run(main())


def test_start_process() -> None:
    process, url = start_process({"model": "proc-model"})
    try:
        assert httpx.get(f"{url}/models").json()["data"][0]["id"] == "proc-model"
        assert _content(httpx.post(f"{url}/chat/completions", json=_chat("p"))) == "echo: p"
    finally:
        process.terminate()
        assert process.wait(10) == 0


def test_pytest_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import httpx

        def test_fixtures(sim, sim_factory):
            other = sim_factory(model="other")
            assert httpx.get(sim.url + "/models").json()["data"][0]["id"] == "sim-model"
            assert httpx.get(other.url + "/models").json()["data"][0]["id"] == "other"
        """
    )
    installed = importlib.metadata.entry_points(group="pytest11", name="asyncsynth")
    args = [] if installed else ["-p", "asyncsynth.testing.pytest_plugin"]
    pytester.runpytest(*args).assert_outcomes(passed=1)
