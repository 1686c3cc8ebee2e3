"""S3's report: ``report.json``, ``cleaning.json`` and ``report.png``, from the finished steps."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...engine.cost import usd
from ...io import write_json
from .cleaning import CleaningCounts

if TYPE_CHECKING:
    from ..events import PipelineEvent
    from .gold import GoldData
    from .settings import S3Settings

__all__ = ["describe", "format_report", "plot_report", "write_report"]

log = logging.getLogger("asyncsynth")

SELECTION_NOTE = (
    "Every student's checkpoint was chosen on the dev set, which was never used for anything "
    "else; errors were mined on the mining set only; the test set was evaluated once, on the "
    "final student, after it had been chosen."
)
NO_DEV_NOTE = (
    "There was no dev set, so every student kept its last weights; errors were mined on the "
    "mining set only; the test set was evaluated once, on the final student, after training."
)
_REQUEST_KEYS = ("total", "cached", "failed", "tokens_in", "tokens_out")
METRICS = {
    "single": ("accuracy", "macro_f1"),
    "pair": ("accuracy", "macro_f1"),
    "qa": ("f1", "exact_match"),
}
"""Per task, the metrics reported (the first one is the headline)."""


def _rounds(steps: Mapping[str, Any], rounds: int) -> list[dict[str, Any]]:
    out = []
    for r in range(1, rounds + 1):
        trained = steps.get(f"round_{r}/train")
        if trained is None:
            break
        added = steps.get(f"round_{r}/extrapolate") or {}
        out.append(
            {
                "round": r,
                "train_size": trained["train_size"],
                "dev": trained["dev"],
                "mining": trained["mining"],
                "errors": trained["errors"],
                "added": added.get("added"),
                "cleaning": added.get("cleaning"),
            }
        )
    return out


def write_report(
    out: Path, settings: S3Settings, gold: GoldData, state: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``report.json``, ``cleaning.json`` and ``report.png``; return the report."""
    steps = state["steps"]
    rounds = _rounds(steps, settings.rounds)
    final = steps["final"]
    cleaning = {}
    total = CleaningCounts()
    for name, record in steps.items():
        if "cleaning" in record:
            cleaning[name] = record["cleaning"]
            total.add(CleaningCounts.from_dict(record["cleaning"]))
    cleaning_report = {"total": total.to_dict(), "steps": cleaning}
    requests = dict.fromkeys(_REQUEST_KEYS, 0)
    for record in steps.values():
        for key in _REQUEST_KEYS:
            requests[key] += record.get("requests", {}).get(key, 0)
    step_costs = {n: r["requests"].get("cost_usd") for n, r in steps.items() if "requests" in r}
    known = None not in step_costs.values()
    final_metrics_path = out / "final" / "metrics.json"
    test_overlap = None
    if final_metrics_path.exists():
        import orjson

        test_overlap = orjson.loads(final_metrics_path.read_bytes()).get("test_overlap")
    converged = bool(rounds) and rounds[-1]["errors"] == 0 and len(rounds) < settings.rounds
    seed = steps.get("seed") or {}
    report: dict[str, Any] = {
        "method": "S3: rationale seed synthesis, then error extrapolation (arXiv 2310.13671)",
        "task": settings.task,
        "baseline": settings.baseline,
        "metric": METRICS[settings.task][0],
        "labels": settings.label_names,
        "llm": settings.llm,
        "student": settings.student.model,
        "seed_value": settings.seed,
        "data": {
            "mining": len(gold.mining),
            "dev": len(gold.dev),
            "test": len(gold.test) if gold.test is not None else None,
            "contexts": len(gold.contexts) if gold.contexts is not None else None,
            "duplicates": gold.duplicates,
        },
        "selection": SELECTION_NOTE if gold.dev else NO_DEV_NOTE,
        "rationales": (steps.get("rationales") or {}).get("per_label"),
        "seed": {
            "size": seed.get("size", 0),
            "drawn_by_label": seed.get("drawn_by_label"),
            "by_label": seed.get("by_label"),
            "unfilled": seed.get("unfilled", 0),
            "unfilled_by_label": seed.get("unfilled_by_label"),
        },
        "rounds": rounds,
        "stopped_early": converged,
        "final": {
            "train_size": final["train_size"],
            "by_source": final["by_source"],
            "dev": final["dev"],
            "test": final["test"],
            "test_overlap": test_overlap,
        },
        "cleaning": total.to_dict(),
        "requests": requests,
        "cost": {
            "total_usd": round(sum(c or 0.0 for c in step_costs.values()), 6) if known else None,
            "steps": step_costs,
        },
        "files": {
            "dataset": "final/train.jsonl",
            "student": "final/student" if settings.save_student else None,
            "cleaning": "cleaning.json",
            "plot": "report.png",
        },
    }
    write_json(out / "cleaning.json", cleaning_report)
    if not plot_report(report, out / "report.png"):
        report["files"]["plot"] = None
    write_json(out / "report.json", report)
    return report


def plot_report(report: Mapping[str, Any], path: Path) -> bool:
    """Accuracy and training-set size per round as a PNG; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install 'asyncsynth[student]')", path)
        return False
    rounds = report["rounds"]
    final = report["final"]
    metric = report.get("metric", "accuracy")
    names = [f"round {r['round']}" for r in rounds] + ["final"]
    sizes = [r["train_size"] for r in rounds] + [final["train_size"]]
    x = list(range(len(names)))

    def acc(part: Mapping[str, Any] | None) -> float | None:
        return part[metric] if part else None

    dev = [acc(r["dev"]) for r in rounds] + [acc(final["dev"])]
    mining = [acc(r["mining"]) for r in rounds] + [None]

    fig = Figure(figsize=(7, 4), dpi=120)
    ax_size = fig.add_subplot()
    ax_size.bar(x, sizes, color="#d9e2ec", label="training examples")
    ax_size.set_ylabel("training examples")
    ax_size.set_xticks(x, names)
    ax_acc = ax_size.twinx()
    lines = ((dev, "o-", f"dev {metric}"), (mining, "s--", f"mining {metric}"))
    for values, style, label in lines:
        points = [(i, v) for i, v in enumerate(values) if v is not None]
        if points:
            ax_acc.plot(*zip(*points, strict=True), style, label=label)
    if final["test"]:
        ax_acc.plot([x[-1]], [final["test"][metric]], "*", ms=14, label=f"test {metric}")
    ax_acc.set_ylabel(metric.replace("_", " "))
    ax_acc.set_ylim(0, 1.02)
    handles = ax_size.get_legend_handles_labels()
    more = ax_acc.get_legend_handles_labels()
    ax_acc.legend(handles[0] + more[0], handles[1] + more[1], loc="lower right", fontsize=8)
    what = ", ".join(report["labels"]) or "extractive QA"
    ax_size.set_title(f"S3: {what} ({report['student']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return True


# -- console lines ---------------------------------------------------------------------------


def _headline(part: Mapping[str, Any]) -> str:
    return "f1" if "f1" in part and "accuracy" not in part else "accuracy"


def _pct(part: Mapping[str, Any] | None, metric: str | None = None) -> str:
    if not part:
        return "-"
    return f"{100 * part[metric or _headline(part)]:.1f}%"


def _named(part: Mapping[str, Any] | None) -> str:
    """``accuracy 81.2%`` or ``EM 40.0% F1 52.1%``."""
    if not part:
        return "-"
    if "exact_match" in part:
        return f"EM {_pct(part, 'exact_match')} F1 {_pct(part, 'f1')}"
    return f"accuracy {_pct(part, 'accuracy')}"


def describe(event: PipelineEvent) -> tuple[str, bool] | None:
    """A console line for ``event`` and whether it is transient (a progress redraw)."""
    kind, step, data = event.kind, event.step, event.data
    if kind == "request":
        return f"  {step}: {data['done']}/{data['total']} answers", True
    if kind == "train":
        if data.get("event") == "eval":
            best = " (best so far)" if data.get("best") else ""
            metric = "f1" if "dev_f1" in data else "accuracy"
            return (
                f"  {step}: epoch {data['epoch']} step {data['step']}/{data['steps']} "
                f"loss {data['loss']:.3f} dev {metric} {100 * data[f'dev_{metric}']:.1f}%{best}",
                False,
            )
        return (
            f"  {step}: epoch {data['epoch']} step {data['step']}/{data['steps']} "
            f"loss {data['loss']:.3f}",
            True,
        )
    if kind == "skip":
        return f"{step}: finished before, loaded", False
    if kind == "start":
        if "train_size" in data:
            return f"{step}: training a fresh student on {data['train_size']:,} examples", False
        errors = f"{data['errors']:,} errors, " if "errors" in data else ""
        return f"{step}: {errors}{data.get('requests', 0):,} requests", False
    if kind == "note":
        what = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in data.items())
        return f"{step}: {what}", False
    if kind == "done":
        return f"{step}: done ({_done_summary(data)})", False
    return None


def _done_summary(data: Mapping[str, Any]) -> str:
    parts = []
    if "per_label" in data:
        parts.append("reasons " + ", ".join(f"{k} {v}" for k, v in data["per_label"].items()))
    if "size" in data:
        parts.append(f"{data['size']:,} examples")
    if data.get("by_label") and "size" in data:
        parts.append("by label " + ", ".join(f"{k} {v}" for k, v in data["by_label"].items()))
    if "train_size" in data:
        parts.append(f"trained on {data['train_size']:,}, dev {_named(data.get('dev'))}")
    if "errors" in data and "added" not in data:
        mining = _named(data.get("mining"))
        parts.append(f"{data['errors']:,} errors on the mining set ({mining})")
    if "added" in data:
        parts.append(f"{data['added']:,} added for {data['errors']:,} errors")
    if data.get("test"):
        parts.append(f"test {_named(data['test'])}")
    if "cleaning" in data:
        dropped = data["cleaning"]["dropped"]
        if dropped:
            parts.append("dropped " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    return "; ".join(parts)


def format_report(report: Mapping[str, Any]) -> str:
    """The rounds and the final student as a short text table."""
    metric = report.get("metric", "accuracy")
    short = {"accuracy": "acc", "f1": "F1"}.get(metric, metric)
    rows = [("", "train size", f"dev {short}", f"mining {short}", "errors", "added")]
    for r in report["rounds"]:
        rows.append(
            (
                f"round {r['round']}",
                f"{r['train_size']:,}",
                _pct(r["dev"], metric),
                _pct(r["mining"], metric),
                f"{r['errors']:,}",
                "-" if r["added"] is None else f"{r['added']:,}",
            )
        )
    final = report["final"]
    rows.append(("final", f"{final['train_size']:,}", _pct(final["dev"], metric), "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    if final["test"]:
        lines.append(f"test {_named(final['test'])} of the final student (n={final['test']['n']})")
    cleaning = report["cleaning"]
    lines.append(
        f"cleaning kept {cleaning['kept']:,} of {cleaning['received']:,} texts"
        + (
            f" (dropped: {', '.join(f'{k} {v}' for k, v in cleaning['dropped'].items())})"
            if cleaning["dropped"]
            else ""
        )
    )
    if (cost := report.get("cost")) and cost["total_usd"] is not None:
        steps = ", ".join(f"{step} {usd(c)}" for step, c in cost["steps"].items())
        lines.append(f"cost {usd(cost['total_usd'])} ({steps})")
    return "\n".join(lines)
