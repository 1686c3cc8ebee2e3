"""Rows to Arrow, streamed: Parquet files and ``datasets`` folders with typed columns.

The columns an export knows (GRA provenance, S3's labels, SQuAD answers) have fixed
types; every other field is typed from the data in a first pass over the rows (types
merged across batches: int and float make float, structs take the union of their keys),
and a field whose values cannot share one type (a string here, a number there) is kept
as JSON text. The second pass writes batches of :data:`BATCH_ROWS` rows, so memory
stays bounded whatever the number of rows.

Needs ``pyarrow`` (and ``datasets`` for :func:`write_dataset`): ``asyncsynth[export]``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ..engine import InputError
from ..pipelines.gra.committee import INSTRUCTION_CRITERIA, RESPONSE_CRITERIA

__all__ = [
    "BATCH_ROWS",
    "Columns",
    "gra_columns",
    "is_saved_dataset",
    "run_columns",
    "s3_columns",
    "write_dataset",
    "write_parquet",
    "write_shards",
]

BATCH_ROWS = 10_000
"""Rows per Arrow batch (and Parquet row group)."""
SHARD_ROWS = 500_000
"""Rows per Parquet file uploaded to the Hub."""

Row = dict[str, Any]

_STR = pa.string()
_MESSAGES = pa.list_(pa.struct([("role", _STR), ("content", _STR)]))
_SCORES = [(c, pa.float64()) for c in RESPONSE_CRITERIA]


@dataclass
class Columns:
    """The known columns of an export and how to finish a record before it is written."""

    schema: pa.Schema
    labels: Sequence[str] | None = None
    """Names of a ``ClassLabel`` column, in order (S3 classification)."""
    label_column: str | None = None
    extra: dict[str, pa.DataType] = field(default_factory=dict)
    json_fields: set[str] = field(default_factory=set)

    def features(self) -> Any:
        """The ``datasets.Features`` of the whole schema (``ClassLabel`` for the label)."""
        from datasets import ClassLabel, Features

        features = Features.from_arrow_schema(self.full_schema())
        if self.label_column is not None and self.labels is not None:
            features[self.label_column] = ClassLabel(names=list(self.labels))
        return features

    def full_schema(self) -> pa.Schema:
        schema = self.schema
        for name, kind in self.extra.items():
            schema = schema.append(pa.field(name, _STR if name in self.json_fields else kind))
        return schema

    def arrow_schema(self) -> pa.Schema:
        """The schema written, with the Hugging Face features in its metadata."""
        return self.features().arrow_schema

    def infer(self, rows: Iterable[Row]) -> None:
        """First pass: type every field the known schema lacks (see the module docstring)."""
        known = set(self.schema.names)
        for batch in _batched(rows, BATCH_ROWS):
            names = dict.fromkeys(k for r in batch for k in r if k not in known)
            for name in names:
                if name in self.json_fields:
                    continue
                try:
                    kind = pa.array([r.get(name) for r in batch]).type
                    old = self.extra.get(name)
                    if old is not None:
                        merged = pa.unify_schemas(
                            [pa.schema([(name, old)]), pa.schema([(name, kind)])],
                            promote_options="permissive",
                        )
                        kind = merged.field(name).type
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    self.json_fields.add(name)
                    self.extra.setdefault(name, _STR)
                    continue
                self.extra[name] = kind
        for name, kind in self.extra.items():
            if pa.types.is_null(kind):
                self.extra[name] = _STR

    def batches(self, rows: Iterable[Row], source: str = "") -> Iterator[pa.RecordBatch]:
        """Second pass: the rows as record batches of the full schema."""
        schema = self.arrow_schema()
        index = {name: i for i, name in enumerate(self.labels or ())}
        for batch in _batched(rows, BATCH_ROWS):
            for row in batch:
                for name in self.json_fields:
                    if row.get(name) is not None:
                        row[name] = orjson.dumps(row[name]).decode()
                if self.label_column is not None:
                    label = row.get(self.label_column)
                    if label not in index:
                        raise InputError(
                            f"row {row.get('id')!r}: label {label!r} is not one of "
                            f"{', '.join(self.labels or ())}",
                            source=source,
                        )
                    row[self.label_column] = index[label]
            yield pa.RecordBatch.from_pylist(batch, schema=schema)


def _batched(rows: Iterable[Row], n: int) -> Iterator[list[Row]]:
    it = iter(rows)
    while batch := list(islice(it, n)):
        yield batch


def gra_columns() -> Columns:
    """GRA provenance as typed columns (see :func:`asyncsynth.export.records.gra_record`)."""
    check = pa.struct(
        [("model", _STR), ("passed", pa.bool_())]
        + [(c, pa.bool_()) for c in INSTRUCTION_CRITERIA]
        + [("assessment", _STR)]
    )
    scored = [("model", _STR), ("score", pa.float64()), *_SCORES]
    review = pa.struct([*scored, ("strengths", _STR), ("weaknesses", _STR)])
    adjudication = pa.struct([*scored, ("assessment", _STR), ("keep", pa.bool_())])
    strings = pa.list_(_STR)
    return Columns(
        pa.schema(
            [
                ("id", _STR),
                ("messages", _MESSAGES),
                ("instruction", _STR),
                ("response", _STR),
                ("domain", _STR),
                ("keywords", strings),
                ("summary", _STR),
                ("mode", _STR),
                ("round", pa.int32()),
                ("generator", _STR),
                ("reviewers", strings),
                ("adjudicator", _STR),
                ("summarized_by", _STR),
                ("mu", pa.float64()),
                ("sigma", pa.float64()),
                ("decision", _STR),
                ("review_scores", pa.list_(pa.float64())),
                ("checks", pa.list_(check)),
                ("reviews", pa.list_(review)),
                ("adjudication", adjudication),
                ("generated_keywords", strings),
                ("pool_examples", strings),
                ("seed", _STR),
                ("original_response", _STR),
                ("truncated", pa.bool_()),
                ("shared_roles", pa.bool_()),
                ("requests", pa.int64()),
                ("tokens_in", pa.int64()),
                ("tokens_out", pa.int64()),
                ("cost_usd", pa.float64()),
            ]
        )
    )


def s3_columns(task: str, columns: Mapping[str, str], labels: Sequence[str]) -> Columns:
    """S3 rows: the gold data's text columns and a ``ClassLabel``, or SQuAD's QA columns."""
    base = [("id", _STR)]
    if task == "qa":
        answers = pa.struct([("text", pa.list_(_STR)), ("answer_start", pa.list_(pa.int32()))])
        fields = [*base, ("context", _STR), ("question", _STR), ("answers", answers)]
        return Columns(pa.schema(fields))
    fields = [*base, (columns["text"], _STR)]
    if task == "pair":
        fields.append((columns["text_pair"], _STR))
    fields.append((columns["label"], pa.int64()))
    return Columns(pa.schema(fields), labels=list(labels), label_column=columns["label"])


def run_columns() -> Columns:
    """``run`` rows: the id and the answer typed; the input's own fields from the data."""
    return Columns(
        pa.schema([("id", _STR), ("completion", _STR), ("model", _STR), ("finish_reason", _STR)])
    )


# -- writers ----------------------------------------------------------------------------------


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` holds what ``save_to_disk`` writes (so an export may replace it)."""
    return (folder / "dataset_dict.json").exists() or (
        (folder / "state.json").exists() and (folder / "dataset_info.json").exists()
    )


def _replace(tmp: Path, target: Path) -> None:
    """Move ``tmp`` into place; an earlier export there (file or saved dataset) is replaced."""
    if target.is_dir() and not target.is_symlink():
        if not is_saved_dataset(target):
            raise InputError(
                "is a folder that holds no exported dataset; not replaced", source=str(target)
            )
        shutil.rmtree(target)
    os.replace(tmp, target)


def write_parquet(path: Path, columns: Columns, rows: Iterable[Row], source: str = "") -> int:
    """Write ``rows`` as one Parquet file (``columns`` already typed); the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    try:
        with pq.ParquetWriter(tmp, columns.arrow_schema()) as writer:
            for batch in columns.batches(rows, source):
                writer.write_batch(batch)
                n += batch.num_rows
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def write_shards(
    folder: Path,
    split: str,
    columns: Columns,
    rows: Iterable[Row],
    *,
    max_rows: int = SHARD_ROWS,
    source: str = "",
) -> tuple[list[Path], int]:
    """Parquet files ``{split}-00000-of-0000N.parquet`` of at most ``max_rows`` rows each,
    as the Hub names them; the files and the row count."""
    folder.mkdir(parents=True, exist_ok=True)
    schema = columns.arrow_schema()
    parts: list[Path] = []
    writer: pq.ParquetWriter | None = None
    n = in_part = 0
    try:
        for batch in columns.batches(rows, source):
            while batch.num_rows:
                if writer is None or in_part >= max_rows:
                    if writer is not None:
                        writer.close()
                    parts.append(folder / f".{split}-{len(parts):05d}.tmp")
                    writer = pq.ParquetWriter(parts[-1], schema)
                    in_part = 0
                take = batch.slice(0, max_rows - in_part)
                writer.write_batch(take)
                in_part += take.num_rows
                n += take.num_rows
                batch = batch.slice(take.num_rows)
        if writer is None:  # no rows: one empty file, so the split exists
            parts.append(folder / f".{split}-00000.tmp")
            pq.ParquetWriter(parts[-1], schema).close()
        else:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.close()
    final = []
    for i, part in enumerate(parts):
        target = folder / f"{split}-{i:05d}-of-{len(parts):05d}.parquet"
        os.replace(part, target)
        final.append(target)
    return final, n


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars (the command prints its own summary)."""
    import datasets

    was_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def write_dataset(
    out: Path,
    columns: Columns,
    splits: Mapping[str, Callable[[], Iterable[Row]]],
    source: str = "",
) -> dict[str, int]:
    """Save the splits (``columns`` already typed) with ``save_to_disk``: a ``Dataset`` for
    one ``train`` split, else a ``DatasetDict``. Rows go through an Arrow file that
    ``datasets`` memory-maps, so memory stays bounded. Returns the rows per split."""
    from datasets import Dataset, DatasetDict

    schema = columns.arrow_schema()
    out.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as scratch:
        parts = {}
        for name, make in splits.items():
            arrow = Path(scratch) / f"{name}.arrow"
            n = 0
            with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for batch in columns.batches(make(), source):
                    writer.write_batch(batch)
                    n += batch.num_rows
            counts[name] = n
            parts[name] = Dataset.from_file(str(arrow))
        data = parts["train"] if list(parts) == ["train"] else DatasetDict(parts)
        staged = Path(scratch) / "dataset"
        with _quiet_datasets():
            data.save_to_disk(str(staged))
        del data, parts  # release the memory maps before the scratch folder goes
        _replace(staged, out)
    return counts
