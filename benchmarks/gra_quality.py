"""GRA quality: does the committee's filter raise the share of correct responses?

    python benchmarks/gra_quality.py                                   # simulated pool
    python benchmarks/gra_quality.py --reviewer-accuracy 0.8           # every reviewer 80% right
    python benchmarks/gra_quality.py --config examples/gra/local.toml --tasks 24 --out runs/q-local
    python benchmarks/gra_quality.py --config examples/gra/vllm.toml --tasks 900 --out runs/q-vllm

Tasks whose answers a program can check: arithmetic word problems (a numeric answer),
unit conversions (a number, within 0.5%), and short Python functions (hidden tests). For
each task a generator drawn from the pool writes the response with GRA's own prompt, and
the committee judges it exactly as ``asyncsynth gra`` does (instruction check, response
scores, adjudication of disputes, truncated responses rejected; see ``SampleMaker.answer``),
except that the response is written before the instruction check, so that every sample has
one to check; a sample whose instruction check failed is also scored, and the line "without
instr. check" shows what the scores and the adjudicator alone would have decided.
Then every response is checked, and the benchmark reports the share of correct responses
among all the responses, among those the committee accepted and among those it rejected
(the lift: accepted minus all), with counts, per task kind, per model as generator, per
model as reviewer (how often its vote, score >= tau, agreed with the check) and per model
as adjudicator.

Code is checked only here, never in a pipeline run: each response's code runs in a fresh
``python -I -S`` subprocess in a temporary folder, with limits on CPU time (2 s), address
space (512 MiB), file size (1 MiB) and wall time (10 s), then the folder is deleted.

Without ``--config``, a simulated pool of five models plays every role: each generator
answers correctly with a known probability, and each reviewer (and adjudicator) judges
correctly with a known probability (10 when it judges a response right, 6 when wrong),
so the lift printed can be compared with what those accuracies imply. With ``--config``,
the pool of its ``[gra]`` section answers (any OpenAI-compatible endpoints: the local
llama.cpp pool, vLLM servers, a hosted API); the journal in ``--out`` makes a stopped run
resume where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson

from asyncsynth import Engine
from asyncsynth.config import Config, load_config
from asyncsynth.pipelines.gra import RESPONSE_CRITERIA, GraSettings, draw_roles
from asyncsynth.pipelines.gra.decision import keeps
from asyncsynth.pipelines.gra.samples import Candidate, SampleMaker, sample_rng
from asyncsynth.pipelines.gra.verdict import Verdict
from asyncsynth.testing.gra_pool import Call, GraScript, pool_config

KINDS = ("arithmetic", "conversion", "code")
GENERATOR_ACCURACY = {"a": 0.9, "b": 0.75, "c": 0.6, "d": 0.45, "e": 0.3}
REVIEWER_ACCURACY = {"a": 0.9, "b": 0.85, "c": 0.8, "d": 0.7, "e": 0.6}
"""The simulated pool: how often each model answers, and judges, correctly."""
CPU_S, MEMORY_MB, FILE_MB, WALL_S = 2, 512, 1, 10.0
"""Limits of one code check."""


# -- tasks -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    kind: str
    instruction: str
    answer: float | None = None
    """The number a numeric task's response must end with."""
    tolerance: float = 1e-9
    """Relative tolerance on :attr:`answer`."""
    tests: str | None = None
    """Python asserts a code task's function must pass."""
    reference: str = ""
    """A correct response (the simulated generators' right answer)."""
    wrong: str = ""
    """An incorrect one (their wrong answer)."""


def _arithmetic(rng: random.Random, tid: str) -> Task:
    a, b, c = rng.randint(20, 90), rng.randint(2, 19), rng.randint(2, 9)
    problems = [
        (
            f"A baker makes {a} loaves each morning and sells {b} of them by noon. "
            "How many loaves are left at noon?",
            a - b,
        ),
        (f"Tickets cost {c} dollars each. How much do {b} tickets cost, in dollars?", b * c),
        (f"{c} friends share {c * b} stickers equally. How many stickers does each get?", b),
        (
            f"A tank holds {a} litres. {b} litres are added, then {c} litres are used. "
            "How many litres are in the tank now?",
            a + b - c,
        ),
        (
            f"A book has {a + b * c} pages. Sam reads {c} pages a day for {b} days. "
            "How many pages are left to read?",
            a,
        ),
        (f"A box holds {c} rows of {b} eggs. How many eggs are in {c} boxes?", c * b * c),
    ]
    text, answer = problems[rng.randrange(len(problems))]
    off = rng.choice([-2, -1, 1, 2, 10])
    return Task(
        tid,
        "arithmetic",
        f"{text} Show your working briefly and end with the final answer as a number.",
        float(answer),
        reference=f"Working it out step by step, the answer is {answer}.",
        wrong=f"Working it out step by step, the answer is {answer + off}.",
    )


_UNITS = [
    ("kilometres", "metres", 1000.0),
    ("metres", "centimetres", 100.0),
    ("hours", "minutes", 60.0),
    ("kilograms", "grams", 1000.0),
    ("litres", "millilitres", 1000.0),
    ("inches", "centimetres", 2.54),
    ("miles", "kilometres", 1.609344),
    ("minutes", "seconds", 60.0),
]


def _conversion(rng: random.Random, tid: str) -> Task:
    src, dst, factor = _UNITS[rng.randrange(len(_UNITS))]
    value = rng.choice([0.25, 0.5, 0.75, 1.5, 2.5, 3.5, 4.5, 9.5, *range(2, 31)])
    answer = value * factor
    shown = f"{answer:.4f}".rstrip("0").rstrip(".")
    wrong = f"{answer / factor / factor if factor > 1 else answer * 2:.4f}".rstrip("0").rstrip(".")
    return Task(
        tid,
        "conversion",
        f"Convert {value:g} {src} to {dst}. End with the result as a number.",
        answer,
        tolerance=0.005,
        reference=f"1 {src[:-1]} is {factor:g} {dst}, so {value:g} {src} is {shown} {dst}.",
        wrong=f"Dividing instead of multiplying gives {wrong} {dst}.",
    )


_FUNCTIONS = [
    (
        "is_even(n)",
        "returns True when the integer n is even and False otherwise",
        "assert is_even(0) and is_even(-4) and is_even(10)\n"
        "assert not is_even(1) and not is_even(-3)",
        "def is_even(n):\n    return n % 2 == 0",
        "def is_even(n):\n    return n % 2 == 1",
    ),
    (
        "reverse_words(s)",
        "returns the words of the string s in reverse order, joined by single spaces",
        'assert reverse_words("a b c") == "c b a"\nassert reverse_words("hello") == "hello"\n'
        'assert reverse_words("  x  y ") == "y x"',
        "def reverse_words(s):\n    return ' '.join(reversed(s.split()))",
        "def reverse_words(s):\n    return s[::-1]",
    ),
    (
        "count_vowels(s)",
        "returns how many vowels (a, e, i, o, u, in either case) the string s contains",
        'assert count_vowels("hello") == 2\nassert count_vowels("AEIOU xyz") == 5\n'
        'assert count_vowels("") == 0',
        "def count_vowels(s):\n    return sum(ch in 'aeiouAEIOU' for ch in s)",
        "def count_vowels(s):\n    return sum(ch in 'aeiou' for ch in s)",
    ),
    (
        "factorial(n)",
        "returns n! for a non-negative integer n (factorial(0) is 1)",
        "assert factorial(0) == 1 and factorial(1) == 1\nassert factorial(5) == 120\n"
        "assert factorial(10) == 3628800",
        "def factorial(n):\n    out = 1\n    for k in range(2, n + 1):\n        out *= k\n"
        "    return out",
        "def factorial(n):\n    out = 1\n    for k in range(2, n):\n        out *= k\n"
        "    return out",
    ),
    (
        "sum_digits(n)",
        "returns the sum of the decimal digits of the non-negative integer n",
        "assert sum_digits(0) == 0 and sum_digits(7) == 7\nassert sum_digits(12345) == 15",
        "def sum_digits(n):\n    return sum(int(d) for d in str(n))",
        "def sum_digits(n):\n    return len(str(n))",
    ),
    (
        "is_palindrome(s)",
        "returns True when the string s reads the same backwards, ignoring case and every "
        "character that is not a letter or a digit",
        'assert is_palindrome("A man, a plan, a canal: Panama")\n'
        'assert not is_palindrome("hello")\nassert is_palindrome("")',
        "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n"
        "    return t == t[::-1]",
        "def is_palindrome(s):\n    return s == s[::-1]",
    ),
    (
        "fizzbuzz(n)",
        "returns 'FizzBuzz' when n is a multiple of 15, 'Fizz' for other multiples of 3, "
        "'Buzz' for other multiples of 5, and str(n) otherwise",
        'assert fizzbuzz(3) == "Fizz" and fizzbuzz(10) == "Buzz"\n'
        'assert fizzbuzz(30) == "FizzBuzz" and fizzbuzz(7) == "7"',
        "def fizzbuzz(n):\n    if n % 15 == 0:\n        return 'FizzBuzz'\n"
        "    if n % 3 == 0:\n        return 'Fizz'\n    if n % 5 == 0:\n        return 'Buzz'\n"
        "    return str(n)",
        "def fizzbuzz(n):\n    if n % 3 == 0:\n        return 'Fizz'\n"
        "    if n % 5 == 0:\n        return 'Buzz'\n    return str(n)",
    ),
    (
        "second_largest(xs)",
        "returns the second largest distinct value of the list xs (which holds at least "
        "two distinct values)",
        "assert second_largest([1, 5, 3]) == 3\nassert second_largest([4, 4, 2]) == 2\n"
        "assert second_largest([-1, -2]) == -2",
        "def second_largest(xs):\n    return sorted(set(xs))[-2]",
        "def second_largest(xs):\n    return sorted(xs)[-2]",
    ),
]


def _families(k: int) -> list[tuple[str, str, str, str, str]]:
    """Functions with a parameter ``k`` (2-9): many distinct tasks."""
    below = [m for m in range(k, 50, k)]
    powers = sum(i**k for i in range(1, 6))
    return [
        (
            "multiples_below(n)",
            f"returns the list of the positive multiples of {k} that are less than n, in "
            "increasing order",
            f"assert multiples_below(50) == {below}\nassert multiples_below({k}) == []\n"
            "assert multiples_below(1) == []",
            f"def multiples_below(n):\n    return list(range({k}, n, {k}))",
            f"def multiples_below(n):\n    return list(range({k}, n + 1, {k}))",
        ),
        (
            "count_long_words(s)",
            f"returns how many words of the string s (split on whitespace) have more than {k} "
            "characters",
            f"assert count_long_words({'a' * k + ' ' + 'b' * (k + 1) + ' cc'!r}) == 1\n"
            'assert count_long_words("") == 0',
            f"def count_long_words(s):\n    return sum(len(w) > {k} for w in s.split())",
            f"def count_long_words(s):\n    return sum(len(w) >= {k} for w in s.split())",
        ),
        (
            "power_sum(n)",
            f"returns 1**{k} + 2**{k} + ... + n**{k} for a non-negative integer n",
            f"assert power_sum(5) == {powers}\nassert power_sum(0) == 0\nassert power_sum(1) == 1",
            f"def power_sum(n):\n    return sum(i ** {k} for i in range(1, n + 1))",
            f"def power_sum(n):\n    return sum(i ** {k} for i in range(1, n))",
        ),
    ]


def _code(rng: random.Random, tid: str) -> Task:
    choices = _FUNCTIONS + _families(rng.randint(2, 9))
    signature, what, tests, good, bad = choices[rng.randrange(len(choices))]
    return Task(
        tid,
        "code",
        f"Write a Python function `{signature}` that {what}. Reply with the code in one "
        "```python block.",
        tests=tests,
        reference=f"```python\n{good}\n```",
        wrong=f"```python\n{bad}\n```",
    )


_MAKERS: dict[str, Callable[[random.Random, str], Task]] = {
    "arithmetic": _arithmetic,
    "conversion": _conversion,
    "code": _code,
}


def make_tasks(n: int, seed: int = 0) -> list[Task]:
    """``n`` distinct tasks, the kinds in turn."""
    rng = random.Random(f"gra-quality:{seed}")
    tasks: list[Task] = []
    seen: set[str] = set()
    tries = 0
    while len(tasks) < n:
        kind = KINDS[len(tasks) % len(KINDS)]
        task = _MAKERS[kind](rng, f"q-{len(tasks):05d}")
        tries += 1
        if task.instruction not in seen or tries > 50 * n:  # past that, repeats are allowed
            seen.add(task.instruction)
            tasks.append(task)
    return tasks


# -- checking ----------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def final_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators allowed)."""
    found = _NUMBER.findall(text.replace("\u2212", "-"))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def extract_code(text: str) -> str:
    """The response's code: its fenced blocks, else the whole text."""
    blocks = _FENCE.findall(text)
    return "\n\n".join(blocks) if blocks else text


_LAUNCHER = f"""\
import resource, runpy, sys
sys.path.insert(0, ".")  # the temporary folder: solution.py
resource.setrlimit(resource.RLIMIT_CPU, ({CPU_S}, {CPU_S}))
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_MB} << 20, {MEMORY_MB} << 20))
resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_MB} << 20, {FILE_MB} << 20))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
runpy.run_path("check.py", run_name="__main__")
"""
"""Sets the limits in the child before any of the response's code runs (thread-safe,
unlike ``preexec_fn``)."""


def run_tests(code: str, tests: str, *, wall_s: float = WALL_S) -> tuple[bool, str]:
    """Run ``code`` then ``tests`` in a limited subprocess in a temporary folder:
    (passed, why not)."""
    with tempfile.TemporaryDirectory(prefix="gra-quality-") as folder:
        Path(folder, "solution.py").write_text(code)
        Path(folder, "check.py").write_text(f"from solution import *\n\n{tests}\n")
        Path(folder, "launch.py").write_text(_LAUNCHER)
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", "launch.py"],
            cwd=folder,
            env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: killed whole on a timeout
        )
        try:
            _, stderr = child.communicate(timeout=wall_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return False, f"timed out after {wall_s:g} s"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # anything it left behind
    if child.returncode == 0:
        return True, ""
    if child.returncode < 0:
        return False, f"killed by signal {-child.returncode} (a limit)"
    tail = stderr.decode(errors="replace").strip().splitlines()
    return False, tail[-1][:200] if tail else f"exit {child.returncode}"


def check(task: Task, response: str) -> tuple[bool, str]:
    """Whether ``response`` answers ``task`` correctly, and why not."""
    if task.tests is not None:
        return run_tests(extract_code(response), task.tests)
    assert task.answer is not None
    got = final_number(response)
    if got is None:
        return False, "no number in the response"
    if math.isclose(got, task.answer, rel_tol=task.tolerance, abs_tol=1e-9):
        return True, ""
    return False, f"ends with {got:g}, expected {task.answer:g}"


# -- judging -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    task: Task
    candidate: Candidate
    correct: bool | None = None
    """``None``: no response to check (its generation failed)."""
    why: str = ""
    scores_alone: Verdict | None = None
    """For a sample whose instruction check failed: what the response scores alone decide."""

    @property
    def verdicts(self) -> list[Verdict]:
        return [v for v in (self.candidate.verdict, self.scores_alone) if v is not None]

    @property
    def accepted_by_scores(self) -> bool:
        """The decision without the instruction check (phase 2 and adjudication alone)."""
        if self.scores_alone is not None:
            return self.scores_alone.accepted
        return self.candidate.status == "accepted"


async def _slots(engine: Engine, settings: GraSettings) -> int:
    slots = 0
    for name in settings.committee.pool:
        fleet = await engine.fleet(name)
        slots += sum(int(ep.limit.cap) for ep in fleet.endpoints)
    return slots


async def judge(
    config: Config,
    settings: GraSettings,
    tasks: Sequence[Task],
    out_dir: Path,
    *,
    time_budget: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome]:
    """Every task answered by a drawn generator and judged by the committee, then checked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    started = time.monotonic()
    async with Engine(config, journal=out_dir / "quality.journal.sqlite") as engine:
        maker = SampleMaker(engine, settings)
        limit = anyio.CapacityLimiter(max(1, 2 * await _slots(engine, settings)))
        checks = anyio.CapacityLimiter(max(1, (os.cpu_count() or 2) // 2))

        async def one(index: int, task: Task) -> None:
            async with limit:
                if time_budget is not None and time.monotonic() - started > time_budget:
                    return
                rng = sample_rng(settings.seed, "quality", task.id)
                roles = draw_roles(rng, settings.committee, draw_generator=True)
                c = Candidate(task.id, index, 1, "generate", roles, task.kind)
                c.instruction = task.instruction
                await maker.answer(c, check_first=False)  # every sample gets its response
                outcome = Outcome(task, c)
                if c.reason == "instruction_fail" and c.response is not None:
                    outcome.scores_alone = Verdict(roles)
                    await maker.committee.score_response(
                        outcome.scores_alone, task.instruction, c.response
                    )
            if c.status == "passed":
                c.status = "accepted"
            if c.response is not None:
                async with checks:
                    outcome.correct, outcome.why = await anyio.to_thread.run_sync(
                        check, task, c.response
                    )
            outcomes.append(outcome)
            if progress is not None:
                progress(len(outcomes), len(tasks))

        async with anyio.create_task_group() as tg:
            for index, task in enumerate(tasks):
                tg.start_soon(one, index, task)
    return sorted(outcomes, key=lambda o: o.candidate.index)


# -- the figures -------------------------------------------------------------------------------


def _share(group: Sequence[Outcome]) -> dict[str, Any]:
    correct = sum(bool(o.correct) for o in group)
    return {
        "n": len(group),
        "correct": correct,
        "share": round(correct / len(group), 4) if group else None,
    }


def _lift(group: Sequence[Outcome], *, scores_alone: bool = False) -> dict[str, Any]:
    """Correct shares among the checked responses: all, accepted, rejected; and the lift
    (``scores_alone``: as decided without the instruction check)."""
    checked = [o for o in group if o.correct is not None]

    def kept(o: Outcome) -> bool:
        return o.accepted_by_scores if scores_alone else o.candidate.status == "accepted"

    accepted = [o for o in checked if kept(o)]
    rejected = [o for o in checked if not kept(o)]
    out = {"all": _share(checked), "accepted": _share(accepted), "rejected": _share(rejected)}
    a, b = out["all"]["share"], out["accepted"]["share"]
    out["lift"] = round(b - a, 4) if a is not None and b is not None else None
    correct = [o for o in checked if o.correct]
    wrong = [o for o in checked if not o.correct]
    out["kept_of_correct"] = _share_of(correct, accepted)
    out["kept_of_wrong"] = _share_of(wrong, accepted)
    return out


def _share_of(part: Sequence[Outcome], kept: Sequence[Outcome]) -> float | None:
    ids = {id(o) for o in kept}
    return round(sum(id(o) in ids for o in part) / len(part), 4) if part else None


def _reviewers(outcomes: Sequence[Outcome], settings: GraSettings) -> dict[str, Any]:
    votes: dict[str, list[bool]] = defaultdict(list)
    scores: dict[str, dict[bool, list[float]]] = defaultdict(lambda: {True: [], False: []})
    for o in outcomes:
        if o.correct is None:
            continue
        for review in (r for v in o.verdicts for r in v.reviews):
            votes[review.model].append(keeps(review.exact, settings.committee) == o.correct)
            scores[review.model][o.correct].append(review.score)

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 3) if values else None

    return {
        model: {
            "reviews": len(votes[model]),
            "vote_accuracy": round(sum(votes[model]) / len(votes[model]), 4)
            if votes[model]
            else None,
            "mean_score_correct": mean(scores[model][True]),
            "mean_score_wrong": mean(scores[model][False]),
        }
        for model in settings.committee.pool
    }


def _adjudicators(outcomes: Sequence[Outcome], settings: GraSettings) -> dict[str, Any]:
    by: dict[str, list[tuple[Outcome, bool]]] = defaultdict(list)
    for o in outcomes:
        for v in o.verdicts:
            if o.correct is not None and v.adjudication is not None:
                by[v.adjudication.model].append((o, v.adjudication.keep))
    out = {}
    for model in settings.committee.pool:
        group = by[model]
        out[model] = {
            "adjudications": len(group),
            "kept": _share([o for o, keep in group if keep]),
            "rejected": _share([o for o, keep in group if not keep]),
        }
    return out


def summarise(outcomes: Sequence[Outcome], settings: GraSettings) -> dict[str, Any]:
    """Every figure of the benchmark, JSON-ready."""
    reasons: dict[str, int] = defaultdict(int)
    for o in outcomes:
        if o.candidate.status != "accepted":
            reasons[o.candidate.reason or "unknown"] += 1
    generators: dict[str, list[Outcome]] = defaultdict(list)
    kinds: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        generators[o.candidate.roles.generator or "?"].append(o)
        kinds[o.task.kind].append(o)
    return {
        "tasks": len(outcomes),
        "accepted": sum(o.candidate.status == "accepted" for o in outcomes),
        "unchecked": sum(o.correct is None for o in outcomes),
        "instruction_fail_scored": sum(o.scores_alone is not None for o in outcomes),
        "rejected": dict(sorted(reasons.items())),
        "overall": _lift(outcomes),
        "scores_alone": _lift(outcomes, scores_alone=True),
        "kinds": {k: _lift(kinds[k]) for k in KINDS if kinds[k]},
        "generators": {m: _lift(generators[m]) for m in settings.committee.pool if generators[m]},
        "reviewers": _reviewers(outcomes, settings),
        "adjudicators": _adjudicators(outcomes, settings),
        "committee": {
            "pool": list(settings.committee.pool),
            "reviewers": settings.committee.reviewers,
            "tau": settings.committee.tau,
            "delta": settings.committee.delta,
        },
    }


def _pct(share: dict[str, Any]) -> str:
    if share["share"] is None:
        return "   -  (0)"
    return f"{100 * share['share']:5.1f}% ({share['correct']}/{share['n']})"


def format_summary(summary: Mapping[str, Any]) -> str:
    lines = [
        f"{summary['tasks']} tasks, {summary['accepted']} accepted, "
        f"{summary['unchecked']} without a response to check; rejected: "
        + (", ".join(f"{n} {r}" for r, n in summary["rejected"].items()) or "none"),
        "",
        f"{'correct share':<24}{'all':>18}{'accepted':>18}{'rejected':>18}{'lift':>8}",
    ]

    def row(name: str, lift: Mapping[str, Any]) -> str:
        value = "-" if lift["lift"] is None else f"{100 * lift['lift']:+.1f}"
        return (
            f"{name:<24}{_pct(lift['all']):>18}{_pct(lift['accepted']):>18}"
            f"{_pct(lift['rejected']):>18}{value:>8}"
        )

    lines.append(row("overall", summary["overall"]))
    lines.append(row("  without instr. check", summary["scores_alone"]))
    if expected := summary.get("simulated", {}).get("expected"):
        lines.append(
            f"{'  expected':<24}{100 * expected['all']:>17.1f}%{100 * expected['accepted']:>17.1f}%"
            "    (independent reviewers of that accuracy)"
        )
    lines += [row(f"  {kind}", lift) for kind, lift in summary["kinds"].items()]
    lines += [row(f"  generator {m}", lift) for m, lift in summary["generators"].items()]
    lines.append("")
    lines.append(
        f"{'reviewer':<24}{'reviews':>8}{'vote accuracy':>15}{'score if right':>16}{'if wrong':>10}"
    )
    for m, r in summary["reviewers"].items():
        acc = "-" if r["vote_accuracy"] is None else f"{100 * r['vote_accuracy']:.1f}%"
        right = "-" if r["mean_score_correct"] is None else f"{r['mean_score_correct']:.2f}"
        wrong = "-" if r["mean_score_wrong"] is None else f"{r['mean_score_wrong']:.2f}"
        lines.append(f"  {m:<22}{r['reviews']:>8}{acc:>15}{right:>16}{wrong:>10}")
    lines.append("")
    lines.append(
        f"{'adjudicator':<24}{'disputes':>9}{'kept: correct':>20}{'rejected: correct':>20}"
    )
    for m, a in summary["adjudicators"].items():
        lines.append(
            f"  {m:<22}{a['adjudications']:>9}{_pct(a['kept']):>20}{_pct(a['rejected']):>20}"
        )
    return "\n".join(lines)


def expected_lift(
    p: float, q: float, adjudicator: float, reviewers: int = 3
) -> tuple[float, float]:
    """(all, accepted) correct shares for generators right with probability ``p`` and
    independent reviewers right with probability ``q`` who score 10 when they judge a
    response right and 6 when wrong (3 reviewers: all agree -> consensus or low mean; two
    for one against -> a dispute the adjudicator, right with ``adjudicator``, settles)."""
    assert reviewers == 3
    keep_right = q**3 + 3 * q**2 * (1 - q) * adjudicator
    keep_wrong = (1 - q) ** 3 + 3 * (1 - q) ** 2 * q * (1 - adjudicator)
    kept = p * keep_right + (1 - p) * keep_wrong
    return p, p * keep_right / kept if kept else float("nan")


# -- the simulated pool ------------------------------------------------------------------------


def _draw(*parts: object) -> float:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def simulated_script(
    tasks: Sequence[Task],
    generator_accuracy: Mapping[str, float],
    reviewer_accuracy: Mapping[str, float],
) -> GraScript:
    """A GraScript whose generators and reviewers are right with the given probabilities
    (drawn per model and task from a hash: the same run gives the same replies)."""
    by_instruction = {t.instruction: t for t in tasks}

    def respond(call: Call) -> str:
        task = by_instruction[call.user.strip()]
        right = _draw("generate", call.model, task.id) < generator_accuracy[call.model]
        return task.reference if right else task.wrong

    def judged(call: Call, stage: str) -> bool:
        task = by_instruction[call.field("Instruction")]
        truth = call.field("Response").strip() == task.reference.strip()
        right = _draw(stage, call.model, task.id) < reviewer_accuracy[call.model]
        return truth if right else not truth

    def review(call: Call) -> dict[str, Any]:
        value = 10 if judged(call, "review") else 6
        return {"strengths": "s", "weaknesses": "w", **dict.fromkeys(RESPONSE_CRITERIA, value)}

    def adjudicate(call: Call) -> dict[str, Any]:
        value = 10 if judged(call, "adjudicate") else 6
        return {"assessment": "settled", **dict.fromkeys(RESPONSE_CRITERIA, value)}

    return GraScript(respond=respond, review_response=review, adjudicate=adjudicate)


# -- the command -------------------------------------------------------------------------------


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{done}/{total} tasks judged")
        sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a config with a [gra] pool (default: simulated pool)")
    parser.add_argument("--tasks", type=int, default=300, help="tasks (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="task and role draws")
    parser.add_argument("--out", help="folder for the journal and quality.json (default: temp)")
    parser.add_argument("--time-budget", type=float, help="seconds; no task starts after")
    parser.add_argument(
        "--reviewer-accuracy",
        type=float,
        help="simulated pool: every reviewer and adjudicator right this often",
    )
    args = parser.parse_args(argv)
    tasks = make_tasks(args.tasks, args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        if args.config:
            config = load_config(args.config)
            settings = GraSettings.from_config(config).with_overrides(seed=args.seed)
            outcomes = anyio.run(
                lambda: judge(
                    config, settings, tasks, out, time_budget=args.time_budget, progress=_progress
                )
            )
            summary = summarise(outcomes, settings)
        else:
            summary = _simulated(tasks, out, args)
        (out / "quality.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print(format_summary(summary))
        if args.out:
            print(f"\nfigures in {out / 'quality.json'}")
    return summary


def _simulated(tasks: Sequence[Task], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from asyncsynth.testing import SimServer

    reviewers = dict(REVIEWER_ACCURACY)
    if args.reviewer_accuracy is not None:
        reviewers = dict.fromkeys(reviewers, args.reviewer_accuracy)
    script = simulated_script(tasks, GENERATOR_ACCURACY, reviewers)
    with SimServer(reply=script) as sim:
        config = pool_config(sim.url, tuple(GENERATOR_ACCURACY), gra={"seed": args.seed})
        settings = GraSettings.from_config(config)
        outcomes = anyio.run(lambda: judge(config, settings, tasks, out, progress=_progress))
    summary = summarise(outcomes, settings)
    summary["simulated"] = {
        "generator_accuracy": GENERATOR_ACCURACY,
        "reviewer_accuracy": reviewers,
    }
    if args.reviewer_accuracy is not None:
        p = sum(GENERATOR_ACCURACY.values()) / len(GENERATOR_ACCURACY)
        q = args.reviewer_accuracy
        summary["simulated"]["expected"] = dict(
            zip(("all", "accepted"), expected_lift(p, q, q), strict=True)
        )
    return summary


if __name__ == "__main__":
    main()
