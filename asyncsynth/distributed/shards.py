"""A ``run`` input cut into shards, each answered by itself, and their outputs merged once.

The input is cut at line starts into byte ranges (:class:`Span`); a worker reads only
its own range, lazily, as ``run`` reads a whole file. Each shard has its own output,
failures and journal in the shards folder next to the output (``OUTPUT.shards/``)::

    answers.jsonl.shards/
        layout.json                     where each shard starts and ends in the input
        00000.jsonl                     shard 0's answers (rewritten whole on each run)
        00000.errors.jsonl              its failures, if any
        00000.jsonl.journal.sqlite      its journal: answers kept across runs

Running again resumes every shard from its journal. The outputs are merged into
``OUTPUT`` (and ``OUTPUT.errors.jsonl``) only once every shard has finished, in shard
order, written atomically: a merge cut short leaves the old output whole.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from ..io import read_json, write_atomic, write_json
from ..run import errors_path_for

log = logging.getLogger("asyncsynth")

LAYOUT = "layout.json"
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Span:
    """A run of whole lines of the input: bytes ``start`` to ``end``."""

    start: int
    end: int
    first_line: int
    """The input's number of its first line (1-based): ids ``line-N`` stay the input's."""
    lines: int


def split(path: str | os.PathLike[str], parts: int) -> list[Span]:
    """Cut the file into at most ``parts`` spans of about equal size, at line starts."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            target = size * i // parts
            if target <= cuts[-1]:
                continue
            f.seek(target - 1)
            f.readline()  # to the end of the line holding byte target - 1
            if cuts[-1] < (cut := f.tell()) < size:
                cuts.append(cut)
        cuts.append(size)
        spans = []
        line = 1
        for start, end in itertools.pairwise(cuts):
            lines = _count_lines(f, start, end)
            spans.append(Span(start, end, line, lines))
            line += lines
    return spans


def _count_lines(f: BinaryIO, start: int, end: int) -> int:
    """Lines in bytes ``start`` to ``end`` (a last one without its newline included)."""
    f.seek(start)
    left = end - start
    n = 0
    last = b"\n"
    while left > 0 and (chunk := f.read(min(CHUNK, left))):
        n += chunk.count(b"\n")
        last = chunk[-1:]
        left -= len(chunk)
    return n + (last != b"\n")


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard of a job: which lines of the input, and where its files go."""

    index: int
    input: str
    span: Span
    output: str

    @property
    def errors(self) -> Path:
        return errors_path_for(self.output)


class ShardFolder:
    """The shards folder of one output: its layout and its shards' files."""

    def __init__(self, output: str | os.PathLike[str]) -> None:
        self.output = Path(output)
        self.path = Path(f"{os.fspath(output)}.shards")

    def layout(self, input_path: str | os.PathLike[str], parts: int) -> list[Shard]:
        """The shards of ``input_path``: those of the last run if the input is unchanged.

        A changed input is cut again: lines that moved to another shard are no longer
        found in their new shard's journal and are asked again.
        """
        source = Path(input_path).resolve()
        stat = source.stat()
        fingerprint = {"input": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        saved = self.path / LAYOUT
        spans: list[Span] | None = None
        if saved.exists():
            data = read_json(saved)
            if {k: data.get(k) for k in fingerprint} == fingerprint:
                spans = [Span(**span) for span in data["spans"]]
            else:
                log.warning(
                    "%s changed since %s was laid out: cutting it again; answers of lines that "
                    "move to another shard are asked again",
                    source,
                    self.path,
                )
        if spans is None:
            spans = split(source, parts)
            write_json(saved, {**fingerprint, "spans": [asdict(s) for s in spans]})
        return [
            Shard(i, str(source), span, str(self.path / f"{i:05d}.jsonl"))
            for i, span in enumerate(spans)
        ]

    def merge(self, shards: list[Shard]) -> tuple[int, int]:
        """Write every shard's answers to the output, and failures to its errors file, in
        shard order, atomically; (answer bytes, failure bytes) written."""
        errors = errors_path_for(self.output)
        answers = _concat([Path(s.output) for s in shards])
        write_atomic(self.output, answers)
        failed = [s.errors for s in shards if s.errors.exists()]
        if failed:
            write_atomic(errors, _concat(failed))
        else:
            errors.unlink(missing_ok=True)
        return self.output.stat().st_size, errors.stat().st_size if failed else 0


def _concat(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        if not path.exists():
            continue
        with open(path, "rb") as f:
            last = b"\n"
            while chunk := f.read(CHUNK):
                last = chunk[-1:]
                yield chunk
            if last != b"\n":
                yield b"\n"
