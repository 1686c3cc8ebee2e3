"""S3's prompts: the prompt sets, what each prompt may say, and filling them in.

A prompt set is a folder ``prompts/s3/<set>/`` (or the same path under a user's
``prompts_dir``). Classification tasks (``single``, ``pair``) use up to four files:

- ``rationales.md``: ask for reasons that lead to a label (used when ``k > 0``);
- ``seed_rationales.md``: write an example of a label from ``k`` of its reasons;
- ``seed.md``: write an example of a label without reasons (``k = 0``);
- ``extrapolate.md``: write a new example like one the student got wrong, with its gold label.

Extractive QA (``qa``) uses:

- ``seed.md``: given a context and an answer span of it, write a question it answers;
- ``seed_span.md``: given a context only, pick an answer span and write its question
  (used only when the context pool has contexts without answers);
- ``extrapolate.md``: given the context, the answer and a question the student answered
  wrongly, write a new question with the same answer.

Shipped sets: ``generic`` (single texts, driven by label names and descriptions),
``generic-pair`` (text pairs), ``generic-qa``, and the paper's ``imdb``, ``rte``, ``qnli``
and ``adqa`` prompts.

Placeholders a prompt may use (a prompt uses any subset; an unknown one is refused when
the run starts, before any request):

- classification, every prompt: ``label`` (name), ``phrase`` (the label as the paper's
  prompts say it), ``description``, ``labels`` (all labels, one "- name: description" a
  line), ``text_kind``, ``context_kind``; ``rationales``: ``count``; ``seed_rationales``:
  ``rationales`` (the drawn reasons, joined as a phrase); pair tasks, seed and
  extrapolation: ``context``; ``extrapolate``: ``example`` (the misclassified text, or
  second text of a pair);
- QA, every prompt: ``context``, ``text_kind``, ``context_kind``; ``seed`` and
  ``extrapolate``: ``answer``; ``extrapolate``: ``example`` (the question).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ...engine import ConfigError
from ...prompts import Prompt, load_prompt
from .settings import LabelSpec, S3Settings

__all__ = ["PromptSet", "join_phrases", "label_values", "load_prompt_set", "qa_values", "render"]

_COMMON = frozenset({"label", "phrase", "description", "labels", "text_kind", "context_kind"})
_QA_COMMON = frozenset({"context", "text_kind", "context_kind"})
_LABEL_WORDS = frozenset({"label", "phrase", "description"})


@dataclass(frozen=True)
class PromptSet:
    """The loaded prompts of one run."""

    name: str
    seed: Prompt
    extrapolate: Prompt
    rationales: Prompt | None = None
    seed_span: Prompt | None = None
    """QA: the LLM picks the answer span too (contexts without answers)."""

    def texts(self) -> dict[str, str]:
        """Each prompt's file and template text (part of a run's fingerprint)."""
        out = {}
        for prompt in (self.rationales, self.seed, self.seed_span, self.extrapolate):
            if prompt is not None:
                out[prompt.name] = "\n".join(f"## {role}\n{text}" for role, text in prompt.parts)
        return out


def _check(
    prompt: Prompt, allowed: frozenset[str], required: Iterable[str], *, labelled: bool = True
) -> Prompt:
    unknown = prompt.fields - allowed
    if unknown:
        raise ConfigError(
            f"{prompt.source}: unknown placeholder {{{{{sorted(unknown)[0]}}}}} "
            f"(this prompt may use: {', '.join(sorted(allowed))})"
        )
    for name in required:
        if name not in prompt.fields:
            raise ConfigError(f"{prompt.source}: must use the placeholder {{{{{name}}}}}")
    if labelled and not prompt.fields & _LABEL_WORDS:
        raise ConfigError(
            f"{prompt.source}: never names the label: use {{{{label}}}}, {{{{phrase}}}} "
            "or {{description}}"
        )
    return prompt


def _qa_prompts(settings: S3Settings, folder: str | None, span: bool) -> PromptSet:
    base = f"s3/{settings.prompt_set}"

    def load(name: str, extra: set[str]) -> Prompt:
        return _check(
            load_prompt(f"{base}/{name}", folder),
            _QA_COMMON | extra,
            ("context", *sorted(extra)),
            labelled=False,
        )

    return PromptSet(
        settings.prompt_set,
        seed=load("seed", {"answer"}),
        extrapolate=load("extrapolate", {"answer", "example"}),
        seed_span=load("seed_span", set()) if span else None,
    )


def load_prompt_set(settings: S3Settings, *, span: bool = False) -> PromptSet:
    """Load and check the prompts ``settings`` asks for (``prompt_set``, ``prompts_dir``, ``k``).

    ``span``: a QA run whose context pool has contexts without answers (``seed_span.md``).
    """
    folder = settings.path(settings.prompts_dir) if settings.prompts_dir else None
    if settings.task == "qa":
        return _qa_prompts(settings, folder, span)
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


def qa_values(settings: S3Settings, context: str, answer: str | None = None) -> dict[str, Any]:
    """The placeholders of a QA prompt for one context (and its answer)."""
    values: dict[str, Any] = {
        "context": context,
        "text_kind": settings.text_kind,
        "context_kind": settings.context_kind,
    }
    if answer is not None:
        values["answer"] = answer
    return values


def render(prompt: Prompt, values: Mapping[str, Any]) -> list[dict[str, str]]:
    """``prompt`` filled with the subset of ``values`` it uses."""
    return prompt.render(**{k: v for k, v in values.items() if k in prompt.fields})


def join_phrases(items: Iterable[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"
