"""S3's prompts: the prompt sets, what each prompt may say, and reading rationales back.

A prompt set is a folder ``prompts/s3/<set>/`` (or the same path under a user's
``prompts_dir``) with up to four files:

- ``rationales.md``: ask for reasons that lead to a label (used when ``k > 0``);
- ``seed_rationales.md``: write an example of a label from ``k`` of its reasons;
- ``seed.md``: write an example of a label without reasons (``k = 0``);
- ``extrapolate.md``: write a new example like one the student got wrong, with its gold label.

Shipped sets: ``generic`` (single texts, driven by label names and descriptions),
``generic-pair`` (text pairs), and the paper's ``imdb``, ``rte`` and ``qnli`` prompts.

Placeholders a prompt may use (a prompt uses any subset; an unknown one is refused when
the run starts, before any request):

- every prompt: ``label`` (name), ``phrase`` (the label as the paper's prompts say it),
  ``description``, ``labels`` (all labels, one "- name: description" a line),
  ``text_kind``, ``context_kind``;
- ``rationales``: ``count``;
- ``seed_rationales``: ``rationales`` (the drawn reasons, joined as a phrase);
- pair tasks, seed and extrapolation: ``context``;
- ``extrapolate``: ``example`` (the misclassified text, or second text of a pair).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ...engine import ConfigError
from ...prompts import Prompt, load_prompt
from .cleaning import is_refusal
from .settings import LabelSpec, S3Settings

__all__ = ["PromptSet", "join_phrases", "load_prompt_set", "parse_rationales"]

_COMMON = frozenset({"label", "phrase", "description", "labels", "text_kind", "context_kind"})
_LABEL_WORDS = frozenset({"label", "phrase", "description"})
_BULLET = re.compile(r"^\s*(?:[-*•·–]+|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)]|#+)\s+")
_REASON_PREFIX = re.compile(r"^(?:reason|rationale)\s*\d*\s*[:.-]\s*", re.I)
_PREAMBLE = re.compile(r"^(?:sure|certainly|of course|okay|ok|here(?:'s| is| are)|below)\b", re.I)
_MAX_RATIONALE_CHARS = 200
# A list run into one line ("...this label: 1. Great acting. 2. A gripping plot."):
# each number after a colon or a sentence's end starts a line of its own.
_INLINE_ITEM = re.compile(r"(?<=[:.;!?])\s+(?=\(?\d{1,2}[.)]\s)")


@dataclass(frozen=True)
class PromptSet:
    """The loaded prompts of one run."""

    name: str
    seed: Prompt
    extrapolate: Prompt
    rationales: Prompt | None = None

    def texts(self) -> dict[str, str]:
        """Each prompt's file and template text (part of a run's fingerprint)."""
        out = {}
        for prompt in (self.rationales, self.seed, self.extrapolate):
            if prompt is not None:
                out[prompt.name] = "\n".join(f"## {role}\n{text}" for role, text in prompt.parts)
        return out


def _check(prompt: Prompt, allowed: frozenset[str], required: Iterable[str]) -> Prompt:
    unknown = prompt.fields - allowed
    if unknown:
        raise ConfigError(
            f"{prompt.source}: unknown placeholder {{{{{sorted(unknown)[0]}}}}} "
            f"(this prompt may use: {', '.join(sorted(allowed))})"
        )
    for name in required:
        if name not in prompt.fields:
            raise ConfigError(f"{prompt.source}: must use the placeholder {{{{{name}}}}}")
    if not prompt.fields & _LABEL_WORDS:
        raise ConfigError(
            f"{prompt.source}: never names the label: use {{{{label}}}}, {{{{phrase}}}} "
            "or {{description}}"
        )
    return prompt


def load_prompt_set(settings: S3Settings) -> PromptSet:
    """Load and check the prompts ``settings`` asks for (``prompt_set``, ``prompts_dir``, ``k``)."""
    folder = settings.path(settings.prompts_dir) if settings.prompts_dir else None
    base = f"s3/{settings.prompt_set}"
    pair = settings.task == "pair"
    context = {"context"} if pair else set()
    rationales = None
    if settings.k > 0:
        rationales = _check(
            load_prompt(f"{base}/rationales", folder), _COMMON | {"count"}, ("count",)
        )
        seed = _check(
            load_prompt(f"{base}/seed_rationales", folder),
            _COMMON | {"rationales"} | context,
            ("rationales", *context),
        )
    else:
        seed = _check(load_prompt(f"{base}/seed", folder), _COMMON | context, tuple(context))
    extrapolate = _check(
        load_prompt(f"{base}/extrapolate", folder),
        _COMMON | {"example"} | context,
        ("example", *context),
    )
    return PromptSet(settings.prompt_set, seed, extrapolate, rationales)


def label_values(settings: S3Settings, label: LabelSpec) -> dict[str, Any]:
    """The placeholders every prompt may use, for ``label``."""
    listing = "\n".join(f"- {lab.name}: {lab.description}" for lab in settings.labels)
    return {
        "label": label.name,
        "phrase": label.phrase,
        "description": label.description,
        "labels": listing,
        "text_kind": settings.text_kind,
        "context_kind": settings.context_kind,
    }


def render(prompt: Prompt, values: Mapping[str, Any]) -> list[dict[str, str]]:
    """``prompt`` filled with the subset of ``values`` it uses."""
    return prompt.render(**{k: v for k, v in values.items() if k in prompt.fields})


def join_phrases(items: Iterable[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


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
