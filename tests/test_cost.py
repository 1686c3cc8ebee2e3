"""Cost: price arithmetic, the batch multiplier, cached rows at zero, hard budgets, estimates.

The budget tests run 256 requests at once against the simulated endpoint and check that
what was spent never passes the cap, that every answer received is written, and that a
re-run with a higher cap goes on from there. The estimate is checked against the run it
estimates: within 5% with a pilot.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner

from asyncsynth import BudgetExceeded, Engine, Journal, Price, Request
from asyncsynth.cli import EXIT_BUDGET, main
from asyncsynth.config import Config, config_from_dict
from asyncsynth.engine.client import parse_completion
from asyncsynth.engine.cost import parse_price, usd
from asyncsynth.engine.errors import ConfigError
from asyncsynth.engine.journal import journal_path_for
from asyncsynth.estimate import estimate_file
from asyncsynth.progress import format_cost
from asyncsynth.run import run_file
from asyncsynth.testing import SimServer

ENGINE = {"backoff_base": 0.001, "backoff_max": 0.01, "max_attempts": 4, "deadline": 60.0}
PRICE = {"input": 1.0, "output": 2.0, "batch": 0.5}


def _rows(path: Path, count: int) -> list[dict[str, Any]]:
    rows = [{"id": f"r{i}", "prompt": f"prompt number {i}"} for i in range(count)]
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    return rows


def _read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _config(url: str, *, engine: dict[str, Any] | None = None, **endpoint: Any) -> Config:
    table = {"base_url": url, "model": "m", "price": PRICE, **endpoint}
    return config_from_dict({"endpoints": {"a": table}, "engine": {**ENGINE, **(engine or {})}})


# -- prices ---------------------------------------------------------------------------------------


def test_price_arithmetic_cached_input_and_batch_multiplier() -> None:
    price = Price(input=0.15, output=0.60, cached_input=0.075, batch=0.5)
    million = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}
    assert price.cost(million) == pytest.approx(0.75)
    cached = {**million, "cached_tokens": 400_000}
    assert price.cost(cached) == pytest.approx(0.09 + 0.03 + 0.60)
    assert price.cost(cached, batch=True) == pytest.approx((0.09 + 0.03 + 0.60) / 2)
    # No cached price given: no discount is assumed; no batch factor given: none either.
    plain = Price(input=0.15, output=0.60)
    assert plain.cost(cached) == pytest.approx(0.75)
    assert plain.cost(million, batch=True) == pytest.approx(0.75)
    assert price.worst(1000, 500, batch=True) == pytest.approx((150 + 300) / 1e6 / 2)


def test_price_from_flags_and_config_names_what_is_wrong() -> None:
    assert parse_price("input=0.15,output=0.6,batch=0.5") == Price(0.15, 0.6, None, 0.5)
    with pytest.raises(ConfigError, match=r"--price\.output: missing"):
        parse_price("input=0.15")
    with pytest.raises(ConfigError, match="--price: expected input=USD"):
        parse_price("0.15/0.6")
    with pytest.raises(ConfigError, match=r"endpoints\.a\.price\.inptu: unknown key"):
        config_from_dict(
            {"endpoints": {"a": {"base_url": "http://u", "model": "m", "price": {"inptu": 1}}}}
        )
    with pytest.raises(ConfigError, match=r"endpoints\.a\.price\.batch: must be > 0"):
        config_from_dict(
            {"endpoints": {"a": {"base_url": "http://u", "model": "m",
                                 "price": {"input": 1, "output": 1, "batch": 0}}}}
        )  # fmt: skip
    result = CliRunner().invoke(main, ["run", "x.jsonl", "-o", "y", "--price", "input=a"])
    assert result.exit_code == 2


def test_usage_keeps_the_cached_prompt_tokens_a_provider_reports() -> None:
    body = {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 5,
                  "prompt_tokens_details": {"cached_tokens": 64}},
    }  # fmt: skip
    usage = parse_completion(orjson.dumps(body), "a").usage
    assert usage == {"prompt_tokens": 100, "completion_tokens": 5, "cached_tokens": 64}


def test_money_is_shown_readably() -> None:
    assert [usd(v) for v in (None, 0, 0.0042, 0.42, 1.2, 1234.5)] == [
        "unknown", "$0", "$0.0042", "$0.42", "$1.20", "$1,234",
    ]  # fmt: skip


# -- rows and reports carry cost -------------------------------------------------------------------


@pytest.mark.anyio
async def test_batch_answers_cost_the_multiplier_times_the_online_price(
    sim: SimServer, tmp_path: Path
) -> None:
    _rows(tmp_path / "in.jsonl", 30)
    online = await run_file(
        _config(sim.url), tmp_path / "in.jsonl", tmp_path / "online.jsonl", progress=False
    )
    batch = {"poll_interval": 0.01, "collect": 0.01}
    batched = await run_file(
        _config(sim.url, batch=batch), tmp_path / "in.jsonl", tmp_path / "batch.jsonl",
        progress=False,
    )  # fmt: skip
    by_id = {r["id"]: r for r in _read(tmp_path / "online.jsonl")}
    for row in _read(tmp_path / "batch.jsonl"):
        twin = by_id[row["id"]]
        assert row["usage"] == twin["usage"]
        assert row["cost_usd"] == pytest.approx(twin["cost_usd"] * 0.5)
        u = twin["usage"]
        assert twin["cost_usd"] == pytest.approx(
            (u["prompt_tokens"] * 1.0 + u["completion_tokens"] * 2.0) / 1e6
        )
    spent_online = online.stats["cost"]["spent_usd"]
    assert batched.stats["cost"]["spent_usd"] == pytest.approx(spent_online * 0.5)
    assert batched.stats["cost"]["batch_usd"] == batched.stats["cost"]["spent_usd"]
    assert online.stats["endpoints"][0]["cost"] == pytest.approx(spent_online)


@pytest.mark.anyio
async def test_cached_rows_cost_nothing_and_are_reported_apart(
    sim: SimServer, tmp_path: Path
) -> None:
    _rows(tmp_path / "in.jsonl", 40)
    output = tmp_path / "out.jsonl"
    first = await run_file(_config(sim.url), tmp_path / "in.jsonl", output, progress=False)
    made = {r["id"]: r["cost_usd"] for r in _read(output)}
    spent = first.stats["cost"]["spent_usd"]
    assert spent == pytest.approx(sum(made.values())) and spent > 0

    again = await run_file(_config(sim.url), tmp_path / "in.jsonl", output, progress=False)
    rows = _read(output)
    assert all(r["cached"] and r["cost_usd"] == 0 for r in rows)
    assert {r["id"]: r["first_cost_usd"] for r in rows} == made
    cost = again.stats["cost"]
    assert cost["spent_usd"] == 0
    assert cost["cached"] == {"answers": 40, "first_usd": pytest.approx(spent), "unknown": 0}
    assert cost["before_usd"] == pytest.approx(spent)  # the journal remembers the job's spend
    assert f"cached: 40 answers, $0 now, {usd(spent)} when first made" in format_cost(cost)
    with Journal(journal_path_for(output)) as journal:
        assert journal.spent()["a"][0] == pytest.approx(spent)  # not counted twice


@pytest.mark.anyio
async def test_without_a_price_cost_is_unknown_never_guessed(
    sim: SimServer, tmp_path: Path
) -> None:
    _rows(tmp_path / "in.jsonl", 5)
    config = config_from_dict({"endpoints": {"a": {"base_url": sim.url, "model": "m"}}})
    report = await run_file(config, tmp_path / "in.jsonl", tmp_path / "o.jsonl", progress=False)
    assert all(r["cost_usd"] is None for r in _read(tmp_path / "o.jsonl"))
    assert report.stats["cost"]["spent_usd"] is None
    assert report.stats["cost"]["unknown_answers"] == 5
    assert format_cost(report.stats["cost"]).startswith("cost: unknown")


# -- hard budgets --------------------------------------------------------------------------------


def _fixed_reply(body: dict[str, Any], ctx: Any) -> str:
    return "x" * 20  # 5 tokens, within max_tokens = 8


@pytest.mark.anyio
async def test_max_cost_is_never_exceeded_at_concurrency_256_and_a_higher_cap_goes_on(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(latency=0.02, jitter=0.015, reply=_fixed_reply, seed=1)
    rows = _rows(tmp_path / "in.jsonl", 2_000)
    output = tmp_path / "out.jsonl"
    endpoint = {"max_concurrency": 256, "adaptive": False, "params": {"max_tokens": 8}}
    cap = 0.01  # about 700 of the 2,000 answers (14 micro-dollars each)

    def config(max_cost: float | None) -> Config:
        return _config(sim.url, engine={"max_cost": max_cost} if max_cost else {}, **endpoint)

    report = await run_file(config(cap), tmp_path / "in.jsonl", output, progress=False)
    assert isinstance(report.budget, BudgetExceeded)
    assert report.budget.cap == "max_cost" and "--max-cost" in str(report.budget)
    written = _read(output)
    spent = sum(r["cost_usd"] for r in written)
    assert spent <= cap
    assert report.stats["cost"]["spent_usd"] == pytest.approx(spent)
    assert spent > cap * 0.5  # it stopped at the cap, not long before
    assert sim.stats.max_in_flight > 100  # the cap held with many requests in flight
    # Nothing in flight was lost: every answer the server gave is a row.
    assert sim.stats.responses_by_status[200] == len(written) == report.written

    again = await run_file(config(2 * cap), tmp_path / "in.jsonl", output, progress=False)
    assert again.budget is not None
    rows_now = _read(output)
    assert sum(1 for r in rows_now if r.get("cached")) == len(written)
    with Journal(journal_path_for(output)) as journal:
        assert journal.spent()["a"][0] <= 2 * cap  # the cap covers the job, both runs

    final = await run_file(config(None), tmp_path / "in.jsonl", output, progress=False)
    assert final.ok
    assert sorted(r["id"] for r in _read(output)) == sorted(r["id"] for r in rows)


def test_a_budget_stop_exits_5_naming_the_cap_and_how_to_raise_it(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(reply=_fixed_reply)
    _rows(tmp_path / "in.jsonl", 50)
    args = ["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
            "--base-url", sim.url, "--model", "m", "--max-tokens", "8", "-q"]  # fmt: skip
    result = CliRunner().invoke(main, [*args, "--price", "input=1,output=2", "--max-cost",
                                       "0.0002"])  # fmt: skip
    assert result.exit_code == EXIT_BUDGET == 5, result.output
    assert "budget reached: max_cost = $0.0002" in result.output
    assert "--max-cost" in result.output and "run the same command again" in result.output
    tokens = CliRunner().invoke(main, [*args, "--max-tokens-total", "100"])
    assert tokens.exit_code == 5
    assert "max_tokens_total = 100 tokens" in tokens.output


def test_a_cap_with_the_ray_executor_is_refused_before_anything_is_sent(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(reply=_fixed_reply)
    _rows(tmp_path / "in.jsonl", 5)
    args = ["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
            "--base-url", sim.url, "--model", "m", "-q", "--executor", "ray"]  # fmt: skip
    for cap in (["--price", "input=1,output=2", "--max-cost", "1"], ["--max-tokens-total", "9"]):
        result = CliRunner().invoke(main, [*args, *cap])
        assert result.exit_code == 2, result.output
        assert "engine: max_cost and max_tokens_total are kept per process" in result.output
    assert sim.stats.requests == 0
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.anyio
async def test_an_endpoint_cap_names_the_endpoint(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(reply=_fixed_reply)
    config = _config(sim.url, max_cost=0.0001, params={"max_tokens": 8})
    async with Engine(config) as engine:
        requests = [Request.from_prompt(f"p {i}") for i in range(100)]
        got = []
        with pytest.raises(BudgetExceeded, match=r"endpoints\.a\.max_cost") as stopped:
            async for result in engine.map(requests):
                got.append(result)
        assert 0 < len(got) < 100 and all(r.ok for r in got)
        assert stopped.value.key == "endpoints.a.max_cost"
        assert engine.ledger.job.cost <= 0.0001
        with pytest.raises(BudgetExceeded):  # and nothing more is sent
            await engine.complete(Request.from_prompt("one more"))


@pytest.mark.anyio
async def test_a_batch_job_holds_its_worst_case_under_the_cap_too(
    sim_factory: Any, tmp_path: Path
) -> None:
    """What fits under the cap is sent at once; the next round waits for all of it.

    ``collect`` is an hour: a file is cut at ``max_requests`` or when a round is full,
    never by the timer, so a run that ends at all cut each round's last file at once. The
    rounds are read from the journal (files in the order they were cut) and checked against
    the order the server saw batches created and answers downloaded, whatever the load.
    """
    sim = sim_factory(reply=_fixed_reply)
    _rows(tmp_path / "in.jsonl", 300)
    batch = {"poll_interval": 0.01, "collect": 3600, "max_requests": 50}
    config = _config(sim.url, engine={"max_cost": 0.001}, params={"max_tokens": 8}, batch=batch)
    output = tmp_path / "o.jsonl"
    with anyio.fail_after(60):  # waiting for the collect timer would be an hour
        report = await run_file(config, tmp_path / "in.jsonl", output, progress=False)
    assert report.budget is not None
    rows = _read(output)
    assert 0 < len(rows) < 300 and all(r["batch"] for r in rows)
    assert sum(r["cost_usd"] for r in rows) <= 0.001
    assert sum(sim.batches.log.submitted.values()) == len(rows)  # only what fit was submitted
    with Journal(journal_path_for(output)) as journal:
        files = [(row["batch_id"], row["requests"]) for row in journal.batches()]
    assert all(size <= 50 for _, size in files) and sum(s for _, s in files) == len(rows)
    rounds: list[list[str]] = [[]]
    for batch_id, size in files:  # a round's files are full but its last
        rounds[-1].append(batch_id)
        if size < 50:
            rounds.append([])
    rounds = [r for r in rounds if r]
    sizes = {batch_id: size for batch_id, size in files}
    totals = [sum(sizes[b] for b in r) for r in rounds]
    assert len(rounds[0]) > 1, files  # the first round filled more than one file
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == len(totals), totals
    # Rounds go on while one holds a tenth of the first; the one that holds less is the last.
    assert totals[-1] < totals[0] / 10 <= min(totals[:-1]), totals
    seen = sim.batches.log.events
    for earlier, later in itertools.pairwise(rounds):
        start = seen.index(("created", later[0]))
        downloaded = {b for event, b in seen[:start] if event == "downloaded"}
        assert set(earlier) <= downloaded, (rounds, seen)  # the next round waited for all of it


# -- estimates ----------------------------------------------------------------------------------


def _scripted(body: dict[str, Any], ctx: Any) -> str:
    """Answers of 30-50 tokens, decided by the prompt (the same online, in a pilot, in batch)."""
    digest = hashlib.blake2b(body["messages"][-1]["content"].encode(), digest_size=2).digest()
    return "word " * (24 + int.from_bytes(digest) % 17)


def _varied_rows(path: Path, count: int) -> None:
    rows = [
        {"id": f"r{i}", "prompt": f"{i}: tell me about " + "things " * (i % 13)}
        for i in range(count)
    ]
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))


@pytest.mark.anyio
async def test_estimate_with_a_pilot_is_within_5_percent_of_the_run(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(reply=_scripted)
    _varied_rows(tmp_path / "in.jsonl", 1_000)
    output = tmp_path / "out.jsonl"
    config = _config(sim.url, params={"max_tokens": 64}, rpm=60_000)

    blind = await estimate_file(config, tmp_path / "in.jsonl")
    assert sim.stats.requests == 0  # an estimate without a pilot sends nothing
    estimate = await estimate_file(config, tmp_path / "in.jsonl", output=output, pilot=100)
    assert sim.stats.requests == 100 and estimate.pilot is not None
    assert estimate.requests == 1_000 and estimate.wall_online_s == pytest.approx(1.0)

    report = await run_file(config, tmp_path / "in.jsonl", output, progress=False)
    cost = report.stats["cost"]
    actual = cost["spent_usd"] + cost["cached"]["first_usd"]  # the pilot's answers included
    assert cost["cached"]["answers"] == 100  # the pilot's answers were not paid for again
    (expected,) = estimate.endpoints
    assert expected.online_usd == pytest.approx(actual, rel=0.05)
    assert expected.batch_usd == pytest.approx(expected.online_usd * 0.5)
    (upper,) = blind.endpoints
    assert upper.online_usd == upper.online_max_usd >= actual  # max_tokens bounds it
    tokens_in = sum(r["usage"]["prompt_tokens"] for r in _read(output))
    assert estimate.prompt_tokens == pytest.approx(tokens_in, rel=0.05)


@pytest.mark.anyio
@pytest.mark.parametrize("tokenize", [True, False])
async def test_estimate_counts_prompts_with_the_servers_tokenizer_route(
    sim_factory: Any, tmp_path: Path, tokenize: bool
) -> None:
    from asyncsynth.estimate import TOKENIZE_SAMPLE, format_estimate

    sim = sim_factory(reply=_scripted, tokenize=tokenize)
    _varied_rows(tmp_path / "in.jsonl", 1_000)
    config = _config(sim.url, params={"max_tokens": 64})
    estimate = await estimate_file(config, tmp_path / "in.jsonl")
    assert sim.stats.requests == 0  # counting tokens sends no completion
    text = format_estimate(estimate)
    if not tokenize:  # a hosted API: the engine's estimate, said so
        assert estimate.tokenized is None
        assert "the server has no tokenizer route" in text
        return
    counted = estimate.tokenized
    assert counted is not None and counted.route == "/tokenize"
    assert counted.requests == TOKENIZE_SAMPLE
    assert f"a's tokenizer (/tokenize) on {TOKENIZE_SAMPLE} sampled requests" in text
    output = tmp_path / "out.jsonl"
    await run_file(config, tmp_path / "in.jsonl", output, progress=False)
    tokens_in = sum(r["usage"]["prompt_tokens"] for r in _read(output))
    # the sim counts as its chat answers do: a sample of 200 extrapolates to within 2%
    assert estimate.prompt_tokens == pytest.approx(tokens_in, rel=0.02)


def test_dry_run_prints_the_estimate_and_sends_nothing(sim: SimServer, tmp_path: Path) -> None:
    _rows(tmp_path / "in.jsonl", 120)
    args = ["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
            "--base-url", sim.url, "--model", "m", "--max-tokens", "100",
            "--price", "input=0.15,output=0.6,batch=0.5", "--rpm", "600", "--dry-run"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert sim.stats.requests == 0 and not (tmp_path / "out.jsonl").exists()
    out = result.output
    assert "requests          120" in out
    assert "up to 12,000 (max_tokens)" in out
    assert "batch $" in out and "(x0.5)" in out
    assert "wall time online  12.0 s" in out  # 120 requests at 600 rpm
    batch = CliRunner().invoke(main, ["estimate", *args[1:-1], "--batch", "--json"])
    assert batch.exit_code == 0, batch.output
    data = orjson.loads(batch.output)
    assert data["endpoints"][0]["batch_files"] == 1 and data["completion_window"] == "24h"


@pytest.mark.anyio
async def test_a_cost_cap_over_an_endpoint_without_a_price_is_refused(sim: SimServer) -> None:
    config = config_from_dict(
        {"endpoints": {"a": {"base_url": sim.url, "model": "m"}}, "engine": {"max_cost": 1.0}}
    )
    async with Engine(config) as engine:
        with pytest.raises(ConfigError, match=r"endpoints\.a: a max_cost applies .* no price"):
            await engine.complete(Request.from_prompt("x"))
    assert sim.stats.requests == 0


def _gra_config(tmp_path: Path, url: str, price: Callable[[int], str]) -> Path:
    """A GRA config over the simulated pool at ``url``; ``price(i)`` is model i's price table."""
    from asyncsynth.testing.gra_pool import pool_config

    names = list(pool_config(url).endpoints)
    lines = [f"[endpoints.{name}]\nbase_url = \"{url}\"\nmodel = \"{name}\"\n"
             f"max_concurrency = 16\nadaptive = false\nprice = {price(i)}\n"
             for i, name in enumerate(names)]  # fmt: skip
    config = tmp_path / "gra.toml"
    config.write_text(
        "".join(lines)
        + "[engine]\nbackoff_base = 0.001\nbackoff_max = 0.01\n"
        + f'[gra]\npool = {orjson.dumps(names).decode()}\nembedding_model = "none"\n'
    )
    return config


def test_gra_stops_at_its_cap_with_exit_5_and_goes_on_with_a_higher_one(
    sim_factory: Any, tmp_path: Path
) -> None:
    from asyncsynth.testing.gra_pool import GraScript

    sim = sim_factory(reply=GraScript())
    config = _gra_config(tmp_path, sim.url, lambda i: "{ input = 1.0, output = 2.0 }")
    out = str(tmp_path / "out")
    args = ["gra", str(config), "--target", "6", "--out", out, "--seed", "1", "-q"]
    stopped = CliRunner().invoke(main, [*args, "--max-cost", "0.002"])
    assert stopped.exit_code == 5, stopped.output
    assert "budget reached: max_cost = $0.002" in stopped.output
    with Journal(Path(out) / "gra.journal.sqlite") as journal:
        spent = sum(cost for cost, _ in journal.spent().values())
        kept = len(journal)
    assert 0 < spent <= 0.002 and kept > 0
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    assert "GRA: 6 accepted" in done.output


@pytest.mark.anyio
async def test_budget_waits_batch_polls_and_spending_are_told_to_the_listener(
    sim_factory: Any, tmp_path: Path
) -> None:
    from asyncsynth.engine.events import CostUpdate, Event, Wait

    sim = sim_factory(latency=0.01, reply=_fixed_reply)
    events: list[Event] = []
    config = _config(
        sim.url, engine={"max_cost": 0.0005}, params={"max_tokens": 8}, max_concurrency=16
    )
    async with Engine(config, on_event=events.append) as engine:
        with pytest.raises(BudgetExceeded):
            async for _ in engine.map(Request.from_prompt(f"p {i}") for i in range(200)):
                pass
    waits = [e for e in events if isinstance(e, Wait) and e.reason == "budget"]
    assert waits and "budget: requests wait for room under max_cost" in waits[0].message
    assert waits[-1].seconds == 0  # the wait ended
    costs = [e for e in events if isinstance(e, CostUpdate)]
    assert costs and costs[-1].budget == 0.0005
    assert costs[-1].spent == pytest.approx(engine.ledger.job.total_cost())

    events.clear()
    sim.batches.configure(paused=True, processing_time=10.0)
    batch = {"poll_interval": 0.01, "poll_max": 0.01, "collect": 0.01}
    journal = tmp_path / "j.journal.sqlite"
    config = _config(sim.url, batch=batch)

    async def advance() -> None:  # half answered after two polls, all after four
        for polls in (2, 4):
            await anyio.to_thread.run_sync(
                lambda n=polls: sim.batches.wait_for(lambda log: log.calls["retrieve"] >= n)
            )
            sim.batches.advance(5.0)

    async with (
        Engine(config, journal=journal, on_event=events.append) as engine,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(advance)
        results = [r async for r in engine.map(Request.from_prompt(f"q {i}") for i in range(10))]
    assert len(results) == 10
    polls = [e for e in events if isinstance(e, Wait) and e.reason.startswith("batch")]
    messages = [e.message for e in polls]
    assert "in_progress, 0/10 answered" in messages[0] and "on 'a'" in messages[0]
    assert any("in_progress, 5/10 answered" in m for m in messages)
    assert polls[-1].seconds == 0  # told once more when it ended
    assert len(polls) <= 4  # told when something changed, not at every poll


def test_gra_reports_cost_per_sample_stage_and_model_the_same_on_resume(
    sim_factory: Any, tmp_path: Path
) -> None:
    from asyncsynth.testing.gra_pool import GraScript

    sim = sim_factory(reply=GraScript())
    config = _gra_config(  # model i at i + 1 times the first one's price
        tmp_path, sim.url, lambda i: f"{{ input = {i + 1.0}, output = {2 * (i + 1.0)} }}"
    )
    out = tmp_path / "out"
    args = ["gra", str(config), "--target", "6", "--out", str(out), "--seed", "1", "-q"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    report = orjson.loads((out / "report.json").read_bytes())
    cost = report["cost"]
    with Journal(out / "gra.journal.sqlite") as journal:
        spent = journal.spent()
    # every answer is counted once: in all, by stage and by model, as the journal charged it
    assert cost["total_usd"] == pytest.approx(sum(c for c, _ in spent.values()), rel=1e-6)
    assert sum(cost["by_stage"].values()) == pytest.approx(cost["total_usd"], rel=1e-6)
    assert cost["by_model"] == pytest.approx({m: c for m, (c, _) in spent.items()}, rel=1e-5)
    assert cost["per_accepted_usd"] == pytest.approx(cost["total_usd"] / 6, rel=1e-5)
    rows = _read(out / "accepted.jsonl") + _read(out / "rejected.jsonl")
    samples = sum(r["cost_usd"] for r in rows)
    assert samples == pytest.approx(cost["by_stage"]["generate"] + cost["by_stage"]["review"])
    assert all(r["cost_usd"] > 0 for r in rows)
    from asyncsynth.pipelines.gra import explain

    told = explain(report)[-1]
    assert told.startswith(f"Cost (as made, journal answers included): {usd(cost['total_usd'])}")
    assert f"{usd(cost['per_accepted_usd'])} per accepted sample" in told

    again = CliRunner().invoke(main, args)  # all from the journal: nothing spent now
    assert again.exit_code == 0, again.output
    resumed = orjson.loads((out / "report.json").read_bytes())
    assert resumed["cost"] == cost
    assert resumed["engine"]["cost"]["spent_usd"] == 0


def test_gra_dry_run_projects_a_pilot_and_the_run_goes_on_from_it(
    sim_factory: Any, tmp_path: Path
) -> None:
    from asyncsynth.testing.gra_pool import GraScript

    sim = sim_factory(reply=GraScript())
    price = "{ input = 1.0, output = 2.0, batch = 0.5 }"
    config = _gra_config(tmp_path, sim.url, lambda i: price)
    out = tmp_path / "out"
    args = ["gra", str(config), "--target", "12", "--out", str(out), "--seed", "1", "-q"]

    blind = CliRunner().invoke(main, [*args, "--dry-run"])
    assert blind.exit_code == 0, blind.output
    assert sim.stats.requests == 0 and not out.exists()
    assert "each candidate  2 generator requests, 6 reviews" in blind.output
    assert "run a pilot (--pilot N accepted samples)" in blind.output

    piloted = CliRunner().invoke(main, [*args, "--dry-run", "--pilot", "3"])
    assert piloted.exit_code == 0, piloted.output
    pilot = orjson.loads((out / "report.json").read_bytes())
    assert pilot["accepted"] == 3
    projected = pilot["cost"]["total_usd"] * 12 / 3
    assert f"online {usd(projected)}; batch {usd(projected * 0.5)}" in piloted.output

    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["accepted"] == 12
    assert report["engine"]["cost"]["cached"]["answers"] > 0  # the pilot's answers, not paid again
    assert report["cost"]["total_usd"] == pytest.approx(projected, rel=0.25)
