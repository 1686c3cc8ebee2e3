"""Structured (JSON) answers from any endpoint: schema requests, robust extraction, re-ask.

    client = StructuredClient(engine, mode="auto", reasks=1)
    answer = await client.ask(messages, SCORES, role="qwen", params={"temperature": 0})
    if answer.ok:
        answer.value          # a dict that conforms to the schema
    else:
        answer.failure        # "parse_failure" or "request_error"; answer.error says why

How a reply is obtained, per target (the role or endpoint name given as ``role``):

- ``mode = "auto"`` (default) asks with ``response_format`` ``{"type": "json_schema", ...}``
  (OpenAI, vLLM, SGLang). A target that refuses it (HTTP 400, 404, 415, 422 or 500) is asked
  again at once with ``{"type": "json_object", "schema": ...}`` (llama-cpp-python's grammar
  mode), then with no ``response_format`` at all. The first format that gets an answer is
  remembered for the target for the rest of the engine's life, so the check happens once
  per target, not per request, and never waits: requests sent before the answer is known
  simply fall back too.
- ``"json_schema"``, ``"json_object"`` or ``"off"`` fix the format (no fallback).

Whatever the format, the reply is never trusted: :func:`parse_reply` finds the JSON
(whole text, a fenced code block, or the first object after leading prose; trailing
commas and smart quotes repaired) and conforms it to the schema with mild coercions
(``"8"`` -> 8, ``"pass"`` -> true, ``"Clarity"`` -> ``clarity``, a comma-separated string
-> a list, an over-long list truncated). A reply that still does not fit is re-asked at
most ``reasks`` times with the problem named (prompt ``structured/reask``); after that
it is a recorded ``parse_failure`` — never a default value. A reply that only repeats the
prompt's ``<...>`` placeholders (``"assessment": "<one or two sentences: ...>"``, as tiny
models do) is refused the same way, named ``template_echo`` (:class:`TemplateEcho`); one cut
at the token limit that fails to parse says so (``truncated``).
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .engine import ClientError, Engine, Request, Result, ServerError
from .engine.errors import ConfigError
from .prompts import load_prompt

MODES = ("auto", "json_schema", "json_object", "off")
Format = Literal["json_schema", "json_object", "off"]
_LADDER: tuple[Format, ...] = ("json_schema", "json_object", "off")
_UNSUPPORTED_STATUSES = frozenset({400, 404, 415, 422, 500})
"""Answers that may mean "this server does not take that response_format" (some servers,
llama-cpp-python's among them, answer an unknown format with 500)."""
_MAX_ECHO_CHARS = 4000
"""How much of a bad reply is shown back to the model in a re-ask."""
_MAX_SCAN = 64
"""Opening braces tried when looking for a JSON object inside prose."""

FailureKind = Literal["parse_failure", "request_error"]


class SchemaMismatch(ValueError):
    """A reply is not JSON, or its JSON does not fit the schema; the message says where."""

    cause: str | None = None
    """What kind of mismatch it is, when it has a name (``template_echo``)."""


class TemplateEcho(SchemaMismatch):
    """The reply copies the prompt's ``<...>`` placeholders instead of answering.

    Small models often return the reply template they were shown, e.g.
    ``{"assessment": "<one or two sentences: ...>", ...}``: valid JSON, no answer.
    """

    cause = "template_echo"


# -- schemas ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schema:
    """A named JSON schema (the subset :meth:`conform` understands is documented there)."""

    name: str
    schema: Mapping[str, Any]

    def response_format(self, fmt: Format) -> dict[str, Any] | None:
        """The ``response_format`` request parameter for ``fmt`` (``None`` for ``"off"``)."""
        if fmt == "json_schema":
            return {
                "type": "json_schema",
                "json_schema": {"name": self.name, "schema": self.schema, "strict": True},
            }
        if fmt == "json_object":
            return {"type": "json_object", "schema": self.schema}
        return None

    def text(self) -> str:
        """The schema as compact JSON, for prompts."""
        return orjson.dumps(self.schema).decode()

    def conform(self, value: Any) -> Any:
        """``value`` made to fit the schema, or :class:`SchemaMismatch`."""
        return _conform(value, self.schema, "")


def object_schema(name: str, properties: Mapping[str, Mapping[str, Any]]) -> Schema:
    """A strict object schema: every property required, nothing else allowed, order kept."""
    return Schema(
        name,
        {
            "type": "object",
            "properties": dict(properties),
            "required": list(properties),
            "additionalProperties": False,
        },
    )


def _norm_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", key.strip()).lower()


_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*\d+(?:\.\d+)?)?\s*$")
_TRUE = frozenset({"true", "yes", "pass", "passed", "y", "1"})
_FALSE = frozenset({"false", "no", "fail", "failed", "n", "0"})


def _conform(value: Any, schema: Mapping[str, Any], where: str) -> Any:
    """Check and lightly coerce ``value``: object/array/string/number/integer/boolean,
    properties/required, items/minItems/maxItems, enum, minimum/maximum, minLength."""
    check = _CHECKS.get(str(schema.get("type")))
    return value if check is None else check(value, schema, where)


def _at(where: str) -> str:
    return where or "the reply"


def _conform_object(value: Any, schema: Mapping[str, Any], where: str) -> Any:
    if not isinstance(value, dict):
        raise SchemaMismatch(f"{_at(where)}: expected a JSON object, got {_kind(value)}")
    props: Mapping[str, Any] = schema.get("properties", {})
    by_norm = {_norm_key(k): v for k, v in value.items() if isinstance(k, str)}
    out: dict[str, Any] = {}
    for name, sub in props.items():
        if name in value:
            raw = value[name]
        elif _norm_key(name) in by_norm:
            raw = by_norm[_norm_key(name)]
        elif name in schema.get("required", ()):
            raise SchemaMismatch(f"{where + '.' if where else ''}{name}: missing")
        else:
            continue
        out[name] = _conform(raw, sub, f"{where}.{name}" if where else name)
    return out


def _conform_array(value: Any, schema: Mapping[str, Any], where: str) -> Any:
    items = schema.get("items")
    if isinstance(value, str) and (items or {}).get("type") == "string":
        value = [part for part in re.split(r"\s*[,;\n]\s*", value.strip()) if part]
    if not isinstance(value, list):
        raise SchemaMismatch(f"{_at(where)}: expected a list, got {_kind(value)}")
    if (most := schema.get("maxItems")) is not None:
        value = value[:most]
    if len(value) < schema.get("minItems", 0):
        raise SchemaMismatch(
            f"{_at(where)}: expected at least {schema['minItems']} items, got {len(value)}"
        )
    if items:
        return [_conform(v, items, f"{where}[{i}]") for i, v in enumerate(value)]
    return list(value)


def _conform_string(value: Any, schema: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise SchemaMismatch(f"{_at(where)}: expected a string, got {_kind(value)}")
    value = value.strip()
    if "enum" in schema:
        for choice in schema["enum"]:
            if value.casefold() == str(choice).casefold():
                return choice
        raise SchemaMismatch(
            f"{_at(where)}: must be one of {', '.join(map(str, schema['enum']))}; got {value!r}"
        )
    if len(value) < schema.get("minLength", 0):
        raise SchemaMismatch(f"{_at(where)}: must not be empty")
    return value


def _conform_number(value: Any, schema: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, str) and (m := _NUMBER.match(value)):
        value = float(m.group(1))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaMismatch(f"{_at(where)}: expected a number, got {_kind(value)}")
    if schema.get("type") == "integer":
        if value != int(value):
            raise SchemaMismatch(f"{_at(where)}: expected a whole number, got {value}")
        value = int(value)
    low, high = schema.get("minimum"), schema.get("maximum")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SchemaMismatch(f"{_at(where)}: must be between {low} and {high}, got {value}")
    return value


def _conform_boolean(value: Any, schema: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, str):
        word = value.strip().casefold()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    if isinstance(value, bool):
        return value
    raise SchemaMismatch(f"{_at(where)}: expected true or false, got {_kind(value)}")


_CHECKS: dict[str, Callable[[Any, Mapping[str, Any], str], Any]] = {
    "object": _conform_object,
    "array": _conform_array,
    "string": _conform_string,
    "number": _conform_number,
    "integer": _conform_number,
    "boolean": _conform_boolean,
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return f"{type(value).__name__} {value!r}"


# -- extraction ---------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_SMART_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"'})
_DECODER = json.JSONDecoder()


def _repairs(text: str) -> list[str]:
    """``text`` and its mildly repaired variants, in the order they are tried."""
    variants = [text]
    fixed = _TRAILING_COMMA.sub(r"\1", text.translate(_SMART_QUOTES))
    if fixed != text:
        variants.append(fixed)
    return variants


def json_candidates(text: str) -> list[Any]:
    """Every JSON value found in ``text``, most likely first.

    Tried: the whole (stripped) text; each fenced code block; then each JSON object that
    starts at an opening brace after leading prose (up to a bound). Repairs: trailing
    commas and typographic quotes.
    """
    found: list[Any] = []
    stripped = text.strip()
    chunks = [stripped] + [m.group(2).strip() for m in _FENCE.finditer(text)]
    for chunk in chunks:
        for variant in _repairs(chunk):
            try:
                found.append(json.loads(variant))
                break
            except ValueError:
                continue
    for variant in _repairs(stripped):
        starts = [m.start() for m in re.finditer(r"[{\[]", variant)][:_MAX_SCAN]
        for start in starts:
            try:
                value, _ = _DECODER.raw_decode(variant, start)
            except ValueError:
                continue
            if isinstance(value, dict | list):
                found.append(value)
    return found


_PLACEHOLDER = re.compile(r"<[^<>\n]{1,200}>")


def placeholders(messages: Sequence[Mapping[str, Any]]) -> frozenset[str]:
    """The ``<...>`` placeholders in a prompt's messages (``<one sentence>``, ``<0-10>``).

    A reply whose values are these is an echo of the template, not an answer."""
    found: set[str] = set()
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            found.update(_PLACEHOLDER.findall(content))
    return frozenset(found)


def _is_placeholder(text: str, known: frozenset[str]) -> bool:
    """``text`` is one of ``known``, or starts like one (``<one sentence: ...>``)."""
    text = text.strip()
    if not (text.startswith("<") and text.endswith(">")):
        return False
    if text in known:
        return True
    head = _head(text)
    return bool(head) and any(_head(p) == head for p in known)


def _head(placeholder: str) -> str:
    """``<one sentence: a summary>`` -> ``one sentence``; ``<keyword_2>`` -> ``keyword``."""
    head = placeholder[1:-1].split(":", 1)[0].strip().casefold()
    return re.sub(r"[\s_\-]*\d+$", "", head)


def _echoes(value: Any, known: frozenset[str], where: str = "") -> Iterator[tuple[str, str]]:
    """(where, text) of every string in ``value`` that is a placeholder of ``known``."""
    if isinstance(value, str):
        if _is_placeholder(value, known):
            yield where or "the reply", value.strip()
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _echoes(inner, known, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _echoes(inner, known, f"{where}[{i}]")


def _echo(where: str, text: str, more: int) -> TemplateEcho:
    also = f" (and {more} more)" if more else ""
    return TemplateEcho(
        f"template echo: {where} repeats the prompt's placeholder {text!r}{also} instead of "
        "answering; replace every <...> of the template with your own content"
    )


def _echo_in_value(value: Any, known: frozenset[str]) -> TemplateEcho | None:
    echoes = list(_echoes(value, known))
    return _echo(*echoes[0], len(echoes) - 1) if echoes else None


def _echo_in_text(text: str, known: frozenset[str]) -> TemplateEcho | None:
    echoes = [p for p in _PLACEHOLDER.findall(text) if _is_placeholder(p, known)]
    return _echo("the reply", echoes[0], len(echoes) - 1) if echoes else None


def parse_reply(text: str | None, schema: Schema, *, template: frozenset[str] = frozenset()) -> Any:
    """The first JSON value in ``text`` that conforms to ``schema``; else :class:`SchemaMismatch`.

    A one-element list around an object, or an object wrapping the expected object under a
    single key, is unwrapped. ``template``: the prompt's ``<...>`` placeholders (see
    :func:`placeholders`); a value that repeats one is refused as a :class:`TemplateEcho`
    even if it fits the schema, and so is a reply that fits nothing and contains one.
    """
    if not text or not text.strip():
        raise SchemaMismatch("the reply is empty")
    echo: TemplateEcho | None = None
    problem: SchemaMismatch | None = None
    for candidate in json_candidates(text):
        for value in _unwrappings(candidate):
            found = _echo_in_value(value, template) if template else None
            if found is not None:
                echo = echo or found
                continue
            try:
                return schema.conform(value)
            except SchemaMismatch as exc:
                problem = problem or exc
    if echo is None and template:
        echo = _echo_in_text(text, template)
    raise echo or problem or SchemaMismatch("no JSON object found in the reply")


def _unwrappings(value: Any) -> list[Any]:
    out = [value]
    if isinstance(value, list) and len(value) == 1:
        out.append(value[0])
    if isinstance(value, dict) and len(value) == 1:
        inner = next(iter(value.values()))
        if isinstance(inner, dict):
            out.append(inner)
    return out


# -- asking -------------------------------------------------------------------------------------


@dataclass(slots=True)
class StructuredResult:
    """The outcome of :meth:`StructuredClient.ask`: a conforming value, or why there is none."""

    value: Any = None
    failure: FailureKind | None = None
    error: str | None = None
    results: list[Result] = field(default_factory=list)
    """Every request made (fallbacks and re-asks included), in order."""
    format: Format | None = None
    """The response_format the final reply was asked with."""
    reasks: int = 0
    cause: str | None = None
    """For a ``parse_failure`` with a known cause: ``template_echo`` (the reply repeated the
    prompt's ``<...>`` placeholders) or ``truncated`` (it was cut at the token limit)."""

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def raw(self) -> str | None:
        """The last reply's text (``None`` if no reply came)."""
        for r in reversed(self.results):
            if r.ok:
                return r.completion
        return None

    @property
    def endpoint(self) -> str | None:
        return self.results[-1].endpoint if self.results else None

    @property
    def tokens_in(self) -> int:
        return sum((r.usage or {}).get("prompt_tokens", 0) for r in self.results)

    @property
    def tokens_out(self) -> int:
        return sum((r.usage or {}).get("completion_tokens", 0) for r in self.results)

    @property
    def cached(self) -> bool:
        """Every reply came from the journal."""
        return bool(self.results) and all(r.cached for r in self.results if r.ok)


_FORMATS: weakref.WeakKeyDictionary[Engine, dict[str, Format]] = weakref.WeakKeyDictionary()


def known_formats(engine: Engine) -> dict[str, Format]:
    """Target -> the response_format that got an answer there (``auto`` mode), for reports.

    Shared by every :class:`StructuredClient` of the same engine."""
    return _FORMATS.setdefault(engine, {})


class StructuredClient:
    """Asks an engine for JSON that fits a :class:`Schema` (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        mode: str = "auto",
        reasks: int = 1,
        prompts_dir: str | None = None,
        instruct: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"structured output mode must be one of {', '.join(MODES)}")
        if reasks < 0:
            raise ConfigError("reasks must be >= 0")
        self.engine = engine
        self.mode = mode
        self.reasks = reasks
        self.instruct = instruct
        self._reask = load_prompt("structured/reask", prompts_dir)
        self._instruct = load_prompt("structured/instruct", prompts_dir) if instruct else None
        self._formats = known_formats(engine)

    def _first_format(self, target: str) -> Format:
        if self.mode != "auto":
            return self.mode  # type: ignore[return-value]
        return self._formats.get(target, "json_schema")

    async def ask(
        self,
        messages: Sequence[Mapping[str, Any]],
        schema: Schema,
        *,
        role: str,
        params: Mapping[str, Any] | None = None,
        sample: int = 0,
        meta: Mapping[str, Any] | None = None,
    ) -> StructuredResult:
        """Ask ``role`` for a JSON value fitting ``schema``; never raises for bad replies.

        ``params`` (request parameters) may carry its own ``response_format``; it is then
        used as given, with no fallback. ``sample`` and ``meta`` go on every request.
        """
        chat = [dict(m) for m in messages]
        if self._instruct is not None:
            hint = self._instruct.render(schema=schema.text())[-1]["content"]
            last = chat[-1]
            chat[-1] = {**last, "content": f"{last.get('content') or ''}\n\n{hint}"}
        outcome = StructuredResult()
        base = dict(params or {})
        fixed = "response_format" in base
        fmt: Format = "off" if fixed else self._first_format(role)
        reply = await self._send(chat, schema, fmt, role, base, sample, meta, outcome, fixed)
        if reply is None:
            return outcome
        fmt = outcome.format or fmt
        template = placeholders(chat)
        for attempt in range(self.reasks + 1):
            try:
                outcome.value = parse_reply(reply.completion, schema, template=template)
                outcome.cause = None
                return outcome
            except SchemaMismatch as exc:
                problem, outcome.cause = str(exc), exc.cause
            if outcome.cause is None and reply.finish_reason == "length":
                outcome.cause = "truncated"
                problem += " (the reply was cut at the token limit: raise max_tokens)"
            if attempt == self.reasks:
                outcome.failure, outcome.error = "parse_failure", problem
                return outcome
            outcome.reasks += 1
            echo = (reply.completion or "")[:_MAX_ECHO_CHARS]
            follow = self._reask.render(problem=problem, schema=schema.text())
            chat = [*chat, {"role": "assistant", "content": echo}, *follow]
            params_now = base if fixed else _with_format(base, schema, fmt)
            reply = await self._complete(chat, params_now, role, sample, meta, outcome)
            if reply is None:
                return outcome
        return outcome  # pragma: no cover - the loop always returns

    async def _send(
        self,
        chat: list[dict[str, Any]],
        schema: Schema,
        fmt: Format,
        role: str,
        base: dict[str, Any],
        sample: int,
        meta: Mapping[str, Any] | None,
        outcome: StructuredResult,
        fixed: bool,
    ) -> Result | None:
        """The first reply, walking down the format ladder on "unsupported" 4xx answers."""
        fallback = self.mode == "auto" and not fixed
        while True:
            params = base if fixed else _with_format(base, schema, fmt)
            outcome.format = fmt
            result = await self._complete(chat, params, role, sample, meta, outcome)
            if result is not None:
                if fallback:
                    current = self._formats.setdefault(role, fmt)
                    if _LADDER.index(fmt) > _LADDER.index(current):
                        self._formats[role] = fmt
                return result
            error = outcome.results[-1].error
            if not (
                fallback
                and fmt != "off"
                and isinstance(error, ClientError | ServerError)
                and error.status in _UNSUPPORTED_STATUSES
            ):
                return None
            fmt = _LADDER[_LADDER.index(fmt) + 1]
            outcome.failure = outcome.error = None

    async def _complete(
        self,
        chat: list[dict[str, Any]],
        params: dict[str, Any],
        role: str,
        sample: int,
        meta: Mapping[str, Any] | None,
        outcome: StructuredResult,
    ) -> Result | None:
        request = Request(messages=chat, params=params, sample=sample, meta=dict(meta or {}))
        result = await self.engine.complete(request, role=role)
        outcome.results.append(result)
        if not result.ok:
            assert result.error is not None
            outcome.failure = "request_error"
            outcome.error = f"{result.error.kind}: {result.error.message}"
            return None
        return result


def _with_format(params: dict[str, Any], schema: Schema, fmt: Format) -> dict[str, Any]:
    rf = schema.response_format(fmt)
    return {**params, "response_format": rf} if rf is not None else params
