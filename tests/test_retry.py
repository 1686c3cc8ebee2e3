"""What is retried and how long it waits: header parsing, backoff, and the engine end to end."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import anyio
import pytest
from polling import wait_until

from asyncsynth import Engine, Request, Result
from asyncsynth.config import Config
from asyncsynth.engine.client import status_error
from asyncsynth.engine.errors import (
    ClientError,
    ConnectionDropped,
    DeadlineExceeded,
    MalformedResponse,
    RateLimited,
    RequestTimeout,
    ServerError,
)
from asyncsynth.engine.retry import (
    MAX_SERVER_WAIT,
    backoff,
    is_retryable,
    server_wait,
    wait_for,
)
from asyncsynth.testing import Reply, ReplyContext, SimServer

pytestmark = pytest.mark.anyio

# -- parsing what the server asked for ------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": " 1.5 "}, 1.5),
        ({"RETRY-AFTER": "0"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After": "1", "retry-after-ms": "2500"}, 2.5),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "250ms"}, 0.25),
        ({"x-ratelimit-reset-tokens": "1m30.5s"}, 90.5),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "2s"}, 2.0),
        ({"x-ratelimit-reset-tokens": "1h"}, min(3600.0, MAX_SERVER_WAIT)),
        ({"Retry-After": "1", "x-ratelimit-reset-requests": "30s"}, 1.0),  # Retry-After wins
        ({"Retry-After": "86400"}, MAX_SERVER_WAIT),
        ({"Retry-After": "-3"}, 0.0),
    ],
)
def test_server_wait_seconds(headers: dict[str, str], seconds: float) -> None:
    assert server_wait(headers) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Retry-After": "soon"},
        {"Retry-After": "nan"},
        {"retry-after-ms": "nan"},
        {"x-ratelimit-reset-requests": "5 parsecs"},
        {"x-ratelimit-reset-requests": "1s2"},
        {"Content-Type": "application/json"},
    ],
)
def test_server_wait_ignores_what_it_cannot_read(headers: dict[str, str]) -> None:
    assert server_wait(headers) is None


def test_server_wait_http_date() -> None:
    future = formatdate(time.time() + 30, usegmt=True)
    assert 28.0 <= server_wait({"Retry-After": future}) <= 30.5  # type: ignore[operator]
    past = formatdate(time.time() - 30, usegmt=True)
    assert server_wait({"Retry-After": past}) == 0.0


def test_backoff_is_jittered_exponential_and_capped() -> None:
    random.seed(0)
    for attempt in range(1, 12):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        draws = [backoff(attempt, base=0.5, cap=4.0) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling / 2  # full jitter spreads over the whole range


def test_wait_for_prefers_the_server() -> None:
    limited = RateLimited("x", status=429, headers={"retry-after": "7"})
    assert wait_for(limited, 1, base=0.001, cap=0.001) == 7.0
    plain = ServerError("x", status=500)
    assert wait_for(plain, 3, base=0.001, cap=0.001) <= 0.001
    assert wait_for(RequestTimeout("x"), 1, base=0.01, cap=1.0) <= 0.01


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, ClientError, False),
        (401, ClientError, False),
        (403, ClientError, False),
        (404, ClientError, False),
        (422, ClientError, False),
        (408, ClientError, True),
        (409, ClientError, True),
        (429, RateLimited, True),
        (500, ServerError, True),
        (502, ServerError, True),
        (503, ServerError, True),
        (504, ServerError, True),
    ],
)
def test_status_classification(status: int, kind: type, retryable: bool) -> None:
    body = b'{"error": {"message": "the reason", "type": "x"}}'
    error = status_error(status, body, {"Retry-After": "3"}, "ep")
    assert type(error) is kind
    assert error.status == status
    assert error.retryable is retryable
    assert is_retryable(error) is retryable
    assert error.message == f"HTTP {status}: the reason"
    assert error.headers == {"retry-after": "3"}
    assert error.endpoint == "ep"


def test_transport_errors_are_retryable_deadline_is_not() -> None:
    assert is_retryable(ConnectionDropped("x"))
    assert is_retryable(RequestTimeout("x"))
    assert is_retryable(MalformedResponse("x"))
    assert not is_retryable(DeadlineExceeded("x"))
    assert not is_retryable(ValueError("x"))


# -- end to end against the sim -------------------------------------------------------------------

Hook = Callable[[dict[str, Any], ReplyContext], "str | Reply"]


def scripted(*first: Reply) -> tuple[Hook, list[float]]:
    """A hook answering the first requests with ``first``, then echoing; and arrival times."""
    arrivals: list[float] = []

    def hook(body: dict[str, Any], ctx: ReplyContext) -> str | Reply:
        arrivals.append(time.monotonic())
        return first[ctx.n - 1] if ctx.n <= len(first) else Reply()

    return hook, arrivals


async def one(config: Config, prompt: str = "hello") -> Result:
    async with Engine(config) as engine:
        return await engine.complete(Request.from_prompt(prompt))


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
async def test_retried_statuses(
    status: int, sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.config.reply, _ = scripted(Reply(status=status, content="try later"))
    result = await one(config_for(sim.url))
    assert result.ok, result.error
    assert result.completion == "echo: hello"
    assert result.attempts == 2
    assert sim.stats.requests == 2


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_client_errors_are_not_retried(
    status: int, sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.config.reply, _ = scripted(Reply(status=status, content="your fault"))
    result = await one(config_for(sim.url))
    assert not result.ok
    assert isinstance(result.error, ClientError)
    assert result.error.status == status
    assert result.error.message == f"HTTP {status}: your fault"
    assert result.attempts == 1
    assert sim.stats.requests == 1
    with pytest.raises(ClientError):
        result.text()


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_an_answer_about_the_endpoint_is_asked_again_at_once(
    status: int, sim: SimServer, config_for: Callable[..., Config]
) -> None:
    """A 401, 403 or 404 speaks of the key or model, not the request: until the endpoint is
    taken out for it (``fail_fast`` in a row), the request is sent again, without waiting."""
    sim.config.reply, arrivals = scripted(Reply(status=status, content="not for you"))
    result = await one(config_for(sim.url, engine={"backoff_base": 5.0}))
    assert result.ok and result.attempts == 2
    assert arrivals[1] - arrivals[0] < 1.0  # no backoff: 5 s at the least otherwise

    sim.config.reply = lambda body, ctx: Reply(status=status, content="not for you")
    result = await one(config_for(sim.url, engine={"fail_fast": 0}))
    assert isinstance(result.error, ClientError) and result.attempts == 1  # fail_fast off


async def test_attempts_are_bounded(sim: SimServer, config_for: Callable[..., Config]) -> None:
    sim.config.reply = lambda body, ctx: Reply(status=500, content="down")
    result = await one(config_for(sim.url, engine={"max_attempts": 3}))
    assert isinstance(result.error, ServerError)
    assert (result.attempts, result.error.attempts, sim.stats.requests) == (3, 3, 3)
    assert result.error.message == "HTTP 500: down"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(drop=True), ConnectionDropped),
        (Reply(malformed=True), MalformedResponse),
        (Reply(hang=True), RequestTimeout),
    ],
)
async def test_transport_faults_are_retried_then_succeed_or_fail(
    reply: Reply,
    error: type,
    sim: SimServer,
    config_for: Callable[..., Config],
) -> None:
    config = config_for(sim.url, timeout=0.2, engine={"max_attempts": 2})
    sim.config.reply, _ = scripted(reply)
    result = await one(config)
    assert result.ok, result.error
    assert (result.attempts, result.completion) == (2, "echo: hello")

    sim.config.reply = lambda body, ctx: reply
    failed = await one(config)
    assert isinstance(failed.error, error), failed.error
    assert failed.attempts == 2


async def test_a_hanging_server_times_out_within_the_deadline(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    """Each attempt waits its timeout, then the deadline stops the retries.

    Attempts that reach the server start at least ``timeout`` apart, so at most
    deadline / timeout of them fit (the count may add one that found no endpoint left
    before the deadline); every stalled request is given up (the server sees its client go).
    """
    sim.config.reply = lambda body, ctx: Reply(hang=True)
    config = config_for(sim.url, timeout=0.15, engine={"max_attempts": 50, "deadline": 0.6})
    start = time.monotonic()
    result = await one(config)
    assert time.monotonic() - start >= 0.55  # it waited the deadline out
    assert isinstance(result.error, DeadlineExceeded), result.error
    assert 2 <= sim.stats.hung <= 0.6 / 0.15 and result.attempts <= sim.stats.hung + 1
    await wait_until(lambda: sim.stats.in_flight == 0)  # no stalled request left behind


async def test_an_attempt_never_outlasts_the_deadline(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    """An attempt's timeout longer than what is left of the deadline is cut to it: with
    an hour's timeout the request still ends, at the deadline, after one hung attempt."""
    sim.config.reply = lambda body, ctx: Reply(hang=True)
    config = config_for(sim.url, timeout=3600, engine={"max_attempts": 50, "deadline": 0.5})
    with anyio.fail_after(60):  # far short of the hour an uncut timeout would wait
        result = await one(config)
    assert isinstance(result.error, DeadlineExceeded), result.error
    assert sim.stats.hung == 1
    await wait_until(lambda: sim.stats.in_flight == 0)


async def test_unreachable_endpoint_fails_at_the_deadline(
    config_for: Callable[..., Config],
) -> None:
    with SimServer() as gone:
        url = gone.url
    start = time.monotonic()
    result = await one(config_for(url, engine={"deadline": 0.5, "max_attempts": 1000}))
    assert time.monotonic() - start >= 0.5
    assert isinstance(result.error, DeadlineExceeded), result.error
    assert 1 < result.attempts < 1000  # retried until the deadline, not the attempts, ran out


async def test_retry_after_seconds_is_honoured(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.config.reply, arrivals = scripted(Reply(status=429, headers={"Retry-After": "1"}))
    start = time.monotonic()
    result = await one(config_for(sim.url))
    assert time.monotonic() - start >= 1.0
    assert result.ok and result.attempts == 2
    assert arrivals[1] - arrivals[0] >= 1.0


async def test_ratelimit_reset_header_is_honoured(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    headers = {"x-ratelimit-reset-requests": "300ms", "x-ratelimit-reset-tokens": "50ms"}
    sim.config.reply, arrivals = scripted(Reply(status=429, headers=headers))
    result = await one(config_for(sim.url))
    assert result.ok and result.attempts == 2
    assert arrivals[1] - arrivals[0] >= 0.3


@pytest.mark.parametrize(
    ("endpoint", "headers"),
    [
        ({"max_concurrency": 4, "adaptive": False}, {}),  # a fixed limit: nothing else slows it
        ({"max_concurrency": 4}, {"x-ratelimit-reset-requests": "1s"}),  # a spent quota
    ],
)
async def test_a_429_pauses_the_whole_endpoint(
    endpoint: dict[str, Any],
    headers: dict[str, str],
    sim: SimServer,
    config_for: Callable[..., Config],
) -> None:
    arrivals: list[tuple[int, float]] = []

    def hook(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        arrivals.append((ctx.n, time.monotonic()))
        if ctx.n == 1:
            return Reply(status=429, headers={"Retry-After": "1", **headers})
        return Reply(delay=0.05)

    sim.config.reply = hook
    config = config_for(sim.url, **endpoint)
    async with Engine(config) as engine:
        results = [r async for r in engine.map(Request.from_prompt(f"p{i}") for i in range(12))]
    assert all(r.ok for r in results)
    assert len(arrivals) == 13
    limited_at = arrivals[0][1]
    # Only requests already on their way when the 429 came back (3 at most) arrive in the pause.
    during = [n for n, t in arrivals[1:] if t < limited_at + 1.0]
    assert len(during) <= 3, during
    assert sim.stats.responses_by_status[429] == 1


async def test_requests_waiting_for_rate_budget_also_respect_a_429_pause(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    arrivals: list[tuple[int, float]] = []

    def hook(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        arrivals.append((ctx.n, time.monotonic()))
        return Reply(status=429, headers={"Retry-After": "1"}) if ctx.n == 1 else Reply()

    sim.config.reply = hook
    # 600 rpm: five requests at once, then one every 0.1 s, all inside the 1 s pause.
    config = config_for(sim.url, rpm=600, max_concurrency=10)
    async with Engine(config) as engine:
        results = [r async for r in engine.map(Request.from_prompt(f"p{i}") for i in range(10))]
    assert all(r.ok for r in results)
    limited_at = arrivals[0][1]
    early = [n for n, t in arrivals[1:] if t < limited_at + 1.0]
    assert len(early) <= 4, early  # only those sent with the first, before its 429 came back
