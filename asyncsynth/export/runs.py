"""What a run holds: its kind (``gra``, ``s3`` or ``run``), its files, and their rows.

Shared by ``asyncsynth export`` and ``asyncsynth view`` (no extra needed). Rows are read
tolerantly: fields this version does not know are kept, a torn last line (a run still
writing) is left for later, and a line that is not JSON is an
:class:`~asyncsynth.engine.InputError` naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from ..engine import InputError
from ..io import read_json
from ..pipelines.gra import JOURNAL_NAME as GRA_JOURNAL
from ..pipelines.s3.pipeline import JOURNAL_FILE as S3_JOURNAL

__all__ = ["RunFiles", "RunKind", "iter_rows", "json_if_there", "lines", "open_run"]

RunKind = Literal["gra", "s3", "run"]

GRA_FILES = ("accepted.jsonl", "rejected.jsonl", "pool.jsonl", GRA_JOURNAL)
S3_FILES = ("state.json", S3_JOURNAL)
ERRORS_SUFFIX = ".errors.jsonl"


def json_if_there(path: Path) -> Any:
    """A JSON file's content, or None while it is missing (a run writes it later)."""
    try:
        return read_json(path)
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def lines(
    path: str | os.PathLike[str], start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes) of every complete, non-blank line of a JSONL file,
    from byte ``start`` (which must begin a line) up to ``end``.

    A last line without its newline is still being written and is not read; numbers
    count from ``start``; a byte-order mark at the start of the file is dropped.
    """
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        for number, line in enumerate(f, 1):
            here = pos
            pos += len(line)
            if not line.endswith(b"\n") or (end is not None and pos > end):
                return
            if here == 0:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if line.strip():
                yield number, here, line


def iter_rows(path: str | os.PathLike[str], *, start: int = 0) -> Iterator[tuple[int, Any]]:
    """(byte offset, row) of every complete line of a JSONL file (see :func:`lines`).

    A line that is not JSON raises :class:`InputError` with its line number.
    """
    source = os.fspath(path)
    for number, offset, line in lines(source, start):
        try:
            yield offset, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"not valid JSON ({exc})", source=source, line=number) from None


@dataclass(frozen=True)
class RunFiles:
    """A run's folder and kind. For ``run``, ``output`` is the answers file."""

    kind: RunKind
    root: Path
    output: Path | None = None

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def errors(self) -> Path | None:
        """The errors file of a ``run`` output."""
        if self.output is None:
            return None
        return self.output.with_name(_stem(self.output.name) + ERRORS_SUFFIX)

    @property
    def report(self) -> dict[str, Any] | None:
        """``report.json`` (GRA, S3), or None while a run has not written it yet."""
        report = json_if_there(self.root / "report.json")
        return report if isinstance(report, dict) else None

    @property
    def state(self) -> dict[str, Any] | None:
        """S3's ``state.json``: finished steps and the settings they were made with."""
        state = json_if_there(self.root / "state.json")
        return state if isinstance(state, dict) else None

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What S3's ``state.json`` recorded the run was made with: its settings (labels in
        the config's order), ``data`` (digests of the gold data) and ``prompts``."""
        found = (self.state or {}).get("fingerprint") or {}
        if isinstance(found.get("settings"), dict):  # the layout of 0.1 runs
            return {**found["settings"], **{k: v for k, v in found.items() if k != "settings"}}
        return dict(found)

    @property
    def s3_settings(self) -> dict[str, Any]:
        """The S3 settings the run was made with."""
        return {k: v for k, v in self.fingerprint.items() if k not in ("data", "prompts")}

    @property
    def name(self) -> str:
        return (self.output or self.root).name


def _stem(name: str) -> str:
    return name[: -len(".jsonl")] if name.endswith(".jsonl") else name


def _is_output(path: Path) -> bool:
    return path.suffix == ".jsonl" and not path.name.endswith(ERRORS_SUFFIX)


def _looks_like_run_output(path: Path) -> bool:
    """The first complete row has a completion (or the file is still empty)."""
    try:
        for _, row in iter_rows(path):
            return isinstance(row, dict) and "completion" in row
    except (InputError, OSError):
        return False
    return True


def open_run(path: str | os.PathLike[str]) -> RunFiles:
    """The run at ``path``: a GRA or S3 output folder, or a ``run`` output (file or folder).

    A folder holding a single ``run`` output (besides its errors file) may be given for
    the file. Anything else is refused with what was looked for.
    """
    p = Path(path).expanduser()
    if p.is_file():
        if p.name.endswith(ERRORS_SUFFIX):
            output = p.with_name(p.name[: -len(ERRORS_SUFFIX)] + ".jsonl")
            return RunFiles("run", p.parent.resolve(), output.resolve())
        if _is_output(p):
            return RunFiles("run", p.parent.resolve(), p.resolve())
        raise InputError("not a run: give a run's folder or a `run` output .jsonl", source=str(p))
    if not p.is_dir():
        raise InputError("no such file or folder", source=str(p))
    root = p.resolve()
    if any((root / name).exists() for name in GRA_FILES):
        return RunFiles("gra", root)
    if any((root / name).exists() for name in S3_FILES):
        return RunFiles("s3", root)
    outputs = sorted(q for q in root.glob("*.jsonl") if _is_output(q))
    answers = [q for q in outputs if _looks_like_run_output(q)]
    if len(answers) == 1:
        return RunFiles("run", root, answers[0])
    if len(answers) > 1:
        names = ", ".join(q.name for q in answers)
        raise InputError(f"holds several `run` outputs ({names}): give one", source=str(p))
    raise InputError(
        "not a run folder: no accepted.jsonl (GRA), state.json (S3) or `run` output .jsonl",
        source=str(p),
    )
