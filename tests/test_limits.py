"""Limits: token buckets (RPM/TPM), the adaptive concurrency limit, and both against the sim."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from asyncsynth import Engine, Request
from asyncsynth.config import Config, config_from_dict
from asyncsynth.engine.limits import AdaptiveLimit, TokenBucket
from asyncsynth.testing import Reply, ReplyContext, SimServer

pytestmark = pytest.mark.anyio


# -- TokenBucket -----------------------------------------------------------------------------------


def test_bucket_starts_full_then_paces() -> None:
    bucket = TokenBucket(600)  # 10 a second, bursts of half a second
    now = bucket.updated
    assert bucket.capacity == 5
    assert [bucket.reserve(1, now) for _ in range(5)] == [0.0] * 5
    assert bucket.reserve(1, now) == pytest.approx(0.1)
    assert bucket.reserve(1, now) == pytest.approx(0.2)
    # Two seconds later the debt is paid and the bucket is full again, never fuller.
    assert bucket.reserve(5, now + 2.0) == 0.0
    assert bucket.reserve(1, now + 2.0) == pytest.approx(0.1)


def test_bucket_never_lets_more_than_its_rate_through() -> None:
    bucket = TokenBucket(6000)  # 100 a second, capacity 50
    now = bucket.updated
    sends = []
    for i in range(1000):
        t = now + i * 0.001  # callers arrive far faster than the rate
        sends.append(t + bucket.reserve(3, t))
    elapsed = max(sends) - now
    # 3000 tokens: 50 at once, the rest at 100 a second.
    assert elapsed == pytest.approx((3000 - 50) / 100, rel=0.01)
    for start in sends[::50]:
        within = sum(1 for s in sends if start <= s < start + 1.0)
        assert within * 3 <= 50 + 100 + 3


def test_bucket_refund_and_small_rates() -> None:
    bucket = TokenBucket(60)
    now = bucket.updated
    assert bucket.capacity == 1  # at least one request, however low the rate
    assert bucket.reserve(1, now) == 0.0
    assert bucket.reserve(1, now) == pytest.approx(1.0)
    bucket.refund(1)  # an estimate above what was used comes back
    assert bucket.reserve(1, now) == pytest.approx(1.0)
    bucket.refund(100)
    assert bucket.level == bucket.capacity  # never above capacity
    bucket.refund(-3)  # usage above the estimate takes more
    assert bucket.level == pytest.approx(-2)


# -- AdaptiveLimit ---------------------------------------------------------------------------------


def test_known_cap_is_trusted_and_cut_on_congestion() -> None:
    limit = AdaptiveLimit(20)
    assert (limit.limit, limit.slots, limit.slow_start) == (20, 20, False)
    limit.on_success(0.1, 1.0)
    limit.on_congestion(2.0)
    assert limit.limit == pytest.approx(18)
    limit.on_congestion(2.0)  # at most one cut per round trip
    assert limit.limit == pytest.approx(18)
    for i in range(400):
        limit.on_success(0.1, 3.0 + i)
    assert limit.limit == 20  # grows back, never past the cap


def test_unknown_cap_starts_small_and_slow_starts() -> None:
    limit = AdaptiveLimit(None)
    assert limit.slots == 8 and limit.slow_start
    for _ in range(10):
        limit.on_success(0.1, 1.0)
    assert limit.slots == 18
    for t in range(100):
        limit.on_congestion(10.0 + t)
    assert limit.slots == 1  # never below one


def test_non_adaptive_limit_is_fixed() -> None:
    limit = AdaptiveLimit(5, adaptive=False)
    limit.on_congestion(1.0)
    limit.on_success(10.0, 2.0)
    assert limit.slots == 5


# -- against the sim -------------------------------------------------------------------------------

SLACK = 0.05


def timed_hook(reply: Reply | None = None) -> tuple[Callable[..., Any], list[tuple[float, int]]]:
    """A hook recording (arrival time, tokens the sim charges) per request."""
    arrivals: list[tuple[float, int]] = []

    def hook(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        chars = sum(len(m["content"]) for m in body["messages"])
        arrivals.append((time.monotonic(), (chars + 3) // 4 + body.get("max_tokens", 16)))
        return reply or Reply()

    return hook, arrivals


def max_in_window(arrivals: list[tuple[float, int]], window: float) -> int:
    """Most tokens (second item) charged within any ``window`` seconds of arrivals.

    Sends are paced exactly; arrivals may bunch by the loop's and the network's delays,
    so callers allow ``SLACK`` seconds more of the rate.
    """
    times = sorted(arrivals)
    return max(
        sum(tokens for t, tokens in times if start <= t < start + window) for start, _ in times
    )


async def test_rpm_limit_sends_nothing_the_server_would_refuse(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    rpm = 2400  # 40 a second: the engine bursts 20, then paces
    sim.configure(rpm=rpm)
    sim.config.reply, arrivals = timed_hook()
    start = time.monotonic()
    async with Engine(config_for(sim.url, rpm=rpm, max_concurrency=64)) as engine:
        results = [r async for r in engine.map(Request.from_prompt(f"{i}") for i in range(60))]
    elapsed = time.monotonic() - start
    assert all(r.ok and r.attempts == 1 for r in results)
    assert sim.stats.responses_by_status[429] == 0
    assert elapsed >= (60 - 20) / 40 * 0.95
    assert max_in_window([(t, 1) for t, _ in arrivals], 0.5) <= 20 + 40 * (0.5 + SLACK)


async def test_tpm_limit_sends_nothing_the_server_would_refuse(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    tpm = 120_000  # 2000 tokens a second, bursts of 1000
    sim.configure(tpm=tpm)
    # 40-character prompts (10 tokens) + max_tokens 10, answered with exactly 10 tokens:
    # the engine's estimate, the sim's charge and the usage agree at 20 tokens a request.
    sim.config.reply, arrivals = timed_hook(Reply(content="x" * 40))
    requests = (Request.from_prompt(f"{i:040d}", params={"max_tokens": 10}) for i in range(150))
    start = time.monotonic()
    async with Engine(config_for(sim.url, tpm=tpm, max_concurrency=200)) as engine:
        results = [r async for r in engine.map(requests)]
    elapsed = time.monotonic() - start
    assert all(r.ok and r.attempts == 1 for r in results)
    assert sum(sum(r.usage.values()) for r in results if r.usage) == 3000
    assert sim.stats.responses_by_status[429] == 0
    assert elapsed >= (3000 - 1000) / 2000 * 0.95
    assert max_in_window(arrivals, 0.5) <= 1000 + 2000 * (0.5 + SLACK)


async def test_tpm_estimate_is_corrected_from_usage(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    """Answers far shorter than max_tokens give their unused budget back."""
    tpm = 60_000  # 1000 tokens a second, bursts of 500
    sim.config.reply = lambda body, ctx: Reply(content="ok")
    requests = (Request.from_prompt(f"{i:040d}", params={"max_tokens": 190}) for i in range(40))
    start = time.monotonic()
    async with Engine(config_for(sim.url, tpm=tpm, max_concurrency=2)) as engine:
        results = [r async for r in engine.map(requests)]
        used = engine.totals.tokens_in + engine.totals.tokens_out
    elapsed = time.monotonic() - start
    assert all(r.ok for r in results)
    assert used == 40 * (10 + 1)
    # Charged at the estimate (200 a request) the run would need (8000 - 500) / 1000 = 7.5 s.
    assert elapsed < 3.0


async def test_concurrency_cap_holds_at_the_server(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.configure(latency=0.01)
    async with Engine(config_for(sim.url, max_concurrency=5)) as engine:
        results = [r async for r in engine.map(Request.from_prompt(f"{i}") for i in range(80))]
    assert len(results) == 80
    assert sim.stats.max_in_flight == 5


async def test_a_role_spreads_over_its_endpoints_within_each_cap(
    sim_factory: Callable[..., SimServer],
) -> None:
    one, two = sim_factory(latency=0.01), sim_factory(latency=0.01)
    config = config_from_dict(
        {
            "endpoints": {
                "one": {"base_url": one.url, "model": "m", "max_concurrency": 3},
                "two": {"base_url": two.url, "model": "m", "max_concurrency": 2},
            },
            "roles": {"gen": ["one", "two"]},
        }
    )
    async with Engine(config) as engine:
        results = [
            r
            async for r in engine.map((Request.from_prompt(f"{i}") for i in range(60)), role="gen")
        ]
        stats = {name: ep.stats.requests for name, ep in engine.endpoints.items()}
    assert sorted(r.completion for r in results) == sorted(f"echo: {i}" for i in range(60))
    assert one.stats.max_in_flight == 3
    assert two.stats.max_in_flight == 2
    assert stats["one"] > 0 and stats["two"] > 0
    assert stats["one"] + stats["two"] == 60


async def test_tpm_keeps_the_estimate_when_the_server_reports_no_usage(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    tpm = 60_000  # 1000 tokens a second, bursts of 500
    no_usage = {"model": "m", "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}
    sim.config.reply = lambda body, ctx: Reply(body=no_usage)
    # 40-character prompts + max_tokens 40: 50 tokens each, 1500 in all.
    requests = (Request.from_prompt(f"{i:040d}", params={"max_tokens": 40}) for i in range(30))
    start = time.monotonic()
    async with Engine(config_for(sim.url, tpm=tpm, max_concurrency=2)) as engine:
        results = [r async for r in engine.map(requests)]
    assert all(r.ok and r.completion == "ok" for r in results)
    assert time.monotonic() - start >= (1500 - 500) / 1000 * 0.95
