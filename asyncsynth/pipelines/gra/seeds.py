"""Seed data: instruction/response pairs from JSONL or a hub dataset (``hf:NAME[:SPLIT]``)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...engine.errors import ConfigError, InputError
from ...io import read_jsonl


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


def load_seeds(
    spec: str,
    fields: Mapping[str, str],
    *,
    domains: Sequence[str],
    limit: int | None = None,
) -> list[Seed]:
    """Read seeds from ``spec`` (a JSONL path, or ``hf:NAME[:SPLIT]``), at most ``limit``.

    ``fields`` maps instruction, response, domain, keywords and summary to the names used
    in the data. Domains are matched to ``domains`` case-insensitively (their spelling
    wins); keywords may be a list or a comma-separated string. A row without a usable
    instruction or response is an error naming the file and line.
    """
    rows: Iterator[tuple[str, Any]]
    if spec.startswith("hf:"):
        rows = _hf_rows(spec)
    else:
        if not os.path.isfile(spec):
            raise ConfigError(f"gra.seed_data: {spec}: no such file")
        rows = ((f"{spec}:{line}", row) for line, row in read_jsonl(spec))
    canonical = {d.casefold(): d for d in domains}
    seeds: list[Seed] = []
    for where, row in rows:
        if limit is not None and len(seeds) >= limit:
            break
        seeds.append(_seed(len(seeds), row, where, fields, canonical))
    return seeds


def _hf_rows(spec: str) -> Iterator[tuple[str, Any]]:
    name, _, split = spec[3:].partition(":")
    if not name:
        raise ConfigError(f"gra.seed_data: {spec!r}: expected hf:NAME or hf:NAME:SPLIT")
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"gra.seed_data: {spec!r} needs the 'datasets' package "
            "(pip install 'asyncsynth[datasets]'), or give a JSONL file"
        ) from None
    split = split or "train"
    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as exc:  # the hub, a missing split, a bad name: all surface the same way
        raise ConfigError(f"gra.seed_data: could not load {spec!r}: {exc}") from None
    for i, row in enumerate(data):
        yield f"hf:{name}:{split}#{i}", row


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


def _seed(
    index: int, row: Any, where: str, fields: Mapping[str, str], canonical: dict[str, str]
) -> Seed:
    if not isinstance(row, Mapping):
        raise InputError("a seed must be a JSON object", source=where)
    domain = _text(row, fields["domain"], where, required=False)
    if domain is not None:
        domain = canonical.get(domain.casefold(), domain)
    return Seed(
        index=index,
        instruction=_text(row, fields["instruction"], where, required=True) or "",
        response=_text(row, fields["response"], where, required=True) or "",
        domain=domain,
        keywords=_keywords(row.get(fields["keywords"]), fields["keywords"], where),
        summary=_text(row, fields["summary"], where, required=False),
        source=where,
    )
