"""Limits: token buckets (RPM/TPM), the adaptive concurrency limit, and both against the sim."""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from asyncsynth import Engine, Request
from asyncsynth.config import Config, config_from_dict
from asyncsynth.engine import limits
from asyncsynth.engine.client import Completion, Http1Transport
from asyncsynth.engine.fleet import EndpointState
from asyncsynth.engine.limits import (
    INITIAL_LIMIT,
    QUEUE_LIMIT,
    QUEUE_SLACK,
    SLOW_START_LEAD,
    WINDOW,
    WINDOW_MARGIN,
    AdaptiveLimit,
    RateHeaders,
    TokenBucket,
)
from asyncsynth.testing import Reply, ReplyContext, SimServer

pytestmark = pytest.mark.anyio


# -- TokenBucket -----------------------------------------------------------------------------------


def test_bucket_starts_full_then_paces() -> None:
    bucket = TokenBucket(600, now=0.0)  # bursts of half a second's worth
    assert bucket.burst == 5
    assert bucket.rate == pytest.approx((600 - 5) / (WINDOW + WINDOW_MARGIN))
    assert [bucket.reserve(1, 0.0) for _ in range(5)] == [0.0] * 5
    assert bucket.reserve(1, 0.0) == pytest.approx(1 / bucket.rate)
    assert bucket.reserve(1, 0.0) == pytest.approx(2 / bucket.rate)
    # Later the debt is paid and the bucket is full again, never fuller.
    assert bucket.reserve(5, 10.0) == 0.0
    assert bucket.reserve(1, 10.0) == pytest.approx(1 / bucket.rate)


def _sends(bucket: TokenBucket, amounts: list[float], gap: float) -> list[tuple[float, float]]:
    """When each caller sends, arriving ``gap`` apart and waiting as the bucket says."""
    return [(i * gap + bucket.reserve(a, i * gap), a) for i, a in enumerate(amounts)]


def _most_in_a_window(sends: list[tuple[float, float]], window: float) -> float:
    """The most sent within any ``window`` seconds (sliding: every start counts)."""
    sends = sorted(sends)
    most = inside = 0.0
    first = 0
    for t, a in sends:  # windows ending at each send; the earliest start that still fits
        inside += a
        while sends[first][0] <= t - window:
            inside -= sends[first][1]
            first += 1
        most = max(most, inside)
    return most


@pytest.mark.parametrize(
    ("per_minute", "amounts"),
    [
        (200, [1.0] * 700),  # the case: a strict sliding window of 200 requests
        (6000, [1.0] * 13_000),
        (2, [1.0] * 8),
        (1, [1.0] * 4),
        (90_000, [float(100 + 37 * (i % 11)) for i in range(3000)]),  # tokens of all sizes
    ],
)
def test_no_minute_window_ever_holds_more_than_the_limit(
    per_minute: float, amounts: list[float]
) -> None:
    bucket = TokenBucket(per_minute, now=0.0)
    sends = _sends(bucket, amounts, gap=0.001)  # callers far faster than the rate
    assert _most_in_a_window(sends, WINDOW + WINDOW_MARGIN) <= per_minute
    fixed = {}  # clock-aligned minutes too (any offset: they are inside sliding windows)
    for t, a in sends:
        fixed[int(t // WINDOW)] = fixed.get(int(t // WINDOW), 0) + a
    assert max(fixed.values()) <= per_minute
    # ... at a sustained rate within 2% of the limit (1 s of margin in 61, and the burst).
    if len(amounts) > 100:
        last = max(t for t, _ in sends)
        assert sum(amounts) / (last / WINDOW) >= 0.97 * per_minute


def test_bucket_refund_and_small_rates() -> None:
    bucket = TokenBucket(60, now=0.0)
    assert bucket.burst == 1  # at least one request, however low the rate
    assert bucket.reserve(1, 0.0) == 0.0
    assert bucket.reserve(1, 0.0) == pytest.approx(1 / bucket.rate)
    bucket.refund(1)  # an estimate above what was used comes back
    assert bucket.reserve(1, 0.0) == pytest.approx(1 / bucket.rate)
    bucket.refund(100)
    assert bucket.level == bucket.burst  # never above the burst
    bucket.refund(-3)  # usage above the estimate takes more
    assert bucket.level == pytest.approx(-2)


def test_the_servers_headers_only_ever_tighten_a_bucket() -> None:
    bucket = TokenBucket(600, now=0.0)  # a burst of 5
    bucket.reserve(1, 0.0)
    mark = bucket.taken
    bucket.reserve(1, 0.0)  # sent after the request whose answer carries the headers
    # The server counted 3 when it answered: our first, and 2 someone else sent.
    bucket.tighten(remaining=597, sent_since=bucket.taken - mark, now=0.0)
    assert bucket.level == 3 - 2
    bucket.tighten(remaining=597, sent_since=bucket.taken - mark, now=0.0)
    assert bucket.level == 1  # the same 2 said again are not taken off again
    bucket.tighten(remaining=599, sent_since=0, now=0.0)
    assert bucket.level == 1  # a server counting less never loosens the client
    # A minute later those 2 have left the server's window, and our bucket refilled.
    bucket.tighten(remaining=600, sent_since=0, now=WINDOW + 1)
    assert bucket.reserve(bucket.burst, WINDOW + 1) == 0.0
    # The server's limit is lower than the config: what was sent in its window counts.
    bucket.resize(60, now=WINDOW + 2)
    assert (bucket.per_minute, bucket.burst) == (60, 1)
    assert bucket.rate == pytest.approx((60 - 1) / (WINDOW + WINDOW_MARGIN))
    assert bucket.level == 1 - 5


def test_rate_headers_are_read_in_any_case_and_nonsense_is_ignored() -> None:
    seen = RateHeaders.parse(
        {
            "X-RateLimit-Limit-Requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-limit-tokens": "nonsense",
            "x-ratelimit-remaining-tokens": "-1",
            "x-ratelimit-reset-requests": "120ms",
        }
    )
    assert seen == RateHeaders(limit_requests=500, remaining_requests=499)
    assert RateHeaders.parse({"content-type": "application/json"}) is None


# -- AdaptiveLimit ---------------------------------------------------------------------------------


def test_a_ceiling_bounds_the_limit_it_does_not_start_it() -> None:
    for ceiling in (None, 64, 4096):
        limit = AdaptiveLimit(ceiling)
        assert (limit.slots, limit.slow_start) == (INITIAL_LIMIT, True)
    assert AdaptiveLimit(4).slots == 4  # below the usual start: at the ceiling
    fixed = AdaptiveLimit(500, adaptive=False)
    assert (fixed.slots, fixed.slow_start) == (500, False)
    fixed.on_congestion(1.0)
    fixed.on_success(10.0, 2.0, 500)
    assert fixed.slots == 500


def test_the_limit_never_passes_its_ceiling_and_never_falls_below_one() -> None:
    limit = AdaptiveLimit(20)
    for i in range(400):
        limit.on_success(0.1, 1.0 + i * 0.001, 20)
    assert limit.limit == 20
    for t in range(100):
        limit.on_congestion(10.0 + t)
    assert limit.slots == 1


def test_slow_start_grows_only_as_far_past_what_the_server_was_seen_to_take() -> None:
    """Answers that come back late cannot let slow start run far past the proven level."""
    limit = AdaptiveLimit(4096)
    for _ in range(1000):  # many answers, all to requests sent with 20 in flight
        limit.on_success(0.1, 1.0, 20)
    assert limit.limit == SLOW_START_LEAD * 20


class _Server:
    """A virtual-time client and server: the client sends while in flight < the limit.

    The server takes ``capacity`` at once, each for ``latency`` s (``jitter`` +-); beyond
    that it refuses at once (refused requests come back after 1 s, as ``Retry-After: 1``
    asks), or with ``queue`` it queues them (latency grows with load). A busy client
    (``late``) sees each answer only at the next multiple of ``late`` seconds.
    """

    def __init__(
        self,
        capacity: int,
        latency: float,
        *,
        queue: bool = False,
        jitter: float = 0.0,
        late: float = 0.0,
        slower_at: float = math.inf,
    ) -> None:
        self.capacity, self.latency, self.queue = capacity, latency, queue
        self.jitter, self.late, self.slower_at = jitter, late, slower_at
        self.rng = random.Random(7)

    def run(self, limit: AdaptiveLimit, requests: int) -> dict[str, float]:
        events: list[tuple[float, int, str, float, int]] = []
        order = itertools.count()
        busy: list[float] = []
        now = 0.0
        pending, done, refused, in_flight, serving, waited = requests, 0, 0, 0, 0, 0.0

        def seen(t: float) -> float:
            return (math.floor(t / self.late) + 1) * self.late if self.late else t

        def push(at: float, kind: str, load: int = 0) -> None:
            heapq.heappush(events, (at, next(order), kind, now, load))

        while done < requests:
            while pending and in_flight < limit.slots:
                pending -= 1
                in_flight += 1
                slower = 2.0 if now > self.slower_at else 1.0
                service = self.latency * slower + self.rng.uniform(-self.jitter, self.jitter)
                if self.queue:
                    while busy and busy[0] <= now:
                        heapq.heappop(busy)
                    start = now if len(busy) < self.capacity else heapq.heappop(busy)
                    heapq.heappush(busy, start + service)
                    push(seen(start + service), "ok", in_flight)
                elif serving >= self.capacity:
                    push(seen(now + 0.001), "no", in_flight)
                else:
                    serving += 1
                    push(now + service, "free")
                    push(seen(now + service), "ok", in_flight)
            now, _, kind, sent, load = heapq.heappop(events)
            if kind == "free":
                serving -= 1
            elif kind == "retry":
                pending += 1
            else:
                in_flight -= 1
                if kind == "ok":
                    done += 1
                    waited += now - sent
                    limit.on_success(now - sent, now, load)
                else:
                    refused += 1
                    limit.on_congestion(now, sent, in_flight)
                    push(now + 1.0, "retry")
        return {
            "goodput": requests / now / (self.capacity / self.latency),
            "refused": refused / (requests + refused),
            "latency": waited / requests / self.latency,
        }


@pytest.mark.parametrize("ceiling", [None, 64, 256, 1024, 4096])
@pytest.mark.parametrize("queue", [False, True], ids=["refuses", "queues"])
def test_any_ceiling_finds_the_servers_capacity(ceiling: int | None, queue: bool) -> None:
    """The issue's case: capacity 64, 300 ms a request, 3,000 requests."""
    server = _Server(64, 0.3, queue=queue, jitter=0.03)
    limit = AdaptiveLimit(ceiling)
    outcome = server.run(limit, 3000)
    assert outcome["goodput"] >= 0.9
    assert outcome["refused"] <= 0.01
    if queue:  # settled where more in flight would only add latency
        assert 64 <= limit.limit <= 64 * (1 + QUEUE_LIMIT)
        assert outcome["latency"] <= 1 + QUEUE_LIMIT
    else:
        assert 60 <= limit.limit <= 66


@pytest.mark.parametrize("late", [0.0, 0.01, 0.05, 0.1])
def test_a_queueing_server_of_short_answers_is_kept_busy_not_flooded(late: float) -> None:
    """The fleet's vLLM-like sim in virtual time: 16 slots of 50 ms, the rest wait, a
    ceiling of 1,024 and 800 requests. The limit grows while latency is under the target
    and is cut where it passes ``1 + QUEUE_LIMIT`` service times plus ``QUEUE_SLACK``; so
    it settles between the capacity and the level whose queue waits that long. A client
    seeing answers ``late`` (a busy machine) needs more in flight to keep the server busy
    (Little's law): each second of lateness counts as one of service."""
    capacity, service = 16, 0.05
    server = _Server(capacity, service, queue=True, jitter=0.005, late=late)
    limit = AdaptiveLimit(1024)
    outcome = server.run(limit, 800)
    queued = 1 + QUEUE_LIMIT + (QUEUE_SLACK + late) / service  # the cut's level, in services
    assert outcome["goodput"] >= 0.9  # every slot kept busy nearly all the time
    assert capacity <= limit.limit <= capacity * queued + 1
    assert outcome["latency"] <= queued


@pytest.mark.parametrize("late", [0.0, 0.01, 0.05, 0.2])
def test_a_busy_client_seeing_answers_late_is_refused_little_more(late: float) -> None:
    """Answers seen up to 200 ms late (a loaded machine): refusals stay bounded by what
    slow start may overshoot (half the capacity) and the probing after it."""
    server = _Server(32, 0.02, jitter=0.002, late=late)
    limit = AdaptiveLimit(1024)
    outcome = server.run(limit, 1500)
    assert outcome["refused"] * 1500 <= 32 / 2 + 0.02 * 1500
    assert limit.limit <= 34


@pytest.mark.parametrize("queue", [False, True], ids=["refuses", "queues"])
def test_a_server_that_gets_slower_is_not_mistaken_for_a_full_one(queue: bool) -> None:
    """Latency doubles half way (longer prompts): the limit stays, throughput follows."""
    server = _Server(64, 0.3, queue=queue, jitter=0.03, slower_at=5.0)
    limit = AdaptiveLimit(1024)
    outcome = server.run(limit, 3000)
    assert limit.limit >= 60
    # 5 s at the first capacity, the rest at half of it: ~0.57x of the first capacity.
    assert outcome["goodput"] >= 0.5


# -- against the sim -------------------------------------------------------------------------------

SLACK = 0.05
"""Seconds of the rate allowed on top, for the loop waking a granted request late."""


def _charge(body: dict[str, Any]) -> int:
    """Tokens the sim charges a request: its prompt (4 characters a token) + max_tokens."""
    chars = sum(len(m["content"]) for m in body["messages"])
    return (chars + 3) // 4 + int(body.get("max_tokens", 16))


def timed_hook(reply: Reply | None = None) -> tuple[Callable[..., Any], list[tuple[float, int]]]:
    """A hook recording (arrival time, tokens the sim charges) per request."""
    arrivals: list[tuple[float, int]] = []

    def hook(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        arrivals.append((time.monotonic(), _charge(body)))
        return reply or Reply()

    return hook, arrivals


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, int]]:
    """(time, tokens the sim will charge) of each request as the engine hands it to its
    transport: the engine's own pacing. At the server, arrivals lag by connection set-up
    (tens of ms for the first burst), which the bucket's refill does not wait for, so a
    window of arrivals may hold more than any window of sends."""
    sent: list[tuple[float, int]] = []
    chat = Http1Transport.chat

    async def timed(self: Http1Transport, body: bytes, timeout: float) -> Completion:
        sent.append((time.monotonic(), _charge(orjson.loads(body))))
        return await chat(self, body, timeout)

    monkeypatch.setattr(Http1Transport, "chat", timed)
    return sent


def max_in_window(arrivals: list[tuple[float, int]], window: float) -> int:
    """Most tokens (second item) charged within any ``window`` seconds of ``arrivals``."""
    times = sorted(arrivals)
    return max(
        sum(tokens for t, tokens in times if start <= t < start + window) for start, _ in times
    )


async def test_rpm_limit_sends_nothing_the_server_would_refuse(
    sim: SimServer, config_for: Callable[..., Config], sends: list[tuple[float, int]]
) -> None:
    rpm = 2400  # 40 a second: the engine bursts 20, then paces
    sim.configure(rpm=rpm)
    start = time.monotonic()
    async with Engine(config_for(sim.url, rpm=rpm, max_concurrency=64)) as engine:
        results = [r async for r in engine.map(Request.from_prompt(f"{i}") for i in range(60))]
    elapsed = time.monotonic() - start
    assert all(r.ok and r.attempts == 1 for r in results)
    assert sim.stats.responses_by_status[429] == 0
    assert elapsed >= (60 - 20) / 40 * 0.95
    assert max_in_window([(t, 1) for t, _ in sends], 0.5) <= 20 + 40 * (0.5 + SLACK)


async def test_tpm_limit_sends_nothing_the_server_would_refuse(
    sim: SimServer, config_for: Callable[..., Config], sends: list[tuple[float, int]]
) -> None:
    tpm = 120_000  # 2000 tokens a second, bursts of 1000
    sim.configure(tpm=tpm)
    # 40-character prompts (10 tokens) + max_tokens 10, answered with exactly 10 tokens:
    # the engine's estimate, the sim's charge and the usage agree at 20 tokens a request.
    sim.config.reply = lambda body, ctx: Reply(content="x" * 40)
    requests = (Request.from_prompt(f"{i:040d}", params={"max_tokens": 10}) for i in range(150))
    start = time.monotonic()
    async with Engine(config_for(sim.url, tpm=tpm, max_concurrency=200)) as engine:
        results = [r async for r in engine.map(requests)]
    elapsed = time.monotonic() - start
    assert all(r.ok and r.attempts == 1 for r in results)
    assert sum(sum(r.usage.values()) for r in results if r.usage) == 3000
    assert sim.stats.responses_by_status[429] == 0
    assert elapsed >= (3000 - 1000) / 2000 * 0.95
    assert max_in_window(sends, 0.5) <= 1000 + 2000 * (0.5 + SLACK)


async def test_tpm_estimate_is_corrected_from_usage(
    sim: SimServer, config_for: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers far shorter than max_tokens give their unused budget back."""
    tpm = 60_000  # 1000 tokens a second, bursts of 500
    sim.config.reply = lambda body, ctx: Reply(content="ok")
    waits: list[float] = []
    budget_wait = EndpointState.budget_wait

    def spy(self: EndpointState, tokens: float, now: float) -> float:
        waits.append(wait := budget_wait(self, tokens, now))
        return wait

    monkeypatch.setattr(EndpointState, "budget_wait", spy)
    requests = (Request.from_prompt(f"{i:040d}", params={"max_tokens": 190}) for i in range(40))
    async with Engine(config_for(sim.url, tpm=tpm, max_concurrency=2)) as engine:
        results = [r async for r in engine.map(requests)]
        used = engine.totals.tokens_in + engine.totals.tokens_out
    assert all(r.ok for r in results)
    assert used == 40 * (10 + 1)
    assert len(waits) == 40
    # The waits the bucket asked for (its arithmetic, not the clock): charged at the
    # estimate (200 a request) the run would wait for (8000 - 500) / 1000 = 7.5 s of
    # refill. Refunded, it needs 440 tokens and the two last estimates, 318 past the
    # burst: 0.33 s of refill, which two waiters at once may each count. A loaded machine
    # refills the bucket more between sends: it can only wait less.
    assert sum(waits) < 1.0


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


# -- strict windows, the server's headers, the tokenizer route -------------------------------------


@pytest.fixture
def one_second_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of 1 s (0.05 s margin) on the client, so strict windows are tested quickly."""
    monkeypatch.setattr(limits, "WINDOW", 1.0)
    monkeypatch.setattr(limits, "WINDOW_MARGIN", 0.05)


@pytest.mark.parametrize("kind", ["sliding", "fixed"])
@pytest.mark.usefixtures("one_second_windows")
async def test_a_strict_window_is_never_exceeded(
    kind: str, sim: SimServer, config_for: Callable[..., Config]
) -> None:
    """The issue's case: a server counting every window strictly, the client told the same
    limit: nothing is refused (a bucket refilling at limit / window would be, at once)."""
    sim.configure(rpm=40, tpm=4000, rate_window=kind, window=1.0)
    sim.config.reply, arrivals = timed_hook()
    config = config_for(sim.url, rpm=40, tpm=4000, max_concurrency=64)
    requests = (Request.from_prompt(f"{i:08d}", params={"max_tokens": 30}) for i in range(90))
    async with Engine(config) as engine:
        results = [r async for r in engine.map(requests)]
    assert all(r.ok and r.attempts == 1 for r in results)
    assert sim.stats.responses_by_status[429] == 0
    assert max_in_window([(t, 1) for t, _ in arrivals], 1.0) <= 40
    assert max_in_window(arrivals, 1.0) <= 4000


@pytest.mark.usefixtures("one_second_windows")
async def test_a_lower_limit_in_the_servers_headers_tightens_the_budget(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.configure(rpm=40, rate_window="sliding", window=1.0, ratelimit_headers=True)
    config = config_for(sim.url, rpm=6000, max_concurrency=8)  # the config says far more
    async with Engine(config) as engine:
        results = [r async for r in engine.map(Request.from_prompt(f"{i}") for i in range(100))]
        rpm = engine.endpoints["a"].rpm
    assert all(r.ok for r in results)
    assert sim.stats.responses_by_status[429] == 0
    assert rpm is not None and rpm.per_minute == 40


@pytest.mark.usefixtures("one_second_windows")
async def test_budget_spent_by_another_client_is_seen_in_the_headers(
    sim: SimServer, config_for: Callable[..., Config]
) -> None:
    sim.configure(rpm=100, rate_window="sliding", window=1.0, ratelimit_headers=True)
    sim.spend(requests=90)  # someone else on the same key: 10 left in this window
    config = config_for(sim.url, rpm=100, max_concurrency=1)
    async with Engine(config) as engine:
        results = [r async for r in engine.map(Request.from_prompt(f"{i}") for i in range(40))]
    assert all(r.ok for r in results)
    assert sim.stats.responses_by_status[429] == 0  # a burst of 50 would have met 40 refusals


async def test_tpm_counts_prompts_with_the_servers_tokenizer(
    sim_factory: Callable[..., SimServer], config_for: Callable[..., Config]
) -> None:
    vllm = sim_factory(tokenize=True)
    config = config_for(vllm.url, tpm=600_000, max_concurrency=1)
    requests = [Request.from_prompt("x" * 40, params={"max_tokens": 5}) for _ in range(12)]
    async with Engine(config) as engine:
        results = [r async for r in engine.map(requests)]
        counter = engine.endpoints["a"].tokens
    assert all(r.ok for r in results)
    assert counter.route == "/tokenize"
    assert vllm.stats.tokenize_requests == 12  # one count per request (the first probed)

    plain = sim_factory()  # no tokenizer route (a hosted API): the estimate, probed once
    async with Engine(config_for(plain.url, tpm=600_000)) as engine:
        results = [r async for r in engine.map(requests)]
        assert engine.endpoints["a"].tokens.route is None
    assert all(r.ok for r in results)
