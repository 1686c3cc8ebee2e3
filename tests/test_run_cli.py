"""``asyncsynth run``: input shapes, output and error files, exit codes, stats, flags and config."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner
from click.testing import Result as CliResult

from asyncsynth.cli import main
from asyncsynth.config import single_endpoint_config
from asyncsynth.progress import Progress
from asyncsynth.run import run_file
from asyncsynth.testing import Reply, ReplyContext, SimServer

FAST = ["--max-attempts", "4", "--deadline", "20"]


def invoke(*args: str | Path) -> CliResult:
    result = CliRunner().invoke(main, [str(a) for a in args])
    # Exits are deliberate; anything else is a crash with a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.output,
        result.exception,
    )
    return result


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(r if isinstance(r, bytes) else orjson.dumps(r) + b"\n" for r in rows))
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def flags(sim: SimServer) -> list[str]:
    return ["--base-url", sim.url, "--model", "m", *FAST]


def test_input_shapes_ids_and_output_fields(sim: SimServer, tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            {"messages": [{"role": "user", "content": "from messages"}], "topic": "t1"},
            {"prompt": "from prompt", "id": "mine", "system": "be brief"},
            {
                "custom_id": "batch-7",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "ignored", "messages": [{"role": "user", "content": "batch"}]},
            },
        ],
    )
    out = tmp_path / "out.jsonl"
    result = invoke("run", source, "-o", out, *flags(sim), "-q")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    rows = {row.get("id", row.get("custom_id")): row for row in read_rows(out)}
    assert set(rows) == {"line-1", "mine", "batch-7"}
    first = rows["line-1"]
    assert first["completion"] == "echo: from messages"
    assert first["topic"] == "t1"
    assert first["messages"] == [{"role": "user", "content": "from messages"}]
    assert first["finish_reason"] == "stop"
    assert first["model"] == "m"
    assert first["usage"]["prompt_tokens"] > 0 and first["usage"]["completion_tokens"] > 0
    assert first["attempts"] == 1
    assert first["latency_s"] >= 0
    assert rows["mine"]["completion"] == "echo: from prompt"
    assert rows["mine"]["system"] == "be brief"
    assert rows["batch-7"]["completion"] == "echo: batch"
    assert not (tmp_path / "out.errors.jsonl").exists()


def test_failed_requests_go_to_the_errors_file_and_exit_1(sim: SimServer, tmp_path: Path) -> None:
    def hook(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        text = body["messages"][-1]["content"]
        if text == "refused":
            return Reply(status=400, content="bad prompt")
        if text == "broken":
            return Reply(status=503, content="overloaded")
        return Reply()

    sim.config.reply = hook
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            {"prompt": "fine", "id": 1},
            {"prompt": "refused", "id": 2},
            {"prompt": "broken", "id": 3},
        ],
    )
    out = tmp_path / "out.jsonl"
    result = invoke("run", source, "-o", out, *flags(sim), "--max-attempts", "2")
    assert result.exit_code == 1
    assert "2 requests failed" in result.stderr
    assert "out.errors.jsonl" in result.stderr
    assert [row["id"] for row in read_rows(out)] == ["1"]
    errors = {row["id"]: row["error"] for row in read_rows(tmp_path / "out.errors.jsonl")}
    assert errors["2"] == {
        "type": "ClientError",
        "status": 400,
        "message": "HTTP 400: bad prompt",
        "attempts": 1,
        "endpoint": "default",
    }
    assert errors["3"]["type"] == "ServerError"
    assert errors["3"]["status"] == 503
    assert errors["3"]["message"] == "HTTP 503: overloaded"
    assert errors["3"]["attempts"] == 2


def test_bad_input_lines_are_reported_and_the_rest_goes_on(sim: SimServer, tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            {"prompt": "one"},
            b"{this is not json\n",
            {"text": "no prompt"},
            b"\n",
            {"prompt": "five", "completion": "reserved"},
            {"prompt": "six"},
        ],
    )
    out = tmp_path / "out.jsonl"
    result = invoke("run", source, "-o", out, *flags(sim))
    assert result.exit_code == 1
    assert f"{source}:2: not valid JSON" in result.stderr
    assert f"{source}:3: a line needs" in result.stderr
    assert f"{source}:5: field 'completion' is reserved" in result.stderr
    assert sorted(row["id"] for row in read_rows(out)) == ["line-1", "line-6"]
    errors = read_rows(tmp_path / "out.errors.jsonl")
    assert [(e["line"], e["error"]["type"]) for e in errors] == [
        (2, "InputError"),
        (3, "InputError"),
        (5, "InputError"),
    ]
    assert errors[0]["input"] == "{this is not json"


def test_n_samples_give_n_rows(sim: SimServer, tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            {"prompt": "again", "id": "a", "n": 3},
            {"custom_id": "b", "body": {"messages": [{"role": "user", "content": "x"}], "n": 2}},
            {"prompt": "once", "id": "c"},
        ],
    )
    out = tmp_path / "out.jsonl"
    assert invoke("run", source, "-o", out, *flags(sim), "-q").exit_code == 0
    rows = read_rows(out)
    samples = sorted((r.get("id", r.get("custom_id")), r.get("sample")) for r in rows)
    assert samples == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("c", None)]
    assert sim.stats.requests == 6


def test_random_faults_lose_and_duplicate_no_row(sim: SimServer, tmp_path: Path) -> None:
    sim.configure(error_rate=0.1, drop_rate=0.05, seed=5)
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(80)])
    out = tmp_path / "out.jsonl"
    result = invoke(
        "run", source, "-o", out, *flags(sim), "-q", "--max-attempts", "12", "--concurrency", "8"
    )
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert sorted(r["id"] for r in rows) == sorted(f"line-{i + 1}" for i in range(80))
    assert all(r["completion"] == f"echo: {r['prompt']}" for r in rows)
    assert sum(r["attempts"] for r in rows) == sim.stats.requests > 80


def test_stats_json_and_summary(sim: SimServer, tmp_path: Path) -> None:
    sim.config.reply = lambda body, ctx: (
        Reply(status=429, headers={"Retry-After": "0"}) if ctx.n == 1 else Reply()
    )
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(10)])
    out, stats_path = tmp_path / "out.jsonl", tmp_path / "stats" / "run.json"
    result = invoke("run", source, "-o", out, *flags(sim), "--stats-json", stats_path)
    assert result.exit_code == 0
    assert "\x1b[2K" not in result.stderr  # stderr is not a terminal: no progress bar
    assert "requests in" in result.stderr  # but the summary
    stats = orjson.loads(stats_path.read_bytes())
    assert stats["wall_s"] > 0
    assert stats["requests"] == 10 and stats["failed"] == 0 and stats["retries"] == 1
    [ep] = stats["endpoints"]
    assert ep["endpoint"] == "default" and ep["model"] == "m"
    assert (ep["requests"], ep["retries"], ep["rate_limited"], ep["failures"]) == (10, 1, 1, 0)
    assert ep["tokens_in"] > 0 and ep["tokens_out"] > 0
    assert 0 < ep["latency_p50"] <= ep["latency_p95"] <= ep["latency_p99"]


def test_progress_bar_only_on_a_terminal(sim: SimServer, tmp_path: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    source = write_lines(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(5)])
    config = single_endpoint_config(base_url=sim.url, model="m")
    shown, hidden = Terminal(), Terminal()

    async def both() -> None:
        await run_file(config, source, tmp_path / "a.jsonl", stream=shown)
        await run_file(config, source, tmp_path / "b.jsonl", stream=hidden, progress=False)

    anyio.run(both)
    assert "\x1b[2K" in shown.getvalue() and "run 5/5 100%" in shown.getvalue()  # live, then done
    assert hidden.getvalue() == ""
    quiet = invoke("run", source, "-o", tmp_path / "c.jsonl", *flags(sim), "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_progress_total_counts_samples_not_lines(sim: SimServer, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a", "n": 3}\n{"prompt": "b"}\nnot json\n', encoding="utf-8")
    display = Progress(stream=io.StringIO())
    config = single_endpoint_config(base_url=sim.url, model="m")
    out = tmp_path / "out.jsonl"
    report = anyio.run(lambda: run_file(config, source, out, progress=display))
    assert (report.written, report.bad_lines) == (4, 1)
    status = display.status()
    assert (status["done"], status["total"]) == (4, 4)  # 3 samples + 1, the bad line not counted
    assert "skipped" in display.stream.getvalue()  # type: ignore[attr-defined]


def test_config_file_with_flag_overrides(sim: SimServer, tmp_path: Path) -> None:
    sim.configure(record=True, latency=0.02)
    config = tmp_path / "job.toml"
    config.write_text(
        f"""
[endpoints.main]
base_url = "{sim.url}"
model = "from-config"
max_concurrency = 8

[endpoints.main.params]
temperature = 0.3
max_tokens = 20
""",
        encoding="utf-8",
    )
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(20)])
    out = tmp_path / "out.jsonl"
    result = invoke(
        "run", source, "-o", out, "--config", config, "--concurrency", "2",
        "--temperature", "0.9", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sim.stats.max_in_flight == 2
    assert {(b["model"], b["temperature"], b["max_tokens"]) for b in sim.stats.bodies} == {
        ("from-config", 0.9, 20)
    }
    assert all(row["model"] == "from-config" for row in read_rows(out))


def test_default_config_file_is_picked_up(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "asyncsynth.toml").write_text(
        f'[endpoints.here]\nbase_url = "{sim.url}"\nmodel = "local-default"\n', encoding="utf-8"
    )
    write_lines(tmp_path / "in.jsonl", [{"prompt": "x"}])
    result = invoke("run", "in.jsonl", "-o", "out.jsonl", "-q")
    assert result.exit_code == 0, result.output
    assert read_rows(tmp_path / "out.jsonl")[0]["model"] == "local-default"


@pytest.mark.parametrize(
    ("config_text", "extra", "expected"),
    [
        ('[endpoints.a]\nbase_url = "http://x/v1"\nmodel = "m"\nmax_concurrency = -1\n', [],
         "endpoints.a.max_concurrency: must be >= 1"),
        ('[endpoints.a]\nbase_url = "http://x/v1"\nmodel = "m"\nspeed = 3\n', [],
         "endpoints.a.speed: unknown key"),
        ('[endpoints.a]\nbase_url = "http://x/v1"\nmodel = "m"\n', ["--role", "nope"],
         "no role or endpoint named 'nope'"),
    ],
)  # fmt: skip
def test_config_errors_exit_2(
    tmp_path: Path, config_text: str, extra: list[str], expected: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(config_text, encoding="utf-8")
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "x"}])
    result = invoke("run", source, "-o", tmp_path / "out.jsonl", "--config", config, *extra)
    assert result.exit_code == 2, result.output
    assert str(config) in result.stderr
    assert expected in result.stderr


def test_a_config_without_endpoints_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("[gra]\nrounds = 1\n", encoding="utf-8")
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "x"}])
    out = tmp_path / "out.jsonl"
    result = invoke("run", source, "-o", out, "--config", config, "--deadline", "2")
    assert result.exit_code == 2, result.output
    assert f"{config}: no endpoints are defined" in result.stderr


def test_no_endpoint_at_all_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "in.jsonl", [{"prompt": "x"}])
    result = invoke("run", "in.jsonl", "-o", "out.jsonl")
    assert result.exit_code == 2
    assert "--base-url and --model" in result.stderr


def test_unknown_role_with_flags_exits_2(sim: SimServer, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "x"}])
    result = invoke("run", source, "-o", tmp_path / "o.jsonl", *flags(sim), "--role", "nope")
    assert result.exit_code == 2, result.output
    assert "no role or endpoint named 'nope'" in result.stderr


def test_api_key_never_leaks_and_a_missing_one_exits_2(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-proj-SHOULD-NEVER-APPEAR"
    monkeypatch.setenv("ASYNCSYNTH_CLI_KEY", secret)
    sim.config.reply = lambda body, ctx: (
        Reply(status=401, content="invalid key") if ctx.n == 1 else Reply()
    )
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    out, stats = tmp_path / "out.jsonl", tmp_path / "stats.json"
    common = ["run", source, "-o", out, *flags(sim), "--concurrency", "1", "--stats-json", stats]
    result = invoke(*common, "--api-key-env", "ASYNCSYNTH_CLI_KEY", "--fail-fast", "0")
    assert result.exit_code == 1
    written = b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".sqlite"
    )
    assert b"invalid key" in written  # the error row is there...
    assert secret.encode() not in written  # ...but never the key
    assert secret not in result.output

    monkeypatch.delenv("ASYNCSYNTH_CLI_KEY")
    before = out.read_bytes()
    missing = invoke(*common, "--api-key-env", "ASYNCSYNTH_CLI_KEY", "--no-cache")
    assert missing.exit_code == 2, missing.output
    assert "ASYNCSYNTH_CLI_KEY is not set" in missing.stderr
    assert out.read_bytes() == before  # refused before the output was touched


def test_output_never_overwrites_the_input(sim: SimServer, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "data.jsonl", [{"prompt": "keep me"}])
    before = source.read_bytes()
    result = invoke("run", source, "-o", source, *flags(sim))
    assert result.exit_code == 2
    assert "would overwrite the input" in result.stderr
    assert source.read_bytes() == before


def test_a_wrong_key_stops_the_run_with_exit_3_and_a_rerun_resumes(
    sim_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail-fast from the CLI: a few requests, one message, no error row for what was never
    sent, exit 3; with the key fixed the same command resumes from the journal."""
    sim = sim_factory(api_key="sk-right")
    source = write_lines(
        tmp_path / "in.jsonl", [{"id": str(i), "prompt": f"p{i}"} for i in range(500)]
    )
    out = tmp_path / "out.jsonl"
    common = ["run", source, "-o", out, *flags(sim), "--api-key-env", "ASYNCSYNTH_CLI_KEY"]
    monkeypatch.setenv("ASYNCSYNTH_CLI_KEY", "sk-wrong")
    stopped = invoke(*common)
    assert stopped.exit_code == 3, stopped.output
    assert "HTTP 401 invalid_api_key on 3 requests in a row" in stopped.stderr
    assert "check ASYNCSYNTH_CLI_KEY" in stopped.stderr
    assert "run the same command again to resume" in stopped.stderr
    assert sim.stats.requests < 50
    errors = out.with_name("out.errors.jsonl")
    assert not errors.exists() or read_rows(errors) == []

    monkeypatch.setenv("ASYNCSYNTH_CLI_KEY", "sk-right")
    done = invoke(*common)
    assert done.exit_code == 0, done.output
    assert sorted(r["id"] for r in read_rows(out)) == sorted(str(i) for i in range(500))
