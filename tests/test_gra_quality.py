"""The GRA quality benchmark's mechanics: checkers, the sandbox, and the lift it reports,
against a simulated pool whose generators and reviewers are right with known odds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncsynth.pipelines.gra import GraSettings
from asyncsynth.testing import SimServer
from asyncsynth.testing.gra_pool import pool_config

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gra_quality.py"
_SPEC = importlib.util.spec_from_file_location("gra_quality", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
quality: Any = importlib.util.module_from_spec(_SPEC)
sys.modules["gra_quality"] = quality
_SPEC.loader.exec_module(quality)


def test_numbers_are_read_from_the_end_of_a_response() -> None:
    assert quality.final_number("3 + 4 = 7, so the answer is 1,250.5 apples.") == 1250.5
    assert quality.final_number("It is \u22123.") == -3
    assert quality.final_number("no numbers here") is None
    task = quality.Task("t", "conversion", "Convert", answer=17.78, tolerance=0.005)
    assert quality.check(task, "About 17.8 cm.")[0]
    assert quality.check(task, "About 18 cm.") == (False, "ends with 18, expected 17.78")


def test_every_task_kind_checks_its_right_and_wrong_answers() -> None:
    tasks = quality.make_tasks(90, seed=3)
    assert {t.kind for t in tasks} == set(quality.KINDS)
    assert len({t.instruction for t in tasks}) == 90
    for task in tasks:
        assert quality.check(task, task.reference) == (True, ""), task.instruction
        assert not quality.check(task, task.wrong)[0], task.instruction


def test_code_runs_limited_in_a_temporary_folder() -> None:
    ok, why = quality.run_tests("def f():\n    return 1", "assert f() == 1")
    assert ok and why == ""
    assert quality.run_tests("def f():\n    return 2", "assert f() == 1") == (
        False,
        "AssertionError",
    )
    assert quality.run_tests("while True:\n    pass", "")[1] == "killed by signal 9 (a limit)"
    assert quality.run_tests("x = bytearray(2 ** 31)", "")[1] == "MemoryError"
    big = "open('big.txt', 'w').write('a' * (5 << 20))"
    assert "File too large" in quality.run_tests(big, "")[1]
    slow = "import time\ntime.sleep(30)"
    assert quality.run_tests(slow, "", wall_s=0.5) == (False, "timed out after 0.5 s")
    cwd = "import os\nassert os.path.basename(os.getcwd()).startswith('gra-quality-')"
    assert quality.run_tests(cwd, "")[0]
    assert quality.extract_code("Here:\n```python\nx = 1\n```\nand\n```py\ny = 2\n```") == (
        "x = 1\n\n\ny = 2\n"
    )


def _judged(
    tasks: list[Any], generators: dict[str, float], reviewers: dict[str, float], tmp: Path
) -> tuple[list[Any], Any, Any]:
    script = quality.simulated_script(tasks, generators, reviewers)
    with SimServer(reply=script) as sim:
        config = pool_config(sim.url, tuple(generators))
        settings = GraSettings.from_config(config)
        outcomes = anyio.run(lambda: quality.judge(config, settings, tasks, tmp))
    return outcomes, settings, script


def test_perfect_reviewers_keep_every_right_answer_and_no_wrong_one(tmp_path: Path) -> None:
    tasks = quality.make_tasks(45)
    outcomes, settings, _ = _judged(
        tasks, quality.GENERATOR_ACCURACY, dict.fromkeys(quality.GENERATOR_ACCURACY, 1.0), tmp_path
    )
    summary = quality.summarise(outcomes, settings)
    overall = summary["overall"]
    assert overall["all"]["n"] == 45 and summary["unchecked"] == 0
    assert overall["accepted"]["share"] == 1.0 and overall["rejected"]["share"] == 0.0
    assert overall["accepted"]["n"] == overall["all"]["correct"]
    assert overall["kept_of_correct"] == 1.0 and overall["kept_of_wrong"] == 0.0
    assert overall["lift"] == round(1.0 - overall["all"]["share"], 4) > 0
    assert all(r["vote_accuracy"] in (1.0, None) for r in summary["reviewers"].values())
    assert summary["rejected"] == {"low_mean": overall["rejected"]["n"]}


def test_the_figures_match_what_the_scripted_pool_did(tmp_path: Path) -> None:
    tasks = quality.make_tasks(60, seed=1)
    generators, reviewers = quality.GENERATOR_ACCURACY, quality.REVIEWER_ACCURACY
    outcomes, settings, script = _judged(tasks, generators, reviewers, tmp_path)
    summary = quality.summarise(outcomes, settings)
    draw = quality._draw
    for o in outcomes:  # each response is what its generator's odds drew, checked as such
        c = o.candidate
        right = draw("generate", c.roles.generator, o.task.id) < generators[c.roles.generator]
        assert o.correct == right and c.response == (o.task.reference if right else o.task.wrong)
    for model, figures in summary["reviewers"].items():
        reviews = [
            (o, r) for o in outcomes for r in o.candidate.verdict.reviews if r.model == model
        ]
        agreed = sum(draw("review", model, o.task.id) < reviewers[model] for o, _ in reviews)
        assert figures["reviews"] == len(reviews)
        if reviews:
            assert figures["vote_accuracy"] == round(agreed / len(reviews), 4)
    for model, figures in summary["generators"].items():
        mine = [o for o in outcomes if o.candidate.roles.generator == model]
        assert figures["all"] == {
            "n": len(mine),
            "correct": sum(bool(o.correct) for o in mine),
            "share": round(sum(bool(o.correct) for o in mine) / len(mine), 4),
        }
    disputes = sum(a["adjudications"] for a in summary["adjudicators"].values())
    assert disputes == script.count("adjudicate") > 0
    overall = summary["overall"]
    assert overall["accepted"]["n"] + overall["rejected"]["n"] == 60
    assert overall["lift"] > 0  # reviewers right 60-90% of the time do filter


def test_reviewers_who_are_always_wrong_keep_only_wrong_answers(tmp_path: Path) -> None:
    tasks = quality.make_tasks(30)
    outcomes, settings, _ = _judged(
        tasks, quality.GENERATOR_ACCURACY, dict.fromkeys(quality.GENERATOR_ACCURACY, 0.0), tmp_path
    )
    overall = quality.summarise(outcomes, settings)["overall"]
    assert overall["accepted"]["share"] == 0.0 and overall["rejected"]["share"] == 1.0
    assert overall["lift"] < 0


def test_the_expected_lift_of_independent_reviewers() -> None:
    assert quality.expected_lift(0.6, 1.0, 1.0) == (0.6, 1.0)
    assert quality.expected_lift(0.6, 0.5, 0.5) == pytest.approx((0.6, 0.6))
    _, accepted = quality.expected_lift(0.5, 0.8, 0.8)
    assert accepted == pytest.approx(
        (0.512 + 3 * 0.64 * 0.2 * 0.8)
        / (0.512 + 3 * 0.64 * 0.2 * 0.8 + 0.008 + 3 * 0.04 * 0.8 * 0.2)
    )


def test_the_command_prints_and_writes_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = quality.main(["--tasks", "12", "--out", str(tmp_path), "--reviewer-accuracy", "0.9"])
    printed = capsys.readouterr().out
    assert "correct share" in printed and "overall" in printed and "vote accuracy" in printed
    assert (tmp_path / "quality.json").is_file() and (tmp_path / "quality.journal.sqlite").is_file()
    assert summary["simulated"]["expected"]["all"] == pytest.approx(0.6)
