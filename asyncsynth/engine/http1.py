"""asyncsynth's own HTTP/1.1 client: keep-alive connections on asyncio protocols.

Why our own: an OpenAI-compatible API needs little of HTTP, and a general client pays
for all of it on every request. In ``benchmarks/overhead.py`` (a zero-latency server) the
engine over aiohttp spends about 0.3 ms of CPU a request, and over this client about 0.1 ms.
The parsing is not ours: answers go through httptools (llhttp, the parser behind uvicorn
and Node.js), so Content-Length, chunked and close-delimited bodies, interim 1xx answers
and keep-alive follow the spec.

What it does: ``http`` and ``https`` (the system's trust store, which honours
``SSL_CERT_FILE``), one pool of idle connections per origin (unbounded: the engine
bounds what is in flight), gzip and deflate bodies, one deadline per request covering
connect, send and answer. What it leaves out, on purpose: proxies, redirects (a 3xx is
answered as it came, so the caller can name its ``Location``), cookies, pipelining,
request bodies it cannot size, HTTP/2.

Failures are the engine's transport errors (:mod:`asyncsynth.engine.errors`): a refused
or unresolvable connection is a :class:`ConnectError`; a connection closed before its
answer was complete is a :class:`ConnectionDropped`; an answer the parser refuses is a
:class:`MalformedResponse`; a deadline passed is a :class:`RequestTimeout`. A
connection whose request failed, timed out or was cancelled is closed, never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import zlib
from typing import NamedTuple
from urllib.parse import SplitResult, quote, urlsplit

import httptools

from .errors import ConfigError, ConnectError, ConnectionDropped, MalformedResponse, RequestTimeout

USER_AGENT = "asyncsynth"
IDLE_TIMEOUT = 4.0
"""Seconds a connection may wait idle and still be reused: under the 5 s after which vLLM's
server (uvicorn) and llama.cpp's close an idle connection, so a request is never sent on one
the server is closing at that moment."""
CLOSE_TIMEOUT = 1.0
"""Seconds ``aclose`` waits for its connections to close (a TLS close is a round trip)."""
_PATH_SAFE = "/%:@!$&'()*+,;=-._~?"


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    """Names lowercased; repeated headers joined with ``", "``."""
    body: bytes


def split_url(url: str) -> SplitResult:
    """``url``'s parts, once it is an ``http(s)://host[:port]...`` URL; else ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http:// or https:// URL: {url!r}")
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise ValueError(f"the port of {url!r} is not a number from 0 to 65535") from None
    return parts


class Origin:
    """Requests to one ``scheme://host:port``, over a pool of keep-alive connections."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, *, name: str = "") -> None:
        """``url``: ``http(s)://host[:port]`` (a path is ignored); ``headers`` go with every
        request."""
        parts = split_url(url)
        assert parts.hostname is not None
        self.name = name
        default_port = 443 if parts.scheme == "https" else 80
        self._host = parts.hostname
        self._port = parts.port or default_port
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        host = f"[{self._host}]" if ":" in self._host else self._host
        fields = {
            "Host": host if self._port == default_port else f"{host}:{self._port}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            **(headers or {}),
        }
        self._fields = _fields(fields)
        self._heads: dict[tuple[str, str], bytes] = {}
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._closed = False
        self._drained: asyncio.Event | None = None

    async def request(self, method: str, path: str, body: bytes | None, timeout: float) -> Response:
        """Send one request and read its whole answer; ``path`` is absolute (``/v1/models``)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout
        conn = self._reusable(now)
        if conn is None:
            conn = await self._connect(loop, timeout)
        waiter = conn.send(self._head(method, path, body), body)
        timer = loop.call_at(deadline, _expire, waiter, timeout, self.name)
        try:
            response = await waiter
        except BaseException:
            conn.close()
            raise
        finally:
            timer.cancel()
        if conn.reusable and not self._closed:
            conn.idle_since = loop.time()
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def aclose(self) -> None:
        """Close every connection, idle or in use (their requests fail as dropped), and wait
        (up to :data:`CLOSE_TIMEOUT`) until each is closed: TLS says goodbye first."""
        self._closed = True
        self._idle.clear()
        if not self._open:
            return
        self._drained = asyncio.Event()
        for conn in list(self._open):
            conn.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._drained.wait()

    def _lost(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if self._drained is not None and not self._open:
            self._drained.set()

    def _reusable(self, now: float) -> _Connection | None:
        """The connection idle the shortest time, if any is still fit to use."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if now - conn.idle_since > IDLE_TIMEOUT:  # and so is every one below it
                for old in (conn, *idle):
                    old.close()
                idle.clear()
            elif conn.reusable:
                return conn
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, timeout: float) -> _Connection:
        if self._closed:
            raise ConnectionDropped("the client is closed", endpoint=self.name)
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), self._host, self._port, ssl=self._ssl
                )
        except TimeoutError:
            raise RequestTimeout(f"no connection within {timeout:g}s", endpoint=self.name) from None
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS failed: {exc}", endpoint=self.name) from None
        except OSError as exc:
            raise ConnectError(
                f"cannot connect to {self._host}:{self._port}: {_reason(exc)}", endpoint=self.name
            ) from None
        return conn

    def _head(self, method: str, path: str, body: bytes | None) -> bytes:
        """The request line and headers, all but the body's length (which ends them)."""
        head = self._heads.get((method, path))
        if head is None:
            line = f"{method} {quote(path, safe=_PATH_SAFE)} HTTP/1.1\r\n".encode("ascii")
            head = self._heads[method, path] = line + self._fields
        if body is None:
            return head + b"\r\n"
        return b"%bContent-Length: %d\r\n\r\n" % (head, len(body))


def _fields(fields: dict[str, str]) -> bytes:
    """Header lines, refusing a value that would break them (a key read with its newline)."""
    for name, value in fields.items():
        if "\r" in value or "\n" in value:
            raise ConfigError(f"the {name} header holds a line break (an API key with a newline?)")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ConfigError(f"the {name} header holds characters HTTP cannot carry") from None
    return "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode("latin-1")


def _reason(error: OSError) -> str:
    """``Connection refused``, ``Name or service not known``...: the system's words."""
    if isinstance(error, socket.gaierror) or not error.errno:
        return error.strerror or str(error)
    return os.strerror(error.errno)


def _expire(waiter: asyncio.Future[Response], timeout: float, name: str) -> None:
    if not waiter.done():
        waiter.set_exception(RequestTimeout(f"no answer within {timeout:g}s", endpoint=name))


class _Connection(asyncio.Protocol):
    """One connection: at most one request on it at a time; its answer parsed as it comes."""

    def __init__(self, origin: Origin) -> None:
        self._origin = origin
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._head_done = False
        self.reusable = False
        """Open, idle and kept alive by the server."""
        self.idle_since = 0.0

    # -- asyncio's side -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._origin._open.add(self)
        self.reusable = True

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(MalformedResponse(f"bad HTTP response: {exc}", endpoint=self._origin.name))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._origin._lost(self)
        if self._waiter is None or self._waiter.done():
            return
        if self._head_done and self._close_delimited():
            self._answer()  # the body ran to the end of the connection, as its headers said
            return
        why = f": {exc}" if exc else ""
        where = "before its answer was complete" if self._head_done else "before any answer"
        self._fail(ConnectionDropped(f"connection closed {where}{why}", endpoint=self._origin.name))

    # -- httptools' side ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        seen = self._headers.get(key)
        self._headers[key] = text if seen is None else f"{seen}, {text}"

    def on_headers_complete(self) -> None:
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:  # 100 Continue and the like: the real one follows
            self._headers = {}
            self._head_done = False
            return
        self.reusable = self._parser.should_keep_alive()
        self._answer()

    # -- the origin's side ----------------------------------------------------------------

    def send(self, head: bytes, body: bytes | None) -> asyncio.Future[Response]:
        assert self._transport is not None
        self.reusable = False
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(head + body if body else head)
        return waiter

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    def _answer(self) -> None:
        waiter, headers, body = self._waiter, self._headers, b"".join(self._body)
        self._waiter, self._headers, self._body, self._head_done = None, {}, [], False
        if waiter is None or waiter.done():
            return
        encoding = headers.get("content-encoding")
        if encoding and encoding != "identity":
            try:
                body = _decoded(body, encoding)
            except (zlib.error, ValueError) as exc:
                self.reusable = False
                waiter.set_exception(
                    MalformedResponse(
                        f"cannot decode a {encoding!r} body: {exc}", endpoint=self._origin.name
                    )
                )
                return
        waiter.set_result(Response(self._parser.get_status_code(), headers, body))

    def _close_delimited(self) -> bool:
        headers = self._headers
        return "content-length" not in headers and "transfer-encoding" not in headers

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":  # zlib-wrapped as the spec says, or raw as some servers send
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)
    raise ValueError("not an encoding this client asks for")
