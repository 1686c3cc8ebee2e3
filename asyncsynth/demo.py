"""``asyncsynth demo``: each job end to end in seconds, against the simulated endpoint.

A demo starts the built-in simulated OpenAI-compatible endpoint (``asyncsynth.testing``)
with scripted replies, writes a real config and its data into ``OUT/demo/``, and runs
the same job the real command runs, into a real run folder ``OUT``:

- ``gra``: a pool of five scripted models whose characters make every committee branch
  occur: consensus, an instruction that fails its check, a low mean, disputes the
  adjudicator keeps or rejects, an unusable review, a truncated response, a duplicate;
- ``s3``: sentiment data whose gold set holds words the seed never uses, a tiny random
  BERT student (needs ``asyncsynth[student]``) and two rounds of error extrapolation;
- ``run``: 48 prompts answered with varied latency.

Replies depend only on the request, never on arrival order, so a demo gives the same
rows every time. From Python: ``await run_demo("gra", "demo-gra")``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    from .testing.sim import Reply, ReplyContext, ReplyHook

__all__ = ["DEMOS", "DemoResult", "next_steps", "prepare", "replies", "run_demo"]

DemoKind = Literal["gra", "s3", "run"]
DEMOS: tuple[DemoKind, ...] = ("gra", "s3", "run")
INPUTS = "demo"
"""The folder inside ``OUT`` that holds a demo's config and data."""


# -- GRA: five scripted models, each with a character -----------------------------------------

#: The pool, and what each model does when it reviews (every model also generates).
CHARACTERS = {
    "fair": "scores every response 9",
    "harsh": "scores every response 5: with it on a committee, means fall below tau",
    "generous": "scores every response 10: beside harsh, the reviewers disagree (a dispute)",
    "picky": "fails one instruction in three on clarity",
    "chatty": "answers one review in four in prose, not JSON, even when asked again",
}
_SCORE = {"fair": 9, "harsh": 5, "generous": 10, "picky": 9, "chatty": 9}
TOPICS = [
    "binary search",
    "photosynthesis",
    "compound interest",
    "the water cycle",
    "recursion",
    "supply and demand",
    "prime numbers",
    "plate tectonics",
    "hash tables",
    "the French revolution",
    "vaccines",
    "gradient descent",
]
GRA_SEEDS = [
    {
        "instruction": "What is 12 * 12?",
        "response": "12 * 12 = 144.",
        "domain": "math",
        "keywords": ["arithmetic", "multiplication", "squares"],
        "summary": "Multiply twelve by twelve.",
    },
    {
        "instruction": "Write a haiku about snow.",
        "response": "White hush on the field / footprints fill by morning / the fence posts listen",
        "domain": "creative writing",
        "keywords": ["haiku", "snow", "winter"],
        "summary": "A haiku about snow.",
    },
    {
        "instruction": "Write a Python function that reverses a string.",
        "response": "def reverse(s: str) -> str:\n    return s[::-1]",
        "domain": "coding",
        "keywords": ["python", "strings", "slicing"],
        "summary": "Reverse a string in Python.",
    },
]


def _digest(*parts: Any) -> int:
    return int(hashlib.blake2b(repr(parts).encode(), digest_size=4).hexdigest(), 16)


def _gra_script() -> ReplyHook:
    from .pipelines.gra import RESPONSE_CRITERIA
    from .testing.gra_pool import Call, GraScript

    def generate(call: Call) -> dict[str, Any]:
        m = re.search(r"^Domain: (.+)$", call.user, re.MULTILINE)
        domain = m.group(1).strip() if m else "general"
        n = int(call.body.get("seed", _digest(call.tag)))
        if n % 5 == 0:  # every such candidate writes the same task: duplicates
            return {"keywords": ["hash", "table", "lookup"], "instruction": "What is a hash table?"}
        topic = TOPICS[n % len(TOPICS)]
        return {
            "keywords": [domain, topic, f"case {n % 97}"],
            "instruction": f"In the domain of {domain}, explain {topic} with example {n % 97}.",
        }

    def respond(call: Call) -> Reply | str:
        from .testing.sim import Reply

        if _digest(call.tag) % 13 == 0:  # cut at the token limit: `truncated`
            return Reply(content="Here it is, step by step. First,", finish_reason="length")
        return f"A worked answer, with one example: {call.field('Instruction') or call.user[:160]}"

    def check(call: Call) -> dict[str, Any] | None:
        if call.model == "picky" and _digest(call.tag) % 3 == 0:
            return {
                "assessment": "the task does not say how long the answer should be",
                "rationality": True,
                "completeness": True,
                "clarity": False,
            }
        return None

    def scores(value: int, call: Call) -> dict[str, Any]:
        return {
            "strengths": f"{call.model}: accurate and well organised",
            "weaknesses": f"{call.model}: could give one more example",
            **dict.fromkeys(RESPONSE_CRITERIA, value),
        }

    def review(call: Call) -> Any:
        if call.model == "chatty" and _digest(call.field("Instruction")) % 4 == 0:
            return "I think this answer is quite good overall, well done!"
        return scores(_SCORE[call.model], call)

    def adjudicate(call: Call) -> dict[str, Any]:
        keep = _digest(call.field("Instruction")) % 2 == 0
        verdict = "the higher scores are right" if keep else "the low scores are right"
        return {"assessment": verdict, **scores(9 if keep else 6, call)}

    return GraScript(
        generate=generate,
        respond=respond,
        review_instruction=check,
        review_response=review,
        adjudicate=adjudicate,
        latency={"*": 0.01},
    )


def _gra_inputs(folder: Path, url: str) -> Path:
    _write_jsonl(folder / "seeds.jsonl", GRA_SEEDS)
    lines = [
        "# The config `asyncsynth demo gra` ran: five endpoints, one per model of the pool, all",
        "# played by the demo's simulated endpoint (gone when the demo ended). For a real",
        "# pool, point each base_url and model at your servers (see examples/gra/vllm.toml).",
        "",
    ]
    for name, character in CHARACTERS.items():
        lines += [
            f"[endpoints.{name}]  # {character}",
            f'base_url = "{url}"',
            f'model = "{name}"',
            "max_concurrency = 8",
            "",
        ]
    lines += [
        "[gra]",
        f"pool = {json.dumps(list(CHARACTERS))}",
        'seed_data = "seeds.jsonl"',
        "target = 20",
        "max_rounds = 8",
        'embedding_model = "none"  # exact duplicates; all-MiniLM-L6-v2 needs asyncsynth[embed]',
        "",
    ]
    return _write(folder / "gra.toml", "\n".join(lines))


# -- S3: words the seed never uses ------------------------------------------------------------

WORDS = {
    "positive": ["wonderful", "delightful", "charming"],
    "negative": ["awful", "tedious", "clumsy"],
}
HIDDEN = {"positive": ["superb"], "negative": ["dreadful"]}
"""Words only the gold data has: the first student misses them, extrapolation teaches them."""
FILLER = ["river", "window", "garden", "morning", "winter", "ticket", "lamp", "corner"]
FILLER += ["pocket", "bridge", "village", "market"]
TINY_STUDENT: dict[str, Any] = {
    "model": "minilm",
    "epochs": 12,
    "lr": 0.005,
    "batch_size": 16,
    "max_length": 48,
    "patience": False,
}
"""A tiny random BERT (``TINY_BERT``) on MiniLM's tokenizer: trains in about a second."""


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256(repr(parts).encode()).hexdigest())


def _sentence(r: random.Random, words: list[str]) -> str:
    out = r.sample(FILLER, 6) + words
    r.shuffle(out)
    return " ".join(out)


def s3_reply(body: dict[str, Any], ctx: ReplyContext) -> str:
    """The LLM of the S3 demo: reasons, seed examples, one refusal in ten, and
    extrapolations that keep the mined example's unseen words."""
    message = body["messages"][-1]["content"]
    label = re.search(r'label "(\w+)"', message)
    name = label.group(1) if label else "positive"
    r = _rng(message, body.get("seed"))
    if "reasons why" in message:
        return "\n".join(f"{i}. The {w} feel of it." for i, w in enumerate(WORDS[name], 1))
    if "Write a new" in message or "Write another" in message:
        hidden = [w for w in message.split() if w.strip('".,') in HIDDEN[name]]
        return _sentence(r, [r.choice(WORDS[name]), *hidden, *hidden])
    if r.random() < 0.1:
        return "I'm sorry, but I can't help with writing that."
    return _sentence(r, [r.choice(WORDS[name])])


def s3_gold(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` labelled reviews; every other pair uses only the unseen words."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("positive", "negative")[i % 2]
        pool = HIDDEN[label] if i // 2 % 2 else WORDS[label]
        rows.append({"text": _sentence(r, [r.choice(pool)]), "label": label})
    return rows


def write_s3_inputs(
    folder: Path,
    url: str,
    *,
    gold: int = 60,
    test: int = 40,
    seed_size: int = 40,
    rounds: int = 2,
    save_student: bool = False,
    student: dict[str, Any] | None = None,
) -> Path:
    """An S3 config (with its gold and test data) for a small sentiment run on ``url``;
    ``student`` replaces fields of :data:`TINY_STUDENT`."""
    from .student.config import TINY_BERT

    _write_jsonl(folder / "gold.jsonl", s3_gold(gold, 1))
    _write_jsonl(folder / "test.jsonl", s3_gold(test, 2))
    tiny = ", ".join(f"{k} = {json.dumps(v)}" for k, v in TINY_BERT.items())
    student_lines = "\n".join(
        f"{k} = {json.dumps(v).lower() if isinstance(v, bool) else json.dumps(v)}"
        for k, v in {**TINY_STUDENT, **(student or {})}.items()
    )
    toml = f"""\
# The config `asyncsynth demo s3` ran. The LLM was the demo's simulated endpoint (gone
# when the demo ended): point base_url and model at your server for a real run, and see
# examples/s3/sentiment/s3.toml for a real student (DistilBERT).
[endpoints.llm]
base_url = "{url}"
model = "sim"

[engine]
backoff_base = 0.001
backoff_max = 0.01
max_attempts = 2

[s3]
gold = "gold.jsonl"
test = "test.jsonl"
seed_size = {seed_size}
k = 1
rounds = {rounds}
text_kind = "movie review"
save_student = {str(save_student).lower()}
rationales = {{ count = 3, samples = 1 }}

[s3.labels]
positive = "the reviewer liked the movie"
negative = "the reviewer disliked the movie"

[s3.student]  # a tiny random BERT: learns keywords in a second, nothing more
{student_lines}
from_config = {{ {tiny} }}
"""
    return _write(folder / "s3.toml", toml)


# -- run --------------------------------------------------------------------------------------

QUESTIONS = [
    "What is {t}? Answer in one sentence.",
    "Give a real-world example of {t}.",
    "Explain {t} to a ten-year-old.",
    "What is a common misconception about {t}?",
]


def run_reply(body: dict[str, Any], ctx: ReplyContext) -> Reply:
    """The `run` demo's model: a short answer after 5 to 80 ms."""
    from .testing.sim import Reply

    text = str(body["messages"][-1]["content"])
    n = _digest(text)
    return Reply(content=f"A short answer to {text!r}.", delay=0.005 + (n % 16) * 0.005)


def _run_inputs(folder: Path, url: str) -> Path:
    rows = [
        {"id": f"q{i}", "prompt": q.format(t=t), "topic": t}
        for i, (t, q) in enumerate((t, q) for t in TOPICS for q in QUESTIONS)
    ]
    _write_jsonl(folder / "prompts.jsonl", rows)
    toml = f"""\
# The config `asyncsynth demo run` ran: one endpoint, the demo's simulated one (gone when
# the demo ended). For a real run, point base_url and model at your server, or drop the
# config and pass --base-url URL --model NAME (or --local for a llama.cpp model).
[endpoints.sim]
base_url = "{url}"
model = "sim-model"
max_concurrency = 16
"""
    return _write(folder / "run.toml", toml)


# -- the demos --------------------------------------------------------------------------------


def replies(kind: DemoKind) -> ReplyHook:
    """The scripted replies of a demo, for :class:`~asyncsynth.testing.SimServer`."""
    hooks: dict[str, Callable[[], ReplyHook]] = {
        "gra": _gra_script,
        "s3": lambda: s3_reply,
        "run": lambda: run_reply,
    }
    return hooks[_kind(kind)]()


def prepare(kind: DemoKind, out_dir: str | Path, url: str) -> Path:
    """Write a demo's config and data into ``OUT/demo/`` for the endpoint at ``url``;
    returns the config's path."""
    folder = Path(out_dir) / INPUTS
    folder.mkdir(parents=True, exist_ok=True)
    if _kind(kind) == "gra":
        return _gra_inputs(folder, url)
    if kind == "s3":
        return write_s3_inputs(folder, url)
    return _run_inputs(folder, url)


def needs(kind: DemoKind) -> str | None:
    """What a demo lacks in this installation (``None`` when it can run)."""
    if _kind(kind) == "s3" and not all(
        importlib.util.find_spec(m) for m in ("torch", "transformers")
    ):
        return (
            "the S3 demo trains a small student, which needs torch and transformers: "
            "pip install 'asyncsynth[student]'"
        )
    return None


def next_steps(kind: DemoKind, out_dir: str | Path) -> list[str]:
    """What to run next: look at the run, export it, and the same job on a real endpoint."""
    out = str(out_dir)
    inputs = Path(out) / INPUTS
    steps: list[tuple[str, str]]
    if kind == "gra":
        steps = [
            (f"asyncsynth view {out}", "browse the samples, reviews and charts"),
            (f"asyncsynth export {out} -f messages -o {out}.jsonl", "the accepted samples"),
            (
                "asyncsynth gra examples/gra/vllm.toml --target 1000 --out runs/gra",
                f"real models (or edit {inputs / 'gra.toml'})",
            ),
        ]
    elif kind == "s3":
        steps = [
            (f"asyncsynth view {out}", "the rounds, confusion matrices, mined errors"),
            (
                f"asyncsynth export {out} -f dataset -o {out}-data --config {inputs / 's3.toml'}",
                "train/validation/test",
            ),
            (
                "asyncsynth s3 examples/s3/sentiment/s3.toml --out runs/s3",
                f"a real LLM and student (or edit {inputs / 's3.toml'})",
            ),
        ]
    else:
        prompts = inputs / "prompts.jsonl"
        steps = [
            (f"asyncsynth view {out}", "the answers and their latencies"),
            (f"asyncsynth export {out}/answers.jsonl -f parquet -o {out}.parquet", "Parquet"),
            (
                f"asyncsynth run {prompts} -o answers.jsonl "
                "--base-url http://localhost:8000/v1 --model NAME",
                "your server",
            ),
            (f"asyncsynth run {prompts} -o answers.jsonl --local", "a small local model"),
        ]
    width = max(len(command) for command, _ in steps)
    return [f"{command:<{width}}  # {note}" for command, note in steps]


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` made: the run folder, the pipeline's own result
    (:class:`~asyncsynth.GraResult`, :class:`~asyncsynth.S3Result` or the `run` report),
    and the commands to try next."""

    kind: DemoKind
    out_dir: Path
    config_path: Path
    result: Any
    next_steps: list[str] = field(default_factory=list)


async def run_demo(
    kind: DemoKind,
    out_dir: str | Path | None = None,
    *,
    on_event: Callable[[Any], None] | None = None,
) -> DemoResult:
    """Run a demo (``gra``, ``s3`` or ``run``) into ``out_dir`` (default ``./demo-KIND``).

    The simulated endpoint runs while the job does and is stopped after it. Running it
    again into the same folder resumes from the journal (and sends nothing).
    """
    from .config import load_config
    from .engine import ConfigError
    from .testing.sim import SimServer

    kind = _kind(kind)
    if (missing := needs(kind)) is not None:
        raise ConfigError(missing)
    out = Path(out_dir if out_dir is not None else f"demo-{kind}")
    async with SimServer(reply=replies(kind)) as sim:
        config_path = prepare(kind, out, sim.url)
        config = load_config(config_path)
        if kind == "gra":
            from .pipelines.gra import run_gra

            result: Any = await run_gra(config, out, on_event=on_event)
        elif kind == "s3":
            from .pipelines.s3 import run_s3

            result = await run_s3(config, out, on_event=on_event)
        else:
            from .run import run_file

            prompts = out / INPUTS / "prompts.jsonl"
            result = await run_file(config, prompts, out / "answers.jsonl", progress=False)
    return DemoResult(kind, out, config_path, result, next_steps(kind, out))


def _kind(kind: str) -> DemoKind:
    if kind not in DEMOS:
        raise ValueError(f"unknown demo {kind!r}: one of {', '.join(DEMOS)}")
    return kind


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
