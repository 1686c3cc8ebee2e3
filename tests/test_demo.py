"""`asyncsynth demo gra|s3|run`: whole jobs on the simulated endpoint, real run folders,
and next steps that work."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner, Result
from sample_runs import HAS_STUDENT, read_rows

from asyncsynth.cli import main
from asyncsynth.demo import next_steps, run_demo
from asyncsynth.export.runs import open_run


def _demo(*args: str) -> Result:
    result = CliRunner().invoke(main, ["demo", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def _hints(result: Result) -> list[str]:
    """The commands the demo printed after its run (comments dropped)."""
    _, _, tail = result.stdout.partition("Next:\n")
    return [line.split("  #")[0].strip() for line in tail.splitlines() if line.strip()]


def _run_hint(hints: list[str], prefix: str) -> Result:
    (command,) = [h for h in hints if h.startswith(prefix)]
    args = shlex.split(command)[1:]  # drop "asyncsynth"
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def test_gra_demo_runs_every_committee_branch_into_a_real_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = _demo("gra")
    out = tmp_path / "demo-gra"
    for name in ("accepted.jsonl", "rejected.jsonl", "pool.jsonl", "report.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "demo" / "gra.toml").exists()
    assert open_run(out).kind == "gra"
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["stopped"] == "target_reached"
    assert report["accepted"] >= report["target"] == 20
    reasons = ("instruction_fail", "low_mean", "adjudicator_reject", "parse_failure")
    for reason in (*reasons, "truncated", "duplicate"):
        assert report["rejected"][reason] > 0, reason
    assert report["adjudication"]["kept"] > 0
    decisions = {row["decision"] for row in read_rows(out / "accepted.jsonl")}
    assert decisions == {"consensus", "adjudicated"}
    # the account in plain words, then the next commands, which work as printed
    assert "Why samples were rejected:" in result.stderr
    hints = _hints(result)
    assert hints[0] == "asyncsynth view demo-gra"
    assert any(h.startswith("asyncsynth gra examples/gra/vllm.toml") for h in hints)
    _run_hint(hints, "asyncsynth export")
    exported = read_rows(tmp_path / "demo-gra.jsonl")
    assert len(exported) == report["accepted"]
    assert exported[0]["messages"][1]["role"] == "assistant"


def test_a_demo_run_again_resumes_from_its_journal(tmp_path: Path) -> None:
    out = tmp_path / "g"
    first = anyio.run(lambda: run_demo("gra", out))
    rows = (out / "accepted.jsonl").read_bytes()
    again = anyio.run(lambda: run_demo("gra", out))
    assert (out / "accepted.jsonl").read_bytes() == rows
    assert again.result.accepted == first.result.accepted
    assert first.result.report["engine"]["cached"] == 0
    engine = again.result.report["engine"]
    assert engine["cached"] == engine["requests"] > 0  # nothing sent again
    assert again.next_steps == next_steps("gra", out)


def test_run_demo_answers_every_prompt(tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = _demo("run", "--out", str(out), "-q")
    rows = read_rows(out / "answers.jsonl")
    assert len(rows) == 48
    assert all(row["completion"].startswith("A short answer to") for row in rows)
    assert not (out / "answers.errors.jsonl").exists() or not read_rows(
        out / "answers.errors.jsonl"
    )
    hints = _hints(result)
    assert f"asyncsynth view {out}" in hints
    assert any("--base-url http://localhost:8000/v1 --model NAME" in h for h in hints)
    _run_hint(hints, "asyncsynth export")
    assert (tmp_path / "r.parquet").stat().st_size > 0


@pytest.mark.skipif(not HAS_STUDENT, reason="needs the [student] extra")
def test_s3_demo_runs_the_whole_loop_and_the_student_learns(tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = _demo("s3", "--out", str(out))
    report: dict[str, Any] = orjson.loads((out / "report.json").read_bytes())
    rounds = report["rounds"]
    assert len(rounds) == 2
    assert all(r["added"] > 0 for r in rounds)  # errors mined and extrapolated each round
    first, final = rounds[0]["dev"]["accuracy"], report["final"]["dev"]["accuracy"]
    assert final > first  # the extrapolated examples taught the unseen words
    assert report["final"]["test"]["accuracy"] > 0.5
    assert "test accuracy" in result.stderr
    hints = _hints(result)
    assert f"asyncsynth view {out}" in hints
    _run_hint(hints, "asyncsynth export")
    assert (tmp_path / "s-data" / "dataset_dict.json").exists()


def test_unknown_demo_is_refused() -> None:
    result = CliRunner().invoke(main, ["demo", "nope"])
    assert result.exit_code == 2
    assert "'nope' is not one of 'gra', 's3', 'run'" in result.stderr
    with pytest.raises(ValueError, match="unknown demo 'nope'"):
        anyio.run(lambda: run_demo("nope", "x"))  # type: ignore[arg-type]
