"""Export and view a 1,000,000-row `run` output: peak memory and time, beside a plain read.

    python benchmarks/export.py                 # 1,000,000 rows, 3 repeats
    python benchmarks/export.py --rows 200000 --repeat 1

Each export runs as its own process (`asyncsynth export OUT --format F`), so its peak RSS
is its own; the floors are a plain lazy read of the same file with orjson, alone and
after importing what the Arrow formats import (pyarrow, datasets). Then the viewer
(`asyncsynth view`, its own process) opens the file: the first page and a jump to row
500,000, cold (the index is built) and warm (a new server reads the saved index), and,
when Playwright and /usr/bin/chromium are here, the page in a real browser until its
first rows show. Targets: bounded memory (peak RSS independent of the rows), the file
open in under 2 s.

The rows are written directly in the shape `asyncsynth run` writes (input fields, the
completion, usage, latency): sending a million requests is benchmarks/memory.py's job.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

PLAIN = """
import sys, orjson
n = 0
with open(sys.argv[1], "rb") as f:
    for line in f:
        orjson.loads(line)
        n += 1
print(n)
"""
PLAIN_IMPORTS = "import pyarrow, pyarrow.parquet, datasets\n" + PLAIN
FORMATS = ("jsonl", "messages", "parquet", "dataset")


def write_output(path: Path, rows: int) -> None:
    with open(path, "wb") as f:
        for i in range(rows):
            row = {
                "id": f"line-{i}",
                "prompt": f"Write one sentence about the number {i}.",
                "topic": "numbers",
                "completion": f"The number {i} is one more than {i - 1}, and it has "
                f"{len(str(i))} digits.",
                "finish_reason": "stop",
                "usage": {"prompt_tokens": 14, "completion_tokens": 21, "total_tokens": 35},
                "model": "sim-model",
                "latency_s": round(0.02 + (i % 97) / 1000, 4),
                "attempts": 1,
            }
            f.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))


def measured(cmd: list[str]) -> tuple[float, float, float]:
    """Run ``cmd``: (peak RSS in MB, peak anonymous RSS in MB, wall seconds) of that process
    alone. Peak RSS counts the pages of files the process memory-maps (datasets maps its
    Arrow files) as well as its own memory; the anonymous part, sampled every 5 ms, is the
    process's own."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    anon = [0]

    def sample() -> None:
        path = f"/proc/{proc.pid}/status"
        while True:
            try:
                with open(path) as f:
                    line = next((x for x in f if x.startswith("RssAnon:")), None)
            except OSError:
                return
            if line is None:
                return
            anon[0] = max(anon[0], int(line.split()[1]))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} failed with status {status}")
    return usage.ru_maxrss / 1024, anon[0] / 1024, time.perf_counter() - t0


def spread(values: list[float]) -> str:
    best = min(values)
    if len(values) == 1:
        return f"{best:7.2f}s"
    median = statistics.median(values)
    return f"{best:7.2f}s ({best:.2f}-{max(values):.2f}, median {median:.2f})"


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"{path}: HTTP {response.status}: {body[:200]!r}")
        return body
    finally:
        conn.close()


def open_viewer(folder: Path, browser: bool) -> dict[str, float]:
    """Start `asyncsynth view`, open the file, jump to the middle; times and its peak RSS."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncsynth", "view", str(folder), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            raise SystemExit(f"the viewer did not start: {line}")
        port = int(match.group(1))
        out: dict[str, float] = {}
        if browser:  # first, so that a cold open includes building the index
            out["browser_s"] = _browser_open(f"http://127.0.0.1:{port}/", _rows_of(folder))
        t0 = time.perf_counter()
        summary = orjson.loads(_get(port, "/api/run"))
        page = orjson.loads(_get(port, f"/api/rows?file={summary['output']}&start=0&limit=50"))
        out["first_page_s"] = time.perf_counter() - t0
        out["rows"] = page["total"]
        t0 = time.perf_counter()
        middle = orjson.loads(
            _get(port, f"/api/rows?file={summary['output']}&start=500000&limit=50")
        )
        out["jump_s"] = time.perf_counter() - t0
        assert not middle["rows"] or middle["rows"][0]["row"]["id"] == "line-500000"
        with open(f"/proc/{proc.pid}/status") as status:
            peak = next(line for line in status if line.startswith("VmHWM:"))
        out["rss_mb"] = int(peak.split()[1]) / 1024
        return out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit("the viewer did not stop on SIGINT") from None


def _rows_of(folder: Path) -> int:
    with open(folder / "out.jsonl", "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _browser_open(url: str, total: int) -> float:
    """Seconds from navigation until the first rows and the row count are on the page."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    args += ["--disable-component-update", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        page = browser.new_page()
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function(
            "t => (document.querySelector('[data-testid=outputs-status]') || {}).textContent"
            "?.endsWith(t)",
            arg=f"of {total:,}",
            timeout=120_000,
        )
        elapsed = time.perf_counter() - t0
        browser.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    browser = os.access("/usr/bin/chromium", os.X_OK)
    try:
        import playwright  # noqa: F401
    except ImportError:
        browser = False
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        folder.mkdir()
        output = folder / "out.jsonl"
        write_output(output, args.rows)
        size = output.stat().st_size / 1e6
        print(f"export and view: {args.rows:,} rows, {size:,.0f} MB `run` output")
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for _ in range(args.repeat):
            rows.setdefault("plain read (orjson, lazy)", []).append(
                measured([sys.executable, "-c", PLAIN, str(output)])
            )
            rows.setdefault("plain read + pyarrow/datasets", []).append(
                measured([sys.executable, "-c", PLAIN_IMPORTS, str(output)])
            )
            for fmt in FORMATS:
                target = Path(tmp) / ("ds" if fmt == "dataset" else f"out.{fmt}")
                cmd = [sys.executable, "-m", "asyncsynth", "export", str(output)]
                rows.setdefault(f"asyncsynth export --format {fmt}", []).append(
                    measured([*cmd, "--format", fmt, "--out", str(target)])
                )
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink()
        floor = min(r[1] for r in rows["plain read + pyarrow/datasets"])
        for label, runs in rows.items():
            rss = max(r[0] for r in runs)
            anon = max(r[1] for r in runs)
            walls = [r[2] for r in runs]
            rate = args.rows / min(walls)
            print(
                f"  {label:<36} peak RSS {rss:6.1f} MB (own {anon:6.1f} MB)  "
                f"wall {spread(walls)}  {rate:9,.0f} rows/s"
            )
        exports = [r for f in FORMATS for r in rows[f"asyncsynth export --format {f}"]]
        worst = max(r[1] for r in exports)
        print(
            f"  exports' own memory at most {worst:.0f} MB: {worst / floor:.2f}x the import floor"
        )
        index = folder / ".asyncsynth-view" / "out.jsonl.idx"
        cold = open_viewer(folder, False)
        line = (
            f"  viewer, cold (index built):  first page {cold['first_page_s']:.2f}s, "
            f"row 500,000 {cold['jump_s'] * 1000:.1f} ms, peak RSS {cold['rss_mb']:.0f} MB"
        )
        if browser:
            index.unlink()
            line += f"; in the browser {open_viewer(folder, True)['browser_s']:.2f}s"
        print(line)
        warm = [open_viewer(folder, browser) for _ in range(args.repeat)]
        firsts = [w["first_page_s"] for w in warm]
        jumps = [w["jump_s"] * 1000 for w in warm]
        line = (
            f"  viewer, warm (saved index):  first page {min(firsts):.3f}s "
            f"({min(firsts):.3f}-{max(firsts):.3f}), row 500,000 {min(jumps):.1f} ms, "
            f"peak RSS {max(w['rss_mb'] for w in warm):.0f} MB"
        )
        if browser:
            opens = [w["browser_s"] for w in warm]
            line += f", in the browser {min(opens):.2f}s ({min(opens):.2f}-{max(opens):.2f})"
        print(line)
        print(f"  index kept beside the run: {index.stat().st_size / 1024:.1f} KB")


if __name__ == "__main__":
    main()
