"""Fleets: least-loaded choice, endpoints down at the start, dying mid-job, coming back.

Every job here must end with one correct answer per request: no row lost, none
duplicated, whatever the endpoints do. Outages are driven by events (the sim's request
counter, a failed probe), never by sleeping.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from asyncsynth import Engine, Request, Result
from asyncsynth.config import Config, EndpointConfig, config_from_dict
from asyncsynth.engine import fleet as fleet_module
from asyncsynth.engine.client import Completion, Transport, make_transport
from asyncsynth.engine.errors import (
    ClientError,
    DeadlineExceeded,
    EndpointsFailed,
    RateLimited,
    RequestError,
)
from asyncsynth.engine.events import EndpointTakenOut, EndpointUp, Event
from asyncsynth.engine.fleet import EndpointState, Fleet
from asyncsynth.engine.limits import (
    DECREASE_FACTOR,
    INITIAL_LIMIT,
    REFUSED_AGAIN_STEP,
    AdaptiveLimit,
)
from asyncsynth.engine.retry import DEFAULT_FAIL_FAST
from asyncsynth.testing import Reply, ReplyContext, SimServer

pytestmark = pytest.mark.anyio

SimFactory = Callable[..., SimServer]
FAST = {"backoff_base": 0.001, "backoff_max": 0.02, "max_attempts": 6, "deadline": 30.0}


@pytest.fixture(autouse=True)
def _short_cooldown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cool-downs of 50 ms (then doubling) so outages cost tests little time."""
    monkeypatch.setattr(fleet_module, "COOLDOWN_FIRST", 0.05)


def _config(endpoints: dict[str, dict[str, Any]], **engine: Any) -> Config:
    tables = {name: {"model": "m", **table} for name, table in endpoints.items()}
    return config_from_dict(
        {"endpoints": tables, "roles": {"gen": list(endpoints)}, "engine": {**FAST, **engine}}
    )


def _prompts(n: int) -> Iterator[Request]:
    return (Request.from_prompt(f"p{i}", id=f"p{i}") for i in range(n))


def _assert_all_answered(results: list[Result], n: int) -> None:
    assert sorted(r.request.id or "" for r in results) == sorted(f"p{i}" for i in range(n))
    for r in results:
        assert r.ok, r.error
        assert r.completion == f"echo: {r.request.id}"


async def _run(engine: Engine, n: int) -> list[Result]:
    return [r async for r in engine.map(_prompts(n), role="gen")]


def _dead_url() -> str:
    """A loopback port with nothing listening (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class ProbeSpy:
    """A transport that reports each ``/models`` probe's outcome through events."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.failed_probe = anyio.Event()
        self.probes = 0

    async def chat(self, body: bytes, timeout: float) -> Completion:
        return await self.inner.chat(body, timeout)

    async def models(self, timeout: float) -> list[str]:
        self.probes += 1
        try:
            return await self.inner.models(timeout)
        except RequestError:
            self.failed_probe.set()
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


def _spy(name: str, url: str) -> ProbeSpy:
    return ProbeSpy(make_transport("aiohttp", url, None, name=name))


# -- choice -----------------------------------------------------------------------------------


async def test_requests_go_to_the_least_loaded_replica(sim_factory: SimFactory) -> None:
    a, b = sim_factory(latency=0.01), sim_factory(latency=0.01)
    config = _config(
        {
            "a": {"base_url": a.url, "max_concurrency": 4},
            "b": {"base_url": b.url, "max_concurrency": 4},
        }
    )
    async with Engine(config) as engine:
        results = await _run(engine, 80)
    _assert_all_answered(results, 80)
    assert a.stats.requests + b.stats.requests == 80
    assert min(a.stats.requests, b.stats.requests) >= 25
    assert max(a.stats.max_in_flight, b.stats.max_in_flight) <= 4


async def test_a_slower_replica_gets_less_work(sim_factory: SimFactory) -> None:
    fast, slow = sim_factory(latency=0.005), sim_factory(latency=0.1)
    config = _config(
        {
            "fast": {"base_url": fast.url, "max_concurrency": 2},
            "slow": {"base_url": slow.url, "max_concurrency": 2},
        }
    )
    async with Engine(config) as engine:
        results = await _run(engine, 60)
    _assert_all_answered(results, 60)
    assert fast.stats.requests > 3 * slow.stats.requests


# -- outages ------------------------------------------------------------------------------------


async def test_an_endpoint_down_from_the_start_is_set_aside(sim: SimServer) -> None:
    config = _config(
        {"dead": {"base_url": _dead_url(), "max_concurrency": 4}, "live": {"base_url": sim.url}}
    )
    async with Engine(config) as engine:
        results = await _run(engine, 60)
        dead = engine.endpoints["dead"]
    _assert_all_answered(results, 60)
    assert sim.stats.requests == 60
    assert dead.down
    assert dead.stats.attempts <= 4  # only the first wave tried it; none went back
    assert all(r.endpoint == "live" for r in results)


async def test_an_endpoint_that_dies_mid_job_hands_its_work_over(sim_factory: SimFactory) -> None:
    a, b = sim_factory(latency=0.02), sim_factory(latency=0.02)
    config = _config(
        {
            "a": {"base_url": a.url, "max_concurrency": 4},
            "b": {"base_url": b.url, "max_concurrency": 4},
        }
    )

    async def kill_a() -> None:
        await a.wait_for_requests_async(20)
        await anyio.to_thread.run_sync(a.down)

    async with Engine(config) as engine, anyio.create_task_group() as tg:
        tg.start_soon(kill_a)
        results = await _run(engine, 100)
    _assert_all_answered(results, 100)
    served_by_a = sum(r.endpoint == "a" for r in results)
    assert 10 <= served_by_a < 30
    assert sum(r.endpoint == "b" for r in results) == 100 - served_by_a


async def test_an_endpoint_that_comes_back_is_probed_then_used_again(
    sim_factory: SimFactory,
) -> None:
    back, slow = sim_factory(), sim_factory(latency=0.2)
    back.down()
    spy = _spy("back", back.url)
    config = _config(
        {
            "back": {"base_url": back.url, "max_concurrency": 4},
            "slow": {"base_url": slow.url, "max_concurrency": 1},
        }
    )

    async def revive() -> None:
        await spy.failed_probe.wait()  # it was down, and the engine has noticed
        await anyio.to_thread.run_sync(back.up)

    async with Engine(config, transports={"back": spy}) as engine, anyio.create_task_group() as tg:
        tg.start_soon(revive)
        results = await _run(engine, 30)
    _assert_all_answered(results, 30)
    assert back.stats.requests > 0  # after the outage it took work again
    assert slow.stats.requests < 15  # alone, the slow one would have served all 30
    assert spy.probes >= 2


async def test_when_every_endpoint_is_down_the_job_waits_and_resumes(
    sim_factory: SimFactory,
) -> None:
    a = sim_factory()
    a.down()
    spy = _spy("a", a.url)
    config = _config({"a": {"base_url": a.url, "max_concurrency": 4}})

    async def revive() -> None:
        await spy.failed_probe.wait()
        await anyio.to_thread.run_sync(a.up)

    async with Engine(config, transports={"a": spy}) as engine, anyio.create_task_group() as tg:
        tg.start_soon(revive)
        results = await _run(engine, 40)
    _assert_all_answered(results, 40)
    # Waiting for a healthy endpoint costs no attempts: at most the one that found it down.
    assert max(r.attempts for r in results) <= 2
    assert a.stats.requests == 40


class NoModelsRoute(ProbeSpy):
    """A server that lacks ``GET /models`` (some OpenAI-compatible ones do): 404 when up."""

    async def models(self, timeout: float) -> list[str]:
        await super().models(timeout)
        raise ClientError("HTTP 404: no route for GET /v1/models", status=404)


async def test_a_probe_answered_404_finds_the_endpoint_up(sim_factory: SimFactory) -> None:
    a = sim_factory()
    a.down()
    spy = NoModelsRoute(make_transport("aiohttp", a.url, None, name="a"))
    config = _config({"a": {"base_url": a.url, "max_concurrency": 4}})
    events: list[Event] = []

    async def revive() -> None:
        await spy.failed_probe.wait()
        await anyio.to_thread.run_sync(a.up)

    async with (
        Engine(config, transports={"a": spy}, on_event=events.append) as engine,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(revive)
        results = await _run(engine, 40)
    _assert_all_answered(results, 40)
    assert a.stats.requests == 40
    assert [e.endpoint for e in events if isinstance(e, EndpointUp)] == ["a"]


async def test_an_endpoint_that_dies_and_returns_mid_job_loses_nothing(
    sim_factory: SimFactory,
) -> None:
    a = sim_factory(latency=0.01)
    spy = _spy("a", a.url)
    config = _config({"a": {"base_url": a.url, "max_concurrency": 4}})

    async def outage() -> None:
        await a.wait_for_requests_async(30)
        await anyio.to_thread.run_sync(a.down)
        await spy.failed_probe.wait()
        await anyio.to_thread.run_sync(a.up)

    async with Engine(config, transports={"a": spy}) as engine, anyio.create_task_group() as tg:
        tg.start_soon(outage)
        results = await _run(engine, 80)
    _assert_all_answered(results, 80)


async def test_when_all_stay_down_requests_fail_at_their_deadline_saying_so() -> None:
    config = _config({"a": {"base_url": _dead_url()}}, deadline=0.5)
    with anyio.fail_after(10):
        async with Engine(config) as engine:
            results = await _run(engine, 5)
    assert len(results) == 5
    for r in results:
        assert isinstance(r.error, DeadlineExceeded)
        assert "down" in str(r.error) or "cannot connect" in str(r.error)


async def test_an_endpoint_answering_5xx_is_cooled_down(sim_factory: SimFactory) -> None:
    bad, good = sim_factory(error_rate=1.0), sim_factory(latency=0.01)
    config = _config(
        {"bad": {"base_url": bad.url, "max_concurrency": 4}, "good": {"base_url": good.url}}
    )
    async with Engine(config) as engine:
        results = await _run(engine, 100)
        assert engine.endpoints["bad"].stats.requests == 0
    _assert_all_answered(results, 100)
    assert all(r.endpoint == "good" for r in results)
    assert bad.stats.requests < 30  # a few per cool-down cycle, not one per row


async def test_the_odd_5xx_of_a_busy_server_does_not_take_it_out(sim_factory: SimFactory) -> None:
    # One answer in five is a 5xx: three in a row happen every ~125 requests, so a fixed
    # threshold of 3 would cool this endpoint down again and again; 64 // 4 = 16 do not.
    # (The limit is fixed here: adaptation would also cut it on the 503s among them.)
    flaky = sim_factory(error_rate=0.2, seed=7, latency=0.005)
    spy = _spy("a", flaky.url)
    table = {"base_url": flaky.url, "max_concurrency": 64, "adaptive": False}
    config = _config({"a": table}, max_attempts=8)
    async with Engine(config, transports={"a": spy}) as engine:
        results = await _run(engine, 1500)
    _assert_all_answered(results, 1500)
    assert sum(n for s, n in flaky.stats.responses_by_status.items() if s >= 500) > 200
    assert spy.probes == 1  # the start-up probe only: never cooled down, so never probed again


# -- adaptive concurrency -----------------------------------------------------------------------


@pytest.mark.parametrize("ceiling", [None, 1024])
@pytest.mark.parametrize("overload", [429, 503])
async def test_an_unknown_capacity_is_found_with_few_refusals(
    ceiling: int | None, overload: int, sim_factory: SimFactory
) -> None:
    """A server taking 32 at once, answering 429 or 503 beyond: a ceiling (or none) only
    bounds the search. What holds however fast this machine is: every row answered, the
    limit never far past the capacity, refusals a small share of the work, and no pause
    or cool-down of the endpoint.

    The count of refusals (one slow start's overshoot, half the capacity, and one a few
    round trips as the limit probes) is the algorithm's claim, proven in virtual time
    with answers seen up to 200 ms late (test_limits.py,
    ``test_a_busy_client_seeing_answers_late_is_refused_little_more``). On a real socket a
    loaded machine sees refusals late and sends more at the refused level meanwhile: 53
    and 60 were seen under load, past the claim's 46. A tenth of the 1,500 still tells an
    adaptive limit from none: at the 1,024 ceiling most of each wave would be refused."""
    sim = sim_factory(capacity=32, latency=0.02, overload_status=overload)
    spy = _spy("a", sim.url)
    table: dict[str, Any] = {"base_url": sim.url}
    if ceiling:
        table["max_concurrency"] = ceiling
    config = _config({"a": table}, max_attempts=20)
    async with Engine(config, transports={"a": spy}) as engine:
        results = await _run(engine, 1500)
        ep = engine.endpoints["a"]
    _assert_all_answered(results, 1500)
    assert sim.stats.responses_by_status[overload] <= 1500 // 10
    assert ep.limit.limit <= 34
    assert sim.stats.max_in_flight <= 32  # never more than it takes: refusals are not admitted
    assert ep.paused_until == 0.0  # "too many at once" cut the limit; it did not stop the endpoint
    assert spy.probes == 1  # the start-up probe only: overloaded is not dead, never cooled down


async def test_a_queueing_server_gets_what_keeps_it_busy_not_more(sim_factory: SimFactory) -> None:
    """vLLM-like: 16 slots of 50 ms, the rest wait, and a ceiling of 1,024.

    Where the limit settles is proven in virtual time (test_limits.py,
    ``test_a_queueing_server_of_short_answers_is_kept_busy_not_flooded``): between 16 and
    33, and higher by 16 for each 50 ms the client sees answers late, since a busy client
    needs that many more in flight to keep the server busy. Here, on a real socket, the
    client's lag is whatever this machine's load makes it: at rest the limit ends near
    40 (the first round trip, opening 16 connections, takes ~2.5 service times and
    inflates the no-load latency); under load it has been seen at 48. What holds on any
    machine: every row answered, nothing refused, and the limit a few times the capacity,
    not the ceiling nor the 800 waiting to go. 8 x 16 would mean answers seen 0.3 s late
    on average, six service times; and were every latency cut undone (``_checked``
    restores the limit from before the cut, never more, and slow start does not resume)
    the limit would grow by one a round trip, not double."""
    sim = sim_factory(capacity=16, latency=0.05, queue=True)
    config = _config({"a": {"base_url": sim.url, "max_concurrency": 1024}})
    async with Engine(config) as engine:
        results = await _run(engine, 800)
        ep = engine.endpoints["a"]
    _assert_all_answered(results, 800)
    assert sum(sim.stats.responses_by_status.values()) == 800  # nothing refused
    assert sim.stats.responses_by_status[200] == 800
    assert ep.limit.limit <= 8 * 16  # not 1,024, nor the 800 that were there to send


async def test_a_fixed_limit_is_held_exactly(sim_factory: SimFactory) -> None:
    sim = sim_factory(latency=0.01)
    config = _config({"a": {"base_url": sim.url, "max_concurrency": 12, "adaptive": False}})
    async with Engine(config) as engine:
        results = await _run(engine, 200)
    _assert_all_answered(results, 200)
    assert sim.stats.max_in_flight == 12


def _state(**config: Any) -> EndpointState:
    """An endpoint's run-time state, for tests that never send (no transport)."""
    return EndpointState(EndpointConfig(name="a", model="m", **config), cast(Transport, None))


def _limited(**headers: str) -> RateLimited:
    return RateLimited("HTTP 429", status=429, headers={"retry-after": "1", **headers})


def test_only_a_429_about_a_quota_or_a_fixed_limit_pauses_the_whole_endpoint() -> None:
    assert not _state().pauses_on(_limited())
    assert not _state(max_concurrency=1024).pauses_on(_limited())  # a ceiling is no capacity
    assert _state().pauses_on(_limited(**{"x-ratelimit-reset-requests": "2s"}))
    assert _state(adaptive=False).pauses_on(_limited())
    assert _state(max_concurrency=1).pauses_on(_limited())  # no cut can slow one at a time
    assert _state(rpm=600).pauses_on(_limited())


def test_refusals_sent_before_a_cut_do_not_cut_again() -> None:
    limit = AdaptiveLimit(None)
    for _ in range(48):
        limit.on_success(0.05, 1.0, 64)
    assert limit.limit == 64
    limit.on_congestion(2.0, sent=1.95)
    assert limit.limit == pytest.approx(64 * DECREASE_FACTOR)
    limit.on_congestion(2.001, sent=1.96)  # already in flight when the limit was cut
    assert limit.limit == pytest.approx(64 * DECREASE_FACTOR)
    limit.on_congestion(2.003, sent=2.002)  # sent at the cut limit and still refused
    assert limit.limit == pytest.approx(64 * DECREASE_FACTOR**2)
    limit.on_congestion(2.004)  # no send time: at most one cut per round trip
    assert limit.limit == pytest.approx(64 * DECREASE_FACTOR**2)
    # A burst refused together: the server took no more than what is still out.
    limit.on_congestion(2.005, sent=2.0025, in_flight=40)
    assert limit.limit == 40
    limit.on_congestion(2.006, sent=2.0025, in_flight=45)
    assert limit.limit == 40


async def test_a_burst_of_releases_wakes_one_waiter_per_free_slot() -> None:
    ep = _state(max_concurrency=4)
    fleet = Fleet("gen", [ep], lambda fn: None)
    got: list[EndpointState] = []

    async def take() -> None:
        got.append(await fleet.acquire(time.monotonic() + 10))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(take)
        await wait_all_tasks_blocked()
        assert (len(got), len(fleet._waiters)) == (4, 16)
        for _ in range(3):  # three answers arrive in the same tick
            fleet.release(ep, None, 0.05, 4)
        assert (fleet._woken, len(fleet._waiters)) == (3, 13)  # not 1 + 2 + 3
        await wait_all_tasks_blocked()
        assert (len(got), fleet._woken, ep.in_flight) == (7, 0, 4)
        tg.cancel_scope.cancel()
    assert not fleet._waiters and fleet._woken == 0


def test_the_limit_dwells_just_below_the_level_the_server_refused() -> None:
    limit = AdaptiveLimit(None)
    limit.on_congestion(1.0, sent=0.99)  # leave slow start (at 16 * 0.9)

    def grow_to(slots: int) -> dict[int, int]:
        """Successes (each sent with the limit full) until the limit reaches ``slots``."""
        successes_to: dict[int, int] = {}
        for n in range(1, 10_000):
            limit.on_success(0.05, 2.0, limit.slots)
            successes_to.setdefault(limit.slots, n)
            if limit.slots == slots:
                return successes_to
        raise AssertionError(f"never reached {slots}")

    grow_to(65)
    limit.on_congestion(3.0, sent=2.99)  # refused at 65: cut by 10%
    assert limit.limit == pytest.approx(65 * DECREASE_FACTOR, abs=0.1)
    successes_to = grow_to(65)
    # Back up to 64 at one slot per round trip (a round trip: ~limit successes), then 5x slower
    # in the refused level's neighbourhood, where the server is probed only now and then.
    assert successes_to[64] < 8 * 64
    assert successes_to[65] - successes_to[64] > 4 * 64
    limit.on_congestion(5.0, sent=4.99)  # refused at that level again: the capacity holds,
    assert limit.limit == pytest.approx(65 - REFUSED_AGAIN_STEP, abs=0.1)  # a small step back


# -- taking out what cannot succeed -----------------------------------------------------------


async def test_a_wrong_key_stops_the_job_after_a_few_requests(
    sim_factory: SimFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case: a wrong key and 2,000 requests. Not 2,000 error rows: a handful
    of requests, one message naming the endpoint, the status, the server's words and the
    variable to fix, and a typed error."""
    monkeypatch.setenv("ASYNCSYNTH_TEST_KEY", "sk-wrong")
    sim = sim_factory(api_key="sk-right")
    config = _config({"a": {"base_url": sim.url, "api_key_env": "ASYNCSYNTH_TEST_KEY"}})
    results: list[Result] = []
    events: list[Event] = []
    async with Engine(config, on_event=events.append) as engine:
        with pytest.raises(EndpointsFailed) as stopped:
            async for result in engine.map(_prompts(2000), role="gen"):
                results.append(result)
        taken_out = engine.endpoints["a"].taken_out
    assert results == []  # no row for a request that could not succeed
    assert sim.stats.requests <= INITIAL_LIMIT + DEFAULT_FAIL_FAST
    assert taken_out is not None
    assert (taken_out.status, taken_out.code, taken_out.count) == (401, "invalid_api_key", 3)
    message = str(stopped.value)
    assert message.startswith("every endpoint of role 'gen' was taken out: endpoint 'a': ")
    assert "HTTP 401 invalid_api_key on 3 requests in a row" in message
    assert "Incorrect API key provided" in message and "check ASYNCSYNTH_TEST_KEY" in message
    assert "sk-wrong" not in message
    logged = [r.getMessage() for r in caplog.records if r.name == "asyncsynth"]
    assert logged == [f"{taken_out}; it is taken out for the rest of the run"]
    said = [e for e in events if isinstance(e, EndpointTakenOut)]
    assert said == [EndpointTakenOut("a", 401, str(taken_out))]  # once, for the display


async def test_a_role_goes_on_without_an_endpoint_taken_out(sim_factory: SimFactory) -> None:
    good, wrong = sim_factory(latency=0.005), sim_factory(strict_model=True, model="other")
    config = _config(
        {"wrong": {"base_url": wrong.url, "max_concurrency": 8}, "good": {"base_url": good.url}}
    )
    async with Engine(config) as engine:
        results = await _run(engine, 300)
        taken_out = engine.endpoints["wrong"].taken_out
    _assert_all_answered(results, 300)  # its requests went to the other endpoint, none failed
    assert all(r.endpoint == "good" for r in results)
    assert taken_out is not None and taken_out.status == 404
    assert "The model `m` does not exist" in str(taken_out)
    assert "check the model name 'm'" in str(taken_out)
    assert wrong.stats.requests <= 8 + DEFAULT_FAIL_FAST


async def test_the_same_400_to_every_request_takes_an_endpoint_out(sim: SimServer) -> None:
    sim.config.reply = lambda body, ctx: Reply(status=400, content="unsupported param: top_k")
    config = _config({"a": {"base_url": sim.url, "max_concurrency": 4}})
    results: list[Result] = []
    async with Engine(config) as engine:
        with pytest.raises(EndpointsFailed, match="HTTP 400 on 3 requests in a row"):
            async for result in engine.map(_prompts(500), role="gen"):
                results.append(result)
    # Until the third, a 400 is the request's own: those before it are failed rows.
    assert 1 <= len(results) <= 2 and all(not r.ok for r in results)
    assert sim.stats.requests <= 4 + 2


async def test_400s_that_differ_or_that_a_success_interrupts_take_nothing_out(
    sim: SimServer,
) -> None:
    def reply(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        prompt = body["messages"][-1]["content"]
        if prompt.endswith("0"):  # every tenth request succeeds
            return Reply()
        return Reply(status=400, content=f"prompt {prompt} is too long")  # each its own

    sim.config.reply = reply
    config = _config({"a": {"base_url": sim.url, "max_concurrency": 4}})
    async with Engine(config) as engine:
        results = await _run(engine, 200)
        assert engine.endpoints["a"].taken_out is None
    assert sum(r.ok for r in results) == 20
    assert sim.stats.requests == 200  # each failed once, for its own reason


async def test_fail_fast_zero_never_takes_an_endpoint_out(sim: SimServer) -> None:
    sim.configure(api_key="sk-right")
    config = _config({"a": {"base_url": sim.url}}, fail_fast=0)
    async with Engine(config) as engine:
        results = await _run(engine, 30)
        assert engine.endpoints["a"].taken_out is None
    assert all(isinstance(r.error, ClientError) and r.attempts == 1 for r in results)


async def test_complete_raises_the_typed_error_too(sim: SimServer) -> None:
    sim.configure(api_key="sk-right")
    config = _config({"a": {"base_url": sim.url}})
    async with Engine(config) as engine:
        with pytest.raises(EndpointsFailed) as stopped:
            await engine.complete(Request.from_prompt("hi"), role="gen")
    assert stopped.value.role == "gen"
    assert "the endpoint wants an API key: set api_key_env" in stopped.value.reasons["a"]
