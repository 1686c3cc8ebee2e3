"""What a job shows while it runs: the start block, unreachable endpoints and the start-up
grace, waits, the live display, plain log lines, ``-v`` and ``--log-json``."""

from __future__ import annotations

import io
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner
from click.testing import Result as CliResult

from asyncsynth import EndpointsUnreachable, Engine, Progress, Request
from asyncsynth.cli import EXIT_UNREACHABLE, main
from asyncsynth.config import Config, config_from_dict
from asyncsynth.engine import ConfigError, Journal, RequestTimeout, journal_path_for
from asyncsynth.engine.events import (
    EndpointDown,
    EndpointUp,
    Event,
    ProbeFailed,
    RateLimitPause,
    Retry,
    RoleStarted,
    Wait,
)
from asyncsynth.progress import failure_reason, format_summary, status_line
from asyncsynth.run import run_file
from asyncsynth.testing import Reply, ReplyContext, SimServer

pytestmark = pytest.mark.anyio

FAST = ["--max-attempts", "4", "--deadline", "20"]
FAST_ENGINE = {"backoff_base": 0.001, "backoff_max": 0.01, "max_attempts": 4, "deadline": 20.0}


def invoke(*args: str | Path) -> CliResult:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.output,
        result.exception,
    )
    return result


def prompts(path: Path, n: int, start: int = 0) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"prompt": f"q{i}"}) + b"\n" for i in range(start, n)))
    return path


def config(*urls: str, **engine: Any) -> Config:
    """Endpoints a, b... at ``urls``, all serving the one role ``r``; fast retries."""
    names = [chr(ord("a") + i) for i in range(len(urls))]
    return config_from_dict(
        {
            "endpoints": {
                n: {"base_url": u, "model": "m"} for n, u in zip(names, urls, strict=True)
            },
            "roles": {"r": names},
            "engine": {**FAST_ENGINE, **engine},
        }
    )


class Log(io.StringIO):
    """A non-terminal stream that signals each line it is given containing ``watch``."""

    def __init__(self, watch: str = "", times: int = 1) -> None:
        super().__init__()
        self.watch, self.times = watch, times
        self.seen = threading.Event()
        self.count = 0

    def write(self, text: str) -> int:
        if self.watch:
            self.count += sum(self.watch in line for line in text.splitlines())
            if self.count >= self.times:
                self.seen.set()
        return super().write(text)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Listening(Progress):
    """A display that also hands every engine event to ``hook``."""

    def __init__(self, hook: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hook = hook
        self.events: list[Event] = []

    def on_event(self, event: Any) -> None:
        super().on_event(event)
        if isinstance(event, Event):
            self.events.append(event)
            self.hook(event)


# -- an endpoint down from the start ------------------------------------------------------------


def test_an_endpoint_down_from_the_start_stops_after_the_grace(
    sim: SimServer, tmp_path: Path
) -> None:
    first = prompts(tmp_path / "first.jsonl", 3)
    out = tmp_path / "out.jsonl"
    flags = ["--base-url", sim.url, "--model", "m", *FAST]
    assert invoke("run", first, "-o", out, *flags).exit_code == 0
    sim.down()
    more = prompts(tmp_path / "more.jsonl", 6)  # the 3 answered before, and 3 new ones
    result = invoke("run", more, "-o", out, *flags, "--startup-grace", "0.2")
    assert result.exit_code == EXIT_UNREACHABLE == 4
    stderr = result.stderr
    # Named at once, with the address and when it is tried again...
    assert f"endpoint 'default': connection refused at {sim.url}; probing again in" in stderr
    assert "role 'default': every endpoint is down" in stderr
    # ...and the job stopped with the reason, the answers received kept.
    assert "no endpoint answered within the start-up grace of 0.2s" in stderr
    assert "--wait-for-endpoints" in stderr
    assert "3 answers kept, resuming" in stderr  # the start block said what the journal held
    with Journal(journal_path_for(out)) as journal:
        assert len(journal) == 3


async def test_the_engine_raises_unreachable_with_each_endpoint_s_error(sim: SimServer) -> None:
    sim.down()
    events: list[Event] = []
    with pytest.raises(EndpointsUnreachable) as raised:
        async with Engine(config(sim.url, startup_grace=0.1), on_event=events.append) as engine:
            async for _ in engine.map([Request.from_prompt("hi")], role="r"):
                pass
    assert raised.value.role == "r"
    assert "connection refused" in failure_reason("ConnectError", raised.value.errors["a"])
    assert [e.kind for e in events if e.kind == "unreachable"] == ["unreachable"]


async def test_told_to_wait_it_waits_past_the_grace_until_an_endpoint_answers(
    sim: SimServer, tmp_path: Path
) -> None:
    sim.down()
    source = prompts(tmp_path / "in.jsonl", 4)

    def revive(event: Event) -> None:
        if isinstance(event, ProbeFailed):  # down past its first probe and a retry
            sim.up()

    log = Log()
    display = Listening(revive, stream=log)
    # startup_grace=None (--wait-for-endpoints) waits up to the request deadline: a grace
    # shorter than the outage would have stopped the job (as the test above shows).
    plain = config(sim.url)
    waiting = replace(plain, engine=replace(plain.engine, startup_grace=None))
    report = await run_file(waiting, source, tmp_path / "out.jsonl", role="r", progress=display)
    assert report.ok and report.written == 4
    kinds = [e.kind for e in display.events]
    assert kinds.index("endpoint_down") < kinds.index("probe_failed") < kinds.index("endpoint_up")
    text = log.getvalue()
    assert "endpoint 'a': connection refused" in text and "endpoint 'a' is back" in text


class Silent:
    """A transport whose server accepted the connection and never answers (within timeouts)."""

    async def chat(self, body: bytes, timeout: float) -> Any:
        await anyio.sleep_forever()

    async def models(self, timeout: float) -> list[str]:
        await anyio.sleep(timeout)
        raise RequestTimeout(f"no answer within {timeout:g}s", endpoint="a")

    async def aclose(self) -> None:
        pass


async def test_an_endpoint_silent_on_its_first_probe_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asyncsynth.engine import fleet

    monkeypatch.setattr(fleet, "PROBE_TIMEOUT", 0.05)
    log = Log()
    display = Progress(stream=log)
    silent = config("http://10.255.255.1:8000/v1", startup_grace=0.3)
    with pytest.raises(EndpointsUnreachable, match=r"no answer within 0\.05s"):
        async with Engine(silent, on_event=display.on_event, transports={"a": Silent()}) as e:
            await e.complete(Request.from_prompt("hi"), role="r")  # hangs: the grace ends it
    assert (
        "endpoint 'a': first probe: no answer within 0.05s at http://10.255.255.1:8000/v1; "
        "probing again in" in log.getvalue()
    )


def test_wait_for_endpoints_and_startup_grace_options(sim: SimServer, tmp_path: Path) -> None:
    source = prompts(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    flags = ["--base-url", sim.url, "--model", "m", *FAST]
    both = invoke("run", source, "-o", out, *flags, "--startup-grace", "5", "--wait-for-endpoints")
    assert both.exit_code == 2 and "not both" in both.stderr
    assert invoke("run", source, "-o", out, *flags, "--wait-for-endpoints").exit_code == 0


def test_startup_grace_is_validated_at_load() -> None:
    assert config("http://x/v1", startup_grace=5).engine.startup_grace == 5
    with pytest.raises(ConfigError, match=r"engine\.startup_grace: must be > 0"):
        config("http://x/v1", startup_grace=0)


# -- down mid-run, waits --------------------------------------------------------------------------


async def test_an_endpoint_down_mid_run_is_named_in_the_plain_log(
    sim_factory: Any, tmp_path: Path
) -> None:
    a = sim_factory(latency=0.005)
    source = prompts(tmp_path / "in.jsonl", 60)

    async def outage() -> None:
        await a.wait_for_requests_async(10)
        await anyio.to_thread.run_sync(a.down)

    def revive(event: Event) -> None:
        if isinstance(event, ProbeFailed):
            a.up()

    log = Log()
    display = Listening(revive, stream=log)
    async with anyio.create_task_group() as tg:
        tg.start_soon(outage)
        report = await run_file(config(a.url), source, tmp_path / "o.jsonl", progress=display)
    assert report.ok and report.written == 60
    lines = log.getvalue().splitlines()
    [down] = [line for line in lines if "endpoint 'a':" in line and "probing again in" in line]
    assert any(f"connection {what}" in down for what in ("refused", "reset", "dropped"))
    assert any("role 'r': every endpoint is down" in line for line in lines)
    assert any("endpoint 'a' is back" in line for line in lines)
    assert not any("\x1b[" in line for line in lines)  # plain text, not a terminal's codes


async def test_a_429_pause_is_shown_with_the_wait_the_server_asked(
    sim: SimServer, tmp_path: Path
) -> None:
    sim.config.reply = lambda body, ctx: (
        Reply(status=429, headers={"retry-after-ms": "200"}) if ctx.n == 1 else Reply()
    )
    source = prompts(tmp_path / "in.jsonl", 3)
    url_config = config_from_dict(
        {
            "endpoints": {"openai": {"base_url": sim.url, "model": "m", "max_concurrency": 1}},
            "engine": FAST_ENGINE,
        }
    )
    log = Log()
    events: list[Event] = []
    report = await run_file(
        url_config, source, tmp_path / "o.jsonl", progress=Listening(events.append, stream=log)
    )
    assert report.ok
    [pause] = [e for e in events if isinstance(e, RateLimitPause)]
    assert pause.endpoint == "openai" and pause.server_asked == pytest.approx(0.2)
    assert "endpoint 'openai': rate limited, server asks 0.2s" in log.getvalue()


def test_waits_others_announce_show_in_the_status(sim: SimServer) -> None:
    display = Progress(stream=Log())
    display.on_event(Wait("budget", "budget of $5.00 reached; waiting for the next window", 60))
    assert "budget of $5.00 reached" in display.stream.getvalue()  # type: ignore[attr-defined]

    async def main() -> dict[str, Any]:
        async with Engine(config(sim.url), on_event=display.on_event) as engine:
            await engine.complete(Request.from_prompt("hi"), role="r")
            return display.status()

    status = anyio.run(main)
    assert status["waits"] == ["budget of $5.00 reached; waiting for the next window"]


# -- plain lines, -v, the JSON log --------------------------------------------------------------


async def test_the_periodic_line_appears_at_the_configured_interval(
    sim: SimServer, tmp_path: Path
) -> None:
    log = Log(watch=" in flight", times=3)  # a status line names each endpoint's requests

    def held(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        log.seen.wait(10)  # the one request is answered once three status lines were written
        return Reply()

    sim.config.reply = held
    source = prompts(tmp_path / "in.jsonl", 1)
    display = Progress(stream=log, interval=0.02)
    report = await run_file(config(sim.url), source, tmp_path / "o.jsonl", progress=display)
    assert report.ok and log.seen.is_set()
    status = [line for line in log.getvalue().splitlines() if " in flight" in line]
    assert len(status) >= 3
    assert "run 0/1 0%" in status[0] and "a [r] 1/" in status[0] and "ETA" in status[0]


def test_verbose_adds_a_line_per_retry(sim: SimServer, tmp_path: Path) -> None:
    source = prompts(tmp_path / "in.jsonl", 3)
    flags = ["--base-url", sim.url, "--model", "m", *FAST, "--concurrency", "1"]

    def two_503s_from(first: int) -> Any:
        return lambda body, ctx: Reply(status=503) if ctx.n in (first, first + 1) else Reply()

    sim.config.reply = two_503s_from(1)
    quiet = invoke("run", source, "-o", tmp_path / "a.jsonl", *flags)
    assert quiet.exit_code == 0 and "retry:" not in quiet.stderr
    sim.config.reply = two_503s_from(sim.stats.requests + 1)
    verbose = invoke("run", source, "-o", tmp_path / "b.jsonl", *flags, "-v")
    retries = [line for line in verbose.stderr.splitlines() if "retry:" in line]
    assert len(retries) == 2
    assert "attempt 1 failed (HTTP 503" in retries[0] and "attempt 2 failed" in retries[1]


def test_log_json_lines_parse_and_carry_the_summary_counts(sim: SimServer, tmp_path: Path) -> None:
    def reply(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        text = body["messages"][-1]["content"]
        if text in ("q3", "q7"):
            return Reply(status=400, content="bad request")  # not retried: two failed rows
        return Reply(status=503) if ctx.n in (2, 5) else Reply()  # two retries

    sim.config.reply = reply
    source = prompts(tmp_path / "in.jsonl", 10)
    log, stats = tmp_path / "logs" / "run.jsonl", tmp_path / "stats.json"
    flags = ["--base-url", sim.url, "--model", "m", *FAST]
    result = invoke(
        "run", source, "-o", tmp_path / "o.jsonl", *flags, "--log-json", log, "--stats-json", stats
    )
    assert result.exit_code == 1  # two rows failed
    records = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert all({"time", "t", "event"} <= r.keys() for r in records)
    summary = orjson.loads(stats.read_bytes())
    assert records[-1] == {**records[-1], "event": "summary", **summary}
    assert (summary["requests"], summary["failed"], summary["retries"]) == (10, 2, 2)
    final = [r for r in records if r["event"] == "status"][-1]
    assert (final["done"], final["failed"], final["retries"]) == (10, 2, 2)
    assert sum(r["event"] == "retry" for r in records) == summary["retries"]
    [role] = [r for r in records if r["event"] == "role_started"]
    assert role["endpoints"][0]["url"] == sim.url and "api_key" not in str(role)


def test_a_log_json_path_that_cannot_be_written_is_refused(sim: SimServer, tmp_path: Path) -> None:
    source = prompts(tmp_path / "in.jsonl", 1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    flags = ["--base-url", sim.url, "--model", "m"]
    result = invoke("run", source, "-o", tmp_path / "o.jsonl", *flags, "--log-json", blocker / "x")
    assert result.exit_code == 2 and f"--log-json {blocker / 'x'}" in result.stderr


# -- the pipelines --------------------------------------------------------------------------------


async def test_gra_shows_its_round_candidates_in_flight_and_acceptance(tmp_path: Path) -> None:
    from asyncsynth.pipelines.gra import GraSettings, run_gra
    from asyncsynth.pipelines.gra.report import describe
    from asyncsynth.testing.gra_pool import GraScript, pool_config

    seen: list[str] = []

    class Snapshots(Progress):
        """The status line as it would be printed, right after each decided candidate."""

        def on_event(self, event: Any) -> None:
            super().on_event(event)
            if getattr(event, "kind", None) == "request":
                seen.append(status_line(self.title, self.status()))

    log = Log()
    display = Snapshots(stream=log, title="gra", describe=describe)
    with SimServer(reply=GraScript()) as sim:
        config = pool_config(sim.url)
        settings = GraSettings.from_config(config).with_overrides(target=3, round_size=3)
        result = await run_gra(config, tmp_path, settings=settings, on_event=display.on_event)
    assert result.accepted == 3 and len(seen) == 3
    line = seen[1]
    assert line.startswith("gra: round_1: 2/3 candidates decided, 1 in flight, ")
    assert "passed the committee; accepted 0/3" in line  # accepted before the round's end
    for model in "abcde":  # every endpoint of the pool, with its state
        assert f" | {model} " in line and f" | {model} down" not in line
    text = log.getvalue()
    assert "round_1: 3 candidates (accepted so far 0 of 3)" in text  # the round began
    assert "round_1: 3 accepted of 3" in text
    for model in "abcde":  # the start block named every role
        assert f"  role     {model}: {model}  {sim.url}  model {model}" in text


async def test_s3_shows_its_step_and_its_endpoint(sim: SimServer, tmp_path: Path) -> None:
    from asyncsynth.pipelines.s3 import S3Error, load_s3_settings, run_s3
    from asyncsynth.pipelines.s3.report import describe

    gold = tmp_path / "gold.jsonl"
    rows = [
        {"text": f"review number {i}", "label": ("positive", "negative")[i % 2]} for i in range(20)
    ]
    gold.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    table = {
        "endpoints": {"llm": {"base_url": sim.url, "model": "sim"}},
        "engine": {**FAST_ENGINE, "max_attempts": 1},
        "s3": {"gold": str(gold), "labels": {"positive": "liked it", "negative": "did not"}},
    }
    s3_config = config_from_dict(table)
    log = Log(watch="s3: rationales", times=1)

    def held(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        if ctx.n == 1:
            log.seen.wait(10)  # answered once a status line showed the step
        return Reply(status=400, content="no")

    sim.config.reply = held
    display = Progress(stream=log, interval=0.02, title="s3", describe=describe)
    settings = load_s3_settings(s3_config)

    async def job() -> S3Error | None:
        try:
            await run_s3(s3_config, tmp_path / "o", settings=settings, on_event=display.on_event)
        except S3Error as exc:
            return exc
        return None

    async with anyio.create_task_group() as tg:
        tg.start_soon(display.run)
        failure = await job()
        tg.cancel_scope.cancel()
    assert failure is not None and "rationales: 4 of 4 requests failed" in str(failure)
    assert log.seen.is_set()
    [line] = [x for x in log.getvalue().splitlines() if "s3: rationales" in x][:1]
    assert "llm " in line and " in flight" in line


def s3_gold(folder: Path) -> Path:
    gold = folder / "gold.jsonl"
    rows = [
        {"text": f"review number {i}", "label": ("positive", "negative")[i % 2]} for i in range(20)
    ]
    gold.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return gold


def test_s3_stops_with_exit_4_when_its_endpoint_is_unreachable(
    sim: SimServer, tmp_path: Path
) -> None:
    gold = s3_gold(tmp_path)
    sim.down()
    path = tmp_path / "s3.toml"
    path.write_text(
        f'[endpoints.llm]\nbase_url = "{sim.url}"\nmodel = "sim"\n'
        "[engine]\nstartup_grace = 0.2\n"
        f'[s3]\ngold = "{gold}"\n[s3.labels]\npositive = "liked it"\nnegative = "did not"\n'
    )
    result = invoke("s3", path, "--out", tmp_path / "o2")
    assert result.exit_code == EXIT_UNREACHABLE
    assert f"endpoint 'llm': connection refused at {sim.url}" in result.stderr
    assert "role 'llm': no endpoint answered within the start-up grace of 0.2s" in result.stderr


# -- the start block, the live display, the summary ---------------------------------------------


def test_the_start_block_names_endpoints_limits_journal_and_outputs(
    sim: SimServer, tmp_path: Path
) -> None:
    source = prompts(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    flags = ["--base-url", sim.url, "--model", "m", "--concurrency", "8", "--rpm", "6000"]
    first = invoke("run", source, "-o", out, *flags).stderr.splitlines()
    assert first[0] == f"asyncsynth run: 4 input lines from {source}"
    assert first[1] == f"  output   {out} (failures: {tmp_path / 'out.errors.jsonl'})"
    assert first[2] == f"  journal  {out}.journal.sqlite (empty, a fresh start)"
    assert first[3] == (
        f"  role     default: default  {sim.url}  model m  "
        "concurrency <=8, 6,000 rpm, timeout 120s  http1"
    )
    again = invoke("run", source, "-o", out, *flags).stderr
    assert f"journal  {out}.journal.sqlite (4 answers kept, resuming)" in again


async def test_the_live_display_draws_endpoints_under_the_bar(
    sim_factory: Any, tmp_path: Path
) -> None:
    a, b = sim_factory(), sim_factory()
    b.down()
    source = prompts(tmp_path / "in.jsonl", 30)
    screen = Terminal()
    drawn: list[str] = []
    b_is_down = threading.Event()

    class Recording(Progress):
        def _render(self, data: Any) -> Any:
            frame = super()._render(data)
            drawn.append(format_frame(frame))
            if "down: connection refused" in drawn[-1]:
                b_is_down.set()
            return frame

    # The last answer waits for a frame showing b down (so at least one frame is drawn).
    a.config.reply = lambda body, ctx: (b_is_down.wait(10), Reply())[1] if ctx.n == 30 else Reply()

    display = Recording(stream=screen)
    assert display.live
    report = await run_file(config(a.url, b.url), source, tmp_path / "o.jsonl", progress=display)
    assert report.ok and drawn
    assert b_is_down.is_set()
    frame = next(f for f in drawn if "down: connection refused" in f)
    assert "endpoint" in frame and "in flight" in frame and "p50" in frame
    assert "b" in frame and "down: connection refused; probe in" in frame
    text = screen.getvalue()
    assert "requests in" in text and "429s" in text  # the summary table follows


def format_frame(renderable: Any) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=160, color_system=None).print(renderable)
    return buffer.getvalue()


def test_quiet_shows_nothing_but_still_writes_the_json_log(sim: SimServer, tmp_path: Path) -> None:
    source = prompts(tmp_path / "in.jsonl", 2)
    log = tmp_path / "log.jsonl"
    flags = ["--base-url", sim.url, "--model", "m"]
    result = invoke("run", source, "-o", tmp_path / "o.jsonl", *flags, "-q", "--log-json", log)
    assert result.exit_code == 0 and result.stderr == ""
    assert orjson.loads(log.read_bytes().splitlines()[-1])["requests"] == 2


def test_the_summary_table_has_a_cost_column_only_when_costs_are_known() -> None:
    ep = {
        "endpoint": "gpu1",
        "requests": 1200,
        "retries": 3,
        "rate_limited": 1,
        "failures": 0,
        "tokens_in": 5000,
        "tokens_out": 9000,
        "latency_p50": 0.18,
        "latency_p95": 0.4,
        "latency_p99": 0.9,
    }
    data = {"wall_s": 75, "requests": 1200, "failed": 0, "cached": 10, "req_per_s": 16.0}
    plain = format_summary({**data, "endpoints": [ep]})
    header, _, row, sentence = plain.splitlines()
    assert header.split() == [
        "endpoint",
        "requests",
        "retries",
        "429s",
        "failed",
        "tok",
        "in",
        "tok",
        "out",
        "p50",
        "p95",
        "p99",
    ]
    assert row.split() == [
        "gpu1",
        "1,200",
        "3",
        "1",
        "0",
        "5,000",
        "9,000",
        "180ms",
        "400ms",
        "900ms",
    ]
    assert sentence == "1,200 requests in 01:15 (16.0 req/s), 0 failed, 10 from the journal"
    cost = {
        "spent_usd": 0.5, "batch_usd": 0.0, "unknown_answers": 0, "before_usd": 0.0,
        "projected_usd": None, "cached": {"answers": 10, "first_usd": 0.02, "unknown": 0},
    }  # fmt: skip
    costly = format_summary({**data, "cost": cost, "endpoints": [{**ep, "cost": 0.5}]})
    assert "cost" in costly.splitlines()[0] and "$0.50" in costly.splitlines()[2]
    assert costly.splitlines()[-1] == (
        "cost: $0.50 spent; cached: 10 answers, $0 now, $0.02 when first made"
    )


@pytest.mark.parametrize(
    ("kind", "message", "reason"),
    [
        ("ConnectError", "cannot connect: [Errno 111] Connect call failed", "connection refused"),
        (
            "ConnectError",
            "cannot connect: [Errno -2] Name or service not known",
            "DNS lookup failed",
        ),
        (
            "ConnectError",
            "cannot connect: [Errno -3] Temporary failure in name resolution",
            "DNS lookup failed",
        ),
        (
            "ConnectError",
            "cannot connect: [SSL: CERTIFICATE_VERIFY_FAILED] certificate",
            "TLS failed",
        ),
        ("RequestTimeout", "no answer within 10s", "no answer within 10s"),
        ("ConnectError", "cannot connect: [Errno 104] Connect call failed", "connection reset"),
        ("ConnectionDropped", "connection dropped: Server disconnected", "connection dropped"),
    ],
)
def test_failure_reasons(kind: str, message: str, reason: str) -> None:
    assert failure_reason(kind, message) == reason


def test_events_are_json_ready() -> None:
    down = EndpointDown("gpu1", "http://gpu1/v1", "unreachable", "ConnectError", "refused", 0, 0.5)
    assert down.to_dict() == {
        "event": "endpoint_down",
        "endpoint": "gpu1",
        "url": "http://gpu1/v1",
        "cause": "unreachable",
        "error_type": "ConnectError",
        "error": "refused",
        "failures": 0,
        "next_probe_in": 0.5,
    }
    role = RoleStarted("r", ({"name": "a"},), 60.0)
    assert orjson.loads(orjson.dumps(role.to_dict()))["endpoints"] == [{"name": "a"}]
    assert Retry.kind == "retry" and EndpointUp.kind == "endpoint_up"
