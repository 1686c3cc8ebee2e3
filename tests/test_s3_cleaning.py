"""S3 cleaning against a labelled corpus: it never drops or changes a legitimate text.

``tests/data/s3_cleaning_corpus.jsonl`` holds texts of three kinds, written by hand:
``legitimate`` (movie reviews, NLI hypotheses, questions; positive and negative; openings
like "Unfortunately", "I'm sorry, but", "I can't help but", "Sure", "Okay"; quotes,
colons, notes and closing lines that belong to the text), ``refusal`` (what assistants say
when they decline or talk about themselves as models) and ``wrapper`` (a text wrapped in
chatter: preambles, prefixes, trailers, quotes, fences, with the clean text beside it).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from asyncsynth.engine import ConfigError
from asyncsynth.pipelines.s3 import Cleaner, CleaningCounts, CleaningSettings, s3_settings
from asyncsynth.pipelines.s3.cleaning import is_refusal, strip_wrappers

CORPUS = Path(__file__).parent / "data" / "s3_cleaning_corpus.jsonl"
ROWS: list[dict[str, Any]] = [json.loads(line) for line in CORPUS.read_text().splitlines()]
LEGIT = [r for r in ROWS if r["kind"] == "legitimate"]
REFUSALS = [r for r in ROWS if r["kind"] == "refusal"]
WRAPPERS = [r for r in ROWS if r["kind"] == "wrapper"]
ISSUE_EXAMPLES = [
    "Unfortunately, I found this film dull and far too long.",
    "I'm afraid I didn't enjoy a single minute of this movie.",
    "I'm sorry, but I hated this movie from start to finish.",
    "I can't help but love this movie.",
    "I can't believe the writers thought this plot made sense.",
    "Sorry, I just could not stay awake through the second act.",
]
PROMPT = "Write a negative movie review similar to:\nIt was fine.\nReply with the review only."


def test_the_corpus_is_as_large_and_varied_as_promised() -> None:
    assert len(LEGIT) >= 60 and len(REFUSALS) + len(WRAPPERS) >= 30 and len(REFUSALS) >= 25
    assert Counter(r["type"] for r in LEGIT).keys() == {"review", "hypothesis", "question"}
    texts = {r["text"] for r in LEGIT}
    assert set(ISSUE_EXAMPLES) <= texts
    for needle in ("The verdict:", "Absolutely loved it:", "I hope you get to see it"):
        assert any(needle in t for t in texts), needle
    assert any("Note: the 3D version is worse" in t for t in texts)
    assert any(t.startswith("'Jaws'") for t in texts)
    assert any(t.startswith("Sure") for t in texts) and any(t.startswith("Okay") for t in texts)


@pytest.mark.parametrize("row", LEGIT, ids=lambda r: r["text"][:40])
def test_no_legitimate_text_is_dropped_or_changed(row: dict[str, Any]) -> None:
    text = row["text"]
    assert not is_refusal(text)
    for prompt in ("", PROMPT):
        assert strip_wrappers(text, prompt, nouns=["movie review"]) == (text, [])
    cleaned = Cleaner().clean(text, prompt=PROMPT)
    assert cleaned.text == text.strip() and cleaned.reason is None and not cleaned.fixes


@pytest.mark.parametrize("row", REFUSALS, ids=lambda r: r["text"][:40])
def test_every_refusal_is_caught(row: dict[str, Any]) -> None:
    assert is_refusal(row["text"])
    assert Cleaner().clean(row["text"]).reason == "refusal"


@pytest.mark.parametrize("row", WRAPPERS, ids=lambda r: r["text"][:40])
def test_every_wrapper_is_stripped(row: dict[str, Any]) -> None:
    text, fixes = strip_wrappers(row["text"], PROMPT)
    assert text == row["clean"] and fixes
    assert Cleaner().clean(row["text"], prompt=PROMPT).text == row["clean"]


def test_switches_turn_stripping_and_the_builtin_patterns_off() -> None:
    wrapped = "Sure! Here is a positive review:\n\nA fine film."
    refusal = "I'm sorry, but I can't write that."
    no_strip = Cleaner(CleaningSettings(strip=False))
    assert no_strip.clean(wrapped).text == wrapped
    assert no_strip.clean(refusal).reason == "refusal"  # the patterns still apply
    no_patterns = Cleaner(CleaningSettings(builtin_refusals=False, refusal_patterns=("^nope",)))
    assert no_patterns.clean(refusal).text == refusal
    assert no_patterns.clean("nope, not this one").reason == "refusal"  # the user's own apply
    assert no_patterns.clean(wrapped).text == "A fine film."
    no_dedup = Cleaner(CleaningSettings(dedup=False), reference=[("", "a gold text here")])
    assert no_dedup.clean("A gold text here").text and no_dedup.clean("a gold text here").text


def test_cleaning_none_keeps_every_answer_as_it_came() -> None:
    settings = s3_settings({"labels": {"a": "A", "b": "B"}, "gold": "g.jsonl", "cleaning": "none"})
    assert settings.cleaning == CleaningSettings.none()
    assert not settings.cleaning.enabled
    cleaner = Cleaner(settings.cleaning, reference=[("", "the gold text")])
    counts = CleaningCounts()
    answers = [
        "As an AI language model, I cannot watch films.",
        '"Quoted."',
        "the gold text",
        "the gold text",
        "x",
        "   ",
        None,
    ]
    out = [cleaner.clean(a, counts=counts, label="a") for a in answers]
    assert [c.text for c in out[:5]] == answers[:5]
    assert [c.reason for c in out[5:]] == ["empty", "failed"]
    assert counts.to_dict()["by_label"] == {"a": {"received": 7, "kept": 5}}
    with pytest.raises(ConfigError, match=r"s3\.cleaning: a table of cleaning settings"):
        s3_settings({"labels": {"a": "A", "b": "B"}, "gold": "g", "cleaning": "some"})
    table = s3_settings({"labels": {"a": "A", "b": "B"}, "gold": "g", "cleaning": {"strip": False}})
    assert table.cleaning.enabled and not table.cleaning.strip
