"""The run folder of GRA: its files, and the fingerprint that a resumed run must match.

``accepted.jsonl``, ``rejected.jsonl`` and ``pool.jsonl`` get each round's rows appended
as it ends (cheap at any size), and are rewritten whole, sorted by sample, when the run
ends; ``report.json`` is rewritten after every round. Writes go through
:class:`~asyncsynth.pipelines.runfolder.RunFolder` (atomic, durable).

Resuming is running the same command again: every answered request comes from the
journal, and the outputs are rebuilt from them. A folder holds one setup: a run whose
pool, models, committee, seeds, prompts or sampling settings differ from the folder's is
refused, naming what changed, because its outputs would silently replace the other
setup's. What only bounds or paces a run may change: the target, ``max_rounds``,
``time_budget``, ``max_in_flight``, ``summarize_early`` and ``embedding_batch_size``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from ...config import Config
from ...prompts import load_prompt
from ..runfolder import RunFolder, digest
from .pool import PoolEntry
from .samples import Candidate
from .seeds import Seed
from .settings import GraSettings

RESUMABLE = (
    "settings.target",
    "settings.max_rounds",
    "settings.time_budget",
    "settings.max_in_flight",
    "settings.summarize_early",
    "settings.embedding_batch_size",
)
"""Fingerprint keys a resumed run may change."""
PROMPTS = (
    "gra/generate_instruction",
    "gra/generate_response",
    "gra/refine_response",
    "gra/example_pair",
    "gra/no_examples",
    "gra/review_instruction",
    "gra/review_response",
    "gra/adjudicate",
    "gra/adjudicate_review_item",
    "gra/annotate_seed",
    "gra/summarize",
    "structured/reask",
)


def fingerprint(config: Config, settings: GraSettings, seeds: Sequence[Seed]) -> dict[str, Any]:
    """What decides a run's samples: settings, the models behind the pool, seeds, prompts."""
    plain = orjson.loads(orjson.dumps(dataclasses.asdict(settings)))  # as state.json holds it
    plain.pop("seed_data", None)  # where the seeds are does not matter, what they are does
    committee = plain["committee"]
    for key in ("source", "prompts_dir"):
        committee.pop(key, None)
    models = {
        name: sorted(config.endpoints[ep].model for ep in config.role(name))
        for name in settings.committee.pool
    }
    rows = [[s.instruction, s.response, s.domain, list(s.keywords or ()), s.summary] for s in seeds]
    prompts = {
        name: [list(p) for p in load_prompt(name, settings.prompts_dir).parts] for name in PROMPTS
    }
    return {
        "settings": plain,
        "models": models,
        "seeds": {"count": len(seeds), "digest": digest(rows)},
        "prompts": digest(prompts),
    }


def open_folder(
    folder: RunFolder, config: Config, settings: GraSettings, seeds: Sequence[Seed]
) -> bool:
    """Start or resume the run in ``folder``; ``True`` when resuming one (see the module)."""
    return folder.open(
        fingerprint(config, settings, seeds),
        resumable=RESUMABLE,
        what="GRA run",
    )


class Outputs:
    """Writes a run's rows and pool, round by round and whole at the end."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder
        self._appended = False
        self._pool_written: set[str] = set()

    def append_round(self, batch: Sequence[Candidate], pool: Iterable[PoolEntry]) -> None:
        """A finished round's rows, and the pool entries not written yet (the first round
        of a process starts the files afresh)."""
        truncate = not self._appended
        ordered = sorted(batch, key=lambda c: (c.index, c.attempt))
        for name, status in (("accepted.jsonl", "accepted"), ("rejected.jsonl", "rejected")):
            rows = (c.row() for c in ordered if c.status == status)
            self.folder.append_jsonl(name, rows, truncate=truncate)
        new = [e for e in pool if e.id not in self._pool_written]
        self._pool_written.update(e.id for e in new)
        self.folder.append_jsonl("pool.jsonl", (e.to_dict() for e in new), truncate=truncate)
        self._appended = True

    def write_all(self, candidates: Sequence[Candidate], pool: Iterable[PoolEntry]) -> None:
        """Every output, whole and sorted by sample (atomic replacements)."""
        ordered = sorted(candidates, key=lambda c: (c.index, c.attempt))
        for name, status in (("accepted.jsonl", "accepted"), ("rejected.jsonl", "rejected")):
            self.folder.write_jsonl(name, (c.row() for c in ordered if c.status == status))
        self.folder.write_jsonl("pool.jsonl", (e.to_dict() for e in pool))

    def write_report(self, report: dict[str, Any]) -> None:
        self.folder.write_json("report.json", report)
