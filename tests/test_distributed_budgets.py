"""Shared budgets: the store's operations (in memory and on a real Redis, the same tests),
and the client every process runs (batching, slots, outages, restarts)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import pytest
from polling import wait_until

from asyncsynth.config import config_from_dict
from asyncsynth.distributed import MemoryStore, Shape, SharedLimits, StoreUnavailable, budget_key
from asyncsynth.distributed.budgets import WAIT_REASON
from asyncsynth.engine import Engine, Request
from asyncsynth.engine.errors import ConfigError
from asyncsynth.engine.events import Event, Wait
from asyncsynth.testing import SimServer
from asyncsynth.testing.services import RedisServer, free_port

pytestmark = pytest.mark.anyio

STORES = [pytest.param("memory"), pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        made: Any = MemoryStore()
    else:
        from asyncsynth.distributed.redis_store import RedisStore

        made = RedisStore(request.getfixturevalue("redis_server").url)
    yield made
    await made.aclose()


def admit(
    key: str = "k",
    member: str = "",
    slots: int = 0,
    *,
    lease: float = 10.0,
    r: tuple[float, float, float] = (0.0, 0.0, 0.0),
    t: tuple[float, float, float] = (0.0, 0.0, 0.0),
    epoch: str = "e1",
) -> tuple[Any, ...]:
    """An ``admit`` operation; ``r``/``t``: (cost, burst, rate) of requests and tokens."""
    return ("admit", key, member, slots, lease, *r, *t, epoch)


async def one(store: Any, op: tuple[Any, ...]) -> Any:
    return (await store.call([op]))[0]


# -- the store's operations ----------------------------------------------------------------------


async def test_a_new_budget_starts_empty_and_reservations_queue(store: Any) -> None:
    # One request a second, two at most at once: the first waits a second (nothing is
    # assumed about what was sent before the budget existed), each next one a second more.
    replies = await store.call([admit(r=(1.0, 2.0, 1.0)) for _ in range(3)])
    assert [round(a.wait, 1) for a in replies] == [1.0, 2.0, 3.0]
    assert [a.r_mark for a in replies] == [1.0, 2.0, 3.0]
    assert all(a.granted and a.epoch == "e1" for a in replies)


async def test_the_epoch_is_the_first_writers_and_unknown_budgets_have_none(store: Any) -> None:
    await store.call([admit(epoch="first"), admit(epoch="second")])
    assert await store.call([("epoch", "k"), ("epoch", "other"), ("ping",)]) == [
        "first",
        None,
        "pong",
    ]


async def test_slots_are_limited_and_come_back_on_release(store: Any) -> None:
    a, b, c = await store.call([admit(member=m, slots=2, lease=30.0) for m in "abc"])
    assert (a.granted, b.granted, c.granted) == (True, True, False)
    assert (a.in_use, b.in_use, c.in_use) == (1, 2, 2)
    assert 29.0 < c.retry_in <= 30.0  # the first lease ends then at the latest
    assert not c.wait and not c.r_mark  # refused: nothing reserved
    freed, again = await store.call(
        [("release", "k", "a", 0.0, 0.0, 0.0), admit(member="c", slots=2)]
    )
    assert freed == 1 and again.granted and again.in_use == 2
    assert await one(store, ("release", "k", "a", 0.0, 0.0, 0.0)) == 0  # already given back


async def test_a_slot_given_back_wakes_who_waits_for_one(store: Any) -> None:
    await store.call([admit(member=m, slots=2) for m in "ab"])
    woken: list[bool] = []

    async def wait() -> None:
        woken.append(await store.wait_free(["k"], 10.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        await subscribed(store, "k")
        await store.call([("release", "k", "a", 0.0, 0.0, 0.0)])
    assert woken == [True]


async def subscribed(store: Any, key: str) -> None:
    """Until a wait for ``key``'s slots has reached the store (Redis: ``PUBSUB NUMSUB``)."""
    client = getattr(store, "_client", None)
    if client is None:  # in memory, a waiter blocked is a waiter listening
        return
    from asyncsynth.distributed.redis_store import _keys

    channel = f"{_keys(key)[0]}:free"

    async def listened() -> bool:
        [(_, count)] = await client.pubsub_numsub(channel)
        return bool(count)

    with anyio.fail_after(5):
        while not await listened():
            await anyio.sleep(0.005)


async def test_leases_end_unless_renewed(store: Any) -> None:
    await store.call([admit(member="held", slots=1, lease=0.3)])
    refused = await one(store, admit(member="next", slots=1, lease=0.3))
    assert not refused.granted
    await one(store, ("renew", "k", 0.3, "e1", "held"))  # renewed: still held
    assert not (await one(store, admit(member="next", slots=1))).granted
    await anyio.sleep(0.35)  # the lease runs out: the slot comes back without a release
    assert (await one(store, admit(member="next", slots=1))).granted


async def test_renew_holds_again_what_a_restarted_store_forgot(store: Any) -> None:
    await store.call([admit(member="a", slots=1)])
    await forget_everything(store)
    assert await one(store, ("epoch", "k")) is None
    epoch, learnt, version = await one(store, ("renew", "k", 10.0, "e2", "a"))
    assert (epoch, learnt, version) == ("e2", None, 0)
    assert not (await one(store, admit(member="b", slots=1))).granted


async def test_a_learnt_limit_is_shared_with_every_answer(store: Any) -> None:
    assert await store.call([("share", "k", 12.0, "e"), ("share", "k", 11.0, "e")]) == [1, 2]
    reply = await one(store, admit(member="a", slots=20))
    assert (reply.learnt, reply.learnt_version) == (11.0, 2)
    assert (await one(store, ("renew", "k", 10.0, "e", "a")))[1:] == (11.0, 2)


async def test_unused_tokens_are_given_back(store: Any) -> None:
    shape = (10.0, 1.0)  # 10 tokens at most, 1 a second
    first = await one(store, admit(t=(10.0, *shape)))
    assert round(first.wait) == 10  # a new budget starts empty
    await store.call([("release", "k", "", 6.0, *shape)])  # 6 of the 10 were not used
    assert round((await one(store, admit(t=(6.0, *shape)))).wait) == 10  # else 16


async def test_a_lower_limit_seen_by_one_process_shapes_the_budget_for_all(store: Any) -> None:
    await one(store, admit(r=(1.0, 2.0, 1.0)))  # tat: 3 s ahead
    # The provider says its limit is lower: half a request a second, one at most.
    await store.call([("observe", "k", "r", 1.0, 0.5, -1.0, 0.0, 2.0, 1.0, "e")])
    reply = await one(store, admit(r=(1.0, 2.0, 1.0)))  # a client that still thinks 1/s
    assert round(reply.wait, 1) == 4.0  # level min(-1, 1) = -1, at 0.5/s: (1 - -1 + 1) / 0.5 - 2


async def test_what_remains_caps_the_level(store: Any) -> None:
    shape = (1.0, 2.0, 10.0)  # two at most, ten a second
    await one(store, admit(r=shape))
    await anyio.sleep(0.35)  # full again: two may go at once
    mark = (await one(store, admit(r=shape))).r_mark
    await store.call([admit(r=shape), admit(r=shape)])  # two more sent after that one: -1
    # The server counted nothing left when it answered the one at the mark, and two were
    # sent since: the level is -2, where this process alone counted -1.
    await store.call([("observe", "k", "r", 0.0, 0.0, 0.0, mark, 2.0, 10.0, "e")])
    assert round((await one(store, admit(r=shape))).wait, 1) == 0.3  # else 0.2


def another(store: Any) -> Any:
    """The same store as another process sees it (a connection of its own)."""
    if isinstance(store, MemoryStore):
        return store
    from asyncsynth.distributed.redis_store import RedisStore

    return RedisStore(store.url)


async def forget_everything(store: Any) -> None:
    """What a Redis restart without persistence does."""
    if isinstance(store, MemoryStore):
        store._budgets.clear()
    else:
        await store._client.flushall()


# -- the client ----------------------------------------------------------------------------------


class Flaky:
    """A store that can be taken away and brought back, as a Redis restart does."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.where = "flaky"
        self.up = True
        self.calls: list[Sequence[Any]] = []

    async def call(self, ops: Sequence[Any]) -> list[Any]:
        if not self.up:
            raise StoreUnavailable("connection refused")
        self.calls.append(ops)
        return await self.store.call(ops)

    async def wait_free(self, keys: Any, timeout: float) -> bool:
        if not self.up:
            raise StoreUnavailable("connection refused")
        return await self.store.wait_free(keys, timeout)

    async def aclose(self) -> None:
        await self.store.aclose()


async def test_processes_never_hold_more_slots_than_the_limit(store: Any) -> None:
    """Two clients (two processes' worth) on one budget of 3 slots, 40 requests each."""
    in_use = 0
    most = 0

    async def request(budget: Any) -> None:
        nonlocal in_use, most
        admission = await budget.admit(0.0, 3, deadline=anyio.current_time() + 30)
        in_use += 1
        most = max(most, in_use)
        await anyio.sleep(0.005)
        in_use -= 1
        budget.release(admission)

    async with anyio.create_task_group() as tg:
        for client in (store, another(store)):
            limits = await SharedLimits(client).open()
            tg.start_soon(limits.run)
            budget = limits.budget("k", rpm=None, tpm=None, slots=True)
            for _ in range(40):
                tg.start_soon(request, budget)
        while in_use or not most:
            await anyio.sleep(0.01)
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert most == 3


async def test_an_outage_holds_every_request_until_the_store_is_back() -> None:
    flaky = Flaky(MemoryStore())
    events: list[Event] = []
    limits = await SharedLimits(flaky, on_event=events.append).open()
    budget = limits.budget("k", rpm=Shape(100.0, 100.0), tpm=None, slots=True)
    admitted: list[Any] = []

    async def request() -> None:
        admitted.append(await budget.admit(0.0, 4, anyio.current_time() + 30))

    async with anyio.create_task_group() as tg:
        tg.start_soon(limits.run)
        flaky.up = False
        tg.start_soon(request)
        await wait_until(lambda: bool(events))
        assert isinstance(events[0], Wait) and events[0].reason == WAIT_REASON
        assert "flaky unreachable (connection refused)" in events[0].message
        assert events[0].seconds is None  # until the next wait of its reason
        await anyio.sleep(0.2)
        assert not admitted  # nothing sent while the limit cannot be checked
        flaky.up = True
        await wait_until(lambda: bool(admitted))
        tg.cancel_scope.cancel()
    back = events[-1]
    assert isinstance(back, Wait) and back.seconds == 0 and "is back after" in back.message
    assert admitted[0].held >= 0.2  # the deadline does not count the wait for the store
    assert len(events) == 2


async def test_after_an_outage_held_slots_are_held_again_first() -> None:
    memory = MemoryStore()
    flaky = Flaky(memory)
    limits = await SharedLimits(flaky).open()
    budget = limits.budget("k", rpm=None, tpm=None, slots=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(limits.run)
        held = await budget.admit(0.0, 1, anyio.current_time() + 30)
        flaky.up = False
        memory._budgets.clear()  # it comes back empty
        flaky.calls.clear()

        async def second() -> None:
            await budget.admit(0.0, 1, anyio.current_time() + 30)

        tg.start_soon(second)
        await anyio.sleep(0.1)
        flaky.up = True
        await wait_until(lambda: bool(flaky.calls))
        first_batch = flaky.calls[0]
        assert first_batch[0][:2] == ("renew", "k") and held.member in first_batch[0]
        assert first_batch[1][0] == "admit"  # refused: the held slot counts again
        tg.cancel_scope.cancel()


async def test_a_reservation_the_store_forgot_is_made_again() -> None:
    memory = MemoryStore()
    limits = await SharedLimits(memory).open()
    budget = limits.budget("k", rpm=Shape(1.0, 10.0), tpm=None, slots=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(limits.run)
        admission = await budget.admit(0.0, None, anyio.current_time() + 30)
        assert await budget.confirm(admission, anyio.current_time() + 30) is admission
        memory._budgets.clear()  # a restart, while the request waited its turn
        again = await budget.confirm(admission, anyio.current_time() + 30)
        assert again is not admission and again.epoch != admission.epoch
        assert again.wait > 0  # reserved anew, from an empty budget
        tg.cancel_scope.cancel()


@pytest.mark.redis
async def test_an_unreachable_redis_at_start_is_a_config_error() -> None:
    from asyncsynth.distributed.redis_store import RedisStore

    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError, match=r"engine.limits_backend: the limits backend redis://"):
        await SharedLimits(RedisStore(url)).open()


def test_the_budget_key_names_url_model_and_key_but_never_holds_the_key() -> None:
    key = budget_key("https://api.example.com/v1/", "gpt", "sk-secret")
    assert key == budget_key("https://api.example.com/v1", "gpt", "sk-secret")
    assert key != budget_key("https://api.example.com/v1", "gpt", "sk-other")
    assert key != budget_key("https://api.example.com/v1", "gpt-mini", "sk-secret")
    assert "secret" not in key and len(key) == 24


def test_config_refuses_a_backend_that_is_not_redis() -> None:
    with pytest.raises(ConfigError, match=r"engine.limits_backend: expected redis://HOST"):
        config_from_dict({"engine": {"limits_backend": "http://localhost:6379"}})
    with pytest.raises(ConfigError, match=r"the database must be a number"):
        config_from_dict({"engine": {"limits_backend": "redis://localhost:6379/zero"}})


# -- engines sharing a budget ---------------------------------------------------------------------


@pytest.mark.redis
async def test_engines_on_one_key_share_its_rate_and_concurrency(
    redis_server: RedisServer, sim: SimServer
) -> None:
    """Two engines (as two processes would) on one 1,200 rpm, 4-at-once budget."""
    times: list[float] = []

    def arrived(body: Any, context: Any) -> str:
        times.append(time.monotonic())
        return "ok"

    sim.configure(latency=0.05, capacity=4, reply=arrived)
    table = {"base_url": sim.url, "model": "m", "rpm": 1200, "max_concurrency": 4}
    config = config_from_dict(
        {"endpoints": {"a": table}, "engine": {"limits_backend": redis_server.url}}
    )

    async def job(prefix: str) -> list[Any]:
        async with Engine(config) as engine:
            requests = [Request.from_prompt(f"{prefix}{i}") for i in range(40)]
            return [r async for r in engine.map(requests)]

    results: list[list[Any]] = []
    async with anyio.create_task_group() as tg:
        for prefix in "ab":

            async def run(prefix: str = prefix) -> None:
                results.append(await job(prefix))

            tg.start_soon(run)
    assert all(r.ok for rows in results for r in rows) and len(times) == 80
    assert sim.stats.responses_by_status == {200: 80}  # never a 429: 4 at once at most
    assert sim.stats.max_in_flight <= 4
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 0.9 * 20 <= rate <= 20 * 1.05  # one budget of 20 a second, not two


async def test_a_lower_limit_in_rate_headers_shapes_the_budget_of_every_process() -> None:
    from asyncsynth.distributed.budgets import _shape
    from asyncsynth.engine.limits import RateHeaders, TokenBucket

    memory = MemoryStore()
    configured = _shape(TokenBucket(6000))  # what both were told
    said = TokenBucket(60)  # what the provider's headers say
    one, two = [await SharedLimits(memory).open() for _ in range(2)]
    here = one.budget("k", rpm=configured, tpm=None, slots=False)
    there = two.budget("k", rpm=configured, tpm=None, slots=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(one.run)
        tg.start_soon(two.run)
        first = await here.admit(0.0, None, anyio.current_time() + 30)
        here.observe_headers(RateHeaders(limit_requests=60.0), first.marks)
        await one.ask(("ping",))  # sent after the observation, in order
        a, b = [await there.admit(0.0, None, anyio.current_time() + 30) for _ in range(2)]
        tg.cancel_scope.cancel()
    assert b.wait - a.wait == pytest.approx(1 / said.rate, rel=0.05)  # not 1 / 97 s
