"""Batch API mode: requests answered through ``/v1/files`` + ``/v1/batches``, durably.

An endpoint with ``batch`` set (or every endpoint of the role, with ``run --batch``)
answers its role's requests through the provider's Batch API, at its batch price:

1. requests collect in a queue per endpoint; a file is cut at ``max_requests`` lines or
   ``max_bytes``, when the input ends, or ``collect`` seconds after the last request came;
2. the file is written next to the journal, and the journal records the batch and every
   request it holds (the line's ``custom_id`` is the request's journal key); then the file
   is uploaded (``POST /files``, purpose ``batch``) and the batch created (``POST
   /batches``, ``metadata.asyncsynth`` naming it). The journal says ``creating`` before the
   create call goes out, so a crash between the provider creating it and the journal
   hearing of it is settled on resume by finding the batch by that name, never by creating
   it again. A batch never created (``written``, ``uploaded``) is dropped on resume and its
   requests queued afresh: nothing was paid for them;
3. the batch is polled (``GET /batches/ID``) with backoff: ``poll_interval`` growing 1.5x
   a poll up to ``poll_max``;
4. its output and error files are downloaded and matched by ``custom_id``; answers go into
   the journal in the transaction that takes them off the batch, so nothing is seen before
   it is durable, and a download cut short is simply done again;
5. what did not come back (error lines, a batch that failed, expired or was cancelled) is
   retried: in a new batch, or online on the role's endpoints when the request has been in
   ``max_attempts`` batches, when its batch ran past ``batch_deadline`` (the batch is
   cancelled first and its partial output kept, so nothing is paid twice), or when
   ``online_tail`` or fewer requests are left. A request refused for its own fault (a 400
   line) fails like an online one.

Running the same job again finds the journal's batches and waits for them: a request a
submitted batch holds is never submitted again, whether the new run uses batch mode or
not. Ctrl-C and crashes leave submitted batches alone (they are paid for); ``asyncsynth
batches list|status|cancel|download`` manage them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import orjson
from anyio.streams.memory import MemoryObjectSendStream

from .client import Completion, parse_completion, status_error
from .cost import Hold
from .errors import (
    BatchError,
    BudgetExceeded,
    ConfigError,
    ConnectError,
    ConnectionDropped,
    MalformedResponse,
    RequestError,
    RequestTimeout,
)
from .events import Wait
from .journal import JOURNAL_SUFFIX, Journal
from .retry import backoff

if TYPE_CHECKING:
    from ..config import Config, EndpointConfig
    from .engine import Engine, Request, Result, _Results
    from .fleet import EndpointState, Fleet

log = logging.getLogger("asyncsynth")

CHAT_URL = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
"""Provider statuses after which a batch changes no more."""
API_TIMEOUT = 300.0
"""Seconds one Files/Batches call may take (uploads and downloads of 200 MB included)."""
API_ATTEMPTS = 8
"""Attempts of one Files/Batches call that fails retryably (polls are retried for ever)."""
FIND_SLACK = 600.0
"""Batches created this long before ours was recorded are not searched for it."""
CLEANUP_TIMEOUT = 10.0
"""Seconds the provider's copies of a finished batch's files get to be deleted, even at exit."""
RETRIED_CODES = frozenset({"batch_expired", "batch_cancelled", "request_timeout"})


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How an endpoint uses the Batch API (its ``batch`` table)."""

    completion_window: str = "24h"
    """The ``completion_window`` batches are submitted with."""
    max_requests: int = 50_000
    """Lines per batch file (OpenAI: 50,000)."""
    max_bytes: int = 200_000_000
    """Bytes per batch file (OpenAI: 200 MB)."""
    poll_interval: float = 10.0
    """Seconds before the first poll; each later wait is 1.5x longer, up to ``poll_max``."""
    poll_max: float = 300.0
    """The longest wait between two polls, in seconds."""
    collect: float = 2.0
    """Seconds without a new request after which a partial file is submitted."""
    batch_deadline: float | None = None
    """Seconds a batch may run before it is cancelled and what it left is sent online."""
    online_tail: int = 0
    """When this many requests or fewer are left (queued, or unanswered in a running batch,
    or left over by one), they are sent online instead of waiting for another batch."""
    max_attempts: int = 2
    """Batches a request may be in; after that it is sent online."""
    delete_files: bool = True
    """Delete the batch's files at the provider (and here) once its answers are in the journal."""
    max_pending: int = 200_000
    """Requests of a ``map`` waiting for batches at once (about 1 KB of memory each); the
    input is read on as they are answered. 200,000: four full files in flight."""


def check_batch(value: Any, where: str) -> BatchSettings | None:
    """An endpoint's ``batch``: ``true``, ``false`` or a table of :class:`BatchSettings`."""
    from ..config import BOOLEAN, NON_NEGATIVE, POSITIVE, POSITIVE_INT, STRING, check_table

    if isinstance(value, BatchSettings) or value is None:
        return value
    if isinstance(value, bool):
        return BatchSettings() if value else None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected true, false or a table, got {value!r}")
    spec = {
        "completion_window": STRING,
        "max_requests": POSITIVE_INT,
        "max_bytes": POSITIVE_INT,
        "poll_interval": POSITIVE,
        "poll_max": POSITIVE,
        "collect": NON_NEGATIVE,
        "batch_deadline": POSITIVE,
        "online_tail": _non_negative_int,
        "max_attempts": POSITIVE_INT,
        "delete_files": BOOLEAN,
        "max_pending": POSITIVE_INT,
    }
    return BatchSettings(**check_table(value, spec, where))


def _non_negative_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: expected an integer >= 0, got {value!r}")
    return value


def batch_folder(journal: Journal) -> Path:
    """Where a journal's batch files are written: ``OUTPUT.batches/`` next to it."""
    name = journal.path.name
    stem = name[: -len(JOURNAL_SUFFIX)] if name.endswith(JOURNAL_SUFFIX) else name
    return journal.path.with_name(f"{stem}.batches")


# -- the wire: Files and Batches ----------------------------------------------------------------


class BatchClient:
    """The OpenAI Files + Batches API of one endpoint, over httpx.

    Every call raises the engine's errors (:mod:`asyncsynth.engine.errors`) and retries
    what is retryable, with backoff, up to ``API_ATTEMPTS`` times.
    """

    def __init__(self, base_url: str, api_key: str | None, *, name: str = "") -> None:
        import httpx

        self._httpx = httpx
        self.name = name
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=API_TIMEOUT)

    async def _call(self, attempt: Callable[[], Awaitable[Any]], *, attempts: int) -> Any:
        httpx = self._httpx
        for number in range(1, attempts + 1):
            try:
                try:
                    response = await attempt()
                except httpx.TimeoutException:
                    raise RequestTimeout(
                        f"no answer within {API_TIMEOUT:g}s", endpoint=self.name
                    ) from None
                except httpx.ConnectError as exc:
                    raise ConnectError(f"cannot connect: {exc}", endpoint=self.name) from None
                except httpx.HTTPError as exc:
                    raise ConnectionDropped(
                        f"{type(exc).__name__}: {exc}", endpoint=self.name
                    ) from None
                if response.status_code >= 400:
                    raise status_error(
                        response.status_code, response.content, response.headers, self.name
                    )
                return response
            except RequestError as exc:
                if not exc.retryable or number == attempts:
                    raise
                await anyio.sleep(backoff(number, base=1.0, cap=30.0))
        raise AssertionError("unreachable")

    async def _json(
        self, method: str, path: str, *, attempts: int = API_ATTEMPTS, **kw: Any
    ) -> Any:
        response = await self._call(
            lambda: self._client.request(method, path, **kw), attempts=attempts
        )
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            preview = response.content[:120].decode(errors="replace")
            raise MalformedResponse(f"not JSON: {preview!r}", endpoint=self.name) from None

    async def upload(self, path: Path, filename: str) -> str:
        """Upload a batch input file; its file id."""

        async def send() -> Any:
            with path.open("rb") as f:
                return await self._client.post(
                    "/files",
                    data={"purpose": "batch"},
                    files={"file": (filename, f, "application/jsonl")},
                )

        response = await self._call(send, attempts=API_ATTEMPTS)
        return str(orjson.loads(response.content)["id"])

    async def create(self, file_id: str, window: str, name: str) -> dict[str, Any]:
        """Create a batch, in one attempt (a retry could create a second one: see find)."""
        body = {
            "input_file_id": file_id,
            "endpoint": CHAT_URL,
            "completion_window": window,
            "metadata": {"asyncsynth": name},
        }
        result: dict[str, Any] = await self._json("POST", "/batches", json=body, attempts=1)
        return result

    async def retrieve(self, batch_id: str, *, attempts: int = API_ATTEMPTS) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", f"/batches/{batch_id}", attempts=attempts)
        return result

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("POST", f"/batches/{batch_id}/cancel")
        return result

    async def find(self, name: str, since: float) -> dict[str, Any] | None:
        """The batch whose ``metadata.asyncsynth`` is ``name``, created after ``since``."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after"] = after
            page = await self._json("GET", "/batches", params=params)
            data = page.get("data") or []
            for batch in data:
                if (batch.get("metadata") or {}).get("asyncsynth") == name:
                    return dict(batch)
            if not page.get("has_more") or not data:
                return None
            if min(int(b.get("created_at") or 0) for b in data) < since - FIND_SLACK:
                return None
            after = str(data[-1]["id"])

    async def download(self, file_id: str, dest: Path) -> None:
        """Stream a file's content to ``dest`` (written whole, then renamed into place)."""
        tmp = dest.with_name(dest.name + ".part")

        async def fetch() -> Any:
            async with self._client.stream("GET", f"/files/{file_id}/content") as response:
                if response.status_code < 400:
                    with tmp.open("wb") as f:
                        async for chunk in response.aiter_bytes(1 << 20):
                            f.write(chunk)
                else:
                    await response.aread()
                return response

        await self._call(fetch, attempts=API_ATTEMPTS)
        tmp.replace(dest)

    async def delete_file(self, file_id: str) -> None:
        try:
            await self._json("DELETE", f"/files/{file_id}", attempts=2)
        except RequestError as exc:  # tidying up only: the answers are safe
            log.info("could not delete batch file %s at %s: %s", file_id, self.name, exc)

    async def aclose(self) -> None:
        await self._client.aclose()


def client_for(ep: EndpointConfig) -> BatchClient:
    if ep.base_url is None:
        raise ConfigError(f"endpoints.{ep.name}: batch mode needs a remote endpoint (base_url)")
    return BatchClient(ep.base_url, ep.api_key(), name=ep.name)


# -- reading a batch's files --------------------------------------------------------------------


def read_results(
    path: Path, endpoint: str
) -> Iterable[tuple[bytes, Completion | None, BatchError | None]]:
    """(key, completion, error) of every line of an output or error file."""
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                key = bytes.fromhex(row["custom_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("%s: a line that is not a batch result: %r", path, line[:120])
                continue
            response = row.get("response") or {}
            status = response.get("status_code")
            error = row.get("error")
            if status == 200 and not error:
                try:
                    body = orjson.dumps(response.get("body"))
                    yield key, parse_completion(body, endpoint), None
                except MalformedResponse as exc:
                    yield key, None, BatchError(str(exc), code="malformed", endpoint=endpoint)
                continue
            yield key, None, _line_error(status, response.get("body"), error, endpoint)


def _line_error(status: Any, body: Any, error: Any, endpoint: str) -> BatchError:
    if isinstance(status, int) and status >= 400:
        exc = status_error(status, orjson.dumps(body), {}, endpoint)
        return BatchError(f"batch line: {exc}", code=str(status), retryable=exc.retryable)
    code = str((error or {}).get("code") or "unknown")
    message = str((error or {}).get("message") or "no answer")
    retryable = code in RETRIED_CODES or code == "unknown"
    return BatchError(f"batch line: {code}: {message}", code=code, retryable=retryable)


# -- the runner: what the engine calls ----------------------------------------------------------

Deliver = Callable[["Result | BudgetExceeded"], Awaitable[None]]
"""Hands a waiter its result, or the budget stop that kept its request from being sent."""


@dataclass(slots=True, eq=False)
class _Item:
    """A request waiting for its answer from a batch (several waiters share one key)."""

    key: bytes
    fleet: Fleet
    waiters: list[tuple[Request | bytes, Deliver]]
    """(request, or the request packed by :func:`_pack`; who gets its result)."""
    attempts: int = 0
    """Batches it has been in (earlier runs included)."""
    hold: Hold | None = None
    since: float = field(default_factory=time.monotonic)

    @property
    def request(self) -> Request:
        return _unpack(self.waiters[0][0])


def _pack(request: Request) -> Request | bytes:
    """A request waiting hours for its batch, in a fifth of the memory (when it is JSON)."""
    try:
        packed = orjson.dumps(
            [request.messages, request.params, request.id, request.meta, request.sample]
        )
    except TypeError:  # meta holding objects: kept as it is
        return request
    return bytes(memoryview(packed))  # orjson's own result holds a 4 KB buffer whatever its size


def _unpack(packed: Request | bytes) -> Request:
    if isinstance(packed, bytes):
        from .engine import Request

        messages, params, ident, meta, sample = orjson.loads(packed)
        return Request(messages, params, ident, meta, sample)
    return packed


def _unwrap(exc: Exception) -> Exception:
    """The exception as raised, not wrapped in groups of one by task groups."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _Window:
    """A feed's requests handed to batches and not yet answered, at most ``limit`` at once."""

    __slots__ = ("count", "fed", "finished", "limit", "room")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.fed = False  # the feed has handed over all its requests
        self.room = anyio.Event()
        self.finished = anyio.Event()

    async def enter(self) -> None:
        while self.count >= self.limit:  # the collect timer sends the queue
            await self.room.wait()
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        self.room.set()
        self.room = anyio.Event()
        if self.fed and not self.count:
            self.finished.set()


@dataclass(slots=True, eq=False)
class _Live:
    """A batch of this job not yet answered: its journal id, endpoint and waiting items."""

    id: int
    endpoint: str
    items: dict[bytes, _Item] = field(default_factory=dict)
    status: str | None = None
    completed: int = 0
    failed: int = 0
    total: int = 0
    next_poll: float | None = None
    online: bool = False
    """Its leftovers go online (it was cancelled at its deadline or for the tail)."""


@dataclass(slots=True)
class _Queue:
    endpoint: str
    items: list[tuple[_Item, bytes]] = field(default_factory=list)
    bytes: int = 0
    last: float = 0.0
    collecting: bool = False


class BatchRunner:
    """Batch mode for one engine: queues, batches in flight, polling, online completion.

    The engine calls :meth:`complete` (one request) and :meth:`feed` (a ``map``); every
    result comes back through the engine's own result paths.
    """

    def __init__(self, engine: Engine, journal: Journal) -> None:
        self.engine = engine
        self.journal = journal
        self.folder = batch_folder(journal)
        self.fleets: set[Fleet] = set()
        """Fleets answered through batches (they have an endpoint with ``batch`` set)."""
        self.live: dict[int, _Live] = {}
        self._items: dict[bytes, _Item] = {}
        self._queues: dict[str, _Queue] = {}
        self._clients: dict[str, BatchClient] = {}
        self._online: dict[Fleet, MemoryObjectSendStream[_Item]] = {}
        self._round = 0
        self._first_round = 0
        """Batch requests held under a cap in this round, and in the first (see _reserve_round)."""
        self.refused: dict[str, RequestError] = {}
        """Endpoints whose Batch API refused a batch: this run goes on online there."""
        self._held_before = journal.batch_held()
        self.polls = 0
        self._discard_unsubmitted()

    # -- setup -------------------------------------------------------------------------------------

    def _discard_unsubmitted(self) -> None:
        """Batches an earlier run wrote or uploaded but never created: nothing was paid."""
        for row in self.journal.batches(["written", "uploaded"]):
            self.journal.batch_release(row["id"], "discarded")
            if row["path"]:
                Path(row["path"]).unlink(missing_ok=True)
        self._held_before = self.journal.batch_held()

    def serve(self, fleet: Fleet) -> None:
        """Answer ``fleet`` through batches if one of its endpoints has ``batch`` set."""
        if any(ep.config.batch is not None for ep in fleet.endpoints):
            self.fleets.add(fleet)

    def holding(self, key: bytes) -> bool:
        """Whether a batch of an earlier run holds ``key`` (then it must wait for it)."""
        return bool(self._held_before) and self.journal.batch_holding(key) is not None

    def settings(self, endpoint: str) -> BatchSettings:
        return self.engine.config.endpoints[endpoint].batch or BatchSettings()

    def _client(self, endpoint: str) -> BatchClient:
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = client_for(self.engine.config.endpoints[endpoint])
        return client

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for client in self._clients.values():
                await client.aclose()

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        tg = self.engine._tg
        assert tg is not None
        tg.start_soon(fn, *args)

    # -- the engine's entry points -----------------------------------------------------------------

    async def complete(self, request: Request, key: bytes, fleet: Fleet) -> Result:
        """The answer to one request, through a batch (or online when it falls back)."""
        done = anyio.Event()
        box: list[Result | BudgetExceeded] = []

        async def deliver(result: Result | BudgetExceeded) -> None:
            box.append(result)
            done.set()

        await self.submit(request, key, fleet, deliver)
        await done.wait()
        if isinstance(box[0], BudgetExceeded):
            raise box[0]
        return box[0]

    async def feed(
        self,
        requests: Iterable[Request] | AsyncIterable[Request],
        fleet: Fleet,
        results: _Results,
        scope: anyio.CancelScope,
        done: anyio.Event,
        failure: list[BaseException],
    ) -> None:
        """``Engine.map`` over a batch fleet: results go to ``results`` as batches answer."""
        engine = self.engine
        journal = self.journal
        limit = max(
            (self.settings(ep.name).max_pending for ep in self._batch_eps(fleet)),
            default=BatchSettings().max_pending,
        )
        window = _Window(limit)

        async def deliver(result: Result | BudgetExceeded) -> None:
            if isinstance(result, BudgetExceeded):
                if not failure:
                    failure.append(result)
            else:
                await results.put(result)
            window.leave()  # only once it is handed over: the feed then may close it

        try:
            with scope:
                try:
                    async for request in _each(requests):
                        key = engine.key(request, fleet)
                        hit = journal.get(key)
                        if hit is not None:
                            result = engine._cached(request, hit)
                            result.key = key
                            await results.put(result)
                            continue
                        await window.enter()
                        try:
                            await self.submit(request, key, fleet, deliver, pack=True)
                        except BaseException:
                            window.count -= 1
                            raise
                        if not window.count % 1024:  # queueing never waits: let others run
                            await anyio.lowlevel.checkpoint()
                except BudgetExceeded as exc:
                    failure.append(exc)  # raised by map() once what is in flight is in
                window.fed = True
                self._flush_now(fleet)
                if window.count:
                    await window.finished.wait()
        except Exception as exc:
            failure.append(_unwrap(exc))
        finally:
            results.close()
            done.set()

    async def submit(
        self, request: Request, key: bytes, fleet: Fleet, deliver: Deliver, *, pack: bool = False
    ) -> None:
        """Queue ``request`` for a batch, or attach it to the batch that already holds it.

        With ``pack`` (a map's requests), it waits packed: its result then carries an equal
        copy of it rather than the object itself.
        """
        kept = _pack(request) if pack else request
        item = self._items.get(key)
        if item is not None:  # the same request twice in one job: one line, both answered
            item.waiters.append((kept, deliver))
            return
        item = _Item(key, fleet, [(kept, deliver)])
        held = self.journal.batch_holding(key) if self._held_before else None
        ledger = self.engine.ledger
        if held is not None:  # an earlier run submitted it: wait for that batch
            batch, item.attempts = held
            self._items[key] = item
            self._attach(batch, item)
            return
        if fleet not in self.fleets or not self._batch_eps(fleet):  # online as usual
            self._items[key] = item
            self._go_online(item)
            return
        ep = self._pick(fleet)
        if ledger.capped:
            item.hold = await self._reserve_round(ep, request, fleet)
        self._items[key] = item
        self._enqueue(ep, item, request)

    async def _reserve_round(self, ep: EndpointState, request: Request, fleet: Fleet) -> Hold:
        """Hold a batch request's worst case under the caps, in rounds.

        Worst cases come back smaller than held, but only when a batch ends, hours later:
        so once the caps are full, what is queued is sent and, when every hold is back,
        the next round fills what the caps allow again. Rounds end (the cap is reached)
        when one holds less than a tenth of the first: the rest would trickle for days.
        """
        ledger = self.engine.ledger
        cost, tokens = self.engine._worst_case(ep, request, batch=True)
        while True:
            reserved = ledger.try_reserve(ep.name, cost, tokens)
            if isinstance(reserved, Hold):
                self._round += 1
                return reserved
            first = self._first_round = self._first_round or self._round
            if ledger.reached is not None or not ledger.holds or self._round < first / 10:
                ledger.stop(reserved)
                raise reserved
            self._flush_now(fleet)  # the round is full: send it, then wait for all of it
            ledger.wait_begins(reserved)
            try:
                while ledger.holds and ledger.reached is None:
                    await ledger.changed()
            finally:
                ledger.wait_ends()
            self._round = 0

    # -- queues and files --------------------------------------------------------------------------

    def _batch_eps(self, fleet: Fleet) -> list[EndpointState]:
        """The fleet's endpoints in batch mode (those whose Batch API has not refused us)."""
        refused = self.refused
        return [e for e in fleet.endpoints if e.config.batch is not None and e.name not in refused]

    def _pick(self, fleet: Fleet) -> EndpointState:
        """The fleet's batch endpoint with the fewest requests queued or in its batches."""

        def load(ep: EndpointState) -> int:
            queue = self._queues.get(ep.name)
            queued = len(queue.items) if queue else 0
            return queued + sum(len(b.items) for b in self.live.values() if b.endpoint == ep.name)

        return min(self._batch_eps(fleet), key=load)

    def _enqueue(self, ep: EndpointState, item: _Item, request: Request | None = None) -> None:
        """Add the item's batch line to the endpoint's queue; cut a file when it is full."""
        body = self.engine._body(ep, request or item.request)
        line = b'{"custom_id":"%s","method":"POST","url":"%s","body":%s}\n' % (
            item.key.hex().encode(),
            CHAT_URL.encode(),
            body,
        )
        settings = self.settings(ep.name)
        queue = self._queues.setdefault(ep.name, _Queue(ep.name))
        if queue.items and queue.bytes + len(line) > settings.max_bytes:
            self._flush(queue)
        queue.items.append((item, line))
        queue.bytes += len(line)
        queue.last = time.monotonic()
        if len(queue.items) >= settings.max_requests:
            self._flush(queue)
        elif not queue.collecting:
            queue.collecting = True
            self._spawn(self._collect, queue)

    async def _collect(self, queue: _Queue) -> None:
        """Submit a partial file once no request came for ``collect`` seconds."""
        collect = self.settings(queue.endpoint).collect
        try:
            while queue.items:
                wait = queue.last + collect - time.monotonic()
                if wait > 0:
                    await anyio.sleep(wait)
                else:
                    self._flush(queue)
        finally:
            queue.collecting = False

    def _flush_now(self, fleet: Fleet) -> None:
        for ep in self._batch_eps(fleet):
            if (queue := self._queues.get(ep.name)) is not None and queue.items:
                self._flush(queue)

    def _flush(self, queue: _Queue) -> None:
        """Write the queue's file, record the batch, and start driving it."""
        items, queue.items, queue.bytes = queue.items, [], 0
        if not items:
            return
        settings = self.settings(queue.endpoint)
        if len(items) <= settings.online_tail:
            for item, _ in items:
                self._go_online(item)
            return
        ep = self.engine.config.endpoints[queue.endpoint]
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"asyncsynth-{self.journal.ident}-{uuid.uuid4().hex[:8]}"
        path = self.folder / f"{name}.input.jsonl"
        data = b"".join(line for _, line in items)
        path.write_bytes(data)
        fields = {
            "endpoint": queue.endpoint,
            "base_url": ep.base_url,
            "name": name,
            "state": "written",
            "path": str(path),
            "requests": len(items),
            "bytes": len(data),
            "created": time.time(),
        }
        batch = self.journal.batch_new(fields, [item.key for item, _ in items])
        live = self.live[batch] = _Live(batch, queue.endpoint, total=len(items))
        for item, _ in items:
            item.attempts += 1
            live.items[item.key] = item
        self._spawn(self._drive, live)

    def _attach(self, batch: int, item: _Item) -> None:
        live = self.live.get(batch)
        if live is None:
            row = self.journal.batch(batch)
            assert row is not None
            if row["endpoint"] not in self.engine.config.endpoints:
                raise ConfigError(
                    f"batch {row['batch_id'] or row['name']} of this job was sent to endpoint "
                    f"{row['endpoint']!r}, which the config no longer has: restore it to "
                    "collect its answers (or run 'asyncsynth batches cancel')"
                )
            live = self.live[batch] = _Live(batch, row["endpoint"], total=row["requests"])
            self._spawn(self._drive, live)
        live.items[item.key] = item
        ledger = self.engine.ledger
        state = self.engine.endpoints.get(live.endpoint)
        if ledger.capped and state is not None:  # already paid for: held whatever the caps say
            cost, tokens = self.engine._worst_case(state, item.request, batch=True)
            item.hold = ledger.hold(live.endpoint, cost, tokens)

    # -- one batch, from file to answers -----------------------------------------------------------

    async def _drive(self, live: _Live) -> None:
        """Take one batch from its state in the journal to its answers."""
        journal = self.journal
        client = self._client(live.endpoint)
        row = journal.batch(live.id)
        assert row is not None
        try:
            if row["state"] == "written":
                file_id = await client.upload(Path(row["path"]), Path(row["path"]).name)
                journal.batch_set(live.id, state="uploaded", file_id=file_id)
                row = journal.batch(live.id) or row
            if row["state"] in ("uploaded", "creating"):
                created = await self._create(live, client, row)
                if created is None:
                    log.info("batch %s was never created: its requests are queued again", live.id)
                    journal.batch_release(live.id, "discarded")
                    self.live.pop(live.id, None)
                    Path(row["path"]).unlink(missing_ok=True)
                    self._requeue(list(live.items.values()))
                    return
                self._submitted(live, created)
            row = journal.batch(live.id) or row
            if row["state"] == "submitted":
                await self._poll(live, client, row)
            await self._collect_answers(live, client)
        except RequestError as exc:
            self._lost(live, exc)

    def _lost(self, live: _Live, exc: RequestError) -> None:
        """The Batch API failed us: online if nothing can have been submitted, else wait."""
        self.live.pop(live.id, None)
        row = self.journal.batch(live.id)
        assert row is not None
        if row["state"] in ("written", "uploaded"):  # never created: nothing is paid for
            log.warning(
                "the Batch API of %s refused a batch (%s): its requests go online",
                live.endpoint, exc,
            )  # fmt: skip
            if not exc.retryable:  # unsupported, bad key...: the rest of the run goes online too
                self.refused[live.endpoint] = exc
            self.journal.batch_release(live.id, "discarded", error=str(exc))
            for item in live.items.values():
                self._go_online(item)
            return
        # Created, or maybe created: never sent again. The journal keeps it for a later run.
        what = row["batch_id"] or f"{row['name']} (maybe created)"
        log.warning("lost track of batch %s of %s: %s", what, live.endpoint, exc)
        error = BatchError(
            f"batch {what} could not be followed ({exc}); the journal keeps it: run the same "
            "command again later, or see 'asyncsynth batches status'",
            code="untracked", retryable=False, endpoint=live.endpoint,
        )  # fmt: skip
        for item in live.items.values():
            self._fail(item, error)

    async def _create(
        self, live: _Live, client: BatchClient, row: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Create the batch once: before any new try, look for it by name.

        A create call that failed retryably (a timeout, a dropped connection) may have
        created it anyway, so it is never simply sent again. ``None``: it does not exist.
        """
        name = row["name"]
        if row["state"] == "creating":  # an earlier run's create call may have reached it
            return await client.find(name, row["created"])
        self.journal.batch_set(live.id, state="creating")
        window = self.settings(live.endpoint).completion_window
        for attempt in range(1, API_ATTEMPTS + 1):
            try:
                return await client.create(row["file_id"], window, name)
            except RequestError as exc:
                if not exc.retryable:  # refused outright: nothing was created
                    self.journal.batch_set(live.id, state="uploaded", error=str(exc))
                    raise
                if attempt == API_ATTEMPTS:
                    raise
                await anyio.sleep(backoff(attempt, base=1.0, cap=30.0))
                found = await client.find(name, row["created"])
                if found is not None:
                    return found
        raise AssertionError("unreachable")

    def _submitted(self, live: _Live, batch: dict[str, Any]) -> None:
        self.journal.batch_set(
            live.id, state="submitted", batch_id=batch["id"], status=batch.get("status"),
            submitted=time.time(),
        )  # fmt: skip
        live.status = batch.get("status")

    async def _poll(self, live: _Live, client: BatchClient, row: dict[str, Any]) -> None:
        """Poll until the batch ends; cancel it at its deadline or when only a tail is left."""
        settings = self.settings(live.endpoint)
        wait = settings.poll_interval
        submitted = row["submitted"] or row["created"]
        cancelled = False
        while True:
            live.next_poll = time.monotonic() + wait
            await anyio.sleep(wait)
            wait = min(settings.poll_max, wait * 1.5)
            try:
                batch = await client.retrieve(row["batch_id"], attempts=1)
            except RequestError as exc:
                if not exc.retryable:
                    raise
                log.info("polling batch %s of %s: %s", row["batch_id"], live.endpoint, exc)
                continue
            self.polls += 1
            status = str(batch.get("status"))
            counts = batch.get("request_counts") or {}
            told = (live.status, live.completed + live.failed)
            live.status, live.next_poll = status, None
            live.completed = int(counts.get("completed") or 0)
            live.failed = int(counts.get("failed") or 0)
            live.total = int(counts.get("total") or live.total)
            self._tell(live, row["batch_id"], told, wait)
            if status in TERMINAL:
                errors = (batch.get("errors") or {}).get("data") or []
                self.journal.batch_set(
                    live.id, state="ended", status=status, completed=live.completed,
                    failed=live.failed, output_file_id=batch.get("output_file_id"),
                    error_file_id=batch.get("error_file_id"),
                    error="; ".join(str(e.get("message")) for e in errors) or None,
                )  # fmt: skip
                return
            self.journal.batch_set(
                live.id, status=status, completed=live.completed, failed=live.failed
            )
            if cancelled or status != "in_progress":
                continue
            left = live.total - live.completed - live.failed
            late = settings.batch_deadline is not None and (
                time.time() - submitted > settings.batch_deadline
            )
            tail = 0 < left <= settings.online_tail and left < live.total
            if late or tail:
                why = "its batch_deadline passed" if late else f"only {left} requests are left"
                log.info("cancelling batch %s (%s): the rest goes online", row["batch_id"], why)
                await client.cancel(row["batch_id"])
                cancelled = live.online = True
                wait = settings.poll_interval

    def _tell(self, live: _Live, batch_id: str, told: tuple[str | None, int], wait: float) -> None:
        """A batch wait for the display: when its status changes or a tenth more is answered."""
        reason = f"batch {live.id}"
        if live.status in TERMINAL:
            self.engine._emit(Wait(reason, "", seconds=0, endpoint=live.endpoint))
            return
        done = live.completed + live.failed
        if live.status == told[0] and done - told[1] < max(1, live.total // 10):
            return
        self.engine._emit(
            Wait(
                reason,
                f"batch {batch_id} on {live.endpoint!r}: {live.status}, {done:,}/{live.total:,} "
                f"answered; polled every {wait:.0f}s or less",
                endpoint=live.endpoint,
            )
        )

    async def _collect_answers(self, live: _Live, client: BatchClient) -> None:
        """Download the output and error files, journal the answers, retry the rest."""
        journal = self.journal
        row = journal.batch(live.id)
        assert row is not None
        engine = self.engine
        ledger = engine.ledger
        errors: dict[bytes, BatchError] = {}
        answered: set[bytes] = set()
        held = set(journal.batch_keys(live.id))  # a download cut short left the rest journaled
        for path in await fetch_files(client, row, self.folder):
            chunk: list[tuple[bytes, Completion]] = []
            for key, completion, error in read_results(path, live.endpoint):
                if key not in held:
                    continue
                if completion is None:
                    assert error is not None
                    errors[key] = error
                    continue
                cost = ledger.charge(live.endpoint, completion.usage, batch=True)
                completion.cost, completion.batch = cost, True
                chunk.append((key, completion))
                if len(chunk) >= 4096:
                    await self._answer(live, chunk)
                    answered.update(k for k, _ in chunk)
                    chunk = []
            await self._answer(live, chunk)
            answered.update(k for k, _ in chunk)
        status = row["status"]
        left = [item for key, item in live.items.items() if key not in answered]
        journal.batch_release(live.id, "done")
        self.live.pop(live.id, None)
        if left:
            reason = row["error"] or f"the batch {status}"
            default = BatchError(
                f"no answer from batch {row['batch_id']} ({reason})",
                code=f"batch_{status}", endpoint=live.endpoint,
            )  # fmt: skip
            settings = self.settings(live.endpoint)
            late = settings.batch_deadline is not None and (
                time.time() - (row["submitted"] or row["created"]) > settings.batch_deadline
            )
            online = live.online or status == "failed" or (status == "cancelled" and late)
            self._retry([(item, errors.get(item.key, default)) for item in left], online=online)
        if self.settings(live.endpoint).delete_files:
            for kind in ("input", "output", "errors"):
                (self.folder / f"{row['name']}.{kind}.jsonl").unlink(missing_ok=True)
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
                for file_id in (row["file_id"], row["output_file_id"], row["error_file_id"]):
                    if file_id:
                        await client.delete_file(file_id)

    async def _answer(self, live: _Live, chunk: list[tuple[bytes, Completion]]) -> None:
        """Journal a chunk of answers (and take them off the batch), then hand them over."""
        if not chunk:
            return
        spend: dict[str, tuple[float, int]] = {}
        cost = sum(c.cost or 0.0 for _, c in chunk)
        tokens = sum(c.usage["prompt_tokens"] + c.usage["completion_tokens"] for _, c in chunk)
        spend[live.endpoint] = (cost, tokens)
        self.journal.batch_answers(live.id, chunk, spend)
        engine = self.engine
        engine.ledger.report(engine.totals.done + len(chunk), engine.totals.total)
        state = engine.endpoints.get(live.endpoint)
        for key, completion in chunk:
            item = live.items.get(key)
            if item is None:  # answered for an earlier run's request not asked for now
                continue
            self._release_hold(item)
            self._items.pop(key, None)
            latency = time.monotonic() - item.since
            result = engine._result(item.request, completion, state, latency, 1, batch=True)
            await self._hand_over(item, result)

    # -- what a batch did not answer ---------------------------------------------------------------

    def _retry(self, left: list[tuple[_Item, BatchError]], *, online: bool) -> None:
        """Fail what cannot succeed; the rest goes to a new batch, or online."""
        retried = []
        for item, error in left:
            if error.retryable:
                retried.append(item)
            else:
                self._fail(item, error)
        again: list[_Item] = []
        for item in retried:
            eps = self._batch_eps(item.fleet)
            tail = max((self.settings(ep.name).online_tail for ep in eps), default=0)
            limit = max((self.settings(ep.name).max_attempts for ep in eps), default=0)
            if online or len(retried) <= tail or item.attempts >= limit or not eps:
                self._go_online(item)
            else:
                again.append(item)
        self._requeue(again)

    def _requeue(self, items: list[_Item]) -> None:
        for item in items:
            if item.fleet not in self.fleets or not self._batch_eps(item.fleet):
                self._go_online(item)
            else:
                self._enqueue(self._pick(item.fleet), item)
        for fleet in {item.fleet for item in items}:
            self._flush_now(fleet)

    def _fail(self, item: _Item, error: BatchError) -> None:
        self._release_hold(item)
        self._items.pop(item.key, None)
        self._spawn(self._deliver_failure, item, error)

    async def _deliver_failure(self, item: _Item, error: BatchError) -> None:
        for request, deliver in item.waiters:
            error_copy = BatchError(
                error.message, code=error.code, retryable=error.retryable, endpoint=error.endpoint
            )
            await deliver(self.engine._failed(_unpack(request), error_copy, item.attempts))

    def _release_hold(self, item: _Item) -> None:
        if item.hold is not None:
            self.engine.ledger.release(item.hold)
            item.hold = None

    def _go_online(self, item: _Item) -> None:
        """Send the item through the role's endpoints online, by a pool of workers."""
        self._release_hold(item)
        send = self._online.get(item.fleet)
        if send is None:
            send, receive = anyio.create_memory_object_stream[_Item](math.inf)
            self._online[item.fleet] = send
            for _ in range(max(1, min(item.fleet.capacity, 1024))):
                self._spawn(self._online_worker, receive.clone())
            receive.close()
        send.send_nowait(item)

    async def _online_worker(self, receive: anyio.abc.ObjectReceiveStream[_Item]) -> None:
        engine = self.engine
        async with receive:
            async for item in receive:
                request = item.request
                try:
                    result: Result | BudgetExceeded = await engine._send(request, item.fleet)
                except BudgetExceeded as exc:
                    result = exc
                self._items.pop(item.key, None)
                if isinstance(result, BudgetExceeded):
                    for _, waiter in item.waiters:
                        await waiter(result)
                    continue
                await self._hand_over(item, result)  # journaled by whoever receives it

    async def _hand_over(self, item: _Item, result: Result) -> None:
        """The result to the item's first waiter; the same answer to any others."""
        result.key = item.key
        (_, deliver), *others = item.waiters
        await deliver(result)
        for other, waiter in others:  # the same request asked twice in one job: one answer
            self.engine.totals.done += 1
            twin = dataclasses.replace(
                result, request=_unpack(other), cached=True, cost=0.0, first_cost=result.cost
            )
            await waiter(twin)

    # -- what the display reads --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Batches in flight and what is queued, for progress lines and events."""
        now = time.monotonic()
        return {
            "queued": sum(len(q.items) for q in self._queues.values()),
            "batches": [
                {
                    "id": b.id,
                    "endpoint": b.endpoint,
                    "status": b.status,
                    "completed": b.completed,
                    "failed": b.failed,
                    "total": b.total,
                    "next_poll_s": None if b.next_poll is None else max(0.0, b.next_poll - now),
                }
                for b in self.live.values()
            ],
            "polls": self.polls,
        }


async def _each(requests: Iterable[Request] | AsyncIterable[Request]) -> Any:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield request
    else:
        for request in requests:
            yield request


# -- managing a journal's batches (``asyncsynth batches ...``) ---------------------------------


async def fetch_files(client: BatchClient, row: dict[str, Any], folder: Path) -> list[Path]:
    """Download an ended batch's output and error files into ``folder``."""
    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for file_id, kind in ((row["output_file_id"], "output"), (row["error_file_id"], "errors")):
        if file_id:
            path = folder / f"{row['name']}.{kind}.jsonl"
            await client.download(file_id, path)
            paths.append(path)
    return paths


class BatchAdmin:
    """What ``asyncsynth batches status|cancel|download`` do to a journal's batches."""

    def __init__(self, config: Config, journal: Journal, *, api_key_env: str | None = None):
        self.config = config
        self.journal = journal
        self.api_key_env = api_key_env
        self._clients: dict[str, BatchClient] = {}

    def client(self, row: dict[str, Any]) -> BatchClient:
        name = row["endpoint"]
        if name not in self._clients:
            ep = self.config.endpoints.get(name)
            if ep is not None:
                self._clients[name] = client_for(ep)
            elif row["base_url"]:
                key = os.environ.get(self.api_key_env) if self.api_key_env else None
                self._clients[name] = BatchClient(row["base_url"], key, name=name)
            else:
                raise ConfigError(f"endpoint {name!r} of batch {row['id']} is not in the config")
        return self._clients[name]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    async def refresh(self, row: dict[str, Any]) -> dict[str, Any]:
        """Ask the provider how a submitted batch is doing; record it; the updated row."""
        if row["state"] != "submitted" or not row["batch_id"]:
            return row
        batch = await self.client(row).retrieve(row["batch_id"])
        counts = batch.get("request_counts") or {}
        status = str(batch.get("status"))
        fields: dict[str, Any] = {
            "status": status,
            "completed": int(counts.get("completed") or 0),
            "failed": int(counts.get("failed") or 0),
        }
        if status in TERMINAL:
            fields |= {
                "state": "ended",
                "output_file_id": batch.get("output_file_id"),
                "error_file_id": batch.get("error_file_id"),
            }
        self.journal.batch_set(row["id"], **fields)
        return self.journal.batch(row["id"]) or row

    async def cancel(self, row: dict[str, Any]) -> dict[str, Any]:
        """Cancel a running batch (what it answered so far stays downloadable)."""
        if row["state"] == "submitted" and row["batch_id"]:
            await self.client(row).cancel(row["batch_id"])
        return await self.refresh(row)

    async def download(self, row: dict[str, Any]) -> tuple[int, int]:
        """Import an ended batch's answers into the journal: (answers, lines without one)."""
        row = await self.refresh(row)
        if row["state"] != "ended":
            return 0, 0
        client = self.client(row)
        held = set(self.journal.batch_keys(row["id"]))
        ep = self.config.endpoints.get(row["endpoint"])
        price = ep.price if ep is not None else None
        answers: list[tuple[bytes, Completion]] = []
        missing = 0
        cost = 0.0
        tokens = 0
        for path in await fetch_files(client, row, batch_folder(self.journal)):
            for key, completion, _ in read_results(path, row["endpoint"]):
                if key not in held:
                    continue
                if completion is None:
                    missing += 1
                    continue
                usage = completion.usage
                completion.batch = True
                completion.cost = price.cost(usage, batch=True) if price is not None else None
                cost += completion.cost or 0.0
                tokens += usage["prompt_tokens"] + usage["completion_tokens"]
                answers.append((key, completion))
            path.unlink(missing_ok=True)
        self.journal.batch_answers(row["id"], answers, {row["endpoint"]: (cost, tokens)})
        self.journal.batch_release(row["id"], "done")
        return len(answers), missing
