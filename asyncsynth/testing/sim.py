"""A fast simulated OpenAI-compatible chat-completions endpoint.

A minimal HTTP/1.1 server on :class:`asyncio.Protocol` (keep-alive, pipelining,
``Content-Length`` bodies) with configurable latency, capacity, rate limits and
faults, for tests and benchmarks of clients. How it behaves when overloaded, as real
servers do:

- ``capacity`` alone: beyond that many requests in flight it answers
  ``overload_status`` (429, "too many at once"; or 503, as proxies and some servers do);
- ``capacity`` with ``queue=True``: it never refuses; beyond ``capacity`` requests wait
  their turn, so latency grows with load (vLLM's behaviour);
- ``rpm``/``tpm``: a token bucket by default; ``rate_window="sliding"`` or ``"fixed"``
  counts strictly over ``window`` seconds (every window, or clock-aligned ones), and
  ``ratelimit_headers`` sends OpenAI's ``x-ratelimit-*`` headers with every answer.

It can also ask for a key (``api_key``: 401 without it), refuse unknown models
(``strict_model``: 404) and serve vLLM's ``POST /tokenize`` (``tokenize``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import heapq
import math
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, cast

import orjson

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional
    uvloop = None

__all__ = [
    "Reply",
    "ReplyContext",
    "ReplyHook",
    "SimConfig",
    "SimServer",
    "SimStats",
    "serve",
    "start_process",
]

_LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] = (
    uvloop.new_event_loop if uvloop is not None else asyncio.new_event_loop
)
_MAX_HEAD = 64 * 1024
_ACCEPT_BATCH = 64
_DEFAULT_MAX_TOKENS = 16
_CHAT_PATHS = frozenset({b"/v1/chat/completions", b"/chat/completions"})
_MODEL_PATHS = frozenset({b"/v1/models", b"/models"})
_TOKENIZE_PATH = b"/tokenize"
_BATCH_PREFIXES = (b"/v1/files", b"/files", b"/v1/batches", b"/batches")
_RATE_WINDOWS = ("bucket", "sliding", "fixed")
_JSON_FORMATS = frozenset({"json_object", "json_schema"})
_RANDOM_ERRORS = (500, 502, 503)
_MALFORMED_BODY = b'{"id": "chatcmpl-sim", "object": "chat.completion", "choices": [{"ind'
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What a reply hook knows besides the request body."""

    n: int
    """1-based number of the chat request over the server's life (rejected ones included)."""
    path: str


@dataclass(slots=True)
class Reply:
    """A scripted answer returned by a reply hook.

    ``content=None`` keeps the default echo content; ``delay=None`` keeps the configured
    latency; ``body`` replaces the whole JSON response body; a ``status`` >= 400 without
    ``body`` sends an OpenAI-style error body whose message is ``content``.
    """

    content: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float | None = None
    drop: bool = False
    hang: bool = False
    malformed: bool = False
    finish_reason: str = "stop"
    body: dict[str, Any] | None = None


ReplyHook = Callable[[dict[str, Any], ReplyContext], "str | Reply"]


@dataclass
class SimConfig:
    """Behaviour of a :class:`SimServer`; every field can be changed at runtime."""

    model: str = "sim-model"
    latency: float = 0.0
    jitter: float = 0.0
    capacity: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    error_rate: float = 0.0
    drop_rate: float = 0.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0
    seed: int | None = None
    reply: ReplyHook | None = None
    """Scripted replies; called on the server's event loop, after rate limits and faults."""
    record: bool = False
    overload_status: int = 429
    """What a request beyond ``capacity`` gets (429 or 503), unless ``queue``."""
    queue: bool = False
    """Beyond ``capacity``, requests wait for a free slot (each takes ``latency``)."""
    rate_window: str = "bucket"
    """How ``rpm``/``tpm`` are counted: a token bucket, or strictly per ``window`` seconds
    (``sliding``: every window; ``fixed``: windows starting at the server's start)."""
    window: float = 60.0
    ratelimit_headers: bool = False
    """Send ``x-ratelimit-limit/remaining/reset-requests/-tokens`` with every chat answer."""
    api_key: str | None = None
    """Answer 401 (``invalid_api_key``) unless the request says ``Bearer <api_key>``."""
    strict_model: bool = False
    """Answer 404 (``model_not_found``) to a request naming another model."""
    tokenize: bool = False
    """Serve ``POST /tokenize`` as vLLM does (``{"count": ...}``, by the sim's own count)."""
    batch: Any = None
    """The Files and Batches API's settings: a ``SimBatchConfig`` or its fields as a dict."""

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0:
            raise ValueError("latency and jitter must be >= 0")
        if self.capacity is not None and self.capacity < 0:
            raise ValueError("capacity must be >= 0")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        rates = (self.error_rate, self.drop_rate, self.hang_rate, self.malformed_rate)
        if any(rate < 0 for rate in rates) or sum(rates) > 1:
            raise ValueError("fault rates must be >= 0 and sum to at most 1")
        if self.rate_window not in _RATE_WINDOWS:
            raise ValueError(f"rate_window must be one of {', '.join(_RATE_WINDOWS)}")
        if self.window <= 0:
            raise ValueError("window must be > 0")
        if not 400 <= self.overload_status <= 599:
            raise ValueError("overload_status must be an HTTP error status")

    @property
    def fault_rate(self) -> float:
        """Fraction of admitted requests that get a random fault."""
        return self.error_rate + self.drop_rate + self.hang_rate + self.malformed_rate


@dataclass
class SimStats:
    """Counters of a running server (written by its loop, safe to read from other threads)."""

    requests: int = 0
    """Chat requests received, including rejected ones."""
    responses_by_status: Counter[int] = field(default_factory=Counter)
    """Responses sent to chat requests, by status."""
    dropped: int = 0
    hung: int = 0
    malformed: int = 0
    in_flight: int = 0
    """Admitted requests not yet answered (hung ones until their client leaves)."""
    max_in_flight: int = 0
    connections: int = 0
    """Connections accepted."""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    """Request bodies, recorded only with ``record=True``."""
    hook_errors: list[str] = field(default_factory=list)
    tokenize_requests: int = 0
    max_queue_wait: float = 0.0
    """Longest wait for a free slot (``queue=True``), in seconds."""


# An outcome of one request: (status counted in stats or 0, response bytes or None,
# close the connection after it, delay in seconds, counted in ``in_flight``).
# ``None`` bytes mean a drop when closing, a hang otherwise.
_Outcome = tuple[int, bytes | None, bool, float, bool]
_HANG: _Outcome = (0, None, False, 0.0, True)


def _drop(delay: float) -> _Outcome:
    return 0, None, True, delay, True


def _answer(
    status: int,
    body: bytes,
    keep_alive: bool,
    *,
    delay: float = 0.0,
    admitted: bool = True,
    counted: bool = True,
    headers: dict[str, str] | None = None,
) -> _Outcome:
    """A response outcome; ``counted`` ones show in ``stats.responses_by_status``."""
    data = _response(status, body, headers, keep_alive)
    return status if counted else 0, data, not keep_alive, delay, admitted


def _refuse(
    status: int,
    message: str,
    keep_alive: bool,
    headers: dict[str, str] | None = None,
    code: str | None = None,
) -> _Outcome:
    """An error answered before admission (not counted in flight)."""
    body = _error_body(status, message, code)
    return _answer(status, body, keep_alive, admitted=False, headers=headers)


class _Bucket:
    """Token bucket holding one second's worth (at least the amount asked for); starts full."""

    __slots__ = ("level", "limit", "rate", "stamp")

    def __init__(self, per_minute: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.level = math.inf
        self.stamp = time.monotonic()

    def wait(self, amount: float, now: float) -> float:
        """Refill, then return seconds until ``amount`` is available (0 if it is now)."""
        self.level = min(max(self.rate, amount), self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self.wait(amount, now)
        self.level -= amount

    def remaining(self, now: float) -> float:
        level = min(max(self.rate, 1.0), self.level + (now - self.stamp) * self.rate)
        return max(0.0, level)

    def reset(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        full = max(self.rate, 1.0)
        return max(0.0, (full - self.remaining(now)) / self.rate)


class _Window:
    """At most ``limit`` in every ``window`` seconds (sliding), or in each window (fixed)."""

    __slots__ = ("entries", "fixed", "limit", "origin", "total", "window")

    def __init__(self, limit: float, window: float, *, fixed: bool) -> None:
        self.limit = limit
        self.window = window
        self.fixed = fixed
        self.origin = time.monotonic()
        self.entries: deque[tuple[float, float]] = deque()
        self.total = 0.0

    def _expire(self, now: float) -> None:
        oldest = self._start(now) if self.fixed else now - self.window
        entries = self.entries
        while entries and entries[0][0] <= oldest - (1e-9 if self.fixed else 0.0):
            self.total -= entries.popleft()[1]

    def _start(self, now: float) -> float:
        return now - (now - self.origin) % self.window

    def wait(self, amount: float, now: float) -> float:
        self._expire(now)
        excess = self.total + amount - self.limit
        if excess <= 0:
            return 0.0
        if self.fixed or amount > self.limit:
            return self._start(now) + self.window - now
        for stamp, spent in self.entries:
            excess -= spent
            if excess <= 0:
                return stamp + self.window - now
        return self.window

    def take(self, amount: float, now: float) -> None:
        self._expire(now)
        self.entries.append((now, amount))
        self.total += amount

    def remaining(self, now: float) -> float:
        self._expire(now)
        return max(0.0, self.limit - self.total)

    def reset(self, now: float) -> float:
        """Seconds until nothing counted now counts any more."""
        self._expire(now)
        if not self.entries:
            return 0.0
        if self.fixed:
            return self._start(now) + self.window - now
        return self.entries[-1][0] + self.window - now


_Limiter = _Bucket | _Window


class _Slot:
    """A response that must wait for earlier ones on its connection."""

    __slots__ = ("admitted", "close", "data", "done", "timer")

    def __init__(self, admitted: bool) -> None:
        self.admitted = admitted
        self.timer: asyncio.TimerHandle | None = None
        self.done = False
        self.data: bytes | None = None
        self.close = False


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: parses pipelined requests, writes responses in order."""

    __slots__ = (
        "_buf",
        "_closed",
        "_continued",
        "_epoch",
        "_loop",
        "_need",
        "_queue",
        "_reading",
        "_server",
        "_transport",
    )

    def __init__(self, server: SimServer, loop: asyncio.AbstractEventLoop, epoch: int) -> None:
        self._server = server
        self._loop = loop
        self._epoch = epoch
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._need = 0
        self._continued = False
        self._queue: deque[_Slot] = deque()
        self._reading = True
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._epoch != self._server._epoch:  # accepted just before down()
            self._reading = False
            self._transport.abort()
            return
        self._server._conns.add(self)
        self._server.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._reading = False
        self._server._conns.discard(self)
        stats = self._server.stats
        for slot in self._queue:
            if slot.timer is not None:
                slot.timer.cancel()
            if slot.admitted:
                stats.in_flight -= 1
        self._queue.clear()

    def abort(self) -> None:
        """Reset the connection."""
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self._reading:
            return
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return
            del buf[: self._parse(buf)]
            if not self._reading:
                buf.clear()
        else:
            consumed = self._parse(data)
            if self._reading and consumed < len(data):
                buf += memoryview(data)[consumed:]
        if self._server._waiters:
            self._server._notify_waiters()

    def _parse(self, buf: bytes | bytearray) -> int:
        """Handle every complete request in ``buf``; return the bytes consumed."""
        pos = 0
        size = len(buf)
        while pos < size and self._reading:
            if buf.startswith(b"\r\n", pos):
                pos += 2
                continue
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if size - pos > _MAX_HEAD:
                    self._reject(431, "request headers too large")
                break
            lines = bytes(buf[pos:end]).split(b"\r\n")
            request_line = lines[0].split(b" ")
            if len(request_line) != 3:
                self._reject(400, "malformed request line")
                break
            method, target, version = request_line
            head = _read_head(lines, keep_alive=version == b"HTTP/1.1")
            if isinstance(head, str):
                self._reject(400, head)
                return pos
            length, keep_alive, expect, auth = head
            body_end = end + 4 + length
            if body_end > size:
                self._need = body_end - pos
                if expect and not self._continued:
                    self._continued = True
                    self._write(_CONTINUE)
                break
            self._need = 0
            self._continued = False
            body = buf[end + 4 : body_end]
            pos = body_end
            self._submit(*self._server._handle(method, target, body, keep_alive, auth))
        return pos

    def _reject(self, status: int, message: str) -> None:
        body = _error_body(status, message)
        self._submit(*_answer(status, body, False, admitted=False, counted=False))

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def _close(self) -> None:
        assert self._transport is not None
        self._closed = True
        self._transport.close()

    def _submit(
        self, status: int, data: bytes | None, close: bool, delay: float, admitted: bool
    ) -> None:
        if close:
            self._reading = False
        if not self._queue and delay <= 0 and (data is not None or close):
            self._server._finished(status, admitted)
            if data is not None:
                self._write(data)
            if close:
                self._close()
            return
        slot = _Slot(admitted)
        self._queue.append(slot)
        if delay > 0:
            slot.timer = self._loop.call_later(delay, self._complete, slot, status, data, close)
        else:
            self._complete(slot, status, data, close)

    def _complete(self, slot: _Slot, status: int, data: bytes | None, close: bool) -> None:
        slot.timer = None
        if self._closed or (data is None and not close):
            return  # a hang keeps its slot (and its place in flight) until the client leaves
        self._server._finished(status, slot.admitted)
        slot.admitted = False
        slot.data = data
        slot.close = close
        slot.done = True
        queue = self._queue
        while queue and queue[0].done:
            ready = queue.popleft()
            if ready.data is not None:
                self._write(ready.data)
            if ready.close:
                self._close()
                return


class SimServer:
    """A simulated OpenAI-compatible server.

    Run it in a background thread with ``with SimServer() as sim:`` (or ``start()``/
    ``stop()``), or on the running loop with ``async with SimServer() as sim:``.
    Keyword ``overrides`` replace fields of ``config``.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **overrides: Any,
    ) -> None:
        self.config = dataclasses.replace(config or SimConfig(), **overrides)
        self.host = host
        self.port = port
        self.stats = SimStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._thread: threading.Thread | None = None
        self._listen_sock: socket.socket | None = None
        self._accepting: set[asyncio.Task[Any]] = set()
        self._conns: set[_Conn] = set()
        self._epoch = 0
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._waiters_lock = threading.Lock()
        self._rng = random.Random(self.config.seed)
        self._rpm: _Limiter | None = None
        self._tpm: _Limiter | None = None
        self._busy: list[float] = []
        """When each of ``capacity`` slots is next free (``queue=True``), as a heap."""
        self._reset_buckets()
        from .sim_batch import BatchSim

        self.batches = BatchSim(self, self.config.batch)
        """The Files and Batches API (``/v1/files``, ``/v1/batches``): see ``sim_batch``."""

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{_url_host(self.host)}:{self.port}/v1"

    def configure(self, **changes: Any) -> None:
        """Change config fields at runtime; new rate limits start with full buckets."""
        self.config = dataclasses.replace(self.config, **changes)
        if "seed" in changes:
            self._rng = random.Random(self.config.seed)
        if changes.keys() & {"rpm", "tpm", "rate_window", "window"}:
            self._reset_buckets()

    def spend(self, requests: float = 0, tokens: float = 0) -> None:
        """Use up rate budget as another client on the same key would."""

        def take() -> None:
            now = time.monotonic()
            if requests and self._rpm is not None:
                self._rpm.take(requests, now)
            if tokens and self._tpm is not None:
                self._tpm.take(tokens, now)

        if self._loop is None:
            take()
        else:
            self._in_loop(take)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Serve from a daemon thread running its own event loop."""
        if self._loop is not None:
            raise RuntimeError("SimServer is already running")
        loop = _LOOP_FACTORY()
        thread = threading.Thread(target=loop.run_forever, name="asyncsynth-sim", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(loop), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        self._thread = thread
        return self

    def stop(self) -> None:
        """Stop a server started with :meth:`start`; a no-op if it is not running."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._thread = None

    async def start_async(self) -> Self:
        """Serve on the running event loop."""
        if self._loop is not None:
            raise RuntimeError("SimServer is already running")
        await self._open(asyncio.get_running_loop())
        return self

    async def stop_async(self) -> None:
        """Stop a server started with :meth:`start_async`; a no-op if it is not running."""
        if self._thread is not None:
            raise RuntimeError("this SimServer runs in a thread: use stop()")
        if self._loop is not None:
            await self._close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_async()

    def down(self) -> None:
        """Close the listening socket (new connections are refused) and reset open ones."""
        self._in_loop(self._down_now)

    def up(self) -> None:
        """Listen again on the same port after :meth:`down`."""
        self._in_loop(self._up_now)

    # -- waiting ---------------------------------------------------------------------

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> None:
        """Block until ``n`` chat requests were received; raise TimeoutError after ``timeout``."""
        if threading.get_ident() == self._loop_thread_id:
            raise RuntimeError("use 'await wait_for_requests_async()' on the server's loop")
        event = threading.Event()
        waiter = (n, event.set)
        self._add_waiter(waiter)
        try:
            if not event.wait(timeout):
                raise TimeoutError(f"{self.stats.requests} of {n} requests after {timeout}s")
        finally:
            self._remove_waiter(waiter)

    async def wait_for_requests_async(self, n: int, timeout: float = 10.0) -> None:
        """Await until ``n`` chat requests were received (works from any event loop)."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def fire() -> None:
            with contextlib.suppress(RuntimeError):  # the waiting loop is already closed
                loop.call_soon_threadsafe(event.set)

        waiter = (n, fire)
        self._add_waiter(waiter)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.stats.requests} of {n} requests after {timeout}s") from None
        finally:
            self._remove_waiter(waiter)

    def _add_waiter(self, waiter: tuple[int, Callable[[], None]]) -> None:
        with self._waiters_lock:
            self._waiters.append(waiter)
        if self.stats.requests >= waiter[0]:
            waiter[1]()

    def _remove_waiter(self, waiter: tuple[int, Callable[[], None]]) -> None:
        with self._waiters_lock, contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _notify_waiters(self) -> None:
        count = self.stats.requests
        with self._waiters_lock:
            ready = [w for w in self._waiters if w[0] <= count]
            self._waiters = [w for w in self._waiters if w[0] > count]
        for _, fire in ready:
            fire()

    # -- loop-side plumbing ----------------------------------------------------------

    def _in_loop(self, func: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("SimServer is not running")
        if threading.get_ident() == self._loop_thread_id:
            func()
            return

        async def run() -> None:
            func()
            await _settle()

        asyncio.run_coroutine_threadsafe(run(), loop).result()

    async def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread_id = threading.get_ident()
        try:
            self._up_now()
        except BaseException:
            self._loop = self._loop_thread_id = None
            raise

    async def _close(self) -> None:
        self._down_now()
        if self._accepting:
            await asyncio.gather(*self._accepting, return_exceptions=True)
        await _settle()
        self._loop = self._loop_thread_id = None

    def _up_now(self) -> None:
        if self._listen_sock is not None:
            return
        assert self._loop is not None
        sock = _listen_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._listen_sock = sock
        self._loop.add_reader(sock, self._accept, sock)

    def _down_now(self) -> None:
        assert self._loop is not None
        self._epoch += 1
        sock, self._listen_sock = self._listen_sock, None
        if sock is not None:
            self._loop.remove_reader(sock)
            sock.close()
        for conn in list(self._conns):
            conn.abort()

    def _accept(self, sock: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        epoch = self._epoch
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: pause accepting for a moment
                loop.remove_reader(sock)
                loop.call_later(0.1, self._resume_accepting, sock)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            setup = loop.connect_accepted_socket(lambda: _Conn(self, loop, epoch), conn)
            task = loop.create_task(setup)
            self._accepting.add(task)
            task.add_done_callback(functools.partial(self._accepted, conn))

    def _accepted(self, conn: socket.socket, task: asyncio.Task[Any]) -> None:
        self._accepting.discard(task)
        if task.cancelled() or task.exception() is not None:
            conn.close()

    def _resume_accepting(self, sock: socket.socket) -> None:
        if self._listen_sock is sock and self._loop is not None:
            self._loop.add_reader(sock, self._accept, sock)

    # -- request handling (runs on the server's loop) --------------------------------

    def _finished(self, status: int, admitted: bool) -> None:
        stats = self.stats
        if admitted:
            stats.in_flight -= 1
        if status:
            stats.responses_by_status[status] += 1

    def _handle(
        self,
        method: bytes,
        target: bytes,
        body: bytes | bytearray,
        keep_alive: bool,
        auth: bytes = b"",
    ) -> _Outcome:
        path = target.partition(b"?")[0]
        key = self.config.api_key
        if key is not None and auth != b"Bearer " + key.encode() and path != _TOKENIZE_PATH:
            if path in _CHAT_PATHS:
                self.stats.requests += 1
            given = auth.decode("latin-1").removeprefix("Bearer ")
            shown = f"{given[:3]}****{given[-4:]}" if len(given) > 8 else "****"
            message = f"Incorrect API key provided: {shown}"
            return _refuse(401, message, keep_alive, code="invalid_api_key")
        if path in _CHAT_PATHS and method == b"POST":
            return self._chat(path, body, keep_alive)
        if path.startswith(_BATCH_PREFIXES):
            return self.batches.handle(method, target, bytes(body), keep_alive)
        if path in _MODEL_PATHS and method == b"GET":
            models = {"object": "list", "data": [{"id": self.config.model, "object": "model"}]}
            return _answer(200, orjson.dumps(models), keep_alive, admitted=False, counted=False)
        if path == _TOKENIZE_PATH and method == b"POST" and self.config.tokenize:
            return self._tokenize(body, keep_alive)
        message = f"no route for {method.decode('latin-1')} {path.decode('latin-1')}"
        body = _error_body(404, message)
        return _answer(404, body, keep_alive, admitted=False, counted=False)

    def _tokenize(self, raw: bytes | bytearray, keep_alive: bool) -> _Outcome:
        self.stats.tokenize_requests += 1
        try:
            body = orjson.loads(raw)
            messages = body["messages"] if "messages" in body else [{"content": body["prompt"]}]
            count = _estimate_tokens(_prompt_chars(messages))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            body = _error_body(400, "expected 'messages' or 'prompt'")
            return _answer(400, body, keep_alive, admitted=False, counted=False)
        data = {"count": count, "max_model_len": 4096, "tokens": list(range(count))}
        return _answer(200, orjson.dumps(data), keep_alive, admitted=False, counted=False)

    def _chat(self, path: bytes, raw: bytes | bytearray, keep_alive: bool) -> _Outcome:
        stats = self.stats
        cfg = self.config
        stats.requests += 1
        n = stats.requests
        body = self._chat_body(raw, keep_alive)
        if not isinstance(body, dict):
            return body
        prompt_tokens = _estimate_tokens(_prompt_chars(body["messages"]))
        if cfg.capacity is not None and not cfg.queue and stats.in_flight >= cfg.capacity:
            status = cfg.overload_status
            message = f"server at capacity ({cfg.capacity} requests in flight)"
            return _refuse(status, message, keep_alive, {"Retry-After": "1"}, "server_overloaded")
        headers: dict[str, str] | None = None
        if self._rpm is not None or self._tpm is not None:
            limited = self._rate_limit(prompt_tokens + _max_tokens(body), keep_alive)
            if limited is not None:
                return limited
            if cfg.ratelimit_headers:
                headers = self._limit_headers(time.monotonic())
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        delay = self._delay()
        if cfg.fault_rate:
            fault = self._random_fault(self._rng.random(), delay, keep_alive)
            if fault is not None:
                return fault
        content: str | None = None
        if cfg.reply is not None:
            reply = self._hook_reply(cfg.reply, body, n, path, prompt_tokens, delay, keep_alive)
            if not isinstance(reply, str):
                return reply
            content = reply
        data = _completion(body, n, content, "stop", prompt_tokens, cfg.model)
        return _answer(200, data, keep_alive, delay=delay, headers=headers)

    def _chat_body(self, raw: bytes | bytearray, keep_alive: bool) -> dict[str, Any] | _Outcome:
        """A chat request's JSON body, or the answer refusing it (400, or 404 for the model)."""
        cfg = self.config
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _refuse(400, f"invalid JSON body: {exc}", keep_alive)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _refuse(400, "body must be an object with a 'messages' list", keep_alive)
        if cfg.record:
            self.stats.bodies.append(body)
        if cfg.strict_model and body.get("model") != cfg.model:
            message = f"The model `{body.get('model')}` does not exist."
            return _refuse(404, message, keep_alive, code="model_not_found")
        return body

    def _hook_reply(
        self,
        hook: ReplyHook,
        body: dict[str, Any],
        n: int,
        path: bytes,
        prompt_tokens: int,
        delay: float,
        keep_alive: bool,
    ) -> str | _Outcome:
        """The reply hook's content for request ``n``, or the answer it scripts (or a 500)."""
        try:
            result = hook(body, ReplyContext(n, path.decode("latin-1")))
            if isinstance(result, Reply):
                return self._scripted(result, body, n, prompt_tokens, delay, keep_alive)
            if not isinstance(result, str):
                raise TypeError(f"reply hook returned {type(result).__name__}")
            return result
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            self.stats.hook_errors.append(text)
            return _answer(500, _error_body(500, text), keep_alive)

    def _delay(self) -> float:
        """Seconds before a request admitted now is answered: latency, jitter, queueing."""
        cfg = self.config
        delay = cfg.latency
        if cfg.jitter:
            delay += self._rng.uniform(-cfg.jitter, cfg.jitter)
        if cfg.queue and cfg.capacity is not None:
            delay += self._queue_wait(delay)
        return delay

    def _queue_wait(self, service: float) -> float:
        """Seconds a request admitted now waits for one of ``capacity`` slots."""
        now = time.monotonic()
        busy = self._busy
        while busy and busy[0] <= now:
            heapq.heappop(busy)
        assert self.config.capacity is not None
        start = now if len(busy) < max(1, self.config.capacity) else heapq.heappop(busy)
        heapq.heappush(busy, start + service)
        wait = start - now
        if wait > self.stats.max_queue_wait:
            self.stats.max_queue_wait = wait
        return wait

    def _limit_headers(self, now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, limiter in (("requests", self._rpm), ("tokens", self._tpm)):
            if limiter is not None:
                headers[f"x-ratelimit-limit-{kind}"] = f"{limiter.limit:g}"
                headers[f"x-ratelimit-remaining-{kind}"] = f"{math.floor(limiter.remaining(now))}"
                headers[f"x-ratelimit-reset-{kind}"] = _format_reset(limiter.reset(now))
        return headers

    def _rate_limit(self, tokens: int, keep_alive: bool) -> _Outcome | None:
        now = time.monotonic()
        rpm, tpm = self._rpm, self._tpm
        request_wait = rpm.wait(1, now) if rpm is not None else 0.0
        token_wait = tpm.wait(tokens, now) if tpm is not None else 0.0
        if request_wait <= 0 and token_wait <= 0:
            if rpm is not None:
                rpm.take(1, now)
            if tpm is not None:
                tpm.take(tokens, now)
            return None
        wait = max(request_wait, token_wait)
        headers = self._limit_headers(now) if self.config.ratelimit_headers else {}
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        if rpm is not None:
            headers["x-ratelimit-reset-requests"] = _format_reset(request_wait)
        if tpm is not None:
            headers["x-ratelimit-reset-tokens"] = _format_reset(token_wait)
        kind = "requests" if request_wait >= token_wait else "tokens"
        message = f"rate limit reached for {kind}; try again in {_format_reset(wait)}"
        return _refuse(429, message, keep_alive, headers, "rate_limit_exceeded")

    def _random_fault(self, draw: float, delay: float, keep_alive: bool) -> _Outcome | None:
        cfg = self.config
        stats = self.stats
        if draw < cfg.error_rate:
            status = _RANDOM_ERRORS[self._rng.randrange(len(_RANDOM_ERRORS))]
            return _answer(status, _error_body(status, "simulated error"), keep_alive, delay=delay)
        draw -= cfg.error_rate
        if draw < cfg.drop_rate:
            stats.dropped += 1
            return _drop(delay)
        draw -= cfg.drop_rate
        if draw < cfg.hang_rate:
            stats.hung += 1
            return _HANG
        draw -= cfg.hang_rate
        if draw < cfg.malformed_rate:
            stats.malformed += 1
            return _answer(200, _MALFORMED_BODY, keep_alive, delay=delay)
        return None

    def _scripted(
        self,
        reply: Reply,
        body: dict[str, Any],
        n: int,
        prompt_tokens: int,
        delay: float,
        keep_alive: bool,
    ) -> _Outcome:
        stats = self.stats
        if reply.delay is not None:
            delay = reply.delay
        if reply.hang:
            stats.hung += 1
            return _HANG
        if reply.drop:
            stats.dropped += 1
            return _drop(delay)
        status = reply.status
        if reply.malformed:
            stats.malformed += 1
            data = _MALFORMED_BODY
        elif reply.body is not None:
            data = orjson.dumps(reply.body)
        elif status >= 400:
            data = _error_body(status, reply.content or _reason(status))
        else:
            data = _completion(
                body, n, reply.content, reply.finish_reason, prompt_tokens, self.config.model
            )
        return _answer(status, data, keep_alive, delay=delay, headers=reply.headers)

    def _reset_buckets(self) -> None:
        cfg = self.config

        def limiter(per_minute: float | None) -> _Limiter | None:
            if per_minute is None:
                return None
            if cfg.rate_window == "bucket":
                return _Bucket(per_minute)
            return _Window(per_minute, cfg.window, fixed=cfg.rate_window == "fixed")

        self._rpm = limiter(cfg.rpm)
        self._tpm = limiter(cfg.tpm)


# -- helpers -----------------------------------------------------------------------------


async def _settle() -> None:
    """Give the loop a few iterations to run connection_lost and close callbacks."""
    for _ in range(3):
        await asyncio.sleep(0)


def _listen_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def _error_body(status: int, message: str, code: str | None = None) -> bytes:
    error = {"message": message, "type": _error_type(status), "param": None, "code": code}
    return orjson.dumps({"error": error})


_STATUS_LINES: dict[int, bytes] = {}


def _response(status: int, body: bytes, headers: dict[str, str] | None, keep_alive: bool) -> bytes:
    head = _STATUS_LINES.get(status)
    if head is None:
        head = _STATUS_LINES[status] = (
            f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: application/json\r\n".encode()
        )
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() if headers else b""
    if not keep_alive:
        extra += b"Connection: close\r\n"
    return b"%sContent-Length: %d\r\n%s\r\n%s" % (head, len(body), extra, body)


def _text(content: Any) -> str:
    """Text of a message content: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _prompt_chars(messages: list[Any]) -> int:
    return sum(len(_text(m.get("content"))) for m in messages if isinstance(m, dict))


class _Head(NamedTuple):
    """The request headers the simulator acts on."""

    length: int
    keep_alive: bool
    expect: bool  # Expect: 100-continue
    auth: bytes


def _read_head(lines: list[bytes], *, keep_alive: bool) -> _Head | str:
    """The headers among a request's head ``lines`` (request line first), or why it gets a 400."""
    length = 0
    expect = False
    auth = b""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = -1
            if length < 0:
                return "invalid Content-Length"
        elif name == b"transfer-encoding":
            return "chunked request bodies are not supported"
        elif name == b"connection":
            token = value.strip().lower()
            if token == b"close":
                keep_alive = False
            elif token == b"keep-alive":
                keep_alive = True
        elif name == b"expect":
            expect = value.strip().lower() == b"100-continue"
        elif name == b"authorization":
            auth = value.strip()
    return _Head(length, keep_alive, expect, auth)


def _estimate_tokens(chars: int) -> int:
    return max(1, (chars + 3) // 4)


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    return value if isinstance(value, int) and value >= 0 else _DEFAULT_MAX_TOKENS


def _default_content(body: dict[str, Any]) -> str:
    last = ""
    for message in reversed(body["messages"]):
        if isinstance(message, dict) and message.get("role") == "user":
            last = _text(message.get("content"))
            break
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in _JSON_FORMATS:
        return orjson.dumps({"echo": last}).decode()
    return "echo: " + last


def _completion(
    body: dict[str, Any],
    n: int,
    content: str | None,
    finish_reason: str,
    prompt_tokens: int,
    default_model: str,
) -> bytes:
    if content is None:
        content = _default_content(body)
    count = body.get("n")
    count = count if isinstance(count, int) and count > 1 else 1
    message = {"role": "assistant", "content": content}
    completion_tokens = _estimate_tokens(len(content)) * count
    return orjson.dumps(
        {
            "id": f"chatcmpl-sim-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or default_model,
            "choices": [
                {"index": i, "message": message, "finish_reason": finish_reason}
                for i in range(count)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def _format_reset(seconds: float) -> str:
    """Format a duration like OpenAI's rate-limit reset headers: ``250ms``, ``1s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    millis = math.ceil(seconds * 1000)
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# -- running it standalone -----------------------------------------------------------------


def serve(
    config: SimConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Run a sim in this process until SIGINT/SIGTERM; ``ready(port)`` is called once listening."""
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_LOOP_FACTORY) as r:
        r.run(_serve_until_signal(config, host, port, ready))


async def _serve_until_signal(
    config: SimConfig | None, host: str, port: int, ready: Callable[[int], None] | None
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C still works
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
    try:
        async with SimServer(config, host, port) as server:
            if ready is not None:
                ready(server.port)
            await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def start_process(
    config_kwargs: dict[str, Any] | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a sim in a child process; return it and its base URL once it listens.

    Stop it with ``process.terminate()`` then ``process.wait()``. Reply hooks cannot be passed.
    """
    root = str(Path(__file__).resolve().parents[2])
    code = (
        f"import sys; sys.path.append({root!r}); from asyncsynth.testing.sim import _main; _main()"
    )
    args = ["--json-config", orjson.dumps(config_kwargs or {}).decode(), "--host", host]
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args, "--port", str(port)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    with process.stdout:
        line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"sim process exited with code {process.wait()}")
    bound = orjson.loads(line)["port"]
    return process, f"http://{_url_host(host)}:{bound}/v1"


def _main(argv: list[str] | None = None) -> None:
    """Entry point of :func:`start_process` children: serve, announcing the port on stdout."""
    parser = argparse.ArgumentParser(description="Simulated OpenAI-compatible endpoint.")
    parser.add_argument("--json-config", default="{}", help="SimConfig fields as a JSON object")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    config = SimConfig(**orjson.loads(args.json_config))

    def announce(port: int) -> None:
        sys.stdout.write(orjson.dumps({"port": port}).decode() + "\n")
        sys.stdout.flush()

    serve(config, args.host, args.port, ready=announce)
