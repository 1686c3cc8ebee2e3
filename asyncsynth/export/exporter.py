"""``asyncsynth export``: a run's rows to a training set on disk.

Every format streams: rows are read one at a time and written as they come (Arrow
formats in batches), so a run of millions of rows exports in bounded memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..config import Config
from ..engine import InputError
from ..io import write_atomic, write_json
from .records import (
    CHAT_FORMATS,
    GraFilter,
    chat,
    gra_record,
    llamafactory_entry,
    run_messages,
    run_record,
    s3_record,
)
from .runs import RunFiles, RunKind, iter_rows, json_if_there, open_run

if TYPE_CHECKING:
    from .arrow import Columns

__all__ = [
    "FORMATS",
    "ExportResult",
    "Source",
    "describe_export",
    "export_run",
    "open_source",
    "typed_columns",
]

FORMATS: dict[RunKind, tuple[str, ...]] = {
    "gra": ("messages", "sharegpt", "alpaca", "parquet", "dataset"),
    "s3": ("dataset", "parquet", "jsonl"),
    "run": ("jsonl", "messages", "parquet", "dataset"),
}
"""The formats each kind of run exports to (the first is the default)."""

EXPORT_EXTRA = "pip install 'asyncsynth[export]'"

Row = dict[str, Any]


@dataclass
class ExportResult:
    """What an export wrote: its files (or folder) and the rows of each split."""

    run: RunFiles
    format: str
    paths: list[Path]
    rows: dict[str, int]
    left_out: int = 0
    """Rows the filters left out (GRA)."""
    notes: list[str] = field(default_factory=list)


@dataclass
class Source:
    """A run's rows as an export reads them (every callable starts a fresh pass)."""

    run: RunFiles
    splits: dict[str, Callable[[], Iterator[Row]]]
    columns: Callable[[], Columns]
    conversations: Callable[[], Iterator[list[dict[str, str]]]] | None = None
    filter: GraFilter | None = None
    left_out: Callable[[], int] = lambda: 0
    notes: list[str] = field(default_factory=list)
    task: str | None = None
    labels: list[str] | None = None
    system: str | None = None


def _require_extra() -> None:
    import importlib.util

    missing = [m for m in ("pyarrow", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"this format needs {' and '.join(missing)}: {EXPORT_EXTRA}")


# -- sources ----------------------------------------------------------------------------------


def _gra_source(run: RunFiles, keep: GraFilter, system: str | None) -> Source:
    path = run.path("accepted.jsonl")
    if not path.exists():
        raise InputError("no accepted.jsonl yet: the run has finished no round", source=str(path))
    dropped = [0]

    def accepted() -> Iterator[Row]:
        dropped[0] = 0
        for _, row in iter_rows(path):
            if keep(row):
                yield row
            else:
                dropped[0] += 1

    def records() -> Iterator[Row]:
        return (gra_record(row, system) for row in accepted())

    def conversations() -> Iterator[list[dict[str, str]]]:
        for row in accepted():
            yield chat(str(row.get("instruction") or ""), str(row.get("response") or ""), system)

    def columns() -> Columns:
        from .arrow import gra_columns

        return gra_columns()

    return Source(
        run,
        {"train": records},
        columns,
        conversations,
        filter=keep,
        left_out=lambda: dropped[0],
        system=system,
    )


def _s3_gold(run: RunFiles, config: Config | None) -> tuple[list[Row] | None, list[Row] | None]:
    """The run's dev and test rows, read again from its config's sources (and checked)."""
    if config is None:
        return None, None
    from ..pipelines.s3 import load_gold, load_s3_settings

    gold = load_gold(load_s3_settings(config))
    recorded = run.fingerprint.get("data") or {}
    changed = [k for k in ("dev", "test") if k in recorded and recorded[k] != gold.digest().get(k)]
    if changed:
        raise InputError(
            f"the {' and '.join(changed)} data of {config.source} differ from those the run "
            "used; export needs the same ones",
            source=str(run.root),
        )
    return gold.dev, gold.test


def _s3_source(run: RunFiles, config: Config | None) -> Source:
    settings = run.s3_settings
    if not settings:
        raise InputError("no state.json: not a finished S3 run", source=str(run.root))
    train = run.path("final/train.jsonl")
    if not train.exists():
        raise InputError(
            "no final/train.jsonl yet: the run writes it in its last step", source=str(train)
        )
    task = str(settings.get("task") or "single")
    labels = list(settings.get("labels") or {})
    names = {
        "text": settings.get("text_field") or "text",
        "text_pair": settings.get("text_pair_field") or "text_pair",
        "label": settings.get("label_field") or "label",
    }
    dev, test = _s3_gold(run, config)
    notes = []
    if config is None:
        notes.append(
            "only the train split: give the run's config (--config) to add its dev set "
            "(validation) and test set"
        )

    def rows_of(rows: list[Row]) -> Callable[[], Iterator[Row]]:
        return lambda: (s3_record(r, task, names) for r in rows)

    splits: dict[str, Callable[[], Iterator[Row]]] = {
        "train": lambda: (s3_record(r, task, names) for _, r in iter_rows(train))
    }
    if dev:
        splits["validation"] = rows_of(dev)
    if test:
        splits["test"] = rows_of(test)

    def columns() -> Columns:
        from .arrow import s3_columns

        return s3_columns(task, names, labels)

    return Source(run, splits, columns, notes=notes, task=task, labels=labels)


def run_source(run: RunFiles) -> Source:
    """A ``run`` output: its rows, and their conversations."""
    assert run.output is not None
    output = run.output
    if not output.exists():
        raise InputError("no such output file", source=str(output))

    def conversations() -> Iterator[list[dict[str, str]]]:
        for number, (_, row) in enumerate(iter_rows(output), 1):
            yield run_messages(row, str(output), number)["messages"]

    def columns() -> Columns:
        from .arrow import run_columns

        return run_columns()

    return Source(
        run,
        {"train": lambda: (run_record(r) for _, r in iter_rows(output))},
        columns,
        conversations,
    )


def source_of(
    run: RunFiles,
    *,
    keep: GraFilter | None = None,
    system: str | None = None,
    config: Config | None = None,
) -> Source:
    if run.kind == "gra":
        return _gra_source(run, keep or GraFilter(), system)
    if keep is not None and keep != GraFilter():
        raise InputError("--rounds, --min-mu, --domains and --decision filter GRA runs only")
    if run.kind == "s3":
        return _s3_source(run, config)
    return run_source(run)


# -- writing ----------------------------------------------------------------------------------


def _write_lines(path: Path, rows: Iterator[Row]) -> int:
    """``rows`` as JSONL in ``path`` (atomically, streamed); how many were written."""
    n = 0

    def chunks() -> Iterator[bytes]:
        nonlocal n
        for row in rows:
            n += 1
            yield orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)

    write_atomic(path, chunks())
    return n


def _dataset_info(path: Path, fmt: str, *, system: bool) -> Path:
    """Add (or replace) this file's entry in LLaMA-Factory's ``dataset_info.json`` beside it."""
    info_path = path.with_name("dataset_info.json")
    info = json_if_there(info_path) if info_path.exists() else {}
    if not isinstance(info, dict):
        raise InputError("exists and is not a JSON object; not changed", source=str(info_path))
    name = path.name.split(".")[0]
    info[name] = llamafactory_entry(fmt, path.name, system=system)
    return write_json(info_path, info)


def typed_columns(source: Source) -> Columns:
    """The source's columns, with the fields it does not know typed from every split."""
    columns = source.columns()
    for make in source.splits.values():
        columns.infer(make())
    return columns


def export_source(source: Source, fmt: str, out: str | os.PathLike[str]) -> ExportResult:
    """Write ``source`` in ``fmt`` to ``out`` (a file, or a folder for several splits)."""
    run = source.run
    fmt = fmt or FORMATS[run.kind][0]
    if fmt not in FORMATS[run.kind]:
        raise InputError(
            f"a {run.kind} run exports as {', '.join(FORMATS[run.kind])}; not {fmt!r}",
            source=str(run.root),
        )
    target = Path(out).expanduser()
    where = str(run.output or run.root)
    paths: list[Path]
    if fmt in CHAT_FORMATS:
        assert source.conversations is not None
        convert = CHAT_FORMATS[fmt]
        conversations = source.conversations
        rows = {"train": _write_lines(target, (convert(m) for m in conversations()))}
        paths = [target]
        if run.kind == "gra":
            paths.append(_dataset_info(target, fmt, system=bool(source.system)))
    elif fmt == "jsonl":
        if len(source.splits) == 1 and run.kind == "run":
            rows = {"train": _write_lines(target, source.splits["train"]())}
            paths = [target]
        else:
            rows = {n: _write_lines(target / f"{n}.jsonl", s()) for n, s in source.splits.items()}
            paths = [target / f"{n}.jsonl" for n in rows]
    else:
        _require_extra()
        from .arrow import is_saved_dataset, write_dataset, write_parquet

        if fmt == "dataset" and target.exists() and not is_saved_dataset(target):
            raise InputError(
                "exists and holds no exported dataset; choose another --out", source=str(target)
            )
        columns = typed_columns(source)
        if fmt == "dataset":
            rows = write_dataset(target, columns, source.splits, where)
            paths = [target]
        elif run.kind == "s3":
            paths = [target / f"{name}.parquet" for name in source.splits]
            rows = {
                name: write_parquet(path, columns, make(), where)
                for path, (name, make) in zip(paths, source.splits.items(), strict=True)
            }
        else:
            rows = {"train": write_parquet(target, columns, source.splits["train"](), where)}
            paths = [target]
    return ExportResult(run, fmt, paths, rows, source.left_out(), list(source.notes))


def open_source(
    run: str | os.PathLike[str] | RunFiles | Source,
    *,
    rounds: str | None = None,
    min_mu: float | None = None,
    domains: list[str] | None = None,
    decisions: list[str] | None = None,
    system: str | None = None,
    config: Config | None = None,
) -> Source:
    """The rows an export of ``run`` reads (see :func:`export_run` for the options)."""
    if isinstance(run, Source):
        return run
    folder = run if isinstance(run, RunFiles) else open_run(run)
    keep = GraFilter.of(rounds=rounds, min_mu=min_mu, domains=domains, decisions=decisions)
    return source_of(folder, keep=keep, system=system, config=config)


def export_run(
    run: str | os.PathLike[str] | RunFiles | Source,
    format: str | None = None,
    out: str | os.PathLike[str] | None = None,
    **options: Any,
) -> ExportResult:
    """Export the run at ``run`` (a GRA or S3 folder, or a ``run`` output) to ``out``.

    ``format`` is one of :data:`FORMATS` for the run's kind (default: the first).
    Options: GRA runs export their accepted samples, filtered by ``rounds`` (``"1-3"``:
    the cumulative set of those rounds), ``min_mu``, ``domains`` and ``decisions``;
    ``system`` adds a system message to every conversation. An S3 run's ``config`` (the
    one it ran with) adds its dev set (``validation``) and test set to the train split.
    """
    source = open_source(run, **options)
    if out is None:
        raise InputError("give where to write (--out PATH)", source=str(source.run.root))
    return export_source(source, format or FORMATS[source.run.kind][0], out)


def describe_export(result: ExportResult) -> str:
    """One line for the console."""
    counts = ", ".join(f"{n:,} {split}" for split, n in result.rows.items())
    left = f" ({result.left_out:,} left out by the filters)" if result.left_out else ""
    where = ", ".join(str(p) for p in result.paths)
    return f"exported {counts} rows{left} as {result.format}: {where}"
