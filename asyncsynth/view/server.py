"""The viewer's HTTP server: the standard library's threading server, read-only.

It answers ``GET`` and ``HEAD`` only (anything else is 405), serves its own page and the
JSON of :mod:`asyncsynth.view.api`, and nothing else. On a loopback address it also
refuses requests whose ``Host`` is not a loopback name, so a web page elsewhere cannot
reach it through DNS rebinding. Every answer forbids scripts, styles and connections
from anywhere but itself (``Content-Security-Policy``), and the page draws every value
as text, never as markup.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from ..export.runs import RunFiles, open_run
from .api import PAGE_ROWS, Forbidden, NotFound, RowFilter, Viewer

__all__ = ["DEFAULT_PORT", "ViewServer"]

DEFAULT_PORT = 8765
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _static(name: str) -> bytes:
    return resources.files("asyncsynth.view").joinpath("static", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log:
            super().log_message(format, *args)

    # -- replies ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, *, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, *, head: bool = False) -> None:
        body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
        self._send(status, body, "application/json", head=head)

    def _error(self, status: HTTPStatus, message: str, *, head: bool = False) -> None:
        self._json({"error": message}, status.value, head=head)

    def _refuse(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "the viewer is read-only")

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    # -- GET --------------------------------------------------------------------------------

    def _host_ok(self) -> bool:
        if not self.server.check_host:
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return _is_loopback(name.strip("[]"))

    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_GET(self) -> None:
        self._get(head=False)

    def _get(self, *, head: bool) -> None:
        if not self._host_ok():
            self._error(HTTPStatus.FORBIDDEN, "unexpected Host header", head=head)
            return
        url = urlsplit(self.path)
        if url.path in STATIC:
            name, kind = STATIC[url.path]
            self._send(200, _static(name), kind, head=head)
            return
        if not url.path.startswith("/api/"):
            self._error(HTTPStatus.NOT_FOUND, f"{url.path}: not found", head=head)
            return
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            data = self.server.answer(url.path[len("/api/") :], query)
        except Forbidden as exc:
            self._error(HTTPStatus.FORBIDDEN, str(exc), head=head)
        except NotFound as exc:
            self._error(HTTPStatus.NOT_FOUND, str(exc), head=head)
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc), head=head)
        else:
            self._json(data, head=head)


def _one(query: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    values = query.get(name)
    return values[-1] if values else default


def _int(query: dict[str, list[str]], name: str, default: int) -> int:
    raw = _one(query, name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {raw!r}") from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], viewer: Viewer, *, check_host: bool, log: bool):
        self.viewer = viewer
        self.check_host = check_host
        self.log = log
        super().__init__(address, _Handler)

    def answer(self, route: str, query: dict[str, list[str]]) -> Any:
        viewer = self.viewer
        if route == "run":
            return viewer.summary()
        if route == "rows":
            return viewer.rows(
                query.get("file") or [],
                start=_int(query, "start", 0),
                limit=_int(query, "limit", PAGE_ROWS),
                cursor=_one(query, "cursor"),
                filter=RowFilter.parse(_one(query, "filter")),
            )
        if route == "row":
            return viewer.row(_one(query, "file") or "", _int(query, "offset", 0))
        if route == "file":
            return viewer.json_file(_one(query, "path") or "")
        if route == "pool":
            ids = [i for i in (_one(query, "ids") or "").split(",") if i]
            return viewer.pool(ids)
        if route == "s3/round":
            return viewer.s3_round(_int(query, "r", 1))
        if route == "latency":
            return viewer.latency(_one(query, "file") or "")
        raise NotFound(f"/api/{route}: not found")


class ViewServer:
    """The viewer of one run, on ``host:port`` (loopback by default; port 0: any free one).

        with ViewServer("runs/gra") as server:   # serves in a background thread
            print(server.url)

    or ``ViewServer("runs/gra").serve_forever()`` in the foreground (Ctrl-C stops it).
    """

    def __init__(
        self,
        run: str | os.PathLike[str] | RunFiles,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        save_index: bool = True,
        log: bool = False,
    ) -> None:
        self.run = run if isinstance(run, RunFiles) else open_run(run)
        self.viewer = Viewer(self.run, save_index=save_index)
        self._server = _Server((host, port), self.viewer, check_host=_is_loopback(host), log=log)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        elif host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"

    def start(self) -> ViewServer:
        """Serve in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="asyncsynth-view", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ViewServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
