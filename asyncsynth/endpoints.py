"""``asyncsynth endpoints check``: is each configured endpoint there, and what can it do?

For every endpoint (all of them at once; local ones are started first) it asks:

1. ``GET /models``: reachable? how fast? which models does it serve, the configured one among them?
2. one tiny chat completion (``max_tokens`` 5): does the model answer, and how fast?
3. one JSON-schema request (``response_format`` of type ``json_schema``): accepted and
   followed (``yes``), refused with an error (``no``), answered with JSON not of the
   schema (``json only``), or with no JSON at all (``ignored``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from .engine.client import Transport, make_transport
from .engine.errors import AsyncsynthError, ClientError, RequestError, StatusError

if TYPE_CHECKING:
    from .config import Config, EndpointConfig

MODELS_TIMEOUT = 10.0
"""Seconds ``GET /models`` may take (a completion gets the endpoint's own ``timeout``)."""
COMPLETION_MAX_TOKENS = 5
SCHEMA_MAX_TOKENS = 32
_PROMPT = "Reply with the single word OK."
_SCHEMA_PROMPT = 'Answer in JSON: {"ok": true}'
_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


@dataclass
class EndpointCheck:
    """What :func:`check_endpoint` found out about one endpoint."""

    name: str
    model: str
    kind: str
    url: str | None = None
    reachable: bool = False
    models_latency_s: float | None = None
    models: list[str] = field(default_factory=list)
    completion_latency_s: float | None = None
    completion: str | None = None
    json_schema: str = "untested"
    """``yes``, ``json only`` (JSON, not of the schema), ``ignored``, ``no`` or ``untested``."""
    problems: list[str] = field(default_factory=list)

    @property
    def serves_model(self) -> bool:
        return self.model in self.models

    @property
    def ok(self) -> bool:
        """Reachable and answered a completion."""
        return self.reachable and self.completion_latency_s is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "serves_model": self.serves_model, "ok": self.ok}


async def check_endpoints(
    config: Config, names: Sequence[str] | None = None
) -> list[EndpointCheck]:
    """Check the named endpoints (default: all of ``config``'s) concurrently, in that order."""
    chosen = list(dict.fromkeys(names if names is not None else config.endpoints))
    results: list[EndpointCheck | None] = [None] * len(chosen)

    async def one(i: int, name: str) -> None:
        results[i] = await check_endpoint(config.endpoints[name], config.params_for(name))

    async with anyio.create_task_group() as tg:
        for i, name in enumerate(chosen):
            tg.start_soon(one, i, name)
    return [r for r in results if r is not None]


async def check_endpoint(ep: EndpointConfig, params: dict[str, Any] | None = None) -> EndpointCheck:
    """Check one endpoint; a local one is started for the check and stopped after it.

    ``params`` are the endpoint's request params: only its ``extra_body`` is sent (some
    servers need it), so the check's requests stay tiny.
    """
    check = EndpointCheck(name=ep.name, model=ep.model, kind=ep.kind, url=ep.base_url)
    extra = dict((params or {}).get("extra_body") or {})
    async with AsyncExitStack() as stack:
        try:
            transport = await _open(ep, stack, check)
        except AsyncsynthError as exc:
            check.problems.append(str(exc))
            return check
        stack.push_async_callback(transport.aclose)
        await _check_models(transport, check)
        if check.reachable:
            await _check_completion(transport, ep, extra, check)
            await _check_json_schema(transport, ep, extra, check)
    return check


async def _open(ep: EndpointConfig, stack: AsyncExitStack, check: EndpointCheck) -> Transport:
    if ep.kind == "local":
        from .local import start_local_endpoint

        server = await stack.enter_async_context(start_local_endpoint(ep))
        check.url = server.url
        return server.transport(ep.transport)
    assert ep.base_url is not None
    return make_transport(ep.transport, ep.base_url, ep.api_key(), name=ep.name)


async def _check_models(transport: Transport, check: EndpointCheck) -> None:
    start = time.monotonic()
    try:
        check.models = await transport.models(MODELS_TIMEOUT)
    except ClientError as exc:  # some servers have no /models: the completion decides
        check.problems.append(f"GET /models: {exc.message}")
        check.reachable = True
        return
    except RequestError as exc:
        check.problems.append(f"unreachable: {exc.message}")
        return
    check.reachable = True
    check.models_latency_s = time.monotonic() - start
    if not check.serves_model:
        listed = ", ".join(check.models[:10]) or "none"
        check.problems.append(f"model {check.model!r} is not among the models it lists ({listed})")


async def _check_completion(
    transport: Transport, ep: EndpointConfig, extra: dict[str, Any], check: EndpointCheck
) -> None:
    body = _body(ep, _PROMPT, extra, max_tokens=COMPLETION_MAX_TOKENS)
    start = time.monotonic()
    try:
        completion = await transport.chat(body, ep.timeout)
    except RequestError as exc:
        check.problems.append(f"completion failed: {exc.message}")
        return
    check.completion_latency_s = time.monotonic() - start
    check.completion = completion.content


async def _check_json_schema(
    transport: Transport, ep: EndpointConfig, extra: dict[str, Any], check: EndpointCheck
) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "endpoint_check", "strict": True, "schema": _SCHEMA},
    }
    body = _body(
        ep, _SCHEMA_PROMPT, extra, max_tokens=SCHEMA_MAX_TOKENS, response_format=response_format
    )
    try:
        completion = await transport.chat(body, ep.timeout)
    except StatusError as exc:
        check.json_schema = "no"
        check.problems.append(f"JSON-schema response_format refused: {exc.message}")
        return
    except RequestError as exc:
        check.problems.append(f"JSON-schema request failed: {exc.message}")
        return
    try:
        answer = orjson.loads(completion.content or "")
    except orjson.JSONDecodeError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("ok"), bool):
        check.json_schema = "yes"
        return
    check.json_schema = "json only" if answer is not None else "ignored"
    what = "JSON, not of the schema" if answer is not None else "not JSON"
    check.problems.append(
        f"JSON-schema response_format accepted but the answer was {what}: "
        f"{(completion.content or '')[:80]!r}"
    )


def _body(ep: EndpointConfig, prompt: str, extra: dict[str, Any], **params: Any) -> bytes:
    payload = {
        "model": ep.model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        **params,
        **extra,
    }
    return orjson.dumps(payload)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}ms"


def format_checks(checks: Sequence[EndpointCheck]) -> str:
    """An aligned table, then each endpoint's problems."""
    header = ("endpoint", "kind", "url", "reachable", "model", "completion", "json_schema")
    rows = [header]
    for c in checks:
        served = "listed" if c.serves_model else ("not listed" if c.models else "?")
        rows.append(
            (
                c.name,
                c.kind,
                c.url or "-",
                f"yes ({_ms(c.models_latency_s)})" if c.reachable else "NO",
                f"{c.model} ({served})",
                _ms(c.completion_latency_s) if c.ok else "FAILED" if c.reachable else "-",
                c.json_schema,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    for c in checks:
        lines.extend(f"{c.name}: {problem}" for problem in c.problems)
    return "\n".join(lines)
