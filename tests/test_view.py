"""`asyncsynth view` without a browser: paging, the index, filters, safety, the server."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from sample_runs import HAS_STUDENT, MARKUP, make_gra_run, make_s3_run, read_rows

from asyncsynth.cli import main  # noqa: F401  (the command must import)
from asyncsynth.export import open_run
from asyncsynth.view import RowFilter, Viewer, ViewServer
from asyncsynth.view import api as view_api
from asyncsynth.view.index import INDEX_DIR, STRIDE, LineIndex

ROOT = Path(__file__).resolve().parents[1]


def write_rows(path: Path, rows: list[dict[str, Any]], mode: str = "wb") -> None:
    with open(path, mode) as f:
        for row in rows:
            f.write(orjson.dumps(row) + b"\n")


def answers(start: int, n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"line-{i}",
            "prompt": f"Question {i}?",
            "completion": f"answer {i}",
            "latency_s": 0.001 * (1 + i % 50),
        }
        for i in range(start, start + n)
    ]


@pytest.fixture
def big_run(tmp_path: Path) -> Path:
    out = tmp_path / "run" / "out.jsonl"
    out.parent.mkdir()
    write_rows(out, answers(0, 3 * STRIDE + 17))
    return out


@pytest.fixture(scope="module")
def gra(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_gra_run(tmp_path_factory.mktemp("view-gra"))


def ids(page: dict[str, Any]) -> list[str]:
    return [item["row"]["id"] for item in page["rows"]]


# -- the index ----------------------------------------------------------------------------------


def test_rows_are_paged_by_number_through_a_saved_index(
    big_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer = Viewer(open_run(big_run))
    n = 3 * STRIDE + 17
    page = viewer.rows(["out.jsonl"], start=STRIDE - 3, limit=10)
    assert ids(page) == [f"line-{i}" for i in range(STRIDE - 3, STRIDE + 7)]
    assert (page["total"], page["next"], page["start"]) == (n, STRIDE + 7, STRIDE - 3)
    last = viewer.rows(["out.jsonl"], start=n - 4, limit=50)
    assert ids(last) == [f"line-{i}" for i in range(n - 4, n)] and last["next"] is None
    saved = big_run.parent / INDEX_DIR / "out.jsonl.idx"
    assert saved.exists()
    # a second viewer reads the saved index instead of scanning the file again
    monkeypatch.setattr(LineIndex, "_extend", lambda self: pytest.fail("indexed again"))
    again = Viewer(open_run(big_run)).rows(["out.jsonl"], start=500, limit=2)
    assert ids(again) == ["line-500", "line-501"]
    # each row's offset opens it whole
    item = page["rows"][4]
    assert viewer.row("out.jsonl", item["offset"])["row"] == item["row"]
    with pytest.raises(view_api.NotFound):
        viewer.row("out.jsonl", item["offset"] + 1)


def test_the_index_follows_a_growing_file_and_a_rewritten_one(big_run: Path) -> None:
    viewer = Viewer(open_run(big_run))
    n = 3 * STRIDE + 17
    assert viewer.rows(["out.jsonl"])["total"] == n
    write_rows(big_run, answers(n, 5), mode="ab")
    with open(big_run, "ab") as f:
        f.write(b'{"id": "half-writ')  # a row still being written
    page = viewer.rows(["out.jsonl"], start=n, limit=10)
    assert ids(page) == [f"line-{i}" for i in range(n, n + 5)]
    with open(big_run, "ab") as f:
        f.write(b'ten"}\n')
    assert ids(viewer.rows(["out.jsonl"], start=n + 5))[0] == "half-written"
    # rewritten in place, shorter (`run` resumed), then replaced whole (GRA's final write)
    write_rows(big_run, answers(1000, 3))
    assert ids(viewer.rows(["out.jsonl"])) == ["line-1000", "line-1001", "line-1002"]
    replacement = big_run.with_name("new.tmp")
    write_rows(replacement, answers(2000, 3))
    os.replace(replacement, big_run)
    assert ids(viewer.rows(["out.jsonl"])) == ["line-2000", "line-2001", "line-2002"]
    # the same size, the same inode, other bytes at the end: indexed again
    data = big_run.read_bytes().replace(b"line-2002", b"line-9999")
    with open(big_run, "r+b") as f:
        f.write(data)
    assert ids(viewer.rows(["out.jsonl"]))[-1] == "line-9999"


# -- filters ------------------------------------------------------------------------------------


def test_filters_scan_across_files_and_resume_from_a_cursor(
    gra: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer = Viewer(open_run(gra))
    rows = [*read_rows(gra / "accepted.jsonl"), *read_rows(gra / "rejected.jsonl")]
    files = ["accepted.jsonl", "rejected.jsonl"]
    model = rows[0]["generator"]
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"eq": {"reason": "low_mean"}}, lambda r: r.get("reason") == "low_mean"),
        ({"eq": {"round": "2"}}, lambda r: r["round"] == 2),
        ({"model": model}, lambda r: model in (r["generator"], r["adjudicator"], *r["reviewers"])),
        ({"model": model, "role": "reviewer"}, lambda r: model in r["reviewers"]),
        ({"model": model, "role": "generator"}, lambda r: r["generator"] == model),
        (
            {"min": {"mu": 8}, "max": {"mu": 9.2}},
            lambda r: r["mu"] is not None and 8 <= r["mu"] <= 9.2,
        ),
        ({"q": "<SCRIPT>"}, lambda r: "<script>" in json.dumps(r).lower()),
        ({"q": 'alert("x")'}, lambda r: 'alert("x")' in (r["instruction"] or "")),
    ]
    monkeypatch.setattr(view_api, "SCAN_BYTES", 4096)  # many short scans, one cursor each
    for raw, keep in cases:
        wanted = [r["id"] for r in rows if keep(r)]
        assert wanted, raw
        got: list[str] = []
        cursor = None
        for _ in range(1000):
            page = viewer.rows(
                files, filter=RowFilter.parse(json.dumps(raw)), cursor=cursor, limit=3
            )
            assert page["filtered"] and len(page["rows"]) <= 3
            got += ids(page)
            cursor = page["next"]
            if cursor is None:
                break
        assert got == wanted, raw
    with pytest.raises(ValueError, match="role must be generator"):
        RowFilter.parse('{"model": "a", "role": "boss"}')
    with pytest.raises(ValueError, match=r"min\.mu is not a number"):
        RowFilter.parse('{"min": {"mu": "high"}}')


# -- S3 and run answers -------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_STUDENT, reason="needs the [student] extra")
def test_s3_rounds_join_errors_with_their_extrapolations(tmp_path: Path) -> None:
    out, _ = make_s3_run(tmp_path)
    viewer = Viewer(open_run(out))
    summary = viewer.summary()
    assert summary["kind"] == "s3"
    assert [r["name"] for r in summary["rounds"]] == ["round 1", "final"]
    assert summary["rounds"][0]["dev"]["confusion"]
    answer = viewer.s3_round(1)
    errors = read_rows(out / "round_1" / "errors.jsonl")
    added = read_rows(out / "round_1" / "added.jsonl")
    assert [e["id"] for e in answer["errors"]] == [e["id"] for e in errors]
    for error in answer["errors"]:
        assert error["added"] == [a for a in added if a["from"] == error["id"]]
    assert sum(len(e["added"]) for e in answer["errors"]) == len(added)


def test_run_latency_histogram_counts_every_answer(big_run: Path) -> None:
    viewer = Viewer(open_run(big_run))
    n = 3 * STRIDE + 17
    hist = viewer.latency("out.jsonl")
    assert hist["n"] == n == sum(b["count"] for b in hist["bins"])
    assert hist["max"] == 0.05
    assert 0.02 <= hist["p50"] <= 0.03
    write_rows(big_run, answers(n, 10), mode="ab")
    assert viewer.latency("out.jsonl")["n"] == n + 10


# -- the server ---------------------------------------------------------------------------------


@pytest.fixture
def server(gra: Path) -> Iterator[ViewServer]:
    with ViewServer(gra, port=0) as running:
        yield running


def get(
    server: ViewServer, path: str, *, method: str = "GET", host: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    headers = {"Host": host} if host else {}
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_paths_outside_the_run_are_refused(server: ViewServer, gra: Path, tmp_path: Path) -> None:
    secret = gra.parent / "secret.jsonl"
    secret.write_text('{"secret": 1}\n')
    (gra / "link.jsonl").symlink_to(secret)
    (gra / "notes.txt").write_text("not served")
    get(server, "/api/rows?file=accepted.jsonl")  # builds an index
    refused = [
        "/api/rows?file=../secret.jsonl",
        "/api/rows?file=" + quote(str(secret)),
        "/api/rows?file=" + quote("..%2Fsecret.jsonl"),
        "/api/rows?file=link.jsonl",
        "/api/rows?file=sub/../../secret.jsonl",
        "/api/row?file=../secret.jsonl&offset=0",
        "/api/file?path=../../../../etc/passwd",
        "/api/file?path=" + quote("/etc/passwd"),
        "/api/rows?file=notes.txt",
        "/api/rows?file=" + quote(f"{INDEX_DIR}/accepted.jsonl.idx"),
        "/api/latency?file=..%2Fsecret.jsonl",
        "/api/rows?file=" + quote("accepted.jsonl\x00.txt"),
    ]
    for path in refused:
        status, _, body = get(server, path)
        assert status in (403, 404), path
        assert b"secret" not in body.replace(b"secret.jsonl", b""), path
    for path in ("/../secret.jsonl", "/static/../../secret.jsonl", "/app.js/..", "/etc/passwd"):
        status, _, body = get(server, path)
        assert status == 404 and b'"secret"' not in body, path


def test_the_viewer_is_read_only(server: ViewServer, gra: Path) -> None:
    before = {p: p.read_bytes() for p in gra.rglob("*") if p.is_file()}
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, _, _ = get(server, "/api/rows?file=accepted.jsonl", method=method)
        assert status == 405, method
    for path in (
        "/",
        "/app.js",
        "/api/run",
        "/api/rows?file=rejected.jsonl&filter=%7B%22q%22%3A%22a%22%7D",
    ):
        assert get(server, path)[0] == 200, path
    after = {p: p.read_bytes() for p in gra.rglob("*") if p.is_file()}
    written = sorted(p.relative_to(gra).as_posix() for p in set(after) - set(before))
    assert all(p.startswith(f"{INDEX_DIR}/") for p in written), written
    assert {p: after[p] for p in before} == before


def test_a_foreign_host_header_is_refused_on_loopback(server: ViewServer) -> None:
    assert get(server, "/api/run", host="evil.example:80")[0] == 403
    assert get(server, "/", host="attacker.test")[0] == 403
    assert get(server, "/api/run", host=f"localhost:{server.port}")[0] == 200
    assert get(server, "/api/run", host=f"127.0.0.1:{server.port}")[0] == 200


def test_answers_carry_strict_headers_and_json_never_html(server: ViewServer) -> None:
    for path in ("/", "/api/run", "/api/rows?file=nope.jsonl"):
        _, headers, _ = get(server, path)
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"
    status, headers, body = get(server, "/api/rows?file=accepted.jsonl&limit=500")
    assert status == 200 and headers["content-type"] == "application/json"
    assert MARKUP.encode() in body or b"<script>" in body  # data, served as JSON text


def test_the_page_draws_values_as_text_and_loads_nothing_from_elsewhere() -> None:
    static = resources.files("asyncsynth.view").joinpath("static")
    names = sorted(p.name for p in static.iterdir())
    assert names == ["app.css", "app.js", "index.html"]
    script = static.joinpath("app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    for name in names:
        text = static.joinpath(name).read_text()
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (name, urls)  # the SVG namespace is a name, never fetched
    page = static.joinpath("index.html").read_text()
    assert re.findall(r'(?:src|href)="([^"]+)"', page) == ["data:,", "/app.css", "/app.js"]


def test_cli_serves_until_interrupted(gra: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "asyncsynth", "view", str(gra), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert url and line.startswith("gra run gra:"), line
        conn = http.client.HTTPConnection("127.0.0.1", int(url.group(1)), timeout=10)
        conn.request("GET", "/api/run")
        summary = json.loads(conn.getresponse().read())
        conn.close()
        assert summary["kind"] == "gra" and summary["report"]["accepted"] > 0
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0


def test_the_page_ships_in_the_wheel(tmp_path: Path) -> None:
    """Built from a copy of the sources: the page and every export module are packaged."""
    copy = tmp_path / "src"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    ignore = shutil.ignore_patterns("__pycache__", INDEX_DIR)
    for folder in ("asyncsynth", "prompts"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*pip, str(copy), "-w", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("app.js", "app.css", "index.html"):
        assert f"asyncsynth/view/static/{name}" in names
    assert {"asyncsynth/export/hub.py", "asyncsynth/view/server.py"} <= names
