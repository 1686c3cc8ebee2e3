"""Token counts before a request is sent: the endpoint's tokenizer route, else an estimate.

The engine needs them for TPM budgets; cost estimates use the same functions.

- :func:`estimate_prompt_tokens`: about 4 characters a token, no server needed;
- :class:`TokenCounter`: the exact count from the endpoint's own tokenizer, where the
  server has a route for it (probed once per endpoint, in this order): vLLM's
  ``POST /tokenize`` with the chat messages (chat template included); llama.cpp
  server's ``POST /tokenize`` and llama-cpp-python's ``POST /extras/tokenize/count``
  with the messages' text (plus :data:`MESSAGE_OVERHEAD` a message for the template).
  A server with none of them (hosted APIs) gets the estimate.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from .errors import RequestError, StatusError

CHARS_PER_TOKEN = 4.0
DEFAULT_COMPLETION_TOKENS = 512
"""Assumed completion length for a request that names no ``max_tokens``."""
MESSAGE_OVERHEAD = 4
"""Tokens a chat template adds around each message (role markers), for text-only routes."""
TOKENIZE_TIMEOUT = 10.0

Post = Callable[[str, bytes, float], Awaitable[bytes]]
"""``post(path, body, timeout)``: POST to a path of the server's root (not of ``/v1``)."""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    return orjson.dumps(content).decode()


def prompt_chars(messages: Sequence[dict[str, Any]]) -> int:
    """Characters of the messages' contents (non-text parts counted as their JSON)."""
    return sum(len(_text(m.get("content"))) for m in messages)


def estimate_prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """About 4 characters a token: the estimate when no tokenizer is at hand."""
    return math.ceil(prompt_chars(messages) / CHARS_PER_TOKEN)


def completion_budget(max_tokens: int | None) -> int:
    """Tokens a request may generate: its ``max_tokens``, else the default assumption."""
    return max_tokens or DEFAULT_COMPLETION_TOKENS


def _count(raw: bytes) -> int | None:
    data = orjson.loads(raw)
    if isinstance(data, dict) and isinstance(count := data.get("count"), int):
        return count
    return None


def _tokens(raw: bytes) -> int | None:
    data = orjson.loads(raw)
    tokens = data.get("tokens") if isinstance(data, dict) else None
    return len(tokens) if isinstance(tokens, list) and tokens else None


def _joined(messages: Sequence[dict[str, Any]]) -> str:
    return "\n".join(_text(m.get("content")) for m in messages)


# (path, body maker, parser, whether the count covers the chat template)
_ROUTES: tuple[tuple[str, Callable[[str, Sequence[dict[str, Any]]], Any], Any, bool], ...] = (
    ("/tokenize", lambda model, messages: {"model": model, "messages": messages}, _count, True),
    ("/tokenize", lambda model, messages: {"content": _joined(messages)}, _tokens, False),
    (
        "/extras/tokenize/count",
        lambda model, messages: {"input": _joined(messages), "model": model},
        _count,
        False,
    ),
)
_UNPROBED = -1
_PROBING = -2
_NONE = -3


class TokenCounter:
    """Prompt tokens of requests to one endpoint, counted by its server when it can."""

    def __init__(self, post: Post | None, model: str) -> None:
        self._post = post
        self._model = model
        self._route = _UNPROBED if post is not None else _NONE

    @property
    def route(self) -> str | None:
        """The tokenizer route in use (``None``: estimating, or not probed yet)."""
        return _ROUTES[self._route][0] if self._route >= 0 else None

    async def prompt_tokens(self, messages: Sequence[dict[str, Any]]) -> int:
        """The prompt's tokens: the server's count, else (and while probing) the estimate."""
        route = self._route
        if route == _UNPROBED:
            self._route = _PROBING
            found = _NONE
            try:
                for index in range(len(_ROUTES)):
                    count = await self._ask(index, messages)
                    if count is not None:
                        found = index
                        return count
            except RequestError:  # unreachable now: decide on a later request
                found = _UNPROBED
            finally:
                self._route = found
        elif route >= 0:
            try:
                count = await self._ask(route, messages)
            except RequestError:
                count = None
            if count is not None:
                return count
        return estimate_prompt_tokens(messages)

    async def _ask(self, index: int, messages: Sequence[dict[str, Any]]) -> int | None:
        """The count from one route; ``None`` when the server has no such route."""
        path, body, parse, templated = _ROUTES[index]
        assert self._post is not None
        try:
            raw = await self._post(
                path, orjson.dumps(body(self._model, messages)), TOKENIZE_TIMEOUT
            )
            count = parse(raw)
        except StatusError as exc:
            if exc.status is not None and exc.status < 500:
                return None  # no such route (404, 405) or not this body (400, 422)
            raise
        except orjson.JSONDecodeError:
            return None
        if count is None or templated:
            return count
        return count + MESSAGE_OVERHEAD * len(messages)
