"""Seed data: instruction/response pairs from JSONL or a hub dataset, in the formats users have.

Formats (``seed_format``; ``auto`` lets the first row decide):

- ``fields``: one column each for instruction and response (names in ``seed_fields``),
  optional domain, keywords and summary;
- ``alpaca``: ``instruction``, ``input``, ``output``; a non-empty ``input`` is joined to the
  instruction by ``seed_input_template`` (default: instruction, blank line, input);
- ``sharegpt``: ``conversations``, a list of ``{"from", "value"}`` turns;
- ``messages``: OpenAI chat rows, a list of ``{"role", "content"}``.

In the two chat formats the seed is the first user turn and the assistant's answer to it.
Every format may carry ``domain``, ``keywords`` and ``summary`` columns (``seed_fields``).
A domain must be one of ``domains`` (case-insensitively; their spelling wins) or renamed
to one by ``domain_map``; any other is refused with its line. ``seed_limit`` keeps a
random subset (drawn with the run's seed), in file order; every row is still checked.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ...engine.errors import ConfigError, InputError
from ...io import read_jsonl
from ...prompts import parse_prompt
from .settings import DEFAULT_INPUT_TEMPLATE, SEED_FIELDS

_USER = frozenset({"human", "user"})
_ASSISTANT = frozenset({"gpt", "assistant", "model", "chatgpt", "bard", "bing"})


@dataclass(frozen=True, slots=True)
class Seed:
    """One seed sample; ``domain``, ``keywords`` and ``summary`` may be missing."""

    index: int
    instruction: str
    response: str
    domain: str | None = None
    keywords: tuple[str, ...] | None = None
    summary: str | None = None
    source: str = ""
    """Where it came from (``file:line`` or ``hf:name:split#row``)."""

    @property
    def annotated(self) -> bool:
        return bool(self.domain and self.keywords and self.summary)


class Seeds(list[Seed]):
    """The seeds of a run, with how they were read."""

    format: str = "fields"
    """The format of the rows (``fields``, ``alpaca``, ``sharegpt`` or ``messages``)."""
    rows: int = 0
    """Rows read (more than ``len(self)`` when ``seed_limit`` drew a subset)."""


@dataclass(frozen=True, slots=True)
class _Reader:
    fields: Mapping[str, str]
    domains: Mapping[str, str]
    """Casefolded name -> the domain (from ``domains`` and ``domain_map``)."""
    known: Sequence[str]
    template: Any
    fmt: str

    def seed(self, index: int, row: Any, where: str) -> Seed:
        if not isinstance(row, Mapping):
            raise InputError("a seed must be a JSON object", source=where)
        instruction, response = _PAIRS[self.fmt](self, row, where)
        return Seed(
            index=index,
            instruction=instruction,
            response=response,
            domain=self._domain(row, where),
            keywords=_keywords(row.get(self.fields["keywords"]), self.fields["keywords"], where),
            summary=_text(row, self.fields["summary"], where, required=False),
            source=where,
        )

    def _domain(self, row: Mapping[str, Any], where: str) -> str | None:
        domain = _text(row, self.fields["domain"], where, required=False)
        if domain is None:
            return None
        found = self.domains.get(domain.casefold())
        if found is None:
            raise InputError(
                f"domain {domain!r} is not one of gra.domains ({', '.join(self.known)}); add it "
                "to gra.domains, or rename it to one of them in [gra.domain_map]",
                source=where,
            )
        return found


def _fields_pair(reader: _Reader, row: Mapping[str, Any], where: str) -> tuple[str, str]:
    fields = reader.fields
    instruction = _text(row, fields["instruction"], where, required=True)
    response = _text(row, fields["response"], where, required=True)
    assert instruction is not None and response is not None
    return instruction, response


def _alpaca_pair(reader: _Reader, row: Mapping[str, Any], where: str) -> tuple[str, str]:
    instruction = _text(row, "instruction", where, required=True)
    response = _text(row, "output", where, required=True)
    assert instruction is not None and response is not None
    extra = _text(row, "input", where, required=False)
    if extra:
        rendered = reader.template.render(instruction=instruction, input=extra)
        instruction = rendered[-1]["content"].strip()
    return instruction, response


def _chat_pair(turns: Any, where: str, column: str, keys: tuple[str, str]) -> tuple[str, str]:
    """The first user turn and the assistant's answer that follows it."""
    if not isinstance(turns, list) or not all(isinstance(t, Mapping) for t in turns):
        raise InputError(f"field {column!r} must be a list of turns (objects)", source=where)
    who, what = keys
    instruction: str | None = None
    for turn in turns:
        speaker = str(turn.get(who, "")).casefold()
        text = _content(turn.get(what))
        if instruction is None and speaker in _USER and text:
            instruction = text
        elif instruction is not None and speaker in _ASSISTANT and text:
            return instruction, text
    missing = "user turn" if instruction is None else "assistant turn after the first user turn"
    raise InputError(f"field {column!r} has no {missing} with text", source=where)


def _content(value: Any) -> str:
    """A turn's text: a string, or the text parts of an OpenAI content list."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a dataset's loader may have read "7" as 7
    if isinstance(value, list):
        parts = [p.get("text", "") for p in value if isinstance(p, Mapping)]
        return "\n".join(p for p in parts if isinstance(p, str) and p).strip()
    return ""


def _sharegpt_pair(reader: _Reader, row: Mapping[str, Any], where: str) -> tuple[str, str]:
    return _chat_pair(row.get("conversations"), where, "conversations", ("from", "value"))


def _messages_pair(reader: _Reader, row: Mapping[str, Any], where: str) -> tuple[str, str]:
    return _chat_pair(row.get("messages"), where, "messages", ("role", "content"))


_PAIRS = {
    "fields": _fields_pair,
    "alpaca": _alpaca_pair,
    "sharegpt": _sharegpt_pair,
    "messages": _messages_pair,
}


def detect_format(row: Any, fields: Mapping[str, str]) -> str:
    """The format a row looks like (``auto``: the first row decides for the whole set)."""
    if not isinstance(row, Mapping):
        return "fields"
    if "conversations" in row:
        return "sharegpt"
    if "messages" in row and fields["instruction"] not in row:
        return "messages"
    if "output" in row and "instruction" in row and fields["response"] not in row:
        return "alpaca"
    return "fields"


def load_seeds(
    spec: str,
    fields: Mapping[str, str] | None = None,
    *,
    domains: Sequence[str],
    limit: int | None = None,
    seed_format: str = "auto",
    input_template: str = DEFAULT_INPUT_TEMPLATE,
    domain_map: Mapping[str, str] | None = None,
    seed: int = 0,
) -> Seeds:
    """Read seeds from ``spec``: a JSONL path, or ``hf:NAME[:SPLIT]`` / ``hf:NAME:CONFIG:SPLIT``.

    ``fields`` maps instruction, response, domain, keywords and summary to the names used
    in the data (default: those names). ``limit``: a random subset of at most that many,
    drawn with ``seed``, kept in file order. Keywords may be a list or a comma-separated
    string. A row that does not fit is an error naming the file and line.
    """
    fields = {f: (fields or {}).get(f, f) for f in SEED_FIELDS}
    rows = _rows(spec)
    canonical = {str(k).casefold(): v for k, v in (domain_map or {}).items()}
    canonical |= {d.casefold(): d for d in domains}
    template = parse_prompt(input_template, "seed_input_template", "gra.seed_input_template")
    out = Seeds()
    reader: _Reader | None = None
    picked: list[Seed] = []
    draw = random.Random(f"asyncsynth-gra:{seed}:seed_limit")
    for where, row in rows:
        if reader is None:
            fmt = detect_format(row, fields) if seed_format == "auto" else seed_format
            reader = _Reader(fields, canonical, tuple(domains), template, fmt)
            out.format = fmt
        candidate = reader.seed(out.rows, row, where)
        out.rows += 1
        if limit is None or len(picked) < limit:
            picked.append(candidate)
        elif (slot := draw.randrange(out.rows)) < limit:  # reservoir sampling
            picked[slot] = candidate
    picked.sort(key=lambda s: s.index)
    out.extend(replace(s, index=i) for i, s in enumerate(picked))
    return out


def _rows(spec: str) -> Iterator[tuple[str, Any]]:
    if spec.startswith("hf:"):
        return _hf_rows(spec)
    if not os.path.isfile(spec):
        raise ConfigError(f"gra.seed_data: {spec}: no such file")
    return ((f"{spec}:{line}", row) for line, row in read_jsonl(spec))


def parse_hf(spec: str) -> tuple[str, str | None, str]:
    """``hf:NAME[:SPLIT]`` or ``hf:NAME:CONFIG:SPLIT`` -> (name, config, split)."""
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise ConfigError(
            f"gra.seed_data: {spec!r}: expected hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT"
        )
    if len(parts) == 3:
        return parts[0], parts[1] or None, parts[2] or "train"
    return parts[0], None, (parts[1] if len(parts) == 2 else "") or "train"


def _hf_rows(spec: str) -> Iterator[tuple[str, Any]]:
    name, config, split = parse_hf(spec)
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"gra.seed_data: {spec!r} needs the 'datasets' package "
            "(pip install 'asyncsynth[datasets]'), or give a JSONL file"
        ) from None
    try:
        data = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # the hub, a missing split, a bad name: all surface the same way
        raise ConfigError(f"gra.seed_data: could not load {spec!r}: {exc}") from None
    label = f"hf:{name}:{config}:{split}" if config else f"hf:{name}:{split}"
    for i, row in enumerate(data):
        yield f"{label}#{i}", row


def _text(row: Mapping[str, Any], field: str, where: str, *, required: bool) -> str | None:
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InputError(f"missing or empty field {field!r}", source=where)
        return None
    if not isinstance(value, str):
        raise InputError(f"field {field!r} must be a string, got {value!r:.60}", source=where)
    return value.strip()


def _keywords(value: Any, field: str, where: str) -> tuple[str, ...] | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = re.split(r"\s*[,;]\s*", value.strip())
    if not isinstance(value, list | tuple) or not all(isinstance(k, str) for k in value):
        raise InputError(
            f"field {field!r} must be a list of strings or a comma-separated string",
            source=where,
        )
    words = tuple(k.strip() for k in value if k.strip())
    return words or None
