"""The paper's recipes, prompt sets, baselines, the --seeds harness and gold hygiene.

No labelled data set can be downloaded here, so the recipes' ``hf:`` sources are read from
small local datasets saved (``save_to_disk``) under the hub's names, with the hub's
columns and class labels: the same loading code users run against the hub.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from test_s3 import FILLER, TINY_STUDENT, needs_student, read_jsonl

from asyncsynth.cli import main
from asyncsynth.config import Config, load_config
from asyncsynth.pipelines.s3 import load_gold, load_prompt_set, load_s3_settings, run_s3
from asyncsynth.pipelines.s3.baselines import format_table, run_seeds
from asyncsynth.testing import SimServer

datasets = pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "examples" / "s3" / "recipes"
WORDS = FILLER[:11]
GOOD, BAD = ["wonderful", "superb", "delightful"], ["awful", "dreadful", "tedious"]


def _sentence(r: random.Random, *extra: str) -> str:
    words = [*r.sample(WORDS, 6), *extra]
    r.shuffle(words)
    return " ".join(words)


def _save(root: Path, name: str, splits: dict[str, dict[str, Any]], features: Any) -> None:
    dd = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(cols, features=features)
            for split, cols in splits.items()
        }
    )
    dd.save_to_disk(str(root / name))


def build_hub(root: Path) -> None:
    """Tiny stand-ins for the four data sets, saved under the hub's names."""
    r = random.Random(0)
    Value, ClassLabel = datasets.Value, datasets.ClassLabel

    def imdb(n: int) -> dict[str, Any]:
        labels = [i % 2 for i in range(n)]
        return {
            "text": [_sentence(r, r.choice(GOOD if y else BAD)) for y in labels],
            "label": labels,
        }

    _save(
        root,
        "stanfordnlp/imdb",
        {"train": imdb(24), "test": imdb(10)},
        datasets.Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])}),
    )
    nli = ClassLabel(names=["entailment", "not_entailment"])

    def pairs(n: int, a: str, b: str, hidden: bool = False) -> dict[str, Any]:
        labels = [i % 2 if not hidden else -1 for i in range(n)]
        firsts = [_sentence(r) for _ in range(n)]
        seconds = [_sentence(r, "indeed" if y == 0 else "never") for y in labels]
        return {a: firsts, b: seconds, "label": labels, "idx": list(range(n))}

    features = {
        "qnli": datasets.Features(
            {
                "question": Value("string"),
                "sentence": Value("string"),
                "label": nli,
                "idx": Value("int32"),
            }
        ),
        "rte": datasets.Features(
            {
                "sentence1": Value("string"),
                "sentence2": Value("string"),
                "label": nli,
                "idx": Value("int32"),
            }
        ),
    }
    for task, (a, b) in {
        "qnli": ("sentence", "question"),
        "rte": ("sentence1", "sentence2"),
    }.items():
        _save(
            root,
            f"nyu-mll/glue/{task}",
            {
                "train": pairs(24, a, b),
                "validation": pairs(10, a, b),
                "test": pairs(6, a, b, hidden=True),  # GLUE's test labels are hidden (-1)
            },
            features[task],
        )
    gold = [
        json.loads(line) for line in (ROOT / "examples/s3/qa/gold.jsonl").read_text().splitlines()
    ]

    def squad(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": [f"q{i}" for i in range(len(rows))],
            "title": ["t"] * len(rows),
            "context": [row["context"] for row in rows],
            "question": [row["question"] for row in rows],
            "answers": [row["answers"] for row in rows],
        }

    qa_features = datasets.Features(
        {
            "id": Value("string"),
            "title": Value("string"),
            "context": Value("string"),
            "question": Value("string"),
            "answers": datasets.Sequence({"text": Value("string"), "answer_start": Value("int32")}),
        }
    )
    _save(
        root,
        "UCLNLP/adversarial_qa/adversarialQA",
        {"train": squad(gold[:36]), "validation": squad(gold[36:])},
        qa_features,
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    build_hub(root)
    return root


OFFICIAL = {
    "imdb": {"lr": 5e-6, "batch_size": 8, "epochs": 6, "max_length": 512, "warmup_steps": 100},
    "qnli": {"lr": 5e-6, "batch_size": 32, "epochs": 10, "warmup_steps": 300},
    "rte": {"lr": 1e-5, "batch_size": 16, "epochs": 20, "weight_decay": 0.01},
}


@pytest.mark.parametrize("name", ["imdb", "qnli", "rte", "adqa"])
def test_recipes_have_the_papers_settings_and_load_their_hub_data(
    name: str, hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(hub)
    settings = load_s3_settings(load_config(RECIPES / f"{name}.toml"))
    assert settings.prompt_set == name and settings.temperature == 0.9 and settings.rounds == 2
    assert settings.student.model == "distilbert-base-uncased" and settings.student.patience is None
    for key, value in OFFICIAL.get(name, {}).items():
        assert getattr(settings.student, key) == value, key
    assert settings.gold.startswith("hf:") and settings.test and settings.test.startswith("hf:")
    if name != "imdb":  # hidden test labels: the validation split serves as test
        assert settings.test.endswith(":validation")
    gold = load_gold(settings)
    assert gold.mining and gold.dev and gold.test
    if settings.task != "qa":
        assert {r["label"] for r in gold.mining} == set(settings.label_names)
    assert load_prompt_set(settings, span=gold.needs_span).extrapolate


def test_a_hidden_glue_test_split_is_refused_with_its_row(
    hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncsynth.data import Fields, load_examples
    from asyncsynth.engine import InputError

    monkeypatch.chdir(hub)
    with pytest.raises(
        InputError, match=r"hf:nyu-mll/glue:rte:test:1: label -1: this split hides its labels"
    ):
        load_examples(
            "hf:nyu-mll/glue:rte:test",
            fields=Fields("sentence1", "sentence2"),
            labels=["entailment", "not_entailment"],
        )


# -- every shipped prompt set on the simulated endpoint ------------------------------------


def _message(body: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in body["messages"])


def paper_reply(body: dict[str, Any], ctx: Any) -> str:
    """Answers for the paper's prompts: reasons, reviews, questions, hypotheses, QA questions."""
    message = _message(body)
    r = random.Random(hashlib.sha256(f"{message}{body.get('seed')}".encode()).hexdigest())
    if "reasons that may lead to" in message:
        return "1. Great acting.\n2. A gripping plot.\n3. A lovely score."
    if "span of the passage" in message:  # adqa
        return f"What is said about the {r.choice(WORDS)} near the {r.choice(WORDS)}?"
    good = bool(re.search(r"positive|definitely true|answers in the", message))
    return _sentence(r, r.choice(GOOD if good else BAD), "indeed" if good else "never")


def _small(config: Config, url: str, **changes: Any) -> Config:
    table = {
        **config.sections["s3"],
        "seed_size": 12,
        "rounds": 1,
        "dev_fraction": 0.25,
        "save_student": False,
        "student": {**TINY_STUDENT, "epochs": 2, "max_length": 96, "doc_stride": 32},
        "params": {"max_tokens": 40},
        **changes,
    }
    endpoints = {
        "llm": replace(config.endpoints["llm"], base_url=url, model="sim", max_concurrency=8)
    }
    return replace(config, endpoints=endpoints, sections={**config.sections, "s3": table})


@needs_student
@pytest.mark.parametrize("name", ["imdb", "qnli", "rte", "adqa"])
def test_every_shipped_prompt_set_runs_end_to_end(
    name: str, hub: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(hub)
    with SimServer(reply=paper_reply, record=True) as sim:
        config = _small(load_config(RECIPES / f"{name}.toml"), sim.url)
        report = anyio.run(lambda: run_s3(config, tmp_path / "out")).report
        bodies = [_message(b) for b in sim.stats.bodies]
    prompts_dir = ROOT / "prompts" / "s3" / name
    extrapolate = (prompts_dir / "extrapolate.md").read_text().splitlines()[-2].split("{{")[0]
    assert report["seed"]["size"] > 0 and len(report["rounds"]) == 1
    assert report["final"]["test"]["n"] == (12 if name == "adqa" else 10)
    if report["rounds"][0]["errors"]:
        assert any(extrapolate.strip() in m for m in bodies), extrapolate
    metric = "f1" if name == "adqa" else "accuracy"
    assert report["metric"] == metric and metric in report["final"]["test"]


# -- baselines and the harness -------------------------------------------------------------


@needs_student
def test_baselines_are_s3_with_steps_left_out(
    hub: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(hub)
    recipe = load_config(RECIPES / "imdb.toml")
    with SimServer(reply=paper_reply, record=True) as sim:
        gold = anyio.run(lambda: run_s3(_small(recipe, sim.url, baseline="gold"), tmp_path / "g"))
        assert sim.stats.requests == 0  # the gold-data student asks the LLM nothing
        zerogen = anyio.run(
            lambda: run_s3(_small(recipe, sim.url, baseline="zerogen"), tmp_path / "z")
        )
        bodies = [_message(b) for b in sim.stats.bodies]
        assert bodies and not any("reasons" in m for m in bodies)  # no rationales
        assert all("Now you should write a" in m and "that has" not in m for m in bodies)
        sent = sim.stats.requests
        plain = anyio.run(
            lambda: run_s3(_small(recipe, sim.url, baseline="no_extrapolation"), tmp_path / "n")
        )
        later = [_message(b) for b in list(sim.stats.bodies)[sent:]]
    assert gold.report["baseline"] == "gold" and gold.rounds == []
    assert gold.final["by_source"] == {"gold": gold.report["data"]["mining"]}
    assert zerogen.rounds == [] and zerogen.report["rationales"] is None
    assert plain.rounds == [] and plain.report["rationales"]
    assert any("reasons that may lead to" in m for m in later)
    assert not any("similar to" in m for m in later)  # no extrapolation


@needs_student
def test_seeds_harness_reports_mean_and_std_beside_the_paper(
    hub: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(hub)
    config = _small(load_config(RECIPES / "imdb.toml"), "http://127.0.0.1:9/v1", baseline="gold")
    summary = anyio.run(lambda: run_seeds(config, tmp_path / "runs", [1, 2, 3]))
    assert summary["row"] == "gold" and summary["paper_task"] == "imdb"
    assert summary["paper"] == [87.93] and summary["seeds"] == [1, 2, 3]
    accuracy = summary["metrics"]["accuracy"]
    values = [
        json.loads((tmp_path / f"runs/seed-{s}/report.json").read_text())["final"]["test"][
            "accuracy"
        ]
        for s in (1, 2, 3)
    ]
    assert accuracy["values"] == values
    mean = sum(values) / 3
    assert accuracy["mean"] == pytest.approx(mean)
    assert accuracy["std"] == pytest.approx((sum((v - mean) ** 2 for v in values) / 2) ** 0.5)
    splits = {
        s: {r["text"] for r in read_jsonl(tmp_path / f"runs/seed-{s}/final/train.jsonl")}
        for s in (1, 2, 3)
    }
    assert splits[1] != splits[2]  # each seed splits gold its own way
    table = format_table([summary])
    assert "IMDB (accuracy, %)" in table
    gold_line = next(line for line in table.splitlines() if "Gold data" in line)
    assert "87.93" in gold_line and f"{100 * mean:.2f} ± " in gold_line and "(n=3)" in gold_line
    assert "S3 " in table and "89.00" in table  # the other rows, unmeasured, are shown too
    assert json.loads((tmp_path / "runs/seeds.json").read_text()) == summary
    cli = CliRunner().invoke(main, ["s3-table", str(tmp_path / "runs")])
    assert cli.exit_code == 0 and gold_line in cli.output


@needs_student
def test_cli_baseline_and_seeds(hub: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(hub)
    text = (RECIPES / "imdb.toml").read_text()
    text = text.replace(
        'base_url = "http://127.0.0.1:8000/v1"', 'base_url = "http://127.0.0.1:9/v1"'
    )
    text = re.sub(r"\[s3\.student\][^\[]*", "", text)
    student = "\n".join(
        [
            "[s3.student]",
            'model = "minilm"',
            "epochs = 1",
            "max_length = 32",
            "patience = false",
            'from_config = { model_type = "bert", hidden_size = 32, num_hidden_layers = 2, '
            "num_attention_heads = 2, intermediate_size = 64 }",
        ]
    )
    (tmp_path / "imdb.toml").write_text(text + "\n" + student + "\n")
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        main,
        [
            "s3",
            str(tmp_path / "imdb.toml"),
            "--out",
            str(out),
            "--baseline",
            "gold",
            "--seeds",
            "4,5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Gold data" in result.output and "(n=2)" in result.output
    assert (out / "seed-4/report.json").is_file() and (out / "seed-5/report.json").is_file()
    bad = CliRunner().invoke(
        main, ["s3", str(tmp_path / "imdb.toml"), "--out", str(out), "--seeds", "1,1"]
    )
    assert bad.exit_code == 2 and "distinct seeds" in bad.output


# -- gold hygiene --------------------------------------------------------------------------


def test_gold_duplicates_are_reported_and_optionally_removed(tmp_path: Path) -> None:
    from asyncsynth.pipelines.s3 import s3_settings

    rows = [{"text": f"review number {i} of many", "label": ["a", "b"][i % 2]} for i in range(20)]
    gold = [*rows, rows[0], {**rows[3], "text": rows[3]["text"].upper() + "!"}]
    test = [rows[5], rows[6], {"text": "a new one", "label": "a"}]
    (tmp_path / "gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gold))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    (tmp_path / "dev.jsonl").write_text(json.dumps(rows[7]) + "\n" + json.dumps(rows[8]) + "\n")
    table = {
        "labels": {"a": "A", "b": "B"},
        "gold": str(tmp_path / "gold.jsonl"),
        "dev": str(tmp_path / "dev.jsonl"),
        "test": str(tmp_path / "test.jsonl"),
    }
    found = load_gold(s3_settings(table)).duplicates
    assert found["within"] == {"mining": 2, "dev": 0, "test": 0}
    assert found["across"] == {"mining/dev": 2, "mining/test": 2, "dev/test": 0}
    assert found["removed"] == {}
    cleaned = load_gold(s3_settings({**table, "gold_duplicates": "remove"}))
    assert cleaned.duplicates["removed"] == {"test": 0, "dev": 0, "mining": 6}
    assert len(cleaned.mining) == 16 and len(cleaned.dev) == 2 and len(cleaned.test or []) == 3
    keys = [r["text"].lower().rstrip("!") for r in cleaned.mining]
    assert len(set(keys)) == len(keys)
    assert not set(keys) & {r["text"] for r in [*cleaned.dev, *(cleaned.test or [])]}
