"""``asyncsynth endpoints check`` against simulated endpoints (the local one: test_local.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from asyncsynth.cli import main
from asyncsynth.testing import Reply, ReplyContext, SimServer

SimFactory = Callable[..., SimServer]


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _follows_schema(body: dict[str, Any], ctx: ReplyContext) -> str:
    return '{"ok": true}' if "response_format" in body else "OK"


def _refuses_schema(body: dict[str, Any], ctx: ReplyContext) -> str | Reply:
    if "response_format" in body:
        return Reply(status=400, content="response_format is not supported")
    return "OK"


def _write_config(path: Path, endpoints: dict[str, dict[str, Any]], roles: str = "") -> Path:
    lines = []
    for name, table in endpoints.items():
        lines.append(f"[endpoints.{name}]")
        lines.extend(f"{key} = {orjson.dumps(value).decode()}" for key, value in table.items())
    path.write_text("\n".join(lines) + "\n" + roles)
    return path


def test_check_lists_each_endpoint_with_what_it_can_do(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    schema, refuse, echo = (
        sim_factory(reply=_follows_schema),
        sim_factory(reply=_refuses_schema),
        sim_factory(),
    )
    config = _write_config(
        tmp_path / "a.toml",
        {
            "schema": {"base_url": schema.url, "model": "sim-model"},
            "refuse": {"base_url": refuse.url, "model": "sim-model"},
            "echo": {"base_url": echo.url, "model": "sim-model"},
            "wrong": {"base_url": echo.url, "model": "gpt-9"},
            "dead": {"base_url": _dead_url(), "model": "m"},
        },
    )
    result = CliRunner().invoke(main, ["endpoints", "check", "--config", str(config), "--json"])
    assert result.exit_code == 1  # one endpoint is unreachable
    checks = {c["name"]: c for c in orjson.loads(result.output)}
    assert list(checks) == ["schema", "refuse", "echo", "wrong", "dead"]  # config order

    assert checks["schema"]["ok"] and checks["schema"]["json_schema"] == "yes"
    assert checks["schema"]["models"] == ["sim-model"] and checks["schema"]["serves_model"]
    assert checks["schema"]["completion_latency_s"] > 0
    assert checks["refuse"]["json_schema"] == "no"
    assert any("not supported" in p for p in checks["refuse"]["problems"])
    assert checks["echo"]["json_schema"] == "json only"  # JSON, but not of the schema
    assert checks["wrong"]["ok"] and not checks["wrong"]["serves_model"]
    assert any("'gpt-9' is not among" in p for p in checks["wrong"]["problems"])
    assert not checks["dead"]["reachable"] and checks["dead"]["json_schema"] == "untested"
    assert any("unreachable" in p for p in checks["dead"]["problems"])


def test_check_prints_a_table_and_exits_0_when_all_answer(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    sim = sim_factory(reply=_follows_schema)
    result = CliRunner().invoke(
        main, ["endpoints", "check", "--base-url", sim.url, "--model", "sim-model"]
    )
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()[:2]
    assert header.split() == [
        "endpoint",
        "kind",
        "url",
        "reachable",
        "model",
        "completion",
        "json_schema",
    ]
    assert row.split()[:4] == ["default", "remote", sim.url, "yes"]
    assert row.split()[-1] == "yes"


def test_check_with_a_role_checks_only_its_endpoints(sim: SimServer, tmp_path: Path) -> None:
    config = _write_config(
        tmp_path / "a.toml",
        {
            "up": {"base_url": sim.url, "model": "sim-model"},
            "dead": {"base_url": _dead_url(), "model": "m"},
        },
        '[roles]\ngen = ["up"]\nother = ["dead"]\n',
    )
    result = CliRunner().invoke(
        main, ["endpoints", "check", "--config", str(config), "--role", "gen", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert [c["name"] for c in orjson.loads(result.output)] == ["up"]


def test_check_names_a_missing_api_key(sim: SimServer, tmp_path: Path) -> None:
    config = _write_config(
        tmp_path / "a.toml",
        {"a": {"base_url": sim.url, "model": "m", "api_key_env": "ASYNCSYNTH_TEST_NO_SUCH_KEY"}},
    )
    result = CliRunner().invoke(main, ["endpoints", "check", "--config", str(config)])
    assert result.exit_code == 1
    assert "ASYNCSYNTH_TEST_NO_SUCH_KEY is not set" in result.output
