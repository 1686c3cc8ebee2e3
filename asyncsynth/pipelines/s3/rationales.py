"""Step ``rationales``: per label, reasons that lead to it (the paper's first step).

``rationales.samples`` requests per label ask for ``rationales.count`` reasons each; the
answers are read back one reason a line (:func:`parse_rationales`). A label left without
a usable reason is asked again with new samples, :data:`RATIONALE_REASKS` times at most,
before the step stops. Only classification tasks with ``k > 0`` have this step.
"""

from __future__ import annotations

import re

from ...engine import Result
from .cleaning import is_refusal
from .context import RunContext, S3Error, request_stats
from .prompts import label_values, render

__all__ = ["RATIONALE_REASKS", "parse_rationales", "rationales_step"]

RATIONALE_REASKS = 2
"""Times a label whose answers held no usable reason is asked again (new samples) before failing."""

_BULLET = re.compile(r"^\s*(?:[-*•·–]+|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)]|#+)\s+")
_REASON_PREFIX = re.compile(r"^(?:reason|rationale)\s*\d*\s*[:.-]\s*", re.I)
_PREAMBLE = re.compile(r"^(?:sure|certainly|of course|okay|ok|here(?:'s| is| are)|below)\b", re.I)
_MAX_RATIONALE_CHARS = 200
# A list run into one line ("...this label: 1. Great acting. 2. A gripping plot."):
# each number after a colon or a sentence's end starts a line of its own.
_INLINE_ITEM = re.compile(r"(?<=[:.;!?])\s+(?=\(?\d{1,2}[.)]\s)")


def _as_phrase(reason: str) -> str:
    if len(reason) > 1 and reason[0].isupper() and reason[1].islower():
        reason = reason[0].lower() + reason[1:]
    return reason


def parse_rationales(text: str) -> list[str]:
    """The reasons listed in a completion, one a line: bullets, numbers and headers removed."""
    reasons: list[str] = []
    seen: set[str] = set()
    for raw in _INLINE_ITEM.sub("\n", text).splitlines():
        line = raw.strip().replace("**", "")
        line = _BULLET.sub("", line, count=1)
        line = _REASON_PREFIX.sub("", line, count=1).strip().strip("\"'“”").strip()
        line = line.rstrip(" .;,")
        if not line or raw.strip().endswith(":") or len(line) > _MAX_RATIONALE_CHARS:
            continue
        if _PREAMBLE.match(line) or is_refusal(line):
            continue
        reason = _as_phrase(line)
        key = reason.casefold()
        if key not in seen:
            seen.add(key)
            reasons.append(reason)
    return reasons


async def rationales_step(run: RunContext) -> dict[str, list[str]]:
    """The reasons per label (loaded when a run here finished the step)."""
    step, path = "rationales", run.out / "rationales.json"
    settings = run.settings
    if settings.k == 0 or settings.task == "qa":
        return {}
    if run.done(step):
        run.emit("skip", step)
        return {k: list(v) for k, v in run.folder.read_json("rationales.json").items()}
    prompt = run.prompts.rationales
    assert prompt is not None
    messages = {
        label.name: render(
            prompt, {**label_values(settings, label), "count": settings.rationales.count}
        )
        for label in settings.labels
    }
    per_ask = settings.rationales.samples
    found: dict[str, list[str]] = {label.name: [] for label in settings.labels}
    results: list[Result] = []
    empty = list(found)
    for ask in range(1 + RATIONALE_REASKS):  # a label left with no usable reason: ask again
        requests = []
        for name in empty:
            for s in range(ask * per_ask, (ask + 1) * per_ask):
                req = run.request(messages[name], step, name, s, sample=s)
                req.meta["label"] = name
                requests.append(req)
        run.emit("start" if ask == 0 else "note", step, requests=len(requests), ask=ask + 1)
        for result in await run.ask(step, requests):
            results.append(result)
            if result.ok:
                label = result.request.meta["label"]
                seen = {r.casefold() for r in found[label]}
                found[label] += [
                    r for r in parse_rationales(result.text()) if r.casefold() not in seen
                ]
        empty = [name for name, reasons in found.items() if not reasons]
        if not empty:
            break
    run.folder.write_json("rationales.json", found)
    if empty:
        raise S3Error(
            f"{step}: the LLM gave no usable reasons for {', '.join(empty)} in "
            f"{1 + RATIONALE_REASKS} tries (see {path}); check the rationales prompt, "
            "or set k = 0 to write the seed without them"
        )
    run.finish(
        step,
        {"per_label": {k: len(v) for k, v in found.items()}, "requests": request_stats(results)},
    )
    return found
