"""A pipeline's output folder: atomic writes, step state, fingerprint and resume checks.

Every pipeline (GRA, S3) writes into one folder that also holds its journal, so that
running the same command again resumes. The rules, in one place:

- **Writes are atomic and durable.** :meth:`RunFolder.write_json` and
  :meth:`RunFolder.write_jsonl` write a temporary file beside the target, fsync it and
  rename it over the target: after a crash or a power cut the folder holds the old file
  or the new one, never half of one. :meth:`RunFolder.append_jsonl` appends whole lines
  (a torn last line after a crash is a partial row that readers skip; the end-of-run
  rewrite replaces the file whole).
- **Finished steps are recorded** in ``state.json`` with the run's fingerprint (what
  decides the results: settings, data digests, prompts). Opening a folder whose
  fingerprint differs, except in the keys the pipeline declares resumable, is refused
  with the changed keys named, so a resumed run never mixes results of two setups.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from ..io import read_json, read_rows, write_json, write_jsonl
from .errors import RunFolderError

STATE_FILE = "state.json"
STATE_VERSION = 1


def digest(data: Any) -> str:
    """A short, stable hash of JSON-able ``data`` (for fingerprints)."""
    return hashlib.sha256(orjson.dumps(data)).hexdigest()[:16]


def changed_keys(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    resumable: Iterable[str] = (),
    atomic: Iterable[str] = (),
    prefix: str = "",
) -> list[str]:
    """Dotted keys whose values differ between two fingerprints.

    Keys in ``resumable`` (dotted, without ``prefix``) may change on resume; keys in
    ``atomic`` are compared whole rather than descended into.
    """
    resumable, atomic = frozenset(resumable), frozenset(atomic)
    changed: list[str] = []
    for key in sorted({*old, *new}):
        name = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping) and key not in atomic:
            changed += changed_keys(a, b, resumable=resumable, atomic=atomic, prefix=f"{name}.")
        elif a != b and name not in resumable:
            changed.append(name)
    return changed


class RunFolder:
    """One pipeline run's folder: its files, its journal and its step state."""

    def __init__(self, path: str | os.PathLike[str], *, journal_name: str) -> None:
        self.path = Path(path)
        self.journal = self.path / journal_name
        self.state: dict[str, Any] = {}

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- writing ----------------------------------------------------------------------------

    def write_json(self, name: str, data: Any) -> Path:
        """``data`` as indented JSON in ``name``, atomically."""
        return write_json(self.path / name, data)

    def write_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Every row of ``rows`` as JSON lines in ``name``, atomically."""
        return write_jsonl(self.path / name, rows)

    def append_jsonl(
        self, name: str, rows: Iterable[Mapping[str, Any]], *, truncate: bool = False
    ) -> Path:
        """Append ``rows`` to ``name`` (``truncate``: start it afresh), synced when it returns."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        line = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
        with open(path, "wb" if truncate else "ab") as f:
            for row in rows:
                f.write(orjson.dumps(row, option=line))
            f.flush()
            os.fsync(f.fileno())
        return path

    # -- reading ----------------------------------------------------------------------------

    def read_json(self, name: str) -> Any:
        return read_json(self.path / name)

    def read_jsonl(self, name: str) -> list[Any]:
        """Rows of ``name``; a torn last line (a crash mid-append) is left out."""
        return read_rows(self.path / name)

    # -- step state -------------------------------------------------------------------------

    def open(
        self,
        fingerprint: Mapping[str, Any],
        *,
        resumable: Iterable[str] = (),
        atomic: Iterable[str] = (),
        what: str = "run",
    ) -> bool:
        """Start a run here, or resume the one found; ``True`` when resuming.

        A folder whose recorded fingerprint differs from ``fingerprint`` (outside the
        ``resumable`` keys) is refused, naming what changed.
        """
        path = self.path / STATE_FILE
        fingerprint = dict(fingerprint)
        if path.exists():
            state = self.read_json(STATE_FILE)
            if state.get("version") != STATE_VERSION:
                raise RunFolderError(
                    f"{path}: written by another version of asyncsynth; use a new output folder"
                )
            changed = changed_keys(
                state.get("fingerprint", {}), fingerprint, resumable=resumable, atomic=atomic
            )
            if changed:
                raise RunFolderError(
                    f"{self.path} holds a {what} with other settings or data (changed: "
                    f"{', '.join(changed)}). Resuming needs the same ones: use another output "
                    f"folder, or delete {path} to start over (answers already received stay in "
                    f"{self.journal.name} and are not asked again)."
                )
            state["fingerprint"] = fingerprint
            self.state = state
            return True
        self.path.mkdir(parents=True, exist_ok=True)
        self.state = {"version": STATE_VERSION, "fingerprint": fingerprint, "steps": {}}
        self.save_state()
        return False

    def save_state(self) -> None:
        self.write_json(STATE_FILE, self.state)

    @property
    def steps(self) -> dict[str, Any]:
        steps: dict[str, Any] = self.state.setdefault("steps", {})
        return steps

    def done(self, step: str) -> dict[str, Any] | None:
        """The record of ``step`` if a run here finished it."""
        return self.steps.get(step)

    def finish(self, step: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Record ``step`` as finished (durably); returns the record as stored."""
        stored = {**record, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.steps[step] = stored
        self.save_state()
        return stored
