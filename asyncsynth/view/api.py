"""The viewer's JSON answers: run facts, paged and filtered rows, S3 rounds, latencies.

Every function reads; nothing here writes except :class:`~asyncsynth.view.index.LineIndex`
saving its index. Paths from a request are resolved by :meth:`Viewer.resolve`, which
refuses anything outside the run folder.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import orjson

from ..export.runs import RunFiles, json_if_there, lines
from .index import INDEX_DIR, LineIndex

__all__ = ["Forbidden", "NotFound", "RowFilter", "Viewer"]

PAGE_ROWS = 50
MAX_PAGE_ROWS = 500
SCAN_BYTES = 64 << 20
"""Bytes a filtered page may scan before it answers with what it found and a cursor."""
LISTED = (".jsonl", ".json")
_MAX_DEPTH = 3


class NotFound(Exception):
    """No such file or row (HTTP 404)."""


class Forbidden(Exception):
    """A path outside the run folder, or a file the viewer does not serve (HTTP 403)."""


# -- filters ----------------------------------------------------------------------------------


def _casefold_bytes(text: str) -> tuple[bytes, bytes]:
    needle = text.casefold()
    return needle.encode(), orjson.dumps(needle)[1:-1]


@dataclass(frozen=True)
class RowFilter:
    """What a filtered page keeps; every part must hold.

    ``q``: text anywhere in the row (case-insensitive); ``eq``: field equals one of the
    values (compared as text); ``model``: the model in a GRA ``role`` (``generator``,
    ``reviewer``, ``adjudicator``; any role when empty); ``min``/``max``: numeric bounds.
    """

    q: str = ""
    eq: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    model: str = ""
    role: str = ""
    min: Mapping[str, float] = field(default_factory=dict)
    max: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> RowFilter:
        if not raw:
            return cls()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ValueError("filter: not JSON") from None
        if not isinstance(data, dict):
            raise ValueError("filter: expected an object")
        eq = {
            str(k): tuple(str(x) for x in (v if isinstance(v, list) else [v]))
            for k, v in (data.get("eq") or {}).items()
            if v not in (None, "", [])
        }

        def bounds(name: str) -> dict[str, float]:
            out = {}
            for k, v in (data.get(name) or {}).items():
                if v in (None, ""):
                    continue
                try:
                    out[str(k)] = float(v)
                except (TypeError, ValueError):
                    raise ValueError(f"filter: {name}.{k} is not a number") from None
            return out

        return cls(
            q=str(data.get("q") or ""),
            eq=eq,
            model=str(data.get("model") or ""),
            role=_role(data.get("role")),
            min=bounds("min"),
            max=bounds("max"),
        )

    @property
    def empty(self) -> bool:
        return not (self.q or self.eq or self.model or self.min or self.max)

    def text_matches(self, line: bytes) -> bool:
        if not self.q:
            return True
        plain, escaped = _casefold_bytes(self.q)
        low = line.lower()
        return plain in low or escaped in low

    def matches(self, row: Any) -> bool:
        if not isinstance(row, dict):
            return False
        for key, values in self.eq.items():
            if _text(row.get(key)) not in values:
                return False
        for key, low in self.min.items():
            value = row.get(key)
            if not _is_number(value) or value < low:
                return False
        for key, high in self.max.items():
            value = row.get(key)
            if not _is_number(value) or value > high:
                return False
        if self.model:
            holders = {
                "generator": [row.get("generator")],
                "reviewer": list(row.get("reviewers") or []),
                "adjudicator": [row.get("adjudicator")],
            }
            roles = [self.role] if self.role else list(holders)
            if not any(self.model in holders[r] for r in roles):
                return False
        return True


def _role(value: Any) -> str:
    role = str(value or "")
    if role not in ("", "generator", "reviewer", "adjudicator"):
        raise ValueError(f"filter: role must be generator, reviewer or adjudicator, not {role!r}")
    return role


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- the viewer -------------------------------------------------------------------------------


class Viewer:
    """The state behind the pages: the run, one index per file, latency histograms."""

    def __init__(self, run: RunFiles, *, save_index: bool = True) -> None:
        self.run = run
        self.root = run.root.resolve()
        self.save_index = save_index
        self._indexes: dict[Path, LineIndex] = {}
        self._latency: dict[Path, _Latency] = {}
        self._lock = threading.Lock()

    def resolve(self, rel: str, *, suffixes: Sequence[str] = LISTED) -> Path:
        """The file ``rel`` names under the run folder; anything else is refused."""
        if not rel or "\x00" in rel or os.path.isabs(rel) or rel.startswith(("\\", "~")):
            raise Forbidden(f"{rel!r}: not a path inside the run folder")
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or INDEX_DIR in path.relative_to(self.root).parts:
            raise Forbidden(f"{rel!r}: not a path inside the run folder")
        if path.suffix not in suffixes:
            raise Forbidden(f"{rel!r}: the viewer serves {', '.join(suffixes)} files only")
        if not path.is_file():
            raise NotFound(f"{rel}: no such file")
        return path

    def index(self, path: Path) -> LineIndex:
        with self._lock:
            index = self._indexes.get(path)
            if index is None:
                store = None
                if self.save_index:
                    name = path.relative_to(self.root).as_posix().replace("/", "%2F") + ".idx"
                    store = self.root / INDEX_DIR / name
                index = self._indexes[path] = LineIndex(path, store)
        index.refresh()
        return index

    # -- answers ----------------------------------------------------------------------------

    def files(self) -> list[dict[str, Any]]:
        out = []

        def walk(folder: Path, depth: int) -> None:
            try:
                entries = sorted(folder.iterdir())
            except OSError:
                return
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir() and not entry.is_symlink() and depth < _MAX_DEPTH:
                    walk(entry, depth + 1)
                elif entry.suffix in LISTED and entry.is_file():
                    resolved = entry.resolve()
                    if not resolved.is_relative_to(self.root):
                        continue
                    st = entry.stat()
                    out.append(
                        {
                            "path": entry.relative_to(self.root).as_posix(),
                            "size": st.st_size,
                            "mtime": st.st_mtime,
                        }
                    )

        walk(self.root, 0)
        return out

    def summary(self) -> dict[str, Any]:
        """What the page starts from: kind, files, report (and S3's state)."""
        from .. import __version__

        run = self.run
        out: dict[str, Any] = {
            "kind": run.kind,
            "name": run.name,
            "root": str(run.root),
            "version": __version__,
            "files": self.files(),
            "report": run.report if run.kind != "run" else None,
        }
        if run.kind == "run":
            assert run.output is not None
            out["output"] = run.output.relative_to(self.root).as_posix()
            errors = run.errors
            out["errors"] = errors.relative_to(self.root).as_posix() if errors else None
        if run.kind == "s3":
            out["state"] = run.state
            out["rounds"] = self._s3_rounds()
        return out

    def rows(
        self,
        files: Sequence[str],
        *,
        start: int = 0,
        limit: int = PAGE_ROWS,
        cursor: str | None = None,
        filter: RowFilter | None = None,
    ) -> dict[str, Any]:
        """A page of rows from ``files`` (read one after the other).

        Unfiltered, ``start`` is a row number (through the index) and ``total`` the rows
        in all. Filtered, the files are scanned from ``cursor`` (``"file:offset"``) until
        ``limit`` rows match or :data:`SCAN_BYTES` are read; ``next`` continues the scan.
        """
        if not files:
            raise NotFound("no file given")
        paths = [self.resolve(f, suffixes=(".jsonl",)) for f in files]
        limit = max(1, min(limit, MAX_PAGE_ROWS))
        indexes = [self.index(p) for p in paths]
        total = sum(ix.rows for ix in indexes)
        sizes = [ix.size for ix in indexes]
        if filter is None or filter.empty:
            return self._page(files, indexes, start, limit, total)
        which, offset = _cursor(cursor, len(paths))
        found: list[dict[str, Any]] = []
        budget = SCAN_BYTES
        next_cursor: str | None = None
        scanned = sum(sizes[:which]) + offset
        for i in range(which, len(paths)):
            start_at = offset if i == which else 0
            pos = start_at
            for _, here, line in lines(paths[i], start_at, sizes[i]):
                pos = here + len(line)
                if filter.text_matches(line):
                    row = _load(line)
                    if filter.matches(row):
                        found.append({"file": files[i], "offset": here, "row": row})
                if len(found) >= limit or pos - start_at >= budget:
                    break
            else:
                pos = sizes[i]
            budget -= pos - start_at
            scanned = sum(sizes[:i]) + pos
            if pos < sizes[i]:
                next_cursor = f"{i}:{pos}"
                break
            if len(found) >= limit or budget <= 0:
                next_cursor = f"{i + 1}:0" if i + 1 < len(paths) else None
                break
        return {
            "rows": found,
            "next": next_cursor,
            "total": total,
            "scanned": scanned,
            "size": sum(sizes),
            "filtered": True,
        }

    def _page(
        self,
        files: Sequence[str],
        indexes: Sequence[LineIndex],
        start: int,
        limit: int,
        total: int,
    ) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        first = start
        for name, index in zip(files, indexes, strict=True):
            if len(out) >= limit:
                break
            if start >= index.rows:
                start -= index.rows
                continue
            for offset, line in index.read(start, limit - len(out)):
                n = first + len(out)
                out.append({"file": name, "offset": offset, "n": n, "row": _load(line)})
            start = 0
        end = first + len(out)
        return {
            "rows": out,
            "start": first,
            "next": end if end < total else None,
            "total": total,
            "size": sum(ix.size for ix in indexes),
            "filtered": False,
        }

    def row(self, file: str, offset: int) -> dict[str, Any]:
        """The row starting at byte ``offset`` of ``file``."""
        path = self.resolve(file, suffixes=(".jsonl",))
        with open(path, "rb") as f:
            if offset > 0:
                f.seek(offset - 1)
                if f.read(1) != b"\n":
                    raise NotFound(f"{file}: no row starts at byte {offset}")
            else:
                f.seek(0)
            line = f.readline()
        if not line.endswith(b"\n") or not line.strip():
            raise NotFound(f"{file}: no row starts at byte {offset}")
        return {"file": file, "offset": offset, "row": _load(line)}

    def json_file(self, file: str) -> Any:
        path = self.resolve(file, suffixes=(".json",))
        data = json_if_there(path)
        if data is None:
            raise NotFound(f"{file}: not readable as JSON (yet)")
        return data

    def pool(self, ids: Iterable[str]) -> dict[str, Any]:
        """GRA pool entries by id (the examples a generator was shown)."""
        wanted = set(ids)
        found: dict[str, Any] = {}
        path = self.root / "pool.jsonl"
        if wanted and path.exists():
            for _, _, line in lines(path):
                row = _load(line)
                if isinstance(row, dict) and row.get("id") in wanted:
                    found[str(row["id"])] = row
        return {"entries": found}

    # -- S3 ---------------------------------------------------------------------------------

    def _s3_rounds(self) -> list[dict[str, Any]]:
        """Per round (and final): sizes, metrics with confusion matrices, from the folders."""
        out = []
        state = (self.run.state or {}).get("steps") or {}
        r = 1
        while (self.root / f"round_{r}").is_dir():
            metrics = json_if_there(self.root / f"round_{r}" / "metrics.json") or {}
            trained = state.get(f"round_{r}/train") or {}
            added = state.get(f"round_{r}/extrapolate") or {}
            out.append(
                {
                    "name": f"round {r}",
                    "round": r,
                    "train_size": metrics.get("train_size", trained.get("train_size")),
                    "dev": metrics.get("dev"),
                    "mining": metrics.get("mining"),
                    "errors": trained.get("errors"),
                    "added": added.get("added"),
                    "done": bool(added),
                }
            )
            r += 1
        final = json_if_there(self.root / "final" / "metrics.json")
        if isinstance(final, dict):
            out.append(
                {
                    "name": "final",
                    "round": None,
                    "train_size": final.get("train_size"),
                    "dev": final.get("dev"),
                    "test": final.get("test"),
                    "done": True,
                }
            )
        return out

    def s3_round(self, r: int) -> dict[str, Any]:
        """Each mined error of round ``r`` beside the examples extrapolated from it (kept
        and dropped, with the reason)."""
        folder = self.root / f"round_{r}"
        if not folder.is_dir():
            raise NotFound(f"round_{r}: no such round")

        def rows(name: str) -> list[dict[str, Any]]:
            path = folder / name
            if not path.exists():
                return []
            return [row for _, _, line in lines(path) if isinstance(row := _load(line), dict)]

        added: dict[str, list[Any]] = {}
        for row in rows("added.jsonl"):
            added.setdefault(str(row.get("from")), []).append(row)
        dropped: dict[str, list[Any]] = {}
        prefix = f"r{r}-"
        for row in rows("dropped.jsonl"):
            ident = str(row.get("id", ""))
            origin = ident[len(prefix) :].rsplit("-", 1)[0] if ident.startswith(prefix) else ""
            dropped.setdefault(origin, []).append(row)
        errors = [
            {
                **e,
                "added": added.get(str(e.get("id")), []),
                "dropped": dropped.get(str(e.get("id")), []),
            }
            for e in rows("errors.jsonl")
        ]
        return {"round": r, "errors": errors, "metrics": json_if_there(folder / "metrics.json")}

    # -- run --------------------------------------------------------------------------------

    def latency(self, file: str) -> dict[str, Any]:
        """A histogram of ``latency_s`` over the rows of a ``run`` output (kept up to date)."""
        path = self.resolve(file, suffixes=(".jsonl",))
        index = self.index(path)
        with self._lock:
            hist = self._latency.get(path)
            if hist is None or not hist.still_valid(index):
                hist = self._latency[path] = _Latency(path)
        return hist.update(index)


_LATENCY = b'"latency_s":'
_PER_DECADE = 20
_LOWEST = -4 * _PER_DECADE
"""Latency bins: 20 a decade (12% wide) from 0.1 ms up to 1,000 s."""
_BINS = 11 * _PER_DECADE


class _Latency:
    """Counts of ``latency_s`` in log-spaced bins, read from the lines' bytes as the file
    grows: memory stays the same whatever the rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts = [0] * _BINS
        self.n = 0
        self.top = 0.0
        self.size = 0
        st = path.stat()
        self.identity = (st.st_dev, st.st_ino)
        self.lock = threading.Lock()

    def still_valid(self, index: LineIndex) -> bool:
        st = self.path.stat()
        return self.identity == (st.st_dev, st.st_ino) and index.size >= self.size

    def update(self, index: LineIndex) -> dict[str, Any]:
        with self.lock:
            for _, _, line in lines(self.path, self.size, index.size):
                value = _latency_of(line)
                if value is None:
                    continue
                k = math.floor(math.log10(value) * _PER_DECADE) if value > 0 else _LOWEST
                self.counts[min(_BINS - 1, max(0, k - _LOWEST))] += 1
                self.n += 1
                self.top = max(self.top, value)
            self.size = index.size
            return self.histogram()

    def histogram(self) -> dict[str, Any]:
        used = [i for i, c in enumerate(self.counts) if c]
        if not used:
            return {"n": 0, "bins": [], "p50": None, "p95": None, "p99": None, "max": None}

        def edge(i: int) -> float:
            return 10 ** ((i + _LOWEST) / _PER_DECADE)

        def pct(p: float) -> float:
            need, seen = p * self.n, 0
            for i in used:
                seen += self.counts[i]
                if seen >= need:
                    return min(edge(i + 1), self.top)
            return self.top

        bins = [
            {"lo": edge(i), "hi": edge(i + 1), "count": self.counts[i]}
            for i in range(used[0], used[-1] + 1)
        ]
        return {
            "n": self.n,
            "bins": bins,
            "p50": pct(0.5),
            "p95": pct(0.95),
            "p99": pct(0.99),
            "max": self.top,
        }


def _latency_of(line: bytes) -> float | None:
    at = line.find(_LATENCY)
    if at < 0:
        return None
    start = stop = at + len(_LATENCY)
    while stop < len(line) and line[stop] in b"0123456789.eE+-":
        stop += 1
    try:
        return float(line[start:stop])
    except ValueError:
        return None


def _cursor(raw: str | None, files: int) -> tuple[int, int]:
    if not raw:
        return 0, 0
    which, _, offset = raw.partition(":")
    try:
        i, o = int(which), int(offset)
    except ValueError:
        raise ValueError(f"cursor: expected FILE:OFFSET, got {raw!r}") from None
    if not 0 <= i < files or o < 0:
        raise ValueError(f"cursor: {raw!r} is out of range")
    return i, o


def _load(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return {"_unreadable": line.decode("utf-8", "replace"), "_error": str(exc)}
