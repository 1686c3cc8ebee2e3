"""Rows of a run, as the records each export format writes (pure Python, no extra needed).

- GRA: :func:`gra_record` flattens an accepted row into typed provenance columns; the chat
  formats (:data:`CHAT_FORMATS`) turn its instruction and response into one conversation.
- S3: :func:`s3_record` gives a training, dev or test row the gold data's column names.
- ``run``: :func:`run_record` keeps the input's fields and the completion;
  :func:`run_messages` is the conversation the request and its answer make.

Fields a row has and this version does not know are kept as they are (the Arrow writer
types them from the data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine import InputError
from ..pipelines.gra.committee import INSTRUCTION_CRITERIA, RESPONSE_CRITERIA

__all__ = [
    "CHAT_FORMATS",
    "GraFilter",
    "gra_record",
    "llamafactory_entry",
    "parse_rounds",
    "run_messages",
    "run_record",
    "s3_record",
]

Row = dict[str, Any]

# GRA row fields that become typed columns (or are flattened into them).
GRA_FIELDS = frozenset(
    {
        "id",
        "instruction",
        "response",
        "domain",
        "keywords",
        "summary",
        "mode",
        "round",
        "generator",
        "reviewers",
        "adjudicator",
        "mu",
        "sigma",
        "decision",
        "generation",
        "review",
        "summarized_by",
        "requests",
        "tokens",
        "cost_usd",
        "shared_roles",
    }
)
RUN_ENGINE_FIELDS = (
    "usage",
    "latency_s",
    "attempts",
    "cached",
    "cost_usd",
    "first_cost_usd",
    "batch",
)
"""What ``run`` adds to a row about the request itself; not exported as data."""


# -- GRA --------------------------------------------------------------------------------------


def parse_rounds(spec: str) -> frozenset[int]:
    """``"1-3"``, ``"2"`` or ``"1,3-4"`` as the set of rounds it names."""
    rounds: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"--rounds: expected N, A-B or a list of them; got {spec!r}") from None
        if first < 1 or last < first:
            raise ValueError(f"--rounds: {part!r} is not a range of rounds (1 and up)")
        rounds.update(range(first, last + 1))
    return frozenset(rounds)


@dataclass(frozen=True)
class GraFilter:
    """Which accepted GRA samples to export. ``None`` lets everything through."""

    rounds: frozenset[int] | None = None
    min_mu: float | None = None
    domains: frozenset[str] | None = None
    """Compared without case."""
    decisions: frozenset[str] | None = None

    def __call__(self, row: Mapping[str, Any]) -> bool:
        if self.rounds is not None and row.get("round") not in self.rounds:
            return False
        if self.min_mu is not None:
            mu = row.get("mu")
            if not isinstance(mu, int | float) or mu < self.min_mu:
                return False
        if self.domains is not None:
            domain = row.get("domain")
            if not isinstance(domain, str) or domain.casefold() not in self.domains:
                return False
        return self.decisions is None or row.get("decision") in self.decisions

    @classmethod
    def of(
        cls,
        *,
        rounds: str | Iterable[int] | None = None,
        min_mu: float | None = None,
        domains: Iterable[str] | None = None,
        decisions: Iterable[str] | None = None,
    ) -> GraFilter:
        if isinstance(rounds, str):
            rounds = parse_rounds(rounds)
        return cls(
            rounds=frozenset(rounds) if rounds is not None else None,
            min_mu=min_mu,
            domains=frozenset(d.casefold() for d in domains) if domains else None,
            decisions=frozenset(decisions) if decisions else None,
        )

    def describe(self) -> list[str]:
        """The filter in words (for the dataset card)."""
        out = []
        if self.rounds is not None:
            out.append(f"rounds {', '.join(map(str, sorted(self.rounds)))}")
        if self.min_mu is not None:
            out.append(f"committee mean mu >= {self.min_mu:g}")
        if self.domains is not None:
            out.append(f"domains {', '.join(sorted(self.domains))}")
        if self.decisions is not None:
            out.append(f"decisions {', '.join(sorted(self.decisions))}")
        return out


def _strings(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list | tuple) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _scores(scores: Any) -> dict[str, float | None]:
    scores = _mapping(scores)
    return {c: _number(scores.get(c)) for c in RESPONSE_CRITERIA}


def _check(check: Mapping[str, Any]) -> Row:
    criteria = _mapping(check.get("criteria"))
    return {
        "model": _text(check.get("model")),
        "passed": bool(check.get("passed")),
        **{c: _flag(criteria.get(c)) for c in INSTRUCTION_CRITERIA},
        "assessment": _text(check.get("assessment")),
    }


def _review(review: Mapping[str, Any]) -> Row:
    return {
        "model": _text(review.get("model")),
        "score": _number(review.get("score")),
        **_scores(review.get("scores")),
        "strengths": _text(review.get("strengths")),
        "weaknesses": _text(review.get("weaknesses")),
    }


def _adjudication(adj: Any) -> Row | None:
    if not isinstance(adj, Mapping):
        return None
    return {
        "model": _text(adj.get("model")),
        "score": _number(adj.get("score")),
        **_scores(adj.get("scores")),
        "assessment": _text(adj.get("assessment")),
        "keep": _flag(adj.get("keep")),
    }


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def chat(instruction: str, response: str, system: str | None = None) -> list[dict[str, str]]:
    """The conversation of one instruction and its response (OpenAI / TRL ``messages``)."""
    messages = [{"role": "system", "content": system}] if system else []
    return [
        *messages,
        {"role": "user", "content": instruction},
        {"role": "assistant", "content": response},
    ]


def gra_record(row: Mapping[str, Any], system: str | None = None) -> Row:
    """An accepted GRA row as typed columns: the sample, its conversation, its provenance."""
    generation = _mapping(row.get("generation"))
    review = _mapping(row.get("review"))
    tokens = _mapping(row.get("tokens"))
    instruction = _text(row.get("instruction")) or ""
    response = _text(row.get("response")) or ""
    reviews = [_review(r) for r in _dicts(review.get("reviews"))]
    record: Row = {
        "id": str(row.get("id", "")),
        "messages": chat(instruction, response, system),
        "instruction": instruction,
        "response": response,
        "domain": _text(row.get("domain")),
        "keywords": _strings(row.get("keywords")),
        "summary": _text(row.get("summary")),
        "mode": _text(row.get("mode")),
        "round": _integer(row.get("round")),
        "generator": _text(row.get("generator")),
        "reviewers": _strings(row.get("reviewers")),
        "adjudicator": _text(row.get("adjudicator")),
        "summarized_by": _text(row.get("summarized_by")),
        "mu": _number(row.get("mu")),
        "sigma": _number(row.get("sigma")),
        "decision": _text(row.get("decision")),
        "review_scores": [r["score"] for r in reviews],
        "checks": [_check(c) for c in _dicts(review.get("checks"))],
        "reviews": reviews,
        "adjudication": _adjudication(review.get("adjudication")),
        "generated_keywords": _strings(generation.get("keywords")),
        "pool_examples": _strings(generation.get("examples")),
        "seed": _text(generation.get("seed")),
        "original_response": _text(generation.get("original_response")),
        "truncated": bool(generation.get("truncated", False)),
        "shared_roles": bool(row.get("shared_roles", False)),
        "requests": _integer(row.get("requests")),
        "tokens_in": _integer(tokens.get("in")),
        "tokens_out": _integer(tokens.get("out")),
        "cost_usd": _number(row.get("cost_usd")),
    }
    for key, value in row.items():  # fields of later versions are kept as they are
        if key not in GRA_FIELDS and key not in record:
            record[key] = value
    return record


def _to_sharegpt(messages: Sequence[Mapping[str, str]]) -> Row:
    tags = {"user": "human", "assistant": "gpt"}
    out: Row = {}
    turns = []
    for m in messages:
        if m["role"] == "system":
            out["system"] = m["content"]
        else:
            turns.append({"from": tags.get(m["role"], m["role"]), "value": m["content"]})
    return {"conversations": turns, **out}


def _to_alpaca(messages: Sequence[Mapping[str, str]]) -> Row:
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    user = next(m["content"] for m in messages if m["role"] == "user")
    answer = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
    out: Row = {"instruction": user, "input": "", "output": answer}
    if system:
        out["system"] = system
    return out


CHAT_FORMATS: dict[str, Callable[[Sequence[Mapping[str, str]]], Row]] = {
    "messages": lambda messages: {"messages": list(messages)},
    "sharegpt": _to_sharegpt,
    "alpaca": _to_alpaca,
}
"""Chat formats: a conversation (OpenAI messages) to the row of each format."""


def llamafactory_entry(fmt: str, file_name: str, *, system: bool) -> Row:
    """LLaMA-Factory's ``dataset_info.json`` entry for a file of a chat format."""
    if fmt == "alpaca":
        columns = {"prompt": "instruction", "query": "input", "response": "output"}
        if system:
            columns["system"] = "system"
        return {"file_name": file_name, "columns": columns}
    if fmt == "sharegpt":
        columns = {"messages": "conversations"}
        if system:
            columns["system"] = "system"
        return {"file_name": file_name, "formatting": "sharegpt", "columns": columns}
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }


# -- S3 ---------------------------------------------------------------------------------------


def _answers(row: Mapping[str, Any]) -> Row:
    """SQuAD ``answers`` (``text`` and ``answer_start`` lists) from the forms rows take."""
    value = row.get("answers", row.get("answer"))
    if isinstance(value, Mapping):
        texts = _strings(value.get("text")) or []
        starts = value.get("answer_start")
        starts = [starts] if isinstance(starts, int) else list(starts or [])
    elif isinstance(value, list):
        items = [v for v in value if isinstance(v, Mapping)]
        texts = [str(v.get("text", "")) for v in items]
        starts = [v.get("answer_start") for v in items]
    elif isinstance(value, str):
        texts, starts = [value], [row.get("answer_start")]
    else:
        texts, starts = [], []
    return {"text": texts, "answer_start": [_integer(s) for s in starts]}


S3_INTERNAL = (
    "id",
    "text",
    "text_pair",
    "label",
    "context",
    "question",
    "answers",
    "answer",
    "answer_start",
)


def s3_record(row: Mapping[str, Any], task: str, columns: Mapping[str, str]) -> Row:
    """A training, dev or test row of an S3 run under the gold data's column names.

    ``columns`` maps ``text``, ``text_pair`` and ``label`` to those names. Classification
    labels stay names here (the Arrow writer encodes them as the ``ClassLabel``).
    """
    record: Row = {"id": str(row.get("id", ""))}
    if task == "qa":
        record["context"] = _text(row.get("context", row.get("text")))
        record["question"] = _text(row.get("question", row.get("text_pair")))
        record["answers"] = _answers(row)
    else:
        record[columns["text"]] = _text(row.get("text"))
        if task == "pair":
            record[columns["text_pair"]] = _text(row.get("text_pair"))
        record[columns["label"]] = _text(row.get("label"))
    for key, value in row.items():
        if key not in S3_INTERNAL and key not in record:
            record[key] = value
    return record


# -- run --------------------------------------------------------------------------------------


def run_record(row: Mapping[str, Any]) -> Row:
    """A ``run`` output row: the input's fields, the completion, the model, the finish."""
    return {k: v for k, v in row.items() if k not in RUN_ENGINE_FIELDS}


def run_messages(row: Mapping[str, Any], where: str = "", line: int | None = None) -> Row:
    """The conversation of a ``run`` row: the request's messages and the completion."""
    body = row.get("body") if isinstance(row.get("body"), Mapping) else None
    if isinstance(row.get("messages"), list):
        messages = list(row["messages"])
    elif body is not None and isinstance(body.get("messages"), list):
        messages = list(body["messages"])
    elif isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
        if isinstance(row.get("system"), str):
            messages.insert(0, {"role": "system", "content": row["system"]})
    else:
        raise InputError("the row has no messages, prompt or Batch body", source=where, line=line)
    completion = row.get("completion")
    if not isinstance(completion, str):
        raise InputError("the row has no completion", source=where, line=line)
    return {"messages": [*messages, {"role": "assistant", "content": completion}]}
