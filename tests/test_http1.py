"""asyncsynth's own HTTP/1.1 client against a server that answers with scripted bytes."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import orjson
import pytest
import trustme

from asyncsynth import Engine, Request, single_endpoint_config
from asyncsynth.engine import http1
from asyncsynth.engine.client import make_transport
from asyncsynth.engine.errors import (
    ClientError,
    ConfigError,
    ConnectError,
    ConnectionDropped,
    EndpointsFailed,
    MalformedResponse,
    RequestTimeout,
)
from asyncsynth.engine.http1 import Origin

pytestmark = pytest.mark.anyio

CHAT = orjson.dumps({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]})

Answer = bytes | Callable[[asyncio.Transport], None] | None
"""Bytes to write, a function that does what it likes with the connection, or None: hang."""


def ok(body: bytes = CHAT, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (head.encode(), len(body), body)


class Scripted:
    """A server that answers each request it reads with the next of ``answers`` (then with
    ``rest``, every time)."""

    def __init__(self, answers: list[Answer], rest: Answer = None) -> None:
        self.answers = answers
        self.rest = rest
        self.requests: list[bytes] = []
        self.connections = 0
        self.open = 0
        self.url = ""

    def protocol(self) -> asyncio.Protocol:
        server = self

        class Conn(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.Transport = transport  # type: ignore[assignment]
                self.buf = b""
                server.connections += 1
                server.open += 1

            def connection_lost(self, exc: Exception | None) -> None:
                server.open -= 1

            def data_received(self, data: bytes) -> None:
                self.buf += data
                while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                    head = self.buf[:end].lower()
                    length = 0
                    if b"content-length:" in head:
                        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(self.buf) < end + 4 + length:
                        return
                    server.requests.append(self.buf[: end + 4 + length])
                    self.buf = self.buf[end + 4 + length :]
                    answer = server.answers.pop(0) if server.answers else server.rest
                    if callable(answer):
                        answer(self.transport)
                    elif answer is not None:
                        self.transport.write(answer)

        return Conn()


@asynccontextmanager
async def scripted(
    answers: list[Answer], ssl_context: ssl.SSLContext | None = None, *, rest: Answer = None
) -> AsyncIterator[Scripted]:
    server = Scripted(answers, rest)
    listener = await asyncio.get_running_loop().create_server(
        server.protocol, "127.0.0.1", 0, ssl=ssl_context
    )
    port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if ssl_context else 'http'}://localhost:{port}/v1"
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


async def chat(url: str, *, timeout: float = 5.0, key: str | None = None) -> str | None:
    transport = make_transport("http1", url, key, name="t")
    try:
        return (await transport.chat(b'{"model": "m"}', timeout)).content
    finally:
        await transport.aclose()


# -- requests and keep-alive -----------------------------------------------------------------


async def test_a_request_carries_host_key_length_and_body() -> None:
    async with scripted([ok()]) as server:
        assert await chat(server.url, key="sk-test") == "hi"
    head, body = server.requests[0].split(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    port = server.url.split(":")[2].split("/")[0]
    assert fields["Host"] == f"localhost:{port}"
    assert fields["Authorization"] == "Bearer sk-test"
    assert fields["Content-Type"] == "application/json"
    assert fields["Content-Length"] == str(len(body)) and body == b'{"model": "m"}'


async def test_a_key_that_would_break_the_headers_is_refused_up_front() -> None:
    with pytest.raises(ConfigError, match="Authorization header holds a line break"):
        make_transport("http1", "http://localhost:1/v1", "sk-test\n", name="t")


async def test_requests_in_turn_share_one_connection() -> None:
    async with scripted([ok()] * 5) as server:
        origin = Origin(server.url)
        for _ in range(5):
            assert (await origin.request("POST", "/v1/x", b"{}", 5.0)).body == CHAT
        await origin.aclose()
    assert server.connections == 1


async def test_concurrent_requests_each_get_their_own_answer() -> None:
    bodies = [orjson.dumps({"n": i}) for i in range(20)]
    async with scripted([ok(b) for b in bodies]) as server:
        origin = Origin(server.url)
        got: list[bytes] = []
        async with anyio.create_task_group() as tg:
            for _ in bodies:
                tg.start_soon(lambda: _append(origin, got))
        await origin.aclose()
    assert sorted(got) == sorted(bodies)
    assert server.connections == 20


async def _append(origin: Origin, got: list[bytes]) -> None:
    got.append((await origin.request("POST", "/", b"{}", 5.0)).body)


@pytest.mark.parametrize("why", ["the answer said close", "it waited idle too long"])
async def test_a_connection_is_not_reused_when(why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ok()
    if why == "the answer said close":
        first = ok(CHAT, "Connection: close")
    else:
        monkeypatch.setattr(http1, "IDLE_TIMEOUT", -1.0)  # what 4 s of waiting would do
    async with scripted([first, ok()]) as server:
        origin = Origin(server.url)
        for _ in range(2):
            assert (await origin.request("POST", "/", b"{}", 5.0)).status == 200
        await origin.aclose()
    assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    def answer_then_close(transport: asyncio.Transport) -> None:
        transport.write(ok())
        transport.close()

    async with scripted([answer_then_close, ok()]) as server:
        origin = Origin(server.url)
        await origin.request("POST", "/", b"{}", 5.0)
        with anyio.fail_after(5):
            while origin._open:  # the client has seen the close
                await anyio.sleep(0.005)
        assert (await origin.request("POST", "/", b"{}", 5.0)).status == 200
        await origin.aclose()
    assert server.connections == 2


# -- bodies --------------------------------------------------------------------------------------


async def test_chunked_bodies_split_across_writes_are_read_whole() -> None:
    content = orjson.dumps({"choices": [{"message": {"content": "x" * 100_000}}]})
    pieces = [content[i : i + 7_001] for i in range(0, len(content), 7_001)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked

    def dribble(transport: asyncio.Transport) -> None:  # the answer in 1,000-byte writes
        loop = asyncio.get_running_loop()
        for n, i in enumerate(range(0, len(raw), 1000)):
            loop.call_later(n * 0.0001, transport.write, raw[i : i + 1000])

    async with scripted([dribble, ok()]) as server:
        origin = Origin(server.url)
        assert (await origin.request("POST", "/", b"{}", 5.0)).body == content
        assert (await origin.request("POST", "/", b"{}", 5.0)).body == CHAT  # still in step
        await origin.aclose()
    assert server.connections == 1


async def test_a_body_without_length_runs_to_the_close() -> None:
    def http10(transport: asyncio.Transport) -> None:
        transport.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + CHAT)
        transport.close()

    async with scripted([http10]) as server:
        assert await chat(server.url) == "hi"


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b, wbits=-zlib.MAX_WBITS)),  # raw, as some send it
    ],
)
async def test_compressed_bodies_are_decoded(
    encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    async with scripted([ok(encode(CHAT), f"Content-Encoding: {encoding}")]) as server:
        assert await chat(server.url) == "hi"
    assert b"accept-encoding: gzip, deflate" in server.requests[0].lower()


async def test_an_interim_100_continue_is_skipped() -> None:
    async with scripted([b"HTTP/1.1 100 Continue\r\n\r\n" + ok()]) as server:
        assert await chat(server.url) == "hi"


# -- failures ------------------------------------------------------------------------------------


async def test_a_refused_connection_is_a_connect_error_saying_so() -> None:
    async with scripted([]) as server:
        url = server.url
    with pytest.raises(ConnectError, match=r"cannot connect to localhost:\d+: Connection refused"):
        await chat(url)


async def test_a_close_before_the_answer_is_a_dropped_connection() -> None:
    async with scripted([lambda transport: transport.close()]) as server:
        with pytest.raises(ConnectionDropped, match="before any answer"):
            await chat(server.url)


async def test_a_close_mid_body_is_a_dropped_connection() -> None:
    def half(transport: asyncio.Transport) -> None:
        transport.write(ok()[:-10])
        transport.close()

    async with scripted([half]) as server:
        with pytest.raises(ConnectionDropped, match="before its answer was complete"):
            await chat(server.url)


@pytest.mark.parametrize(
    "raw",
    [b"HTTP/1.1 two hundred\r\n\r\n", ok(b"not gzip", "Content-Encoding: gzip")],
    ids=["bad status line", "bad gzip"],
)
async def test_an_answer_that_cannot_be_read_is_malformed(raw: bytes) -> None:
    async with scripted([raw, ok()]) as server:
        origin = Origin(server.url)
        with pytest.raises(MalformedResponse):
            await origin.request("POST", "/", b"{}", 5.0)
        assert (await origin.request("POST", "/", b"{}", 5.0)).status == 200
        await origin.aclose()
    assert server.connections == 2  # the connection out of step was closed


async def test_a_timeout_closes_the_connection_and_the_next_request_opens_another() -> None:
    async with scripted([None, ok()]) as server:
        origin = Origin(server.url)
        with pytest.raises(RequestTimeout, match=r"no answer within 0\.2s"):
            await origin.request("POST", "/", b"{}", 0.2)
        assert (await origin.request("POST", "/", b"{}", 5.0)).status == 200
        await origin.aclose()
        with anyio.fail_after(5):
            while server.open:
                await anyio.sleep(0.005)
    assert server.connections == 2


async def test_a_cancelled_request_closes_its_connection() -> None:
    async with scripted([None, ok()]) as server:
        origin = Origin(server.url)
        with anyio.move_on_after(0.1):
            await origin.request("POST", "/", b"{}", 30.0)
        assert not origin._idle
        with anyio.fail_after(5):
            while server.open:  # the server sees it closed
                await anyio.sleep(0.005)
        assert (await origin.request("POST", "/", b"{}", 5.0)).status == 200
        await origin.aclose()
    assert server.connections == 2


async def test_closing_the_client_fails_what_is_in_flight() -> None:
    async with scripted([None]) as server:
        origin = Origin(server.url)
        failed: list[BaseException] = []

        async def waiting() -> None:
            try:
                await origin.request("POST", "/", b"{}", 30.0)
            except ConnectionDropped as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting)
            with anyio.fail_after(5):
                while not server.requests:
                    await anyio.sleep(0.005)
            await origin.aclose()
        assert len(failed) == 1
        with pytest.raises(ConnectionDropped, match="closed"):
            await origin.request("POST", "/", b"{}", 5.0)


async def test_a_redirect_is_not_followed_and_takes_the_endpoint_out() -> None:
    moved = b"HTTP/1.1 308 Permanent Redirect\r\nLocation: https://api.example/v1\r\n"
    moved += b"Content-Length: 0\r\n\r\n"
    async with scripted([moved]) as server:
        with pytest.raises(ClientError, match=r"HTTP 308: redirected to https://api\.example/v1"):
            await chat(server.url)
    async with scripted([], rest=moved) as server:
        config = single_endpoint_config(base_url=server.url, model="m", max_concurrency=1)
        with pytest.raises(EndpointsFailed) as failed:
            async with Engine(config) as engine:
                async for _ in engine.map(Request.from_prompt(str(i)) for i in range(10)):
                    pass
    assert "is redirected: set it to where it points" in str(failed.value)
    chats = [r for r in server.requests if r.startswith(b"POST /v1/chat/completions ")]
    assert len(chats) == 3  # fail-fast: the rest never sent


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for ``localhost``, and the file of the CA that signed it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return context, tmp_path / "ca.pem"


async def test_https_with_a_trusted_certificate(
    tls: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, ca = tls
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    async with scripted([ok(), ok()], context) as server:
        origin = Origin(server.url)
        for _ in range(2):
            assert (await origin.request("POST", "/", b"{}", 5.0)).body == CHAT
        await origin.aclose()
        assert not origin._open  # closed, TLS goodbye included, before aclose returns
    assert server.connections == 1


async def test_https_with_an_unknown_certificate_is_refused(
    tls: tuple[ssl.SSLContext, Path],
) -> None:
    async with scripted([ok()], tls[0]) as server:
        with pytest.raises(ConnectError, match=r"TLS failed: .*CERTIFICATE_VERIFY_FAILED"):
            await chat(server.url)
        assert not server.requests
