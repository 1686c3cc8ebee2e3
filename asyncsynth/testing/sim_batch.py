"""The simulated endpoint's Files and Batches API (``/v1/files``, ``/v1/batches``).

Part of :class:`~asyncsynth.testing.sim.SimServer`, reachable as ``sim.batches``. It
follows OpenAI's Batch API: a JSONL file uploaded with purpose ``batch`` becomes a batch
that goes ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed`` (or
``failed`` at validation, ``expired`` with part of its lines answered, ``cancelling`` ->
``cancelled``), whose output and error files hold one line per request, matched by
``custom_id``. Answers are made as the chat route makes them (the echo, or the server's
reply hook).

For tests and benchmarks it is configurable (:class:`SimBatchConfig`: time in each
status, shares of failed and expired batches and of error lines; ``paused`` freezes
every batch where it is; ``hold`` leaves chosen calls unanswered, so a client can be
killed at that point), and it keeps a log (:class:`BatchLog`) of every call and of
every line submitted in a batch, to show that each request was submitted exactly once.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from .sim import (
    Reply,
    ReplyContext,
    _answer,
    _completion,
    _error_body,
    _estimate_tokens,
    _Outcome,
    _prompt_chars,
)

if TYPE_CHECKING:
    from .sim import SimServer

__all__ = ["BatchLog", "BatchSim", "SimBatchConfig"]

STAGES = ("upload", "create", "created", "retrieve", "download", "cancel")
"""Calls ``hold`` can leave unanswered; ``created`` creates the batch, then holds."""
_HOLD: _Outcome = (0, None, False, 0.0, False)
_CHAT = "/v1/chat/completions"
_WINDOWS = frozenset({"24h"})


@dataclass
class SimBatchConfig:
    """How the simulated Batch API behaves; change it at run time with ``sim.batches.configure``."""

    validating_time: float = 0.0
    """Seconds a batch is ``validating``."""
    processing_time: float = 0.0
    """Seconds ``in_progress``; lines are answered evenly over it."""
    finalizing_time: float = 0.0
    cancelling_time: float = 0.0
    line_error_rate: float = 0.0
    """Share of lines answered with ``line_error_status`` (in the error file)."""
    line_error_status: int = 500
    fail_rate: float = 0.0
    """Share of batches that fail validation."""
    expire_rate: float = 0.0
    """Share of batches that expire, with ``expire_at`` of their lines answered."""
    expire_at: float = 0.5
    max_requests: int = 50_000
    max_bytes: int = 200_000_000
    paused: bool = False
    """Every batch stays where it is (status and answered lines) until this is False again."""
    hold: frozenset[str] = frozenset()
    """Calls (of :data:`STAGES`) received and never answered."""
    lose: frozenset[str] = frozenset()
    """The next call of these (``upload``, ``create``) is carried out, then answered 500:
    its answer is lost (once each; later calls are answered)."""
    seed: int | None = None

    def __post_init__(self) -> None:
        self.hold = frozenset(self.hold)
        self.lose = frozenset(self.lose)
        if unknown := self.hold - set(STAGES):
            raise ValueError(f"unknown hold stages {sorted(unknown)}; known: {', '.join(STAGES)}")
        if unknown := self.lose - {"upload", "create"}:
            raise ValueError(f"unknown lose stages {sorted(unknown)}; known: upload, create")
        for name in ("line_error_rate", "fail_rate", "expire_rate", "expire_at"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0 and 1")
        if self.fail_rate + self.expire_rate > 1:
            raise ValueError("fail_rate + expire_rate must be at most 1")


@dataclass
class BatchLog:
    """What the simulated Batch API was asked (read it under ``sim.batches.lock``)."""

    calls: Counter[str] = field(default_factory=Counter)
    """Calls received, by stage (upload, create, retrieve, list, cancel, download, delete)."""
    submitted: Counter[str] = field(default_factory=Counter)
    """Lines submitted in created batches, by custom_id: 1 each is "submitted exactly once"."""
    created: list[str] = field(default_factory=list)
    """Batch ids, in the order they were created."""
    events: list[tuple[str, str]] = field(default_factory=list)
    """``("created", batch id)`` and ``("downloaded", batch id)`` (its output or error file
    fetched), in the order the server saw them: what a client did before what."""

    def twice(self) -> list[str]:
        """custom_ids submitted more than once."""
        return [cid for cid, n in self.submitted.items() if n > 1]


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    batch: str | None = None
    """The batch whose output or error file this is (None: an uploaded file)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None
    created_at: int
    lines: list[tuple[str, dict[str, Any]]]
    fate: str
    """completed, failed or expired."""
    errors: list[dict[str, Any]]
    error_lines: frozenset[int]
    clock: float = 0.0
    last: float = field(default_factory=time.monotonic)
    cancel_at: float | None = None
    """The clock when a cancel was asked."""
    status: str = "validating"
    stamps: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    done: int = 0
    failed: int = 0


class BatchSim:
    """Files and Batches of one :class:`~asyncsynth.testing.sim.SimServer` (``sim.batches``)."""

    def __init__(self, server: SimServer, config: SimBatchConfig | dict[str, Any] | None) -> None:
        self.server = server
        if isinstance(config, dict):
            config = SimBatchConfig(**config)
        self.config = config or SimBatchConfig()
        self.log = BatchLog()
        self.lock = threading.Condition()
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self._rng = random.Random(self.config.seed)
        self._ids = 0
        self._answers = 0

    def configure(self, **changes: Any) -> None:
        """Change config fields at run time (``paused=False``, ``hold=set()``...)."""
        with self.lock:
            for batch in self.batches.values():  # time paused so far stays paused
                self._advance(batch)
            self.config = dataclasses.replace(self.config, **changes)

    def advance(self, seconds: float) -> None:
        """Move every unfinished batch's clock forward (also while paused): no waiting."""
        with self.lock:
            for batch in self.batches.values():
                self._advance(batch)
                batch.clock += seconds
                self._advance(batch)
            self.lock.notify_all()

    def wait_for(self, predicate: Callable[[BatchLog], bool], timeout: float = 30.0) -> None:
        """Block until ``predicate(log)`` holds (checked at every call); TimeoutError after."""
        with self.lock:
            if not self.lock.wait_for(lambda: predicate(self.log), timeout):
                raise TimeoutError(f"batch sim: condition not met after {timeout}s: {self.log}")

    def status(self, batch_id: str) -> str:
        """A batch's status now."""
        with self.lock:
            batch = self.batches[batch_id]
            self._advance(batch)
            return batch.status

    # -- routing ---------------------------------------------------------------------------

    def handle(self, method: bytes, target: bytes, body: bytes, keep_alive: bool) -> _Outcome:
        path, _, query = target.partition(b"?")
        parts = path.decode("latin-1").strip("/").split("/")
        if parts and parts[0] == "v1":
            parts = parts[1:]
        verb = method.decode("latin-1")
        with self.lock:
            try:
                outcome = self._route(verb, parts, query.decode("latin-1"), body, keep_alive)
            finally:
                self.lock.notify_all()
        return outcome

    def _route(
        self, verb: str, parts: list[str], query: str, body: bytes, keep_alive: bool
    ) -> _Outcome:
        kind, rest = parts[0], parts[1:]
        if kind == "files":
            if verb == "POST" and not rest:
                return self._upload(body, keep_alive)
            if verb == "GET" and len(rest) == 2 and rest[1] == "content":
                return self._content(rest[0], keep_alive)
            if verb == "GET" and len(rest) == 1:
                return self._file_object(rest[0], keep_alive)
            if verb == "DELETE" and len(rest) == 1:
                return self._delete(rest[0], keep_alive)
        if kind == "batches":
            if verb == "POST" and not rest:
                return self._create(body, keep_alive)
            if verb == "GET" and not rest:
                return self._list(query, keep_alive)
            if verb == "GET" and len(rest) == 1:
                return self._retrieve(rest[0], keep_alive)
            if verb == "POST" and len(rest) == 2 and rest[1] == "cancel":
                return self._cancel(rest[0], keep_alive)
        return _json(404, {"error": {"message": f"no route for {verb} /v1/{'/'.join(parts)}"}},
                     keep_alive)  # fmt: skip

    def _held(self, stage: str) -> bool:
        self.log.calls[stage] += 1
        return stage in self.config.hold

    def _lose(self, stage: str) -> bool:
        if stage not in self.config.lose:
            return False
        self.config = dataclasses.replace(self.config, lose=self.config.lose - {stage})
        return True

    def _id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-sim{self._ids:06d}"

    # -- files -----------------------------------------------------------------------------

    def _upload(self, body: bytes, keep_alive: bool) -> _Outcome:
        if self._held("upload"):
            return _HOLD
        fields = _multipart(body)
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields:
            return _invalid("multipart field 'file' is required", keep_alive)
        if purpose != "batch":
            return _invalid(f"purpose must be 'batch' here, got {purpose!r}", keep_alive)
        filename, data = fields["file"]
        file = _File(self._id("file"), filename or "upload.jsonl", purpose, data, int(time.time()))
        self.files[file.id] = file
        if self._lose("upload"):
            return _lost(keep_alive)
        return _json(200, file.to_dict(), keep_alive)

    def _file_object(self, file_id: str, keep_alive: bool) -> _Outcome:
        file = self.files.get(file_id)
        if file is None:
            return _not_found(f"no such file: {file_id}", keep_alive)
        return _json(200, file.to_dict(), keep_alive)

    def _content(self, file_id: str, keep_alive: bool) -> _Outcome:
        if self._held("download"):
            return _HOLD
        file = self.files.get(file_id)
        if file is None:
            return _not_found(f"no such file: {file_id}", keep_alive)
        if file.batch is not None:
            self.log.events.append(("downloaded", file.batch))
        return _answer(200, file.data, keep_alive, admitted=False, counted=False)

    def _delete(self, file_id: str, keep_alive: bool) -> _Outcome:
        self.log.calls["delete"] += 1
        if self.files.pop(file_id, None) is None:
            return _not_found(f"no such file: {file_id}", keep_alive)
        return _json(200, {"id": file_id, "object": "file", "deleted": True}, keep_alive)

    # -- batches ---------------------------------------------------------------------------

    def _create(self, body: bytes, keep_alive: bool) -> _Outcome:
        if self._held("create"):
            return _HOLD
        try:
            args = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _invalid(f"invalid JSON body: {exc}", keep_alive)
        if not isinstance(args, dict):
            return _invalid("body must be a JSON object", keep_alive)
        file = self.files.get(str(args.get("input_file_id")))
        if file is None:
            return _invalid(f"no such file: {args.get('input_file_id')!r}", keep_alive)
        if file.purpose != "batch":
            return _invalid("the input file must have purpose 'batch'", keep_alive)
        endpoint = args.get("endpoint")
        if endpoint != _CHAT:
            return _invalid(f"endpoint {endpoint!r} is not supported here (only {_CHAT})",
                            keep_alive)  # fmt: skip
        window = args.get("completion_window")
        if window not in _WINDOWS:
            return _invalid(f"completion_window must be 24h, got {window!r}", keep_alive)
        lines, errors = self._validate(file.data, endpoint)
        fate, errors = self._fate(errors)
        rate = self.config.line_error_rate
        error_lines = frozenset(i for i in range(len(lines)) if rate and self._rng.random() < rate)
        batch = _Batch(
            id=self._id("batch"),
            input_file_id=file.id,
            endpoint=endpoint,
            completion_window=window,
            metadata=args.get("metadata"),
            created_at=int(time.time()),
            lines=lines,
            fate=fate,
            errors=errors,
            error_lines=error_lines,
        )
        batch.stamps["created_at"] = batch.created_at
        self.batches[batch.id] = batch
        self.log.created.append(batch.id)
        self.log.events.append(("created", batch.id))
        for custom_id, _ in lines:
            self.log.submitted[custom_id] += 1
        if self._held("created"):
            return _HOLD
        if self._lose("create"):
            return _lost(keep_alive)
        return _json(200, self._object(batch), keep_alive)

    def _fate(self, errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
        """How a new batch ends (completed, failed or expired) and its errors, drawn by the
        config's rates."""
        cfg = self.config
        draw = self._rng.random()
        if errors or draw < cfg.fail_rate:
            failure = {"code": "simulated_failure", "message": "simulated failure"}
            return "failed", errors or [{**failure, "param": None, "line": None}]
        if draw < cfg.fail_rate + cfg.expire_rate:
            return "expired", errors
        return "completed", errors

    def _validate(
        self, data: bytes, endpoint: str
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
        cfg = self.config
        lines: list[tuple[str, dict[str, Any]]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()

        def error(code: str, message: str, line: int | None) -> None:
            if len(errors) < 100:
                errors.append({"code": code, "message": message, "param": None, "line": line})

        if len(data) > cfg.max_bytes:
            error("file_too_large", f"the file is larger than {cfg.max_bytes} bytes", None)
        for number, raw in enumerate(data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                row = orjson.loads(raw)
            except orjson.JSONDecodeError:
                error("invalid_json", "line is not valid JSON", number)
                continue
            problem = _line_problem(row, seen, endpoint)
            if problem is not None:
                error(*problem, number)
            else:
                seen.add(row["custom_id"])
                lines.append((row["custom_id"], row["body"]))
        if len(lines) > cfg.max_requests:
            error("too_many_requests", f"more than {cfg.max_requests} requests", None)
        if not lines and not errors:
            error("empty_file", "the file holds no requests", None)
        return lines, errors

    def _retrieve(self, batch_id: str, keep_alive: bool) -> _Outcome:
        if self._held("retrieve"):
            return _HOLD
        batch = self.batches.get(batch_id)
        if batch is None:
            return _not_found(f"no such batch: {batch_id}", keep_alive)
        self._advance(batch)
        return _json(200, self._object(batch), keep_alive)

    def _list(self, query: str, keep_alive: bool) -> _Outcome:
        self.log.calls["list"] += 1
        args = parse_qs(query)
        limit = max(1, min(100, int(args.get("limit", ["20"])[0])))
        newest_first = list(reversed(self.batches.values()))
        if after := args.get("after", [None])[0]:
            ids = [b.id for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        page = newest_first[:limit]
        for batch in page:
            self._advance(batch)
        data = {
            "object": "list",
            "data": [self._object(b) for b in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(newest_first) > limit,
        }
        return _json(200, data, keep_alive)

    def _cancel(self, batch_id: str, keep_alive: bool) -> _Outcome:
        if self._held("cancel"):
            return _HOLD
        batch = self.batches.get(batch_id)
        if batch is None:
            return _not_found(f"no such batch: {batch_id}", keep_alive)
        self._advance(batch)
        if batch.status in ("completed", "failed", "expired", "cancelled", "finalizing"):
            return _json(409, {"error": {"message": f"cannot cancel a batch that is {batch.status}",
                                         "type": "invalid_request_error"}}, keep_alive)  # fmt: skip
        if batch.cancel_at is None:
            batch.cancel_at = batch.clock
            batch.stamps["cancelling_at"] = int(time.time())
        self._advance(batch)
        return _json(200, self._object(batch), keep_alive)

    # -- the clock -------------------------------------------------------------------------

    def _advance(self, batch: _Batch) -> None:
        """Move the batch's clock (unless paused) and its status with it."""
        now = time.monotonic()
        if not self.config.paused:
            batch.clock += now - batch.last
        batch.last = now
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return
        cfg = self.config
        t = batch.clock
        validating, processing = cfg.validating_time, cfg.processing_time
        if t < validating and batch.cancel_at is None:
            self._set(batch, "validating")
            return
        if batch.fate == "failed":
            self._end(batch, "failed", 0)
            return
        n = len(batch.lines)
        if batch.cancel_at is not None:
            done = self._answered(batch, batch.cancel_at)
            if t - batch.cancel_at < cfg.cancelling_time:
                self._set(batch, "cancelling")
                batch.done = done
                return
            self._end(batch, "cancelled", done)
            return
        expires = batch.fate == "expired"
        if expires and t >= validating + processing * cfg.expire_at:
            self._end(batch, "expired", math.floor(n * cfg.expire_at))
            return
        if t < validating + processing:
            self._set(batch, "in_progress")
            batch.done = self._answered(batch, t)
            return
        if t < validating + processing + cfg.finalizing_time:
            self._set(batch, "finalizing")
            batch.done = n
            return
        self._end(batch, "completed", n)

    def _answered(self, batch: _Batch, t: float) -> int:
        cfg = self.config
        if t < cfg.validating_time:
            return 0
        if cfg.processing_time <= 0:
            return len(batch.lines)
        share = min(1.0, (t - cfg.validating_time) / cfg.processing_time)
        if batch.fate == "expired":
            share = min(share, cfg.expire_at)
        return math.floor(len(batch.lines) * share)

    def _set(self, batch: _Batch, status: str) -> None:
        if batch.status != status:
            batch.status = status
            batch.stamps.setdefault(f"{status}_at", int(time.time()))

    def _end(self, batch: _Batch, status: str, done: int) -> None:
        """A final status: write the output and error files of the first ``done`` lines."""
        self._set(batch, status)
        batch.done = done
        output: list[bytes] = []
        errors: list[bytes] = []
        code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(status)
        for i, (custom_id, body) in enumerate(batch.lines):
            request_id = f"req-{batch.id}-{i}"
            head = b'{"id":"batch_req_%s_%d","custom_id":%s,' % (
                batch.id.encode(),
                i,
                orjson.dumps(custom_id),
            )
            if i >= done:
                if code is not None:
                    message = f"this request was not run before the batch was {status}"
                    error = {"code": code, "message": message}
                    errors.append(head + b'"response":null,"error":%s}\n' % orjson.dumps(error))
                continue
            status_code, payload = self._answer(batch, i, body)
            line = b'"response":{"status_code":%d,"request_id":"%s","body":%s},"error":null}\n' % (
                status_code,
                request_id.encode(),
                payload,
            )
            (output if status_code == 200 else errors).append(head + line)
        batch.failed = len(errors)
        batch.done = len(output)
        if status == "failed":
            return
        if output:
            batch.output_file_id = self._store(batch, "output", b"".join(output))
        if errors:
            batch.error_file_id = self._store(batch, "error", b"".join(errors))

    def _answer(self, batch: _Batch, index: int, body: dict[str, Any]) -> tuple[int, bytes]:
        """(status, body) of one line: as the chat route answers, or an error line."""
        cfg = self.config
        if index in batch.error_lines:
            status = cfg.line_error_status
            return status, _error_body(status, "simulated error in a batch line")
        self._answers += 1
        prompt_tokens = _estimate_tokens(_prompt_chars(body["messages"]))
        model = self.server.config.model
        hook = self.server.config.reply
        content: str | None = None
        finish = "stop"
        if hook is not None:
            try:
                reply = hook(body, ReplyContext(self._answers, _CHAT))
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                self.server.stats.hook_errors.append(text)
                return 500, _error_body(500, text)
            if isinstance(reply, Reply):
                if reply.status >= 400:
                    return reply.status, _error_body(reply.status, reply.content or "error")
                content, finish = reply.content, reply.finish_reason
            else:
                content = reply
        return 200, _completion(body, self._answers, content, finish, prompt_tokens, model)

    def _store(self, batch: _Batch, kind: str, data: bytes) -> str:
        filename = f"{batch.id}_{kind}.jsonl"
        file = _File(self._id("file"), filename, "batch_output", data, int(time.time()), batch.id)
        self.files[file.id] = file
        return file.id

    def _object(self, batch: _Batch) -> dict[str, Any]:
        n = len(batch.lines)
        failed = batch.failed if batch.status in ("completed", "expired", "cancelled") else 0
        if batch.status == "failed":
            completed = 0
        elif batch.status in ("completed", "expired", "cancelled"):
            completed = batch.done
        else:
            completed = max(0, batch.done - sum(1 for i in batch.error_lines if i < batch.done))
            failed = batch.done - completed
        stamps = {
            f"{s}_at": batch.stamps.get(f"{s}_at")
            for s in ("in_progress", "finalizing", "completed", "failed", "expired",
                      "cancelling", "cancelled")
        }  # fmt: skip
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": batch.created_at,
            "expires_at": batch.created_at + 86_400,
            **stamps,
            "request_counts": {"total": n, "completed": completed, "failed": failed},
            "metadata": batch.metadata,
        }


# -- helpers ---------------------------------------------------------------------------------


def _json(status: int, data: Any, keep_alive: bool) -> _Outcome:
    return _answer(status, orjson.dumps(data), keep_alive, admitted=False, counted=False)


def _invalid(message: str, keep_alive: bool) -> _Outcome:
    body = _error_body(400, message)
    return _answer(400, body, keep_alive, admitted=False, counted=False)


def _lost(keep_alive: bool) -> _Outcome:
    body = _error_body(500, "simulated: done, but the answer was lost")
    return _answer(500, body, keep_alive, admitted=False, counted=False)


def _not_found(message: str, keep_alive: bool) -> _Outcome:
    return _answer(404, _error_body(404, message), keep_alive, admitted=False, counted=False)


def _line_problem(row: Any, seen: set[str], endpoint: str) -> tuple[str, str] | None:
    """What is wrong with a line of a batch file (its error code and message), or None."""
    custom_id = row.get("custom_id") if isinstance(row, dict) else None
    body = row.get("body") if isinstance(row, dict) else None
    if not isinstance(custom_id, str) or not custom_id:
        return "missing_custom_id", "custom_id must be a non-empty string"
    if custom_id in seen:
        return "duplicate_custom_id", f"custom_id {custom_id!r} is repeated"
    if row.get("method") != "POST" or row.get("url") != endpoint:
        return "invalid_url", f"method must be POST and url {endpoint}"
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return "invalid_body", "body must be an object with a 'messages' list"
    return None


def _multipart(body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, content)."""
    delimiter = body[: body.find(b"\r\n")]
    fields: dict[str, tuple[str | None, bytes]] = {}
    if not delimiter.startswith(b"--"):
        return fields
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        name = filename = None
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                for item in line.split(";")[1:]:
                    key, _, value = item.strip().partition("=")
                    if key == "name":
                        name = value.strip('"')
                    elif key == "filename":
                        filename = value.strip('"')
        if name is not None:
            fields[name] = (filename, content)
    return fields
