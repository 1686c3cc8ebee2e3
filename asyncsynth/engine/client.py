"""One endpoint's wire protocol: OpenAI chat completions over a pooled connection.

A transport turns a ready JSON body into a parsed completion, or raises one of the
errors in :mod:`asyncsynth.engine.errors`; it never retries (the engine does). Four
are provided, chosen per endpoint with ``transport = "..."``:

- ``http1`` (default): asyncsynth's own HTTP/1.1 client (:mod:`asyncsynth.engine.http1`),
  about a third of aiohttp's CPU a request (see ``benchmarks/overhead.py``);
- ``aiohttp``: aiohttp's session, for what ``http1`` leaves out (e.g. redirects);
- ``httpx``: plain httpx, for environments that standardise on it;
- ``openai``: the official SDK (``max_retries=0``), for providers it special-cases.

The contract (:class:`Transport`): ``chat(body, timeout)`` returns a :class:`Completion`
(with the response's ``x-ratelimit-*`` headers in ``rate`` when it had any) or raises a
:class:`~asyncsynth.engine.errors.RequestError`; ``models(timeout)`` lists the served
models; ``aclose()``. Optionally ``post_root(path, body, timeout)`` POSTs to a path of
the server's root (``base_url`` without ``/v1``), for tokenizer routes
(:mod:`asyncsynth.engine.tokens`); a transport without it gets estimated token counts.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import orjson

from .errors import (
    ClientError,
    ConnectError,
    ConnectionDropped,
    MalformedResponse,
    RateLimited,
    RequestError,
    RequestTimeout,
    ServerError,
    StatusError,
)
from .http1 import Origin, Response
from .limits import RATE_HEADER_NAMES, RateHeaders

_T = TypeVar("_T")


@dataclass(slots=True)
class Completion:
    """What the engine keeps of a chat completion."""

    content: str | None
    finish_reason: str | None
    usage: dict[str, int]
    model: str | None
    cost: float | None = None
    """USD it cost when it was made (None: the price is unknown)."""
    batch: bool = False
    """Answered through the Batch API."""
    rate: RateHeaders | None = None
    """What the response's ``x-ratelimit-*`` headers said, if it had any (never journaled)."""


class Transport(Protocol):
    async def chat(self, body: bytes, timeout: float) -> Completion: ...

    async def models(self, timeout: float) -> list[str]: ...

    async def aclose(self) -> None: ...


def status_error(status: int, text: bytes | str, headers: Any, endpoint: str) -> StatusError:
    """The right :class:`StatusError` for an HTTP error answer, with the server's message."""
    message, code = _error_message(text)
    headers = {k.lower(): v for k, v in dict(headers or {}).items()}
    cls: type[StatusError]
    if status == 429:
        cls = RateLimited
    elif status >= 500:
        cls = ServerError
    else:
        cls = ClientError
    return cls(
        f"HTTP {status}: {message}" if message else f"HTTP {status}",
        status=status,
        headers=headers,
        endpoint=endpoint,
        code=code,
    )


def _error_message(text: bytes | str) -> tuple[str, str | None]:
    """The server's message and error code, from an OpenAI-style (or any) error body."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raw = text.decode(errors="replace") if isinstance(text, bytes) else text
        return raw.strip()[:300], None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            code = err.get("code")  # e.g. invalid_api_key; vLLM puts the status number here
            named = code[:80] if isinstance(code, str) and code and not code.isdigit() else None
            return str(err.get("message") or err)[:300], named
        return str(err)[:300], None
    return str(data)[:300], None


def rate_headers(headers: Any) -> RateHeaders | None:
    """The ``x-ratelimit-*`` limits in response headers (a cheap look first: most have none)."""
    for name in RATE_HEADER_NAMES:
        if name in headers:
            return RateHeaders.parse(headers)
    return None


def root_url(base_url: str) -> str:
    """The server's root: ``http://host:8000/v1`` -> ``http://host:8000``."""
    return base_url.rstrip("/").removesuffix("/v1")


def parse_completion(raw: bytes, endpoint: str, rate: RateHeaders | None = None) -> Completion:
    try:
        data = orjson.loads(raw)
        choice = data["choices"][0]
        message = choice.get("message") or {}
        content = message.get("content")
        usage = data.get("usage") or {}
        counts = {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
        }
        if cached := (usage.get("prompt_tokens_details") or {}).get("cached_tokens"):
            counts["cached_tokens"] = int(cached)  # prompt tokens served from the provider's cache
        return Completion(
            content=content,
            finish_reason=choice.get("finish_reason"),
            usage=counts,
            model=data.get("model"),
            rate=rate,
        )
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError, ValueError):
        preview = raw[:120].decode(errors="replace")
        raise MalformedResponse(f"not a chat completion: {preview!r}", endpoint=endpoint) from None


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class Http1Transport:
    """The default transport: :class:`~asyncsynth.engine.http1.Origin`, one per endpoint."""

    def __init__(self, base_url: str, api_key: str | None, *, name: str = "") -> None:
        self._name = name
        self._origin = Origin(base_url, _headers(api_key), name=name)
        api = urlsplit(base_url).path.rstrip("/")
        self._chat, self._models = f"{api}/chat/completions", f"{api}/models"
        self._root = urlsplit(root_url(base_url)).path

    async def _send(self, method: str, path: str, body: bytes | None, timeout: float) -> Response:
        """A 2xx answer; any other as an engine error."""
        response = await self._origin.request(method, path, body, timeout)
        if response.status >= 300:
            if response.status < 400:  # the sessions that follow redirects turn a POST into a GET
                where = response.headers.get("location", "elsewhere")
                raise status_error(
                    response.status, f"redirected to {where}", response.headers, self._name
                )
            raise status_error(response.status, response.body, response.headers, self._name)
        return response

    async def chat(self, body: bytes, timeout: float) -> Completion:
        response = await self._send("POST", self._chat, body, timeout)
        return parse_completion(response.body, self._name, rate_headers(response.headers))

    async def models(self, timeout: float) -> list[str]:
        response = await self._send("GET", self._models, None, timeout)
        return _model_ids(response.body, self._name)

    async def post_root(self, path: str, body: bytes, timeout: float) -> bytes:
        return (await self._send("POST", self._root + path, body, timeout)).body

    async def aclose(self) -> None:
        await self._origin.aclose()


class AiohttpTransport:
    """aiohttp: one aiohttp session with an unbounded keep-alive pool.

    The engine bounds concurrency itself; the connector only reuses connections.
    """

    def __init__(self, base_url: str, api_key: str | None, *, name: str = "") -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._name = name
        self._chat_url = f"{base_url}/chat/completions"
        self._models_url = f"{base_url}/models"
        self._root = root_url(base_url)
        self._headers = _headers(api_key)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        self._timeouts: dict[float, Any] = {}

    def _timeout(self, seconds: float) -> Any:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._aiohttp.ClientTimeout(total=seconds)
            if len(self._timeouts) < 64:
                self._timeouts[seconds] = timeout
        return timeout

    async def _get(
        self, method: str, url: str, body: bytes | None, timeout: float
    ) -> tuple[bytes, Any]:
        """The body and headers of a 2xx answer; any other outcome as an engine error."""
        aiohttp = self._aiohttp
        try:
            async with self._session.request(
                method, url, data=body, timeout=self._timeout(timeout)
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise status_error(resp.status, raw, resp.headers, self._name)
                return raw, resp.headers
        except RequestError:
            raise
        except TimeoutError:
            raise RequestTimeout(f"no answer within {timeout:g}s", endpoint=self._name) from None
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(
                f"cannot connect: {exc.os_error or exc}", endpoint=self._name
            ) from None
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientOSError,
        ) as exc:
            raise ConnectionDropped(
                f"connection dropped: {exc or type(exc).__name__}", endpoint=self._name
            ) from None
        except aiohttp.ClientResponseError as exc:  # a response aiohttp could not parse
            raise MalformedResponse(
                f"bad HTTP response: {exc.message}", endpoint=self._name
            ) from None
        except aiohttp.ClientError as exc:
            raise ConnectionDropped(f"{type(exc).__name__}: {exc}", endpoint=self._name) from None

    async def chat(self, body: bytes, timeout: float) -> Completion:
        raw, headers = await self._get("POST", self._chat_url, body, timeout)
        return parse_completion(raw, self._name, rate_headers(headers))

    async def models(self, timeout: float) -> list[str]:
        raw, _ = await self._get("GET", self._models_url, None, timeout)
        return _model_ids(raw, self._name)

    async def post_root(self, path: str, body: bytes, timeout: float) -> bytes:
        raw, _ = await self._get("POST", self._root + path, body, timeout)
        return raw

    async def aclose(self) -> None:
        await self._session.close()


class HttpxTransport:
    """Plain httpx; slower at high concurrency (see the overhead benchmark)."""

    def __init__(self, base_url: str, api_key: str | None, *, name: str = "") -> None:
        import httpx

        self._httpx = httpx
        self._name = name
        self._root = root_url(base_url)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=_headers(api_key),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )

    async def _send(self, method: str, path: str, body: bytes | None, timeout: float) -> Any:
        """A 2xx response; any other outcome as an engine error."""
        httpx = self._httpx
        try:
            resp = await self._client.request(method, path, content=body, timeout=timeout)
        except httpx.TimeoutException:
            raise RequestTimeout(f"no answer within {timeout:g}s", endpoint=self._name) from None
        except httpx.ConnectError as exc:
            raise ConnectError(f"cannot connect: {exc}", endpoint=self._name) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise ConnectionDropped(f"connection dropped: {exc}", endpoint=self._name) from None
        except httpx.HTTPError as exc:
            raise ConnectionDropped(f"{type(exc).__name__}: {exc}", endpoint=self._name) from None
        if resp.status_code >= 400:
            raise status_error(resp.status_code, resp.content, resp.headers, self._name)
        return resp

    async def chat(self, body: bytes, timeout: float) -> Completion:
        resp = await self._send("POST", "/chat/completions", body, timeout)
        return parse_completion(resp.content, self._name, rate_headers(resp.headers))

    async def models(self, timeout: float) -> list[str]:
        return _model_ids((await self._send("GET", "/models", None, timeout)).content, self._name)

    async def post_root(self, path: str, body: bytes, timeout: float) -> bytes:
        return (await self._send("POST", self._root + path, body, timeout)).content

    async def aclose(self) -> None:
        await self._client.aclose()


class OpenAITransport:
    """The official openai SDK, with its own retries off."""

    def __init__(self, base_url: str, api_key: str | None, *, name: str = "") -> None:
        import httpx
        import openai

        self._openai = openai
        self._httpx = httpx
        self._name = name
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "none", max_retries=0
        )

    async def _call(self, call: Awaitable[_T], timeout: float) -> _T:
        """Await an SDK call, turning the SDK's exceptions into the engine's."""
        openai = self._openai
        try:
            return await call
        except openai.APITimeoutError:
            raise RequestTimeout(f"no answer within {timeout:g}s", endpoint=self._name) from None
        except openai.APIConnectionError as exc:
            if isinstance(exc.__cause__, self._httpx.ConnectError):
                raise ConnectError(
                    f"cannot connect: {exc.__cause__}", endpoint=self._name
                ) from None
            raise ConnectionDropped(f"connection error: {exc}", endpoint=self._name) from None
        except openai.APIStatusError as exc:
            raise status_error(
                exc.status_code, exc.response.content, exc.response.headers, self._name
            ) from None

    async def chat(self, body: bytes, timeout: float) -> Completion:
        payload = orjson.loads(body)
        extra = {k: payload.pop(k) for k in list(payload) if k not in _SDK_KEYS}
        create = self._client.chat.completions.with_raw_response.create
        resp = await self._call(
            create(**payload, extra_body=extra or None, timeout=timeout), timeout
        )
        return parse_completion(resp.content, self._name, rate_headers(resp.headers))

    async def models(self, timeout: float) -> list[str]:
        page = await self._call(self._client.models.list(timeout=timeout), timeout)
        return [m.id for m in page.data]

    async def aclose(self) -> None:
        await self._client.close()


_SDK_KEYS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "seed",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "response_format",
        "n",
    }
)


def _model_ids(raw: bytes, endpoint: str) -> list[str]:
    try:
        return [str(m["id"]) for m in orjson.loads(raw)["data"]]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise MalformedResponse(f"not a model list: {exc}", endpoint=endpoint) from None


TRANSPORT_CLASSES: dict[
    str, type[Http1Transport | AiohttpTransport | HttpxTransport | OpenAITransport]
] = {
    "http1": Http1Transport,
    "aiohttp": AiohttpTransport,
    "httpx": HttpxTransport,
    "openai": OpenAITransport,
}


def make_transport(kind: str, base_url: str, api_key: str | None, *, name: str = "") -> Transport:
    return TRANSPORT_CLASSES[kind](base_url, api_key, name=name)
