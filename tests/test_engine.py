"""The engine end to end against the sim: wire protocol, transports, streaming, bounds, faults."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import Any

import anyio
import orjson
import pytest
from aiohttp import web
from polling import wait_until

from asyncsynth import Engine, Request
from asyncsynth.config import Config, config_from_dict
from asyncsynth.engine.client import make_transport
from asyncsynth.engine.errors import (
    ClientError,
    ConfigError,
    ConnectionDropped,
    EndpointsFailed,
    RateLimited,
    RequestError,
    RequestTimeout,
    TransportError,
)
from asyncsynth.testing import Reply, ReplyContext, SimServer

pytestmark = pytest.mark.anyio

TRANSPORTS = ["http1", "aiohttp", "httpx", "openai"]


def prompts(n: int, prefix: str = "p") -> Iterator[Request]:
    return (Request.from_prompt(f"{prefix}{i}", id=f"{prefix}{i}") for i in range(n))


# -- the wire protocol -----------------------------------------------------------------------------


async def test_body_merges_defaults_endpoint_and_request_params(sim: SimServer) -> None:
    sim.configure(record=True)
    config = config_from_dict(
        {
            "defaults": {"temperature": 0.1, "seed": 7, "extra_body": {"top_k": 40, "min_p": 0.1}},
            "endpoints": {
                "a": {
                    "base_url": sim.url,
                    "model": "served-model",
                    "params": {
                        "temperature": 0.5,
                        "top_p": 0.9,
                        "max_tokens": 64,
                        "extra_body": {"top_k": 20, "repetition_penalty": 1.1},
                    },
                }
            },
        }
    )
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    params = {"temperature": 0.9, "stop": ["\n"], "extra_body": {"min_p": 0.2}}
    async with Engine(config) as engine:
        result = await engine.complete(Request(messages, params=params))
    assert result.ok and result.completion == "echo: u"
    [body] = sim.stats.bodies
    assert body == {
        "model": "served-model",
        "messages": messages,
        "temperature": 0.9,  # request > endpoint > defaults
        "top_p": 0.9,
        "max_tokens": 64,
        "seed": 7,
        "stop": ["\n"],
        "top_k": 20,  # extra_body keys land at the top level, merged the same way
        "repetition_penalty": 1.1,
        "min_p": 0.2,
    }


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_transports_speak_chat_and_models(kind: str, sim: SimServer) -> None:
    transport = make_transport(kind, sim.url, None, name="t")
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_k": 3}
        completion = await transport.chat(orjson.dumps(body), 5.0)
        assert completion.content == "echo: hi"
        assert completion.finish_reason == "stop"
        assert completion.model == "m"
        assert completion.usage == {"prompt_tokens": 1, "completion_tokens": 2}
        assert await transport.models(5.0) == ["sim-model"]
    finally:
        await transport.aclose()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_transports_map_failures_to_engine_errors(kind: str, sim: SimServer) -> None:
    replies = iter(
        [
            Reply(status=429, content="slow down", headers={"Retry-After": "3"}),
            Reply(status=400, content="bad request"),
            Reply(drop=True),
            Reply(hang=True),
            Reply(malformed=True),
        ]
    )
    sim.config.reply = lambda body, ctx: next(replies)
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    transport = make_transport(kind, sim.url, None, name="t")
    try:
        with pytest.raises(RateLimited) as limited:
            await transport.chat(body, 5.0)
        assert limited.value.headers["retry-after"] == "3"
        assert limited.value.message == "HTTP 429: slow down"
        with pytest.raises(ClientError, match="HTTP 400: bad request"):
            await transport.chat(body, 5.0)
        with pytest.raises(TransportError):
            await transport.chat(body, 5.0)
        with pytest.raises(RequestTimeout):
            await transport.chat(body, 0.2)
        with pytest.raises(TransportError):
            await transport.chat(body, 5.0)
    finally:
        await transport.aclose()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_transports_report_an_unreachable_server_as_a_request_error(kind: str) -> None:
    with SimServer() as gone:
        url = gone.url
    transport = make_transport(kind, url, None, name="t")
    try:
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]})
        with pytest.raises(TransportError):
            await transport.chat(body, 2.0)
        with pytest.raises(RequestError):  # the probe of a cooled-down endpoint relies on it
            await transport.models(2.0)
    finally:
        await transport.aclose()


# -- streaming, bounds, cancellation ---------------------------------------------------------------


async def test_every_result_answers_its_own_request(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.configure(latency=0.002, jitter=0.002, seed=3)
    async with Engine(config_for(sim.url, max_concurrency=16)) as engine:
        results = [r async for r in engine.map(prompts(300))]
    assert sorted(r.request.id for r in results) == sorted(f"p{i}" for i in range(300))
    for r in results:
        assert r.ok and r.completion == f"echo: {r.request.id}"
        assert r.usage is not None and r.usage["prompt_tokens"] > 0
        assert r.endpoint == "a" and r.model == "m" and r.attempts == 1
        assert r.latency_s > 0


async def test_input_is_read_lazily_and_results_stream(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    pulled = 0

    def endless() -> Iterator[Request]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield Request.from_prompt(f"{i}")

    concurrency = 4
    ahead = 0
    seen = 0
    async with (
        Engine(config_for(sim.url, max_concurrency=concurrency)) as engine,
        aclosing(engine.map(endless())) as results,
    ):
        async for result in results:
            seen += 1
            ahead = max(ahead, pulled - seen)
            assert result.ok
            if seen == 200:
                break
    # Each pulled request is in flight, or its result waits in the buffer (as large as the
    # concurrency) or in a worker blocked on a full buffer.
    assert ahead <= 2 * concurrency
    assert sim.stats.max_in_flight <= concurrency


async def test_async_iterable_input(sim: SimServer, config_for: Callable[..., Config]) -> None:
    async def source() -> AsyncIterator[Request]:
        for request in prompts(50):
            await anyio.sleep(0)
            yield request

    async with Engine(config_for(sim.url, max_concurrency=8)) as engine:
        results = [r async for r in engine.map(source())]
    assert sorted(r.completion for r in results) == sorted(f"echo: p{i}" for i in range(50))


async def test_a_failing_input_surfaces_after_the_results_before_it(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    def broken() -> Iterator[Request]:
        yield from prompts(3)
        raise OSError("disk gone")

    seen: list[str | None] = []
    async with Engine(config_for(sim.url, max_concurrency=1)) as engine:
        with pytest.raises(OSError, match="disk gone"):
            async for result in engine.map(broken()):
                seen.append(result.completion)
    assert seen == ["echo: p0", "echo: p1", "echo: p2"]


async def test_leaving_the_loop_cancels_in_flight_work(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hook(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        if ctx.n == 1:
            return Reply()
        if ctx.n == 9:
            loop.call_soon_threadsafe(release.set)
        return Reply(hang=True)  # everything else stays in flight until the client leaves

    sim.config.reply = hook
    before = asyncio.all_tasks()
    async with Engine(config_for(sim.url, max_concurrency=8)) as engine:
        async with aclosing(engine.map(prompts(1000))) as results:
            async for result in results:
                assert result.ok
                await release.wait()  # 8 requests are in flight now
                break
        await wait_until(lambda: sim.stats.in_flight == 0)
        assert engine.endpoints["a"].in_flight == 0
        assert sim.stats.requests == 9
        # The engine is still usable afterwards.
        sim.config.reply = None
        again = await engine.complete(Request.from_prompt("again"))
        assert again.completion == "echo: again"
    assert asyncio.all_tasks() <= before  # nothing left running


async def test_plain_break_leaves_nothing_running(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.configure(latency=0.05)
    before = asyncio.all_tasks()
    async with Engine(config_for(sim.url, max_concurrency=8)) as engine:
        async for _ in engine.map(prompts(100_000)):
            break
        await wait_until(lambda: engine.endpoints["a"].in_flight == 0)
    await wait_until(lambda: sim.stats.in_flight == 0)
    assert sim.stats.requests < 100
    assert asyncio.all_tasks() <= before


async def test_callers_after_an_abandoned_map_are_not_starved(sim: SimServer) -> None:
    """Waiters cancelled with an abandoned map must not swallow later wake-ups."""
    sim.configure(latency=0.02)
    config = config_from_dict(
        {
            "endpoints": {"a": {"base_url": sim.url, "model": "m", "max_concurrency": 2}},
            "engine": {"deadline": 5},
        }
    )
    async with Engine(config) as engine:
        async with aclosing(engine.map(prompts(100), concurrency=10)) as results:
            async for _ in results:
                break
        done: list[bool] = []

        async def one(i: int) -> None:
            done.append((await engine.complete(Request.from_prompt(f"{i}"))).ok)

        peak = 0

        async def watch() -> None:  # both slots are taken in the tick the callers start
            nonlocal peak
            while len(done) < 10:
                peak = max(peak, engine.endpoints["a"].in_flight)
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(one, i)
            tg.start_soon(watch)
    assert done == [True] * 10  # a swallowed wake-up would leave callers to their deadline
    assert peak == 2  # and no slot was lost to a waiter that had left


async def test_complete_and_map_need_the_context(config_for: Callable[..., Config]) -> None:
    engine = Engine(config_for("http://127.0.0.1:9/v1"))
    with pytest.raises(RuntimeError, match="async with Engine"):
        await engine.complete(Request.from_prompt("x"))


async def test_unknown_role_is_a_config_error(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    async with Engine(config_for(sim.url)) as engine:
        with pytest.raises(ConfigError, match="no role or endpoint named 'nope'"):
            await engine.complete(Request.from_prompt("x"), role="nope")


# -- faults ---------------------------------------------------------------------------------------


async def test_random_faults_lose_and_duplicate_nothing(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.configure(
        latency=0.002, error_rate=0.1, drop_rate=0.1, malformed_rate=0.05, hang_rate=0.01, seed=11
    )
    config = config_for(
        sim.url, max_concurrency=16, timeout=0.3, engine={"max_attempts": 12, "deadline": 30}
    )
    async with Engine(config) as engine:
        results = [r async for r in engine.map(prompts(250))]
        stats = engine.endpoints["a"].stats
        totals = engine.totals
    assert [r.error for r in results if not r.ok] == []
    assert sorted(r.request.id for r in results) == sorted(f"p{i}" for i in range(250))
    assert all(r.completion == f"echo: {r.request.id}" for r in results)
    assert sim.stats.dropped > 0 and sim.stats.malformed > 0
    assert sum(r.attempts for r in results) == sim.stats.requests == stats.attempts
    assert stats.requests == totals.done == 250
    assert stats.retries == totals.retries == sim.stats.requests - 250


async def test_stats_count_requests_retries_429s_failures_and_tokens(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    def hook(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        text = body["messages"][-1]["content"]
        if text == "limited" and ctx.n < 3:
            return Reply(status=429, headers={"Retry-After": "0"})
        if text == "broken":
            return Reply(status=500)
        if text == "refused":
            return Reply(status=400)
        return Reply(content="four")

    sim.config.reply = hook
    config = config_for(sim.url, max_concurrency=1, engine={"max_attempts": 3})
    requests = [Request.from_prompt(p) for p in ("limited", "ok", "broken", "refused")]
    async with Engine(config) as engine:
        results = {r.request.messages[0]["content"]: r async for r in engine.map(requests)}
        stats = engine.endpoints["a"].stats.to_dict()
    assert results["limited"].attempts == 3 and results["limited"].ok
    assert results["broken"].attempts == 3 and not results["broken"].ok
    assert results["refused"].attempts == 1 and not results["refused"].ok
    assert stats["requests"] == 2
    assert stats["attempts"] == 3 + 1 + 3 + 1
    assert stats["retries"] == 2 + 2  # re-sends, not failed attempts
    assert stats["rate_limited"] == 2
    assert stats["failures"] == 2
    assert stats["tokens_in"] == 2 + 1  # "limited" and "ok" are 2 and 1 tokens
    assert stats["tokens_out"] == 2 * 1  # "four" is one token
    assert 0 < stats["latency_p50"] <= stats["latency_p95"] <= stats["latency_p99"]


# -- the API key -----------------------------------------------------------------------------------


async def test_api_key_is_sent_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-live-TOPSECRET-123"
    monkeypatch.setenv("ASYNCSYNTH_TEST_KEY", secret)
    seen: list[str | None] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        body = await request.json()
        if body["messages"][-1]["content"] == "deny":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        answer = {
            "model": body["model"],
            "choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        }
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        config = config_from_dict(
            {
                "endpoints": {
                    "a": {
                        "base_url": f"http://127.0.0.1:{port}/v1",
                        "model": "m",
                        "api_key_env": "ASYNCSYNTH_TEST_KEY",
                    }
                }
            }
        )
        async with Engine(config) as engine:
            ok = await engine.complete(Request.from_prompt("hi"))
            with pytest.raises(EndpointsFailed) as stopped:  # 401 three times in a row
                await engine.complete(Request.from_prompt("deny"))
            shown = " ".join(
                [
                    repr(config),
                    repr(ok),
                    str(stopped.value),
                    str(engine.endpoints["a"].taken_out),
                    repr(engine.endpoints["a"].stats),
                    repr(engine.endpoints["a"].config),
                ]
            )
    finally:
        await runner.cleanup()
    assert seen == [f"Bearer {secret}"] * 4
    assert ok.completion == "fine"
    assert "HTTP 401" in str(stopped.value) and "check ASYNCSYNTH_TEST_KEY" in str(stopped.value)
    assert secret not in shown


async def test_missing_key_variable_is_a_config_error(
    sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ASYNCSYNTH_UNSET_KEY", raising=False)
    config = config_from_dict(
        {
            "endpoints": {
                "a": {"base_url": sim.url, "model": "m", "api_key_env": "ASYNCSYNTH_UNSET_KEY"}
            }
        }
    )
    async with Engine(config) as engine:
        with pytest.raises(ConfigError, match="ASYNCSYNTH_UNSET_KEY is not set"):
            await engine.complete(Request.from_prompt("x"))


async def test_dropped_connections_then_success(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.config.reply = lambda body, ctx: Reply(drop=True) if ctx.n <= 2 else Reply()
    async with Engine(config_for(sim.url)) as engine:
        result = await engine.complete(Request.from_prompt("x"))
    assert result.ok and result.attempts == 3
    assert sim.stats.dropped == 2
    assert not isinstance(result.error, ConnectionDropped)


async def test_an_endpoint_that_goes_down_and_comes_back(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.configure(latency=0.01)
    async with Engine(config_for(sim.url, max_concurrency=4)) as engine:
        results: list[Any] = []

        async def consume() -> None:
            results.extend([r async for r in engine.map(prompts(40))])

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await sim.wait_for_requests_async(10)
            sim.down()  # refuses connections and resets open ones
            await wait_until(lambda: engine.endpoints["a"].down)
            sim.up()  # the engine's probe finds it again
    assert [r.error for r in results if not r.ok] == []
    assert sorted(r.completion for r in results) == sorted(f"echo: p{i}" for i in range(40))


async def test_concurrent_maps_share_a_role(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.configure(latency=0.005)
    outputs: dict[str, list[str | None]] = {}
    async with Engine(config_for(sim.url, max_concurrency=3)) as engine:

        async def consume(prefix: str) -> None:
            outputs[prefix] = [r.completion async for r in engine.map(prompts(30, prefix))]

        async with anyio.create_task_group() as tg:
            for prefix in ("x", "y", "z"):
                tg.start_soon(consume, prefix)
    for prefix, completions in outputs.items():
        assert sorted(c or "" for c in completions) == sorted(
            f"echo: {prefix}{i}" for i in range(30)
        )
    assert sim.stats.max_in_flight == 3
