"""Extractive QA features: windows over long contexts, answer positions, span decoding.

As transformers' question-answering recipes do: the question and the context are
tokenized together (the context truncated, never the question); a context longer than
``max_length`` becomes several windows overlapping by ``doc_stride`` tokens. A training
window's target is the answer's first and last token, or the first token ([CLS]) when the
answer is not inside that window. At prediction the best span over all of an example's
windows wins: the highest start + end logit among spans inside the context, ending after
they start, at most ``max_answer_length`` tokens long.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from asyncsynth.student.config import QAExample

__all__ = ["QAFeatures", "best_spans", "encode_qa"]

_N_BEST = 20


@dataclass
class QAFeatures:
    """The windows of a list of examples."""

    inputs: list[dict[str, list[int]]]
    """Model inputs per window (with ``start_positions``/``end_positions`` for training)."""
    example: list[int]
    """The example each window comes from."""
    offsets: list[list[tuple[int, int] | None]]
    """Per window and token, its character span in the context (None outside the context)."""


def _question_first(tokenizer: PreTrainedTokenizerBase) -> bool:
    return tokenizer.padding_side == "right"


def encode_qa(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[QAExample],
    max_length: int,
    doc_stride: int,
    *,
    targets: bool,
) -> QAFeatures:
    """Tokenize ``examples`` into windows; with ``targets`` add the answer positions."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("extractive QA needs a fast tokenizer (it maps tokens to characters)")
    first = _question_first(tokenizer)
    questions = [ex.question.lstrip() for ex in examples]
    contexts = [ex.context for ex in examples]
    enc = tokenizer(
        questions if first else contexts,
        contexts if first else questions,
        truncation="only_second" if first else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    context_id = 1 if first else 0
    mapping = enc["overflow_to_sample_mapping"]
    keys = [k for k in enc if k not in ("offset_mapping", "overflow_to_sample_mapping")]
    out = QAFeatures([], [], [])
    for i, sample in enumerate(mapping):
        ids = enc.sequence_ids(i)
        offsets = [
            tuple(span) if ids[t] == context_id else None
            for t, span in enumerate(enc["offset_mapping"][i])
        ]
        item: dict[str, Any] = {k: enc[k][i] for k in keys}
        if targets:
            item["start_positions"], item["end_positions"] = _positions(examples[sample], offsets)
        out.inputs.append(item)
        out.example.append(sample)
        out.offsets.append(offsets)
    return out


def _positions(example: QAExample, offsets: Sequence[tuple[int, int] | None]) -> tuple[int, int]:
    """First and last token of the example's first answer in this window, else (0, 0)."""
    if not example.answers:
        return 0, 0
    start_char = example.answer_starts[0]
    end_char = start_char + len(example.answers[0])
    inside = [t for t, span in enumerate(offsets) if span is not None]
    if not inside:
        return 0, 0
    first, last = inside[0], inside[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:  # type: ignore[index]
        return 0, 0
    start = next(t for t in inside if offsets[t][1] > start_char)  # type: ignore[index]
    end = next(t for t in reversed(inside) if offsets[t][0] < end_char)  # type: ignore[index]
    return start, max(start, end)


def best_spans(
    features: QAFeatures,
    start_logits: Sequence[Sequence[float]],
    end_logits: Sequence[Sequence[float]],
    examples: Sequence[QAExample],
    max_answer_length: int,
) -> list[str]:
    """The best answer text of every example over all of its windows ("" when none fits)."""
    best: list[tuple[float, str]] = [(float("-inf"), "")] * len(examples)
    for w, sample in enumerate(features.example):
        offsets = features.offsets[w]
        starts, ends = start_logits[w], end_logits[w]
        n = min(len(offsets), len(starts))
        top_s = sorted(range(n), key=lambda t: starts[t], reverse=True)[:_N_BEST]
        top_e = sorted(range(n), key=lambda t: ends[t], reverse=True)[:_N_BEST]
        context = examples[sample].context
        for s in top_s:
            if offsets[s] is None:
                continue
            for e in top_e:
                span_end = offsets[e]
                if span_end is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(starts[s]) + float(ends[e])
                if score > best[sample][0]:
                    best[sample] = (score, context[offsets[s][0] : span_end[1]])  # type: ignore[index]
    return [text for _, text in best]
