"""JSONL in and out (orjson): request rows, OpenAI Batch lines, output and error rows.

Input rows are read lazily, one line at a time. Three shapes are accepted:

- ``{"messages": [...], ...}``: a chat, with any other fields kept for the output;
- ``{"prompt": "...", ...}``: one user message (``"system"`` adds a system message);
- ``{"custom_id": ..., "body": {"messages": [...], ...}}``: an OpenAI Batch API line.

Optional fields: ``"id"`` (kept; ``line-<N>`` is made where missing), ``"params"``
(request params for this row), ``"n"`` (that many samples, each a request and a row,
with ``"sample"`` = 0..n-1, at most ``max_n``). A bad line becomes an
:class:`InputError` naming the file and line; it is reported and the other lines go
on. Bad lines include: not UTF-8, not JSON, a message role other than system,
developer, user, assistant or tool, an ``n`` above ``max_n``, and an id that an
earlier line already had (output rows could not be told apart; allowed on request).
"""

from __future__ import annotations

import codecs
import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

import orjson

from .config import DEFAULT_MAX_N, PARAM_KEYS, ConfigError, check_params
from .engine import InputError, Request, Result

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_RESERVED = (
    "completion",
    "finish_reason",
    "usage",
    "model",
    "latency_s",
    "attempts",
    "error",
    "cost_usd",
    "first_cost_usd",
)
ROLES = ("system", "developer", "user", "assistant", "tool")
_ROLES = frozenset(ROLES)


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}[{i}] must be an object with 'role' and 'content'")
        if message["role"] not in _ROLES:
            raise ValueError(
                f"{where}[{i}]: role {message['role']!r} is not one of {', '.join(ROLES)}"
            )
    return value


def parse_row(row: Any, line: int, *, max_n: int = DEFAULT_MAX_N) -> list[Request]:
    """The requests one input row asks for (several when ``n`` > 1, at most ``max_n``)."""
    if not isinstance(row, dict):
        raise ValueError("a line must be a JSON object")
    meta = dict(row)
    if "body" in row and "custom_id" in row:
        messages, params, n, ident = _batch_line(row)
    else:
        messages, params, n, ident = _chat_line(row, line)
        meta["id"] = ident
    params = _row_params(params)
    for key in _RESERVED:
        if key in meta:
            raise ValueError(f"field {key!r} is reserved for the output")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"'n' must be a positive integer, got {n!r}")
    if n > max_n:
        raise ValueError(
            f"'n' = {n:,} asks for more samples than the maximum of {max_n:,} a line "
            "([input] max_n, --max-n)"
        )
    first = int(row.get("sample", 0)) if n == 1 else 0
    return [
        Request(messages=messages, params=params, id=ident, meta=meta, sample=first + s)
        for s in range(n)
    ]


class _Line(NamedTuple):
    """What an input line asks for, before its params and ``n`` are checked."""

    messages: list[dict[str, Any]]
    params: Any
    n: Any
    ident: str


def _batch_line(row: dict[str, Any]) -> _Line:
    """An OpenAI Batch API line: ``{"custom_id": ..., "body": {"messages": [...], ...}}``."""
    body = row["body"]
    if not isinstance(body, dict):
        raise ValueError("'body' must be an object")
    body = dict(body)
    messages = _messages(body.pop("messages", None), "body.messages")
    body.pop("model", None)  # the endpoint decides the model
    n = body.pop("n", 1)
    # Keys asyncsynth does not model (tools, user, max_completion_tokens...) pass through.
    extra = {k: body.pop(k) for k in list(body) if k not in PARAM_KEYS}
    if extra:
        body["extra_body"] = {**extra, **(body.get("extra_body") or {})}
    return _Line(messages, body, n, str(row["custom_id"]))


def _chat_line(row: dict[str, Any], line: int) -> _Line:
    """A ``{"messages": [...]}`` or ``{"prompt": "..."}`` line, with optional params and id."""
    if "messages" in row:
        messages = _messages(row["messages"], "'messages'")
    elif "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            raise ValueError("'prompt' must be a string")
        messages = [{"role": "user", "content": prompt}]
        if isinstance(system := row.get("system"), str):
            messages.insert(0, {"role": "system", "content": system})
    else:
        raise ValueError("a line needs 'messages', 'prompt', or OpenAI Batch 'custom_id' + 'body'")
    params: Any = {}
    if "params" in row:
        params = dict(row["params"]) if isinstance(row["params"], dict) else row["params"]
    ident = str(row["id"]) if "id" in row else f"line-{line}"
    return _Line(messages, params, row.get("n", 1), ident)


def _row_params(params: Any) -> dict[str, Any]:
    """A line's request params, checked as a config's are."""
    if params:
        try:
            return check_params(params, "params")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    if not isinstance(params, dict):
        raise ValueError(f"params: expected a table, got {params!r}")
    return params


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    """The file's lines, without the byte-order mark some editors put first."""
    for line in f:
        yield line.removeprefix(codecs.BOM_UTF8)
        break
    yield from f


class SeenIds:
    """The ids met so far and the line of each, in bounded memory per id.

    An open-addressing table of 64-bit hashes and line numbers (12 bytes a slot, at most
    two thirds full: 18-36 bytes an id, about 30 MB for a million ids); the ids
    themselves are not kept. Two different ids share a hash with odds of about
    n² / 2^65 (1 in 30 million for a million ids), which would report a false duplicate.
    """

    __slots__ = ("_count", "_hashes", "_lines", "_mask")

    def __init__(self, slots: int = 1024) -> None:
        self._hashes = array("q", bytes(8 * slots))
        self._lines = array("I", bytes(4 * slots))
        self._mask = slots - 1
        self._count = 0

    def add(self, ident: str, line: int) -> int | None:
        """Note ``ident`` on ``line``; the line it was first met on, if it was."""
        key = hash(ident) or 1  # 0 marks a free slot
        hashes, mask = self._hashes, self._mask
        slot = key & mask
        while (found := hashes[slot]) != 0:
            if found == key:
                return self._lines[slot]
            slot = (slot + 1) & mask
        hashes[slot] = key
        self._lines[slot] = line
        self._count += 1
        if 3 * self._count > 2 * mask:
            self._grow()
        return None

    def _grow(self) -> None:
        old = zip(self._hashes, self._lines, strict=True)
        size = 2 * (self._mask + 1)
        self._hashes = hashes = array("q", bytes(8 * size))
        self._lines = lines = array("I", bytes(4 * size))
        self._mask = mask = size - 1
        for key, line in old:
            if key:
                slot = key & mask
                while hashes[slot]:
                    slot = (slot + 1) & mask
                hashes[slot] = key
                lines[slot] = line

    def __len__(self) -> int:
        return self._count


def _undecodable(line: bytes) -> str | None:
    """Why ``line`` is not UTF-8, or None if it is."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: byte 0x{line[exc.start]:02x} at byte {exc.start + 1} ({exc.reason})"
    return None


def read_requests(
    path: str | os.PathLike[str],
    on_error: Callable[[InputError, bytes], None],
    *,
    max_n: int = DEFAULT_MAX_N,
    allow_duplicate_ids: bool = False,
    span: Span | None = None,
) -> Iterator[Request]:
    """Requests from a JSONL file, lazily; bad lines go to ``on_error`` and are skipped.

    A line whose id an earlier line had is bad too, unless ``allow_duplicate_ids``.
    ``span``: only the lines from byte ``span.start`` to ``span.end`` (a shard of the
    file, cut at line starts), numbered from ``span.first_line``; ids are checked within it.
    """
    source = os.fspath(path)
    seen = None if allow_duplicate_ids else SeenIds()
    with open(source, "rb") as f:
        for line_no, line in _numbered_lines(f, span):
            if not line.strip():
                continue
            try:
                requests = parse_row(orjson.loads(line), line_no, max_n=max_n)
                if seen is not None and (first := seen.add(requests[0].id or "", line_no)):
                    raise ValueError(
                        f"duplicate id {requests[0].id!r}: line {first} has it too, and output "
                        "rows could not be told apart (--allow-duplicate-ids sends it anyway)"
                    )
            except orjson.JSONDecodeError as exc:
                reason = _undecodable(line) or f"not valid JSON ({exc})"
                on_error(InputError(reason, source=source, line=line_no), line)
            except ValueError as exc:
                on_error(InputError(str(exc), source=source, line=line_no), line)
            else:
                yield from requests


class Span(Protocol):
    """A run of whole lines of a file (see :class:`asyncsynth.distributed.shards.Span`)."""

    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def first_line(self) -> int: ...
    @property
    def lines(self) -> int: ...


def _numbered_lines(f: IO[bytes], span: Span | None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of the whole file, or of ``span`` of it."""
    if span is None or (span.start == 0 and span.end >= os.fstat(f.fileno()).st_size):
        yield from enumerate(_lines(f), 1)
        return
    f.seek(span.start)
    left = span.end - span.start
    for line_no, line in enumerate(f, span.first_line):
        if left <= 0:
            return
        left -= len(line)
        yield line_no, line.removeprefix(codecs.BOM_UTF8) if line_no == 1 else line


def count_lines(path: str | os.PathLike[str]) -> int:
    """Non-empty lines, counted in large chunks (for the progress bar's total)."""
    n = 0
    with open(path, "rb") as f:
        last = b"\n"
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def _sampled(request: Request) -> bool:
    """Whether the row asked for samples (``n``, top level or in a Batch body)."""
    meta = request.meta
    body = meta.get("body")
    return bool(request.sample) or "n" in meta or (isinstance(body, dict) and "n" in body)


def output_row(result: Result) -> dict[str, Any]:
    """The input row's fields plus what the model answered."""
    request = result.request
    row = dict(request.meta)
    if _sampled(request):
        row["sample"] = request.sample
    row["completion"] = result.completion
    row["finish_reason"] = result.finish_reason
    row["usage"] = result.usage
    row["model"] = result.model
    row["latency_s"] = round(result.latency_s, 4)
    row["attempts"] = result.attempts
    row["cost_usd"] = result.cost  # None: the endpoint has no price
    if result.batch:
        row["batch"] = True
    if result.cached:
        row["cached"] = True
        row["first_cost_usd"] = result.first_cost
    return row


def error_row(result: Result) -> dict[str, Any]:
    """A request that finally failed: its input fields and what went wrong."""
    error = result.error
    assert error is not None
    row = dict(result.request.meta)
    if _sampled(result.request):
        row["sample"] = result.request.sample
    row["error"] = {
        "type": error.kind,
        "status": error.status,
        "message": error.message,
        "attempts": result.attempts,
        "endpoint": error.endpoint or None,
    }
    return row


def input_error_row(error: InputError, raw: bytes) -> dict[str, Any]:
    return {
        "line": error.line,
        "input": raw.decode("utf-8", errors="replace").rstrip("\n"),
        "error": {"type": "InputError", "status": None, "message": str(error), "attempts": 0},
    }


class JsonlWriter:
    """Appends rows to a JSONL file; creates it on first write when ``lazy``."""

    def __init__(self, path: str | os.PathLike[str], *, lazy: bool = False) -> None:
        self.path = Path(path)
        self.rows = 0
        self._file: IO[bytes] | None = None
        if not lazy:
            self._open()

    def _open(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        return self._file

    def write(self, row: Mapping[str, Any]) -> None:
        f = self._file or self._open()
        f.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        self.rows += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) for every non-empty line; errors name the file and line."""
    source = os.fspath(path)
    with open(source, "rb") as f:
        for line_no, line in enumerate(_lines(f), 1):
            if not line.strip():
                continue
            try:
                yield line_no, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"not valid JSON ({exc})", source=source, line=line_no) from None


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file, parsed."""
    return orjson.loads(Path(path).read_bytes())


def read_rows(path: str | os.PathLike[str]) -> list[Any]:
    """Every row of a JSONL file this program wrote; a torn last line (a crash mid-append) is
    left out, any other bad line raises :class:`InputError` naming it."""
    source = os.fspath(path)
    rows: list[Any] = []
    with open(source, "rb") as f:
        for line_no, line in enumerate(_lines(f), 1):
            if not line.strip():
                continue
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                if not line.endswith(b"\n"):  # only the last line can lack one
                    break
                raise InputError(f"not valid JSON ({exc})", source=source, line=line_no) from None
    return rows


def write_atomic(path: str | os.PathLike[str], chunks: Iterable[bytes]) -> Path:
    """Write ``chunks`` to ``path`` atomically and durably: the one policy for whole files.

    A temporary file beside the target is written, fsynced and renamed over it, then
    the folder is synced: after a crash or a power cut the target holds the old
    content or the new, never part of either.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # platforms that cannot open a folder
        return path
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """``data`` as indented JSON in ``path``, atomically (see :func:`write_atomic`)."""
    return write_atomic(path, [orjson.dumps(data, option=orjson.OPT_INDENT_2 | _NUMPY)])


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Every row as a JSON line in ``path``, atomically (see :func:`write_atomic`)."""
    option = orjson.OPT_APPEND_NEWLINE | _NUMPY
    return write_atomic(path, (orjson.dumps(row, option=option) for row in rows))
