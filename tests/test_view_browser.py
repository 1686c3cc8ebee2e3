"""The viewer in a real browser (Debian's chromium driven by Playwright).

Set ``ASYNCSYNTH_SCREENSHOTS=DIR`` to keep the screenshots (the README's come from here).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sample_runs import HAS_STUDENT, MARKUP, make_gra_run, make_run_output, make_s3_run, read_rows

from asyncsynth.view import ViewServer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def gra(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_gra_run(tmp_path_factory.mktemp("browser-gra"))


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page that fails the test on a script error or dialog, and may reach only the
    viewer (every other request is refused and recorded)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss())
    )

    def only_local(route: Any) -> None:
        if route.request.url.startswith("http://127.0.0.1:"):
            route.continue_()
        else:
            problems.append(f"request elsewhere: {route.request.url}")
            route.abort()

    page.route("**/*", only_local)
    yield page
    context.close()
    assert problems == []


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if folder := os.environ.get("ASYNCSYNTH_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=False)
    assert path.stat().st_size > 10_000
    return path


def wait_status(page: Any, testid: str, text: str) -> None:
    """Wait until the pager under ``testid`` says ``text`` (a page of rows has arrived)."""
    page.wait_for_function(
        "([id, t]) => (document.querySelector(`[data-testid=${id}-status]`) || {}).textContent"
        "?.includes(t)",
        arg=[testid, text],
    )


def cells(row: Any) -> dict[str, str]:
    return row.evaluate(
        "r => Object.fromEntries([...r.cells].map(c => [c.dataset.k, c.textContent]))"
    )


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_gra_filter_by_reason_open_a_sample_and_check_its_reviews(
    gra: Path, page: Any, tmp_path: Path
) -> None:
    rejected = read_rows(gra / "rejected.jsonl")
    low = [r for r in rejected if r["reason"] == "low_mean"]
    assert low
    with ViewServer(gra, port=0) as server:
        page.goto(server.url)
        samples = page.locator('[data-testid="samples"] tbody tr')
        samples.first.wait_for()
        page.select_option('select[name="reason"]', "low_mean")
        page.wait_for_function(
            "n => document.querySelectorAll('[data-testid=samples] tbody tr.pick').length === n",
            arg=len(low),
        )
        statuses = samples.evaluate_all("rows => rows.map(r => r.cells[1].textContent)")
        assert statuses == ["low_mean"] * len(low)
        assert samples.evaluate_all("rows => rows.map(r => r.cells[0].textContent)") == [
            r["id"] for r in low
        ]
        samples.nth(1).click()
        row = low[1]
        detail = page.locator('[data-testid="detail"]')
        detail.locator('[data-testid="reviews"]').wait_for()
        assert detail.locator('[data-testid="sample-id"]').inner_text().startswith(row["id"])
        assert detail.locator('[data-testid="instruction"]').text_content() == row["instruction"]
        assert detail.locator('[data-testid="response"]').text_content() == row["response"]
        shown = detail.locator("tr.review")
        reviews = row["review"]["reviews"]
        assert shown.count() == len(reviews)
        for i, review in enumerate(reviews):
            got = cells(shown.nth(i))
            assert got["model"] == review["model"]
            assert number(got["score"]) == pytest.approx(review["score"], abs=0.005)
            for criterion, value in review["scores"].items():
                assert number(got[criterion]) == pytest.approx(value, abs=0.005), criterion
            assert (got["strengths"], got["weaknesses"]) == (
                review["strengths"],
                review["weaknesses"],
            )
        checks = detail.locator("tr.check")
        assert [cells(checks.nth(i))["passed"] for i in range(checks.count())] == [
            "pass" if c["passed"] else "fail" for c in row["review"]["checks"]
        ]
        facts = detail.locator("dd[data-k]")
        shown_facts = dict(
            zip(
                facts.evaluate_all("d => d.map(x => x.dataset.k)"),
                facts.all_text_contents(),
                strict=True,
            )
        )
        assert shown_facts["reason"] == "low_mean" and shown_facts["generator"] == row["generator"]
        pool = detail.locator('[data-testid="pool-examples"] td')
        pool.first.wait_for()
        assert pool.first.text_content() == row["generation"]["examples"][0]
        shot(page, tmp_path, "view-gra")


def test_gra_markup_in_a_sample_shows_as_text(gra: Path, page: Any) -> None:
    marked = next(r for r in read_rows(gra / "accepted.jsonl") if MARKUP in r["instruction"])
    with ViewServer(gra, port=0) as server:
        page.goto(server.url + "#samples")
        page.fill('input[name="q"]', "<script>")
        page.press('input[name="q"]', "Enter")
        wait_status(page, "samples", "matching rows")
        page.locator(f'[data-testid="samples"] tbody tr.pick >> text="{marked["id"]}"').click()
        instruction = page.locator('[data-testid="instruction"]')
        instruction.wait_for()
        assert instruction.text_content() == marked["instruction"]
        injected = page.evaluate(
            "document.querySelectorAll('main script, main b, main i, main em').length"
        )
        assert injected == 0
        strengths = page.locator('tr.review td[data-k="strengths"]').first.text_content()
        assert "<em>it</em>" in strengths  # the reviewer's markup, shown as written
        table_text = page.locator('[data-testid="samples"]').inner_text()
        assert "<script>" in table_text


def test_gra_charts_draw_from_the_report(gra: Path, page: Any, tmp_path: Path) -> None:
    report = json.loads((gra / "report.json").read_text())
    with ViewServer(gra, port=0) as server:
        page.goto(server.url + "#charts")
        charts = page.locator('[data-testid="charts"] .chart')
        charts.first.wait_for()
        assert charts.count() == 4 + len(report["models"])
        bars = page.locator('[data-testid="charts"] .chart').first.locator("rect.bar")
        assert bars.count() == len(report["rounds"])
        titles = bars.evaluate_all("b => b.map(x => x.textContent)")
        expected = [
            f"round {r['round']}: {100 * r['accepted'] / r['candidates']:.1f}%"
            for r in report["rounds"]
        ]
        assert titles == expected
        shot(page, tmp_path, "view-gra-charts")


def test_a_growing_run_output_refreshes_the_page(tmp_path: Path, page: Any) -> None:
    output = make_run_output(tmp_path / "run")
    rows = read_rows(output)
    with ViewServer(output, port=0) as server:
        page.goto(server.url)
        wait_status(page, "outputs", f"of {len(rows)}")
        with open(output, "ab") as f:
            for i in range(3):
                f.write(
                    orjson.dumps(
                        {"id": f"late-{i}", "prompt": "p", "completion": "c", "latency_s": 0.1}
                    )
                    + b"\n"
                )
        wait_status(page, "outputs", f"of {len(rows) + 3}")
        assert page.locator("#live").text_content().startswith("updated")


def test_run_outputs_search_errors_and_latency(tmp_path: Path, page: Any) -> None:
    output = make_run_output(tmp_path / "run")
    rows = read_rows(output)
    errors = read_rows(output.with_name("answers.errors.jsonl"))
    marked = next(r for r in rows if MARKUP in r.get("prompt", ""))
    with ViewServer(output, port=0) as server:
        page.goto(server.url + "#outputs")
        wait_status(page, "outputs", f"of {len(rows)}")
        page.fill('input[name="q"]', "bold</b>")
        page.press('input[name="q"]', "Enter")
        wait_status(page, "outputs", "1 matching rows")
        found = page.locator('[data-testid="outputs"] tbody tr.pick')
        assert found.count() == 1
        found.first.click()
        assert page.locator('[data-testid="prompt"]').text_content() == marked["prompt"]
        assert page.locator('[data-testid="completion"]').text_content() == marked["completion"]
        shot(page, tmp_path, "view-run")
        page.click('nav button[data-tab="errors"]')
        listed = page.locator('[data-testid="errors"] tbody tr.pick')
        listed.first.wait_for()
        assert listed.count() == len(errors)
        types = listed.evaluate_all("r => r.map(x => x.cells[1].textContent)")
        assert sorted(types) == sorted(e["error"]["type"] for e in errors)
        page.click('nav button[data-tab="latency"]')
        page.wait_for_function(
            "t => document.querySelector('[data-testid=latency] p').textContent.startsWith(t)",
            arg=f"{len(rows)} answers",
        )
        page.locator('[data-testid="latency"] rect.bar').first.wait_for()


@pytest.mark.skipif(not HAS_STUDENT, reason="needs the [student] extra")
def test_s3_rounds_confusion_matrices_and_mined_errors(tmp_path: Path, page: Any) -> None:
    out, _ = make_s3_run(tmp_path)
    metrics = json.loads((out / "round_1" / "metrics.json").read_text())
    errors = read_rows(out / "round_1" / "errors.jsonl")
    added = read_rows(out / "round_1" / "added.jsonl")
    with ViewServer(out, port=0) as server:
        page.goto(server.url)
        page.locator('[data-testid="rounds-chart"]').wait_for()
        rounds = page.locator('[data-testid="rounds"] tbody tr')
        assert rounds.evaluate_all("r => r.map(x => x.cells[0].textContent)") == [
            "round 1",
            "final",
        ]
        matrix = page.locator('[data-testid="confusion"]').first
        confusion = metrics["dev"]["confusion"]
        shown = matrix.locator("tbody tr").evaluate_all(
            "r => r.map(x => [...x.cells].slice(1).map(c => c.textContent))"
        )
        assert shown == [[str(confusion[g][p]) for p in confusion] for g in confusion]
        shot(page, tmp_path, "view-s3")
        page.click('nav button[data-tab="errors"]')
        mined = page.locator('[data-testid="errors"] tr.mined')
        mined.first.wait_for()
        assert mined.count() == len(errors)
        for i, error in enumerate(errors):
            texts = mined.nth(i).locator("pre.added").all_text_contents()
            assert texts == [a["text"] for a in added if a["from"] == error["id"]]
        page.click('nav button[data-tab="cleaning"]')
        page.locator('[data-testid="cleaning"]').wait_for()
        dropped = read_rows(out / "seed.dropped.jsonl")
        page.select_option('select[name="dropped"]', "seed.dropped.jsonl")
        wait_status(page, "dropped", f"of {len(dropped)}")
        reasons = page.locator('[data-testid="dropped"] tbody tr')
        assert reasons.evaluate_all("r => r.map(x => x.cells[1].textContent)") == [
            d["reason"] for d in dropped
        ]
