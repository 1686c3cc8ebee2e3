"""A byte-offset index of a JSONL file, kept beside the run and extended as the file grows.

The index holds the offset of every :data:`STRIDE`-th row, so it stays small (about 30 KB
for a million rows) and any row is one seek plus at most ``STRIDE - 1`` skipped lines
away. It is saved in ``RUN_DIR/.asyncsynth-view/`` (the only thing the viewer writes)
with what it was built from: the file's identity (device, inode), the bytes indexed and
the last of them. A file that grew is indexed from where the index stopped; one that was
replaced, truncated or rewritten is indexed again. Only complete lines count: a row half
written by a running job is picked up by the next refresh.
"""

from __future__ import annotations

import os
import threading
from array import array
from pathlib import Path

import orjson

from ..export.runs import lines

__all__ = ["INDEX_DIR", "STRIDE", "LineIndex"]

INDEX_DIR = ".asyncsynth-view"
STRIDE = 256
"""One offset kept every this many rows."""
_TAIL = 64
"""Bytes before the indexed end compared to tell an appended file from a rewritten one."""
_VERSION = 1
_CHUNK = 1 << 22


class LineIndex:
    """Rows of one JSONL file by number; :meth:`refresh` follows the file as it changes."""

    def __init__(self, path: Path, store: Path | None) -> None:
        self.path = path
        self.store = store
        """Where the index is saved (None: kept in memory only)."""
        self.offsets = array("Q")
        self.rows = 0
        """Complete, non-blank lines indexed."""
        self.size = 0
        """Bytes indexed (up to the end of the last complete line)."""
        self._identity: tuple[int, int] | None = None
        self._tail = b""
        self._lock = threading.Lock()
        self._loaded = False

    # -- persistence ------------------------------------------------------------------------

    def _load(self) -> None:
        self._loaded = True
        if self.store is None or not self.store.exists():
            return
        try:
            raw = self.store.read_bytes()
            header, _, body = raw.partition(b"\n")
            meta = orjson.loads(header)
            if meta.get("version") != _VERSION or meta.get("stride") != STRIDE:
                return
            offsets = array("Q")
            offsets.frombytes(body)
        except (OSError, ValueError, orjson.JSONDecodeError):
            return
        self.offsets = offsets
        self.rows = int(meta["rows"])
        self.size = int(meta["size"])
        self._identity = (int(meta["dev"]), int(meta["ino"]))
        self._tail = bytes.fromhex(meta["tail"])

    def _save(self) -> None:
        if self.store is None or self._identity is None:
            return
        meta = {
            "version": _VERSION,
            "stride": STRIDE,
            "rows": self.rows,
            "size": self.size,
            "dev": self._identity[0],
            "ino": self._identity[1],
            "tail": self._tail.hex(),
        }
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.store.with_name(self.store.name + f".{os.getpid()}.tmp")
            tmp.write_bytes(orjson.dumps(meta) + b"\n" + self.offsets.tobytes())
            os.replace(tmp, self.store)
        except OSError:  # a read-only run folder: the index lives in memory only
            self.store = None

    # -- building ---------------------------------------------------------------------------

    def _reset(self) -> None:
        self.offsets = array("Q")
        self.rows = self.size = 0
        self._tail = b""

    def _still_valid(self, st: os.stat_result) -> bool:
        if self._identity != (st.st_dev, st.st_ino) or st.st_size < self.size:
            return False
        if not self.size:
            return True
        with open(self.path, "rb") as fh:
            fh.seek(self.size - len(self._tail))
            return fh.read(len(self._tail)) == self._tail

    def refresh(self) -> bool:
        """Index what was appended since the last call (or everything, if the file was
        replaced). Returns whether anything changed."""
        with self._lock:
            if not self._loaded:
                self._load()
            try:
                st = self.path.stat()
            except FileNotFoundError:
                changed = self.rows > 0
                self._reset()
                self._identity = None
                return changed
            if not self._still_valid(st):
                self._reset()
                self._identity = (st.st_dev, st.st_ino)
            if st.st_size == self.size:
                return False
            before = (self.rows, self.size)
            self._extend()
            if (self.rows, self.size) != before:
                self._save()
                return True
            return False

    def _extend(self) -> None:
        """Index the complete lines after ``self.size``."""
        rows, offsets, pos = self.rows, self.offsets, self.size
        for _, here, line in lines(self.path, self.size):
            if rows % STRIDE == 0:
                offsets.append(here)
            rows += 1
            pos = here + len(line)
        self.rows = rows
        if pos > self.size:
            with open(self.path, "rb") as f:
                start = max(0, pos - _TAIL)
                f.seek(start)
                self._tail = f.read(pos - start)
        self.size = pos

    # -- reading ----------------------------------------------------------------------------

    def read(self, start: int, count: int) -> list[tuple[int, bytes]]:
        """(byte offset, line) of rows ``start`` .. ``start + count - 1`` that exist."""
        with self._lock:
            rows, size = self.rows, self.size
            if start >= rows or count <= 0:
                return []
            offset = self.offsets[start // STRIDE]
        skip = start % STRIDE
        out: list[tuple[int, bytes]] = []
        for _, here, line in lines(self.path, offset, size):
            if skip:
                skip -= 1
                continue
            out.append((here, line))
            if len(out) == count:
                break
        return out
