"""Request keys and the durable journal of completed responses, for resume and caching.

Why SQLite in WAL mode rather than an append-only log of our own:

- crash safety is SQLite's: a ``kill -9`` loses nothing committed, and after a power
  loss a torn tail of the write-ahead log fails its frame checksums and is dropped
  by SQLite's own recovery, so a half-written record is never trusted;
- lookups go through the primary-key index on disk, so resuming a job of a million
  rows does not load a million keys into memory;
- commits are batched by the engine (up to 256 rows or 20 ms) with
  ``synchronous=NORMAL``, and made off the event loop (:meth:`Journal.store_async`, on
  a connection of their own in a worker thread, where SQLite runs without the GIL): the
  inserts into the random-keyed index and the checkpoints (each one fsyncs) cost the
  loop nothing but the hand-over, and the loop's reads never wait on them (WAL readers
  do not block on the writer);
- a request never answered before costs no read: a :class:`KeyFilter` (a Bloom filter
  of the stored keys, 2 bytes a key) answers "not there" for it in memory. A read per
  request measured 10-35 microseconds, the largest cost of a journaled run.

A database that fails ``PRAGMA quick_check`` (or was written by another journal
format) is moved aside (``*.corrupt-<time>``), never read, and a fresh journal starts:
the lost entries are simply requested again. ``quick_check`` checks structure, not
contents, so every record also carries a CRC-32 of its key and value: a record whose
bytes changed (bit rot, a torn page) fails it, is dropped and requested again, never
returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import orjson

from .client import Completion

log = logging.getLogger("asyncsynth")

JOURNAL_SUFFIX = ".journal.sqlite"
_SCHEMA_VERSION = "2"
_CRC = struct.Struct("<I")
_CHECKPOINT_PAGES = 4096
"""WAL pages between checkpoints (each one fsyncs): 16 MB, not SQLite's 4 MB default."""
_BUSY_MS = 30_000
"""How long one connection waits for the other's write (one commit, normally a few ms)."""


_SPEND_AND_BATCH_TABLES = """
CREATE TABLE IF NOT EXISTS spend (
    endpoint TEXT PRIMARY KEY,
    cost REAL NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    base_url TEXT,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    path TEXT,
    requests INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    file_id TEXT,
    batch_id TEXT,
    status TEXT,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    output_file_id TEXT,
    error_file_id TEXT,
    error TEXT,
    created REAL NOT NULL,
    submitted REAL,
    updated REAL
);
CREATE TABLE IF NOT EXISTS batch_requests (
    key BLOB PRIMARY KEY,
    batch INTEGER NOT NULL,
    attempts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_requests_by_batch ON batch_requests (batch);
"""
"""What answers cost, by endpoint; batches submitted and the requests each holds.

A batch's ``state`` is ours: ``written`` (file on disk, journal knows its requests),
``uploaded``, ``creating`` (the create call may have reached the provider), ``submitted``
(its id is known), ``ended`` (a final status; files to download), ``done``, ``discarded``
(never submitted). ``status`` is the provider's. ``batch_requests`` holds only the
requests of batches still to be answered: one batch at a time per request.
"""


def request_key(
    models: Sequence[str], messages: Any, params: Mapping[str, Any], sample: int
) -> bytes:
    """Hash of what decides an answer: models, messages, generation params, sample index.

    Not in it: API keys, endpoint URLs (replicas of a model share answers), timeouts.
    """
    canonical = orjson.dumps([list(models), messages, params, sample], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).digest()


def _crc(key: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(key))


def encode_record(
    key: bytes,
    content: str | None,
    finish_reason: str | None,
    usage: Mapping[str, int],
    model: str | None,
    cost: float | None = None,
    batch: bool = False,
) -> bytes:
    """A stored record of an answer: CRC-32 of key and payload, then the payload."""
    fields: list[Any] = [content, finish_reason, usage, model]
    if cost is not None or batch:  # what it cost when made; older records lack it
        fields += [cost, batch]
    payload = orjson.dumps(fields)
    return _CRC.pack(_crc(key, payload)) + payload


def _encoded(answers: Iterable[tuple[bytes, Completion]]) -> list[bytes]:
    """Records as :meth:`Journal.store` takes them: key, record, key, record, ..."""
    flat: list[bytes] = []
    for key, c in answers:
        flat.append(key)
        flat.append(
            encode_record(key, c.content, c.finish_reason, c.usage, c.model, c.cost, c.batch)
        )
    return flat


_INSERT_ROWS = 256
"""Rows per INSERT statement (a whole commit of the engine's, ``COMMIT_ROWS``): one step
inserts them all, so a commit in a worker thread takes the GIL back a few times per
commit, not once per row (which made the event loop and the writer trade the GIL back
and forth)."""


def _insert(db: sqlite3.Connection, flat: Sequence[bytes]) -> None:
    """Insert ``flat`` (key, record, key, record, ...), keeping a record already there."""
    step = 2 * _INSERT_ROWS
    for start in range(0, len(flat), step):
        chunk = flat[start : start + step]
        marks = ", ".join(("(?, ?)",) * (len(chunk) // 2))
        db.execute(f"INSERT OR IGNORE INTO responses (key, value) VALUES {marks}", chunk)


def journal_path_for(output: str | os.PathLike[str]) -> Path:
    """The journal that lives next to an output file."""
    return Path(f"{os.fspath(output)}{JOURNAL_SUFFIX}")


class KeyFilter:
    """A Bloom filter of request keys: ``key in filter`` is False for every key never added.

    Request keys are already uniform hashes, so their own bits pick the filter's bits
    (``_PROBES`` of them, 16 filter bits a key at capacity: about 0.2% false positives,
    which cost one read each). Past its capacity it is rebuilt twice as large from
    the keys given (``rebuild``), so lookups stay cheap as the journal grows.
    """

    __slots__ = ("_bits", "_mask", "capacity", "count")

    _PROBES = 4
    _BITS_PER_KEY = 16
    _MIN_CAPACITY = 1 << 16

    def __init__(self, capacity: int = 0) -> None:
        capacity = max(self._MIN_CAPACITY, capacity)
        size = 1 << (capacity * self._BITS_PER_KEY - 1).bit_length()
        self._bits = bytearray(size >> 3)
        self._mask = size - 1
        self.capacity = size // self._BITS_PER_KEY
        self.count = 0

    def _hash(self, key: bytes) -> int:
        """Bits enough for every probe: the key's own, or a hash of it when it is short."""
        if len(key) * 8 < self._PROBES * self._mask.bit_length():
            key = hashlib.blake2b(key, digest_size=64).digest()
        return int.from_bytes(key, "little")

    def add(self, key: bytes) -> None:
        bits, mask = self._bits, self._mask
        shift = mask.bit_length()
        h = self._hash(key)
        for _ in range(self._PROBES):
            i = h & mask
            bits[i >> 3] |= 1 << (i & 7)
            h >>= shift
        self.count += 1

    def __contains__(self, key: bytes) -> bool:
        bits, mask = self._bits, self._mask
        shift = mask.bit_length()
        h = self._hash(key)
        for _ in range(self._PROBES):
            i = h & mask
            if not bits[i >> 3] >> (i & 7) & 1:
                return False
            h >>= shift
        return True

    @property
    def full(self) -> bool:
        return self.count > self.capacity

    @classmethod
    def of(cls, keys: Iterable[bytes], count: int) -> KeyFilter:
        """A filter holding ``keys`` (about ``count`` of them), with room for as many more."""
        new = cls(2 * count)
        for key in keys:
            new.add(key)
        return new


class Journal:
    """Completed responses by request key.

    Two connections: one for reads and the batch bookkeeping, used on the caller's
    thread, and one for :meth:`store` and :meth:`store_async`, opened at the first
    answer and used by one thread at a time (a lock), so answers can be committed in a
    worker thread while the event loop goes on. WAL mode lets the reader see every
    committed answer without waiting on the writer.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.recovered_from: Path | None = None
        self._db = self._open()
        self._keys = self._load_keys()
        self._writer: sqlite3.Connection | None = None
        self._writing = threading.Lock()

    def _load_keys(self) -> KeyFilter:
        """The filter of every stored key (one scan of the key index at open)."""
        db = self._db
        count = len(self)
        return KeyFilter.of((key for (key,) in db.execute("SELECT key FROM responses")), count)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connect()
        except sqlite3.DatabaseError as exc:
            db = self._recover(str(exc))
        return db

    def _connect(self) -> sqlite3.Connection:
        db = self._connection()
        try:
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
            # Rows append in rowid order; only the small key index takes random inserts.
            # (A WITHOUT ROWID table keyed by the hash measured 3x slower per row.)
            db.execute(
                "CREATE TABLE IF NOT EXISTS responses"
                " (id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE, value BLOB NOT NULL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)", (_SCHEMA_VERSION,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex[:12],))
            db.executescript(_SPEND_AND_BATCH_TABLES)
            version = db.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()[0]
            if version != _SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"journal format {version}, not {_SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _connection(self) -> sqlite3.Connection:
        """A connection to the journal in WAL mode, committing with ``synchronous=NORMAL``."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _recover(self, reason: str) -> sqlite3.Connection:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(Path(f"{aside}{suffix}"))
        log.warning(
            "journal %s is damaged (%s); moved it to %s and started a fresh one: "
            "requests it held will be sent again",
            self.path,
            reason,
            aside,
        )
        self.recovered_from = aside
        return self._connect()

    def get(self, key: bytes) -> Completion | None:
        if key not in self._keys:
            return None
        row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        stored = row[0]
        if (
            not isinstance(stored, bytes)
            or len(stored) < _CRC.size
            or _CRC.unpack_from(stored)[0] != _crc(key, payload := stored[_CRC.size :])
        ):
            self._drop_damaged(key)
            return None
        content, finish_reason, usage, model, *made = orjson.loads(payload)
        return Completion(content, finish_reason, usage, model, *made)

    def _drop_damaged(self, key: bytes) -> None:
        log.warning(
            "journal %s: a record failed its checksum; dropped it, its request will be sent again",
            self.path,
        )
        self._db.execute("DELETE FROM responses WHERE key = ?", (key,))

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """One durable transaction: committed when the block ends, rolled back if it raises."""
        db = self._db if db is None else db
        db.execute("BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def record(
        self,
        answers: Iterable[tuple[bytes, Completion]],
        *,
        spend: Mapping[str, tuple[float, int]] | None = None,
    ) -> int:
        """Store answers by key in one transaction, durable when it returns; how many.

        ``spend`` adds what they cost, by endpoint (USD, tokens), to :meth:`spent`.
        """
        return self.store(_encoded(answers), spend=spend)

    async def record_async(
        self,
        answers: Iterable[tuple[bytes, Completion]],
        *,
        spend: Mapping[str, tuple[float, int]] | None = None,
    ) -> int:
        """:meth:`record`, committed in a worker thread (see :meth:`store_async`)."""
        return await self.store_async(_encoded(answers), spend=spend)

    def store(
        self, records: list[bytes], *, spend: Mapping[str, tuple[float, int]] | None = None
    ) -> int:
        """:meth:`record` for answers already encoded: ``records`` alternates each key
        with its :func:`encode_record` (one flat list, no object per answer)."""
        if records:
            self._write(records, spend)
            self._stored(records)
        return len(records) // 2

    async def store_async(
        self, records: list[bytes], *, spend: Mapping[str, tuple[float, int]] | None = None
    ) -> int:
        """:meth:`store`, committed in a worker thread while the event loop goes on.

        Durable when it returns, as :meth:`store`, and when it is cancelled too: it
        waits for the commit under way, or makes it here if the thread had not begun,
        then raises. The answers are never left half stored nor stored twice.
        """
        if not records:
            return 0
        written = False

        def write() -> None:
            nonlocal written
            self._write(records, spend)
            written = True

        try:
            await anyio.to_thread.run_sync(write)
        except anyio.get_cancelled_exc_class():
            if not written:
                write()
            raise
        finally:
            if written:
                self._stored(records)
        return len(records) // 2

    def _write(self, records: list[bytes], spend: Mapping[str, tuple[float, int]] | None) -> None:
        """The answers' transaction, on the writer connection (any thread, one at a time)."""
        with self._writing:
            if self._writer is None:
                self._writer = self._connection()
            with self._transaction(self._writer) as db:
                _insert(db, records)
                if spend:
                    self._add_spend(spend, db)

    def _stored(self, records: Sequence[bytes]) -> None:
        """Committed keys join the filter (rebuilt larger once past its capacity)."""
        known = self._keys
        for key in records[::2]:
            known.add(key)
        if known.full:
            self._keys = self._load_keys()

    def _add_spend(
        self, spend: Mapping[str, tuple[float, int]], db: sqlite3.Connection | None = None
    ) -> None:
        (self._db if db is None else db).executemany(
            "INSERT INTO spend VALUES (?, ?, ?) ON CONFLICT (endpoint) DO UPDATE"
            " SET cost = cost + excluded.cost, tokens = tokens + excluded.tokens",
            [(name, cost, tokens) for name, (cost, tokens) in spend.items()],
        )

    def spent(self) -> dict[str, tuple[float, int]]:
        """What the answers in this journal cost when made, by endpoint: (USD, tokens)."""
        rows = self._db.execute("SELECT endpoint, cost, tokens FROM spend").fetchall()
        return {name: (float(cost), int(tokens)) for name, cost, tokens in rows}

    @property
    def ident(self) -> str:
        """A short id unique to this journal (names its batches at the provider)."""
        return str(self._db.execute("SELECT value FROM meta WHERE name = 'id'").fetchone()[0])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM responses").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return {"path": str(self.path), "entries": len(self), "bytes": size}

    def clear(self) -> int:
        """Forget every entry (and what they cost); returns how many there were.

        Batches still running at the provider are kept: their answers are yet to come.
        """
        n = len(self)
        self._db.execute("DELETE FROM responses")
        self._db.execute("DELETE FROM spend")
        self._db.execute("VACUUM")
        self._keys = KeyFilter()
        return n

    # -- batches (engine/batch.py): what was submitted where, and which requests each holds ------

    def batch_new(self, fields: Mapping[str, Any], keys: Sequence[bytes]) -> int:
        """Record a batch (state ``written``) and the requests it holds, in one transaction."""
        names = ", ".join(fields)
        marks = ", ".join("?" * len(fields))
        with self._transaction() as db:
            cursor = db.execute(
                f"INSERT INTO batches ({names}) VALUES ({marks})", tuple(fields.values())
            )
            batch = int(cursor.lastrowid or 0)
            db.executemany(
                "INSERT INTO batch_requests (key, batch, attempts) VALUES (?, ?, 1)"
                " ON CONFLICT (key) DO UPDATE SET batch = excluded.batch,"
                " attempts = batch_requests.attempts + 1",
                [(key, batch) for key in keys],
            )
        return batch

    def batch_set(self, batch: int, **fields: Any) -> None:
        """Change fields of a batch (one durable write)."""
        fields["updated"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._db.execute(
            f"UPDATE batches SET {assignments} WHERE id = ?", (*fields.values(), batch)
        )

    def batch(self, batch: int) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM batches WHERE id = ?", (batch,))
        return rows[0] if rows else None

    def _rows(self, query: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        cursor = self._db.execute(query, args)
        columns = [c[0] for c in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def batches(self, states: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every batch (or those in ``states``), oldest first."""
        query = "SELECT * FROM batches"
        if states:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
        return self._rows(query + " ORDER BY id", tuple(states or ()))

    def batch_holding(self, key: bytes) -> tuple[int, int] | None:
        """(batch, batches the request has been in) of the batch holding ``key``, if any."""
        row = self._db.execute(
            "SELECT batch, attempts FROM batch_requests WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def batch_held(self) -> int:
        """Requests held by batches (0 when none is running)."""
        return int(self._db.execute("SELECT count(*) FROM batch_requests").fetchone()[0])

    def batch_keys(self, batch: int) -> list[bytes]:
        rows = self._db.execute("SELECT key FROM batch_requests WHERE batch = ?", (batch,))
        return [bytes(row[0]) for row in rows.fetchall()]

    def batch_answers(
        self,
        batch: int,
        answers: Sequence[tuple[bytes, Completion]],
        spend: Mapping[str, tuple[float, int]],
    ) -> None:
        """Store a batch's answers and take them off it, in one transaction."""
        records = _encoded(answers)
        with self._transaction() as db:
            _insert(db, records)
            db.executemany(
                "DELETE FROM batch_requests WHERE key = ? AND batch = ?",
                [(key, batch) for key, _ in answers],
            )
            if spend:
                self._add_spend(spend)
        self._stored(records)

    def batch_release(self, batch: int, state: str, **fields: Any) -> None:
        """The batch holds nothing any more (answered, or sent elsewhere): set its state."""
        with self._transaction() as db:
            db.execute("DELETE FROM batch_requests WHERE batch = ?", (batch,))
            self.batch_set(batch, state=state, **fields)

    def close(self) -> None:
        with self._writing:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
