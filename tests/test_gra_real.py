"""GRA end to end against real models: llama.cpp serving SmolLM2-135M (``-m real_llm``).

Two endpoints of the same GGUF at different temperatures make a pool of two "models";
with one reviewer a sample still needs three distinct ones, so roles are shared
(``allow_shared_roles``). Tiny budgets keep it to a minute or two on two CPU cores. The
quality of such small reviewers is poor: the test checks the mechanics (the run
completes and writes every output, each candidate accounted for), not the verdicts.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import anyio
import orjson
import pytest
from click.testing import CliRunner

from asyncsynth.cli import main
from asyncsynth.config import config_from_dict
from asyncsynth.pipelines.gra import JOURNAL_NAME, GraSettings, run_gra

pytestmark = [
    pytest.mark.real_llm,
    pytest.mark.slow,
]

SEEDS = [
    {
        "instruction": "What is the capital of France?",
        "response": "Paris.",
        "domain": "QA",
        "keywords": ["geography", "capital", "France"],
        "summary": "Name the capital city of France.",
    },
    {
        "instruction": "Write a Python function that adds two numbers.",
        "response": "def add(a, b):\n    return a + b",
        "domain": "coding",
        "keywords": ["python", "function", "addition"],
        "summary": "Write a function returning the sum of two numbers.",
    },
]
REASONS = {
    "instruction_fail",
    "low_mean",
    "adjudicator_reject",
    "parse_failure",
    "request_error",
    "duplicate",
}


def test_gra_runs_end_to_end_on_smollm2(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_bytes(b"".join(orjson.dumps(s, option=orjson.OPT_APPEND_NEWLINE) for s in SEEDS))
    local = {"kind": "local", "gguf": "smollm2", "max_concurrency": 1, "timeout": 300}
    budget = {"max_tokens": 96}
    config = config_from_dict(
        {
            "endpoints": {
                "smol": {**local, "params": {"temperature": 0.2}},
                "smol-hot": {**local, "model": "smol-hot", "params": {"temperature": 0.9}},
            },
            "engine": {"max_attempts": 2, "deadline": 600},
            "gra": {
                "pool": ["smol", "smol-hot"],
                "reviewers": 1,
                "allow_shared_roles": True,
                "seed_data": str(seeds),
                "domains": ["QA", "coding"],
                "examples_per_prompt": 1,
                "embedding_model": "none",
                "max_rounds": 1,
                "params": {stage: budget for stage in ("generate", "review", "adjudicate")},
            },
        },
        "<real test>",
    )
    out = tmp_path / "out"
    settings = GraSettings.from_config(config).with_overrides(target=2, round_size=2, seed=1)
    result = anyio.run(lambda: run_gra(config, out, settings=settings))

    assert result.candidates == 2 and result.rounds == 1
    for name in ("accepted.jsonl", "rejected.jsonl", "pool.jsonl", "report.json", JOURNAL_NAME):
        assert (out / name).is_file(), name
    rows = {
        name: [orjson.loads(x) for x in (out / name).read_bytes().splitlines() if x.strip()]
        for name in ("accepted.jsonl", "rejected.jsonl")
    }
    assert len(rows["accepted.jsonl"]) + len(rows["rejected.jsonl"]) == 2
    assert len(rows["accepted.jsonl"]) == result.accepted
    for row in rows["rejected.jsonl"]:
        assert row["reason"] in REASONS and row["stage"]
    for row in rows["accepted.jsonl"]:
        assert row["instruction"] and row["response"] and row["mu"] >= 8
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["candidates"] == 2
    assert report["committee"]["samples_with_shared_roles"] == 2
    assert report["engine"]["requests"] > 0
    assert set(report["structured_formats"]) <= {"smol", "smol-hot"}


def test_the_local_example_ends_within_its_bound_with_its_account(tmp_path: Path) -> None:
    """examples/gra/local.toml, with a smaller budget: it ends on its own, with a report and
    the plain-words account, within the bound its header states."""
    example = Path(__file__).resolve().parents[1] / "examples" / "gra" / "local.toml"
    stated = tomllib.loads(example.read_text())["gra"]["time_budget"]
    assert "no candidate starts after 5 minutes" in example.read_text()
    out = tmp_path / "out"
    args = ["gra", str(example), "--out", str(out), "--time-budget", "60", "--round-size", "3"]
    result = CliRunner().invoke(main, [*args, "--max-rounds", "1"])
    assert result.exit_code in (0, 1), result.output
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["stopped"] in ("target_reached", "max_rounds", "time_budget")
    assert report["candidates"] >= 1 and report["bounds"]["time_budget"] == 60
    assert report["engine"]["wall_s"] <= stated
    assert "Stopped because" in result.output
    if report["accepted"] < report["candidates"]:
        assert "Why samples were rejected:" in result.output
