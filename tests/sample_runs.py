"""Small real runs for the export and view tests: GRA on the scripted pool, S3 with a tiny
random BERT student, and `run` on the simulated endpoint; every outcome occurs.

Replies depend only on the request (never on arrival order), so each run is the same
every time. One GRA instruction in five carries markup (``<script>``, ``<b>``), for the
escaping tests.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import orjson

from asyncsynth.config import config_from_dict, load_config
from asyncsynth.demo import s3_reply, write_s3_inputs
from asyncsynth.pipelines.gra import RESPONSE_CRITERIA, GraSettings, run_gra
from asyncsynth.pipelines.s3 import run_s3
from asyncsynth.run import run_file
from asyncsynth.testing import Reply, SimServer
from asyncsynth.testing.gra_pool import Call, GraScript, pool_config

HAS_STUDENT = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
MARKUP = '<script>alert("x")</script><b>bold</b> & <i>more</i>'


def _run(fn: Callable[[], Awaitable[Any]]) -> Any:
    """``anyio.run(fn)`` in a thread of its own: callers may hold an event loop (Playwright's
    sync API keeps one in the test's thread)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, fn).result()


def _even(tag: str, n: int) -> bool:
    return int(tag, 16) % n == 0


def _scores(value: float, call: Call) -> dict[str, Any]:
    return {
        "strengths": f"{call.model} liked <em>it</em>",
        "weaknesses": f"{call.model}: a little short",
        **{
            c: value + (0.5 if i == 0 and value < 10 else 0)
            for i, c in enumerate(RESPONSE_CRITERIA)
        },
    }


def gra_script() -> GraScript:
    """Every committee branch: instruction fails, low means, disputes kept and rejected."""

    def generate(call: Call) -> Any:
        m = re.search(r"^Domain: (.+)$", call.user, re.MULTILINE)
        domain = m.group(1).strip() if m else "general"
        tag = str(call.body.get("seed", call.tag))
        extra = f" {MARKUP}" if int(tag) % 5 == 0 else ""
        return {
            "keywords": [domain, "idea", tag],
            "instruction": f"Explain idea {tag} from {domain}.{extra}",
        }

    def check(call: Call) -> Any:
        if call.model == "a" and _even(call.tag, 3):
            return {
                "assessment": "vague",
                "rationality": True,
                "completeness": True,
                "clarity": False,
            }
        return None

    def review(call: Call) -> Any:
        return _scores({"e": 5, "d": 10}.get(call.model, 9), call)

    def adjudicate(call: Call) -> Any:
        keep = not _even(call.tag, 2)
        return {
            "assessment": "kept" if keep else "not good enough",
            **_scores(9 if keep else 7, call),
        }

    return GraScript(
        generate=generate, review_instruction=check, review_response=review, adjudicate=adjudicate
    )


SEEDS = [
    {
        "instruction": "What is 12 * 12?",
        "response": "144",
        "domain": "math",
        "keywords": ["arithmetic", "multiplication", "squares"],
        "summary": "Multiply twelve by twelve.",
    },
    {
        "instruction": "Write a haiku about snow.",
        "response": "White hush.",
        "domain": "creative writing",
    },
]


def make_gra_run(folder: Path, *, target: int = 14, round_size: int = 10) -> Path:
    """A finished GRA run in ``folder / "gra"`` (several rounds, every outcome)."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = folder / "seeds.jsonl"
    seeds.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in SEEDS))
    out = folder / "gra"
    with SimServer(reply=gra_script()) as sim:
        config = pool_config(sim.url, gra={"seed_data": str(seeds)})
        settings = GraSettings.from_config(config).with_overrides(
            target=target, seed=5, round_size=round_size
        )
        _run(lambda: run_gra(config, out, settings=settings))
    return out


# -- S3 ---------------------------------------------------------------------------------------


def write_s3_config(folder: Path, url: str) -> Path:
    """A TOML config (and its gold and test data) for a small sentiment S3 run."""
    folder.mkdir(parents=True, exist_ok=True)
    student = {"epochs": 4, "max_length": 32}
    return write_s3_inputs(folder, url, gold=24, test=12, seed_size=16, rounds=1, student=student)


def make_s3_run(folder: Path) -> tuple[Path, Path]:
    """A finished S3 run: its folder and its config file (the sim's URL in it)."""
    out = folder / "s3"
    with SimServer(reply=s3_reply) as sim:
        config_path = write_s3_config(folder, sim.url)
        config = load_config(config_path)
        _run(lambda: run_s3(config, out))
    return out, config_path


# -- run --------------------------------------------------------------------------------------


def run_reply(body: dict[str, Any], ctx: Any) -> str | Reply:
    text = body["messages"][-1]["content"]
    if "refuse" in text:
        return Reply(status=400, content="this request is refused")
    return Reply(content=f"answer to {text}", delay=0.001 * (len(text) % 7))


def make_run_output(folder: Path, n: int = 30) -> Path:
    """`run` over ``n`` prompts (one with markup, two refused by the server, one bad line)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[Any] = [{"id": f"q{i}", "prompt": f"Question {i}?", "topic": "t"} for i in range(n)]
    rows[3]["prompt"] = f"Question 3 {MARKUP}"
    rows[5]["prompt"] = "please refuse this"
    rows[7] = {
        "id": "q7",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "refuse me"},
        ],
    }
    rows[8] = {"id": "q8", "messages": [{"role": "user", "content": "Chat question?"}], "n": 2}
    source = folder / "prompts.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows) + b'{"prompt": 5}\n')
    output = folder / "answers.jsonl"
    with SimServer(reply=run_reply) as sim:
        config = config_from_dict(
            {
                "endpoints": {"a": {"base_url": sim.url, "model": "sim-model"}},
                "engine": {"max_attempts": 1},
            }
        )
        _run(lambda: run_file(config, source, output, progress=False))
    return output


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def assert_complete(output: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exactly one output row per input row, each the simulator's echo of its own prompt."""
    out = read_rows(output)
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)
    for row in out:
        assert row["completion"] == f"echo: {row['prompt']}", row
    return out


__all__ = [
    "HAS_STUDENT",
    "MARKUP",
    "assert_complete",
    "make_gra_run",
    "make_run_output",
    "make_s3_run",
    "read_rows",
]
