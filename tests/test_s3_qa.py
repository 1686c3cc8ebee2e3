"""S3 on extractive QA (the paper's AdQA task) against the simulated endpoint.

The scripted LLM reads the context and the answer span from the prompt and writes a
question naming the two words that come before the answer; for ``seed_span`` prompts it
picks a span itself (sometimes one that is not in the context, which must be dropped).
The student is a tiny random BERT with a span-extraction head.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from test_s3 import TINY_STUDENT, make_config, needs_student, read_jsonl, run, write_jsonl

from asyncsynth.config import load_config
from asyncsynth.data import QAFields, load_qa_examples, load_qa_pool
from asyncsynth.engine import ConfigError, InputError
from asyncsynth.pipelines.s3 import load_gold, load_prompt_set, load_s3_settings, s3_settings
from asyncsynth.pipelines.s3.tasks import find_span
from asyncsynth.testing import SimServer

ROOT = Path(__file__).resolve().parents[1]
QA = ROOT / "examples" / "s3" / "qa"
GOLD = [json.loads(line) for line in (QA / "gold.jsonl").read_text().splitlines()]
CONTEXTS = sorted({row["context"] for row in GOLD})
QA_STUDENT = {**TINY_STUDENT, "epochs": 2, "max_length": 96, "doc_stride": 32}


def _message(body: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in body["messages"])


def _context_in(message: str, contexts: list[str]) -> str:
    return next(c for c in contexts if c in message)


_ASIDES = ["in the text", "as written", "in the passage", "by the account", "in this story"]


def qa_reply(contexts: list[str]) -> Any:
    def reply(body: dict[str, Any], ctx: Any) -> str:
        message = _message(body)
        context = _context_in(message, contexts)
        r = random.Random(hashlib.sha256(f"{message}{body.get('seed')}".encode()).hexdigest())
        if "Answer: <the span>" in message:  # seed_span: the LLM picks the answer
            words = context.split()
            if r.random() < 0.3:
                return "Answer: a span that is not there\nQuestion: What is missing?"
            i = r.randrange(2, len(words) - 2)
            span = " ".join(words[i : i + 2]).strip(".,")
            return f"Answer: {span}\nQuestion: What comes after {words[i - 2]} {words[i - 1]}?"
        rest = message.replace(context, "")
        answer = next(
            a
            for row in GOLD
            if row["context"] == context
            for a in row["answers"]["text"]
            if a in rest
        )
        before = context[: context.index(answer)].split()[-2:]
        return f'"What comes after {" ".join(before)}, {r.choice(_ASIDES)}?"'

    return reply


def qa_s3(folder: Path, **changes: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "task": "qa",
        "gold": str(QA / "gold.jsonl"),
        "test": str(QA / "test.jsonl"),
        "dev_fraction": 0.25,
        "prompt_set": "adqa",
        "seed_size": 24,
        "rounds": 1,
        "save_student": False,
        "student": QA_STUDENT,
    }
    table.update(changes)
    return table


def test_qa_settings_have_no_labels_and_choose_on_f1() -> None:
    settings = s3_settings({"task": "qa", "gold": "g.jsonl"})
    assert settings.labels == () and settings.prompt_set == "generic-qa"
    assert settings.student.metric == "f1" and settings.k == 0
    assert settings.context_field == "context" and settings.text_kind == "question"
    with pytest.raises(ConfigError, match=r"s3\.labels: an extractive QA task has no labels"):
        s3_settings({"task": "qa", "gold": "g", "labels": {"a": "A", "b": "B"}})
    with pytest.raises(ConfigError, match=r"s3\.student\.metric: QA students use f1"):
        s3_settings({"task": "qa", "gold": "g", "student": {"metric": "accuracy"}})
    with pytest.raises(ConfigError, match=r"s3\.labels: required for a single task"):
        s3_settings({"gold": "g"})


def test_qa_data_is_squad_shaped_and_checked(tmp_path: Path) -> None:
    examples = load_qa_examples(str(QA / "gold.jsonl"))
    assert len(examples) == 48 and all(ex.answers for ex in examples)
    good = {
        "context": "Paris is in France.",
        "question": "Where?",
        "answers": {"text": ["France"], "answer_start": [12]},
    }
    listed = {**good, "answers": [{"text": "France", "answer_start": 12}]}
    write_jsonl(tmp_path / "ok.jsonl", [good, listed])
    assert [ex.answer_starts for ex in load_qa_examples(str(tmp_path / "ok.jsonl"))] == [
        (12,),
        (12,),
    ]
    bad = {**good, "answers": {"text": ["France"], "answer_start": [3]}}
    write_jsonl(tmp_path / "bad.jsonl", [good, bad])
    with pytest.raises(InputError, match=r"bad\.jsonl:2: answer 'France' is not at offset 3"):
        load_qa_examples(str(tmp_path / "bad.jsonl"))
    write_jsonl(tmp_path / "pool.jsonl", [good, good, {"context": "No answer here."}])
    pool = load_qa_pool(str(tmp_path / "pool.jsonl"), fields=QAFields())
    assert pool == [("Paris is in France.", ("France",), (12,)), ("No answer here.", (), ())]
    assert find_span("Paris is in France.", '"france"') == 12
    assert find_span("Paris is in France.", "Spain") is None


def test_example_qa_config_loads_with_its_data_and_prompts() -> None:
    settings = load_s3_settings(load_config(QA / "s3-local.toml"))
    gold = load_gold(settings)
    assert gold.mining and gold.dev and gold.test and not gold.needs_span
    assert not {r["context"] for r in gold.dev} & {r["context"] for r in gold.mining}
    prompts = load_prompt_set(settings)
    assert {"context", "answer"} <= prompts.seed.fields and "example" in prompts.extrapolate.fields


@needs_student
def test_qa_run_keeps_context_and_answer_and_reports_em_f1(tmp_path: Path) -> None:
    with SimServer(reply=qa_reply(CONTEXTS), record=True) as sim:
        report = run(make_config(sim.url, qa_s3(tmp_path)), tmp_path / "out")
        bodies = list(sim.stats.bodies)
    out = tmp_path / "out"
    assert report["task"] == "qa" and report["metric"] == "f1"
    final = report["final"]
    assert set(final["test"]) == {"exact_match", "f1", "n"} and final["test"]["n"] == 15
    assert 0 <= final["test"]["exact_match"] <= final["test"]["f1"] <= 1
    gold = load_gold(load_s3_settings(make_config("http://127.0.0.1:9/v1", qa_s3(tmp_path))))
    mining = {(r["context"], r["answers"]["text"][0]) for r in gold.mining}
    seed = read_jsonl(out / "seed.jsonl")
    assert len(seed) + report["seed"]["unfilled"] == 24 and len(seed) >= 20
    for row in seed:  # seed questions are written for mining contexts and answer spans
        assert (row["context"], row["answers"]["text"][0]) in mining
        start = row["answers"]["answer_start"][0]
        assert row["context"][start:].startswith(row["answers"]["text"][0])
        assert row["question"].startswith("What comes after") and '"' not in row["question"]
    errors = read_jsonl(out / "round_1/errors.jsonl")
    metrics = json.loads((out / "round_1/metrics.json").read_text())
    assert set(metrics["mining"]) == {"exact_match", "f1", "n"}
    assert len(errors) == round((1 - metrics["mining"]["exact_match"]) * metrics["mining"]["n"])
    added = read_jsonl(out / "round_1/added.jsonl")
    by_id = {e["id"]: e for e in errors}
    assert added and len(added) <= len(errors)
    for row in added:  # extrapolation keeps the context and the answer, writes a new question
        error = by_id[row["from"]]
        assert row["context"] == error["context"] and row["answers"] == {
            "text": [error["answers"]["text"][0]],
            "answer_start": [error["answers"]["answer_start"][0]],
        }
        assert row["question"] != error["question"]
    extrapolations = [_message(b) for b in bodies if "Here is a question about it" in _message(b)]
    assert len(extrapolations) == len(errors)
    assert all(
        any(e["question"] in m and e["context"] in m for m in extrapolations) for e in errors
    )
    dev_contexts = {r["context"] for r in read_jsonl(out / "final/train.jsonl")}
    sent = "\n".join(_message(b) for b in bodies)
    test_rows = [json.loads(line) for line in (QA / "test.jsonl").read_text().splitlines()]
    assert not any(row["context"] in sent for row in test_rows)
    assert dev_contexts


@needs_student
def test_the_llm_may_pick_the_span_and_answers_outside_the_context_are_dropped(
    tmp_path: Path,
) -> None:
    write_jsonl(tmp_path / "contexts.jsonl", [{"context": c} for c in CONTEXTS])
    table = qa_s3(
        tmp_path, contexts=str(tmp_path / "contexts.jsonl"), prompt_set="generic-qa", rounds=0
    )
    with SimServer(reply=qa_reply(CONTEXTS)) as sim:
        report = run(make_config(sim.url, table), tmp_path / "out")
    seed = read_jsonl(tmp_path / "out/seed.jsonl")
    assert seed
    for row in seed:
        text, start = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        assert row["context"][start : start + len(text)] == text
    dropped = read_jsonl(tmp_path / "out/seed.dropped.jsonl")
    assert dropped and {d["reason"] for d in dropped} == {"answer_not_in_context"}
    assert report["cleaning"]["dropped"]["answer_not_in_context"] == len(dropped)
