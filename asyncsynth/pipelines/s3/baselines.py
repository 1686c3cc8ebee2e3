"""Reproducing the paper's Table 2: several seeds, mean and spread, the paper's rows beside.

:func:`run_seeds` runs one setup (S3, or a baseline: ``baseline = "gold"``, ``"zerogen"``,
``"no_extrapolation"``) once per seed, each in ``OUT/seed-N`` (each resumable on its own),
and writes ``OUT/seeds.json``: per seed the final student's test metrics (dev when there
is no test set), their mean and sample standard deviation, and the row of the paper's
Table 2 it stands beside. :func:`format_table` prints the paper's rows of the task with
ours filled in where measured; ``asyncsynth s3-table DIR ...`` joins several such folders.

The paper's task is read from the prompt set (``imdb``, ``qnli``, ``rte``, ``adqa``: the
shipped recipes use them); other setups are reported without a paper figure.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...config import Config
from ...io import read_json, write_json
from ..events import OnEvent
from .pipeline import S3Result, run_s3
from .settings import S3Settings, load_s3_settings

__all__ = ["PAPER_TABLE", "format_table", "paper_row", "run_seeds", "summarize"]

# Table 2 of the paper (arXiv 2310.13671): accuracy in %, AdQA exact match / F1 in %.
PAPER_TABLE: dict[str, dict[str, tuple[float, ...]]] = {
    "gold": {"imdb": (87.93,), "qnli": (88.05,), "rte": (58.12,), "adqa": (18.6, 29.85)},
    "zerogen": {"imdb": (84.28,), "qnli": (71.19,), "rte": (59.93,), "adqa": (6.33, 9.96)},
    "goldgen": {"imdb": (87.93,), "qnli": (78.31,), "rte": (64.25,), "adqa": (11.63, 23.33)},
    "s3": {"imdb": (89.00,), "qnli": (79.92,), "rte": (73.29,), "adqa": (12.50, 24.38)},
    "no_extrapolation": {
        "imdb": (86.86,),
        "qnli": (73.70,),
        "rte": (65.71,),
        "adqa": (8.70, 20.03),
    },
}
ROW_NAMES = {
    "gold": "Gold data",
    "zerogen": "ZeroGen",
    "goldgen": "GoldGen",
    "s3": "S3",
    "no_extrapolation": "S3 w/o error extrapolation",
}
PAPER_TASKS = ("imdb", "qnli", "rte", "adqa")
_HEADLINE = {"single": ("accuracy",), "pair": ("accuracy",), "qa": ("exact_match", "f1")}


def paper_row(settings: S3Settings) -> tuple[str, str | None]:
    """(the paper's row, its task or None) for a setup."""
    row = "s3" if settings.baseline == "none" else settings.baseline
    task = settings.prompt_set if settings.prompt_set in PAPER_TASKS else None
    return row, task


def _metrics(report: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    final = report["final"]
    part = "test" if final.get("test") else "dev"
    values = final.get(part) or {}
    return part, {k: float(v) for k, v in values.items() if k != "n"}


def summarize(reports: Mapping[int, Mapping[str, Any]], settings: S3Settings) -> dict[str, Any]:
    """Per metric, every seed's value, the mean and the sample standard deviation."""
    row, task = paper_row(settings)
    parts = {seed: _metrics(report) for seed, report in reports.items()}
    evaluated = {part for part, _ in parts.values()}
    names = sorted({name for _, values in parts.values() for name in values})
    metrics: dict[str, Any] = {}
    for name in names:
        values = [parts[seed][1][name] for seed in sorted(parts) if name in parts[seed][1]]
        metrics[name] = {
            "values": values,
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        }
    return {
        "task": settings.task,
        "paper_task": task,
        "row": row,
        "row_name": ROW_NAMES[row],
        "headline": list(_HEADLINE[settings.task]),
        "evaluated_on": sorted(evaluated),
        "seeds": sorted(reports),
        "metrics": metrics,
        "paper": list(PAPER_TABLE[row][task]) if task else None,
        "train_size": {str(seed): r["final"]["train_size"] for seed, r in reports.items()},
    }


async def run_seeds(
    config: Config,
    out_dir: str | os.PathLike[str],
    seeds: Sequence[int],
    *,
    settings: S3Settings | None = None,
    on_event: OnEvent | None = None,
) -> dict[str, Any]:
    """One run per seed in ``OUT/seed-N``; ``OUT/seeds.json`` with mean and std per metric."""
    settings = settings or load_s3_settings(config)
    out = Path(out_dir)
    reports: dict[int, Mapping[str, Any]] = {}
    for seed in seeds:
        student = replace(settings.student, seed=seed)
        result: S3Result = await run_s3(
            config,
            out / f"seed-{seed}",
            settings=replace(settings, seed=seed, student=student),
            on_event=on_event,
        )
        reports[seed] = result.report
    summary = summarize(reports, settings)
    write_json(out / "seeds.json", summary)
    return summary


def _cell(summary: Mapping[str, Any] | None, names: Sequence[str]) -> str:
    if summary is None:
        return "-"
    parts = []
    for name in names:
        m = summary["metrics"].get(name)
        if m is None:
            return "-"
        parts.append(f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}")
    n = len(summary["seeds"])
    return " / ".join(parts) + f" (n={n})"


def _paper_cell(row: str, task: str) -> str:
    return " / ".join(f"{v:.2f}" for v in PAPER_TABLE[row][task])


def format_table(summaries: Iterable[Mapping[str, Any]]) -> str:
    """The paper's Table 2 rows for the tasks measured, ours beside them (mean ± std)."""
    summaries = list(summaries)
    by_cell = {(s["row"], s["paper_task"]): s for s in summaries if s["paper_task"]}
    tasks = [t for t in PAPER_TASKS if any(task == t for _, task in by_cell)]
    lines = []
    for task in tasks:
        names = _HEADLINE["qa" if task == "adqa" else "single"]
        unit = "EM / F1" if task == "adqa" else "accuracy"
        lines.append(f"{task.upper()} ({unit}, %)     paper       ours")
        for row, title in ROW_NAMES.items():
            ours = _cell(by_cell.get((row, task)), names)
            lines.append(f"  {title:<28} {_paper_cell(row, task):>13}   {ours}")
    others = [s for s in summaries if not s["paper_task"]]
    for s in others:
        names = s["headline"]
        lines.append(f"{s['row_name']} ({s['task']}): {_cell(s, names)}")
    return "\n".join(lines)


def read_summaries(folders: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """The ``seeds.json`` of each folder (as :func:`run_seeds` wrote it)."""
    out = []
    for folder in folders:
        path = Path(folder) / "seeds.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (run asyncsynth s3 ... --seeds first)")
        out.append(read_json(path))
    return out
