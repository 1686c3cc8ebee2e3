"""A scripted GRA pool for the simulated endpoint: tests and benchmarks without models.

    script = GraScript(review=lambda call: {"correctness": 3} if call.model == "b" else None)
    with SimServer(reply=script) as sim:       # every endpoint of the pool points at sim.url
        ...

The hook recognises each request's stage from its system message (compared with the
prompt files in use), its model from the body's ``model``, and whether it is a re-ask.
Each stage has a handler ``(call) -> str | dict | Reply | None``: a dict is sent as JSON,
``None`` keeps the default answer of that stage, which is valid and deterministic (its
content depends only on the request, never on arrival order). Defaults: a new task
named after the request's ``seed``; instruction checks pass; every score is 9.
``latency`` maps a stage (or ``"*"``) to the delay of its replies in seconds.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import Config, config_from_dict
from ..pipelines.gra.committee import INSTRUCTION_CRITERIA, RESPONSE_CRITERIA
from ..prompts import load_prompt
from .sim import Reply, ReplyContext

STAGE_PROMPTS = {
    "generate": "gra/generate_instruction",
    "respond": "gra/generate_response",
    "refine": "gra/refine_response",
    "review_instruction": "gra/review_instruction",
    "review_response": "gra/review_response",
    "adjudicate": "gra/adjudicate",
    "annotate": "gra/annotate_seed",
    "summarize": "gra/summarize",
}


@dataclass(frozen=True, slots=True)
class Call:
    """One request as a handler sees it."""

    stage: str
    model: str
    body: dict[str, Any]
    reask: bool
    n: int
    """The sim's request number (arrival order: do not derive content from it)."""

    @property
    def user(self) -> str:
        """The first user message (the rendered prompt)."""
        for message in self.body["messages"]:
            if message.get("role") == "user":
                return str(message.get("content") or "")
        return ""

    @property
    def tag(self) -> str:
        """A short stable digest of the request (messages and seed)."""
        raw = orjson.dumps([self.body["messages"], self.body.get("seed")])
        return hashlib.blake2b(raw, digest_size=4).hexdigest()

    def field(self, label: str) -> str:
        """The text of a ``<<< ... >>>`` block following ``label:`` in the prompt."""
        m = re.search(re.escape(label) + r":\s*<<<\n(.*?)\n>>>", self.user, re.DOTALL)
        return m.group(1) if m else ""


Handler = Callable[[Call], "str | dict[str, Any] | Reply | None"]


def _default_generate(call: Call) -> dict[str, Any]:
    m = re.search(r"^Domain: (.+)$", call.user, re.MULTILINE)
    domain = m.group(1).strip() if m else "general"
    tag = call.body.get("seed", call.tag)
    return {
        "keywords": [domain, "task", str(tag)],
        "instruction": f"Task {tag}: explain one idea from {domain}.",
    }


def _default_respond(call: Call) -> str:
    return f"An answer to: {call.user[:200]}"


def _default_refine(call: Call) -> str:
    return f"A better answer to: {call.field('Instruction')[:200]}"


def _check(call: Call) -> dict[str, Any]:
    return {"assessment": "clear and possible", **dict.fromkeys(INSTRUCTION_CRITERIA, True)}


def _review(call: Call) -> dict[str, Any]:
    return {"strengths": "correct", "weaknesses": "none", **dict.fromkeys(RESPONSE_CRITERIA, 9)}


def _adjudicate(call: Call) -> dict[str, Any]:
    return {"assessment": "the higher scores are right", **dict.fromkeys(RESPONSE_CRITERIA, 9)}


def _annotate(call: Call) -> dict[str, Any]:
    m = re.search(r"domain of this sample from: (.+?)\. Give", call.user)
    domain = m.group(1).split(", ")[0] if m else "QA"
    return {"domain": domain, "keywords": ["seed", "topic", call.tag], "summary": "A seed task."}


def _summarize(call: Call) -> dict[str, Any]:
    instruction = call.field("Instruction")
    return {"keywords": ["kept", "sample", call.tag], "summary": f"About: {instruction[:80]}"}


_DEFAULTS: dict[str, Handler] = {
    "generate": _default_generate,
    "respond": _default_respond,
    "refine": _default_refine,
    "review_instruction": _check,
    "review_response": _review,
    "adjudicate": _adjudicate,
    "annotate": _annotate,
    "summarize": _summarize,
}


class GraScript:
    """A SimServer reply hook playing every model of a GRA pool (see the module docstring)."""

    def __init__(
        self,
        *,
        prompts_dir: str | None = None,
        latency: Mapping[str, float] | None = None,
        **handlers: Handler,
    ) -> None:
        unknown = set(handlers) - set(STAGE_PROMPTS)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; known: {sorted(STAGE_PROMPTS)}")
        self.handlers = handlers
        self.latency = dict(latency or {})
        self._systems = {
            load_prompt(name, prompts_dir).parts[0][1]: stage
            for stage, name in STAGE_PROMPTS.items()
        }
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str]] = Counter()
        """Requests seen, by (stage, model)."""
        self.log: list[Call] = []

    def stage_of(self, body: Mapping[str, Any]) -> str:
        messages = body.get("messages") or []
        if messages and messages[0].get("role") == "system":
            stage = self._systems.get(str(messages[0].get("content")))
            if stage is not None:
                return stage
        return "unknown"

    def __call__(self, body: dict[str, Any], ctx: ReplyContext) -> Reply:
        messages = body["messages"]
        reask = len(messages) >= 2 and messages[-2].get("role") == "assistant"
        call = Call(self.stage_of(body), str(body.get("model")), body, reask, ctx.n)
        with self._lock:
            self.calls[(call.stage, call.model)] += 1
            self.log.append(call)
        handler = self.handlers.get(call.stage)
        answer = handler(call) if handler is not None else None
        if answer is None:
            default = _DEFAULTS.get(call.stage)
            if default is None:
                raise ValueError(f"request of no known GRA stage: {messages[0]!r:.120}")
            answer = default(call)
        delay = self.latency.get(call.stage, self.latency.get("*"))
        if isinstance(answer, Reply):
            if answer.delay is None and delay is not None:
                answer.delay = delay
            return answer
        content = answer if isinstance(answer, str) else orjson.dumps(answer).decode()
        return Reply(content=content, delay=delay)

    def count(self, stage: str, model: str | None = None) -> int:
        """Requests seen for ``stage`` (by ``model``, or by every model)."""
        with self._lock:
            return sum(n for (s, m), n in self.calls.items() if s == stage and model in (None, m))


def pool_config(
    urls: str | Mapping[str, str],
    models: tuple[str, ...] = ("a", "b", "c", "d", "e"),
    *,
    concurrency: int = 16,
    gra: Mapping[str, Any] | None = None,
    engine: Mapping[str, Any] | None = None,
) -> Config:
    """A config whose pool is ``models``, each an endpoint of that name and model.

    ``urls``: one base URL for all (one sim playing every model) or one per model.
    Concurrency is fixed (not adaptive), exact duplicates only (no embedding model).
    """
    endpoints = {
        m: {
            "base_url": urls if isinstance(urls, str) else urls[m],
            "model": m,
            "max_concurrency": concurrency,
            "adaptive": False,
        }
        for m in models
    }
    return config_from_dict(
        {
            "endpoints": endpoints,
            "engine": {"backoff_base": 0.001, "backoff_max": 0.01, **(engine or {})},
            "gra": {"pool": list(models), "embedding_model": "none", **(gra or {})},
        },
        "<simulated pool>",
    )
