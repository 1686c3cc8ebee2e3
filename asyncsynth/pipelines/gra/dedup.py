"""Deduplication of a round's candidates against everything kept so far.

Candidates come in priority order (GRA: descending committee mean). Each is kept only if
it is not a duplicate of anything kept before it, in this round or an earlier one:

- :class:`SemanticDeduplicator`: cosine similarity of sentence embeddings below the
  threshold (GRA: all-MiniLM-L6-v2, 0.9);
- :class:`ExactDeduplicator` (``embedding_model = "none"``): the same text after case
  folding and whitespace collapsing; needs neither torch nor numpy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ...engine.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from .samples import Candidate
    from .settings import GraSettings

_BLOCK = 1024
"""Candidates compared at once (bounds the similarity matrices' memory)."""


@dataclass(frozen=True, slots=True)
class DedupOutcome:
    kept: bool
    duplicate_of: str | None = None
    similarity: float | None = None
    """The highest similarity to anything kept before it (1.0 for an exact duplicate)."""


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> Any:
        """Unit-length vectors, one row per text (a numpy array)."""
        ...


class Deduplicator(Protocol):
    def select(self, candidates: Sequence[tuple[str, str]]) -> list[DedupOutcome]:
        """Decide ``(id, text)`` candidates in the order given; remember those kept."""
        ...


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.casefold()).strip()


class ExactDeduplicator:
    """Drops a candidate whose normalised text equals one already kept."""

    def __init__(self) -> None:
        self._kept: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def select(self, candidates: Sequence[tuple[str, str]]) -> list[DedupOutcome]:
        out = []
        for ident, text in candidates:
            key = _normal(text)
            first = self._kept.get(key)
            if first is None:
                self._kept[key] = ident
                out.append(DedupOutcome(True))
            else:
                out.append(DedupOutcome(False, first, 1.0))
        return out


class SemanticDeduplicator:
    """Drops a candidate whose cosine similarity to one already kept is >= ``threshold``."""

    def __init__(self, embedder: Embedder, threshold: float = 0.9) -> None:
        self.embedder = embedder
        self.threshold = threshold
        self._ids: list[str] = []
        self._vectors: np.ndarray | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _append(self, vectors: np.ndarray) -> None:
        import numpy as np

        if self._vectors is None:
            self._vectors = np.zeros((max(1024, 2 * len(vectors)), vectors.shape[1]), np.float32)
        need = self._count + len(vectors)
        if need > len(self._vectors):
            grown = np.zeros((max(need, 2 * len(self._vectors)), vectors.shape[1]), np.float32)
            grown[: self._count] = self._vectors[: self._count]
            self._vectors = grown
        self._vectors[self._count : need] = vectors
        self._count = need

    def select(self, candidates: Sequence[tuple[str, str]]) -> list[DedupOutcome]:
        import numpy as np

        if not candidates:
            return []
        vectors = np.asarray(self.embedder.embed([text for _, text in candidates]), np.float32)
        outcomes: list[DedupOutcome] = []
        for start in range(0, len(candidates), _BLOCK):
            block = vectors[start : start + _BLOCK]
            best, arg = self._best_kept(block)
            inner = block @ block.T
            kept_here: list[int] = []
            for i in range(len(block)):
                sim, of = float(best[i]), int(arg[i])
                if kept_here:
                    sims = inner[i, kept_here]
                    j = int(np.argmax(sims))
                    if sims[j] > sim:
                        sim, of = float(sims[j]), self._count + j
                if round(sim, 6) >= self.threshold:  # float32 dot products: 0.9 is 0.8999999
                    duplicate_of = self._id_of(of, candidates, start, kept_here)
                    outcomes.append(DedupOutcome(False, duplicate_of, round(sim, 4)))
                else:
                    kept_here.append(i)
                    outcomes.append(DedupOutcome(True, None, round(sim, 4) if of >= 0 else None))
            self._ids.extend(candidates[start + i][0] for i in kept_here)
            self._append(block[kept_here])
        return outcomes

    def _id_of(
        self, index: int, candidates: Sequence[tuple[str, str]], start: int, kept_here: list[int]
    ) -> str:
        if index < self._count:
            return self._ids[index]
        return candidates[start + kept_here[index - self._count]][0]

    def _best_kept(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``block``: the highest similarity to the kept vectors, and its index."""
        import numpy as np

        best = np.full(len(block), -np.inf, np.float32)
        arg = np.full(len(block), -1, np.int64)
        if self._vectors is None or self._count == 0:
            return best, arg
        for start in range(0, self._count, 8 * _BLOCK):
            kept = self._vectors[start : min(self._count, start + 8 * _BLOCK)]
            sims = block @ kept.T
            top = sims.argmax(axis=1)
            values = sims[np.arange(len(block)), top]
            better = values > best
            best[better] = values[better]
            arg[better] = top[better] + start
        return best, arg


def make_deduplicator(settings: GraSettings, embedder: Embedder | None = None) -> Deduplicator:
    """Exact matching for ``embedding_model = "none"``, else semantic (loads the model)."""
    if embedder is None and settings.embedding_model.lower() == "none":
        return ExactDeduplicator()
    if embedder is None:
        try:
            from ...student.embeddings import SentenceEmbedder
        except ImportError as exc:
            raise ConfigError(
                f"gra.embedding_model = {settings.embedding_model!r} needs torch and transformers "
                f"(pip install 'asyncsynth[embed]'): {exc}. Set embedding_model = \"none\" to "
                "drop exact duplicates only"
            ) from None
        embedder = SentenceEmbedder(
            settings.embedding_model, batch_size=settings.embedding_batch_size
        )
    return SemanticDeduplicator(embedder, settings.dedup_threshold)


def dedup_text(c: Candidate, which: str) -> str:
    """What is compared (``dedup_text``): the instruction, the response, or both."""
    if which == "instruction":
        return c.instruction or ""
    if which == "response":
        return c.response or ""
    return f"{c.instruction}\n\n{c.response}"


async def dedup_round(
    batch: Sequence[Candidate], dedup: Deduplicator, which: str
) -> list[Candidate]:
    """GRA's post-processing of a round: the candidates the committee passed, in descending
    committee mean, each kept (``accepted``) unless it duplicates one kept before it, in this
    round or an earlier one (rejected as ``duplicate``). Returns the kept ones."""
    passed = sorted(
        (c for c in batch if c.status == "passed"), key=lambda c: (-(c.mu or 0.0), c.index)
    )
    texts = [(c.id, dedup_text(c, which)) for c in passed]
    if isinstance(dedup, ExactDeduplicator):
        outcomes = dedup.select(texts)
    else:  # embeddings: off the event loop
        outcomes = await anyio.to_thread.run_sync(dedup.select, texts)
    kept: list[Candidate] = []
    for c, outcome in zip(passed, outcomes, strict=True):
        if outcome.kept:
            c.status = "accepted"
            kept.append(c)
        else:
            c.reject("duplicate", "dedup")
            c.duplicate_of, c.similarity = outcome.duplicate_of, outcome.similarity
    return kept
