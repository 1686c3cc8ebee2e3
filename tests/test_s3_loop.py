"""The S3 loop's settings, each run end to end on the simulated endpoint.

Uses the scripted LLM and data of ``test_s3.py``: seed texts carry "seen" keywords of
their label, half of the gold texts "hidden" ones, and extrapolations keep the hidden
words of the misclassified example.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_s3 import (
    HIDDEN,
    LABELS,
    TINY_STUDENT,
    Events,
    _user,
    gold_rows,
    kind_of,
    make_config,
    needs_student,
    read_jsonl,
    run,
    sentiment_reply,
    sentiment_s3,
    write_jsonl,
)

from asyncsynth.pipelines.errors import RunFolderError
from asyncsynth.pipelines.s3 import ReviewSample, load_s3_settings
from asyncsynth.pipelines.s3.report import NO_DEV_NOTE
from asyncsynth.student import resolve_model, weights_fingerprint
from asyncsynth.testing import SimServer

pytestmark = needs_student


def _sent(bodies: list[dict[str, Any]]) -> str:
    return "\n".join(m["content"] for b in bodies for m in b["messages"])


def test_a_separate_dev_file_is_the_dev_set_and_all_of_gold_is_mined(tmp_path: Path) -> None:
    dev = write_jsonl(tmp_path / "dev.jsonl", gold_rows(20, 9, ["positive", "negative"]))
    table = sentiment_s3(tmp_path, rounds=1, dev=str(dev))
    del table["dev_fraction"]
    with SimServer(reply=sentiment_reply, record=True) as sim:
        report = run(make_config(sim.url, table), tmp_path / "out")
        bodies = list(sim.stats.bodies)
    assert report["data"]["mining"] == 60 and report["data"]["dev"] == 20
    assert "dev set" in report["selection"] and report["final"]["dev"]["n"] == 20
    sent = _sent(bodies)
    assert not any(row["text"] in sent for row in read_jsonl(dev))  # dev never reaches the LLM
    errors = read_jsonl(tmp_path / "out/round_1/errors.jsonl")
    assert {e["id"].split("-")[0] for e in errors} <= {"gold"}


def test_dev_fraction_zero_keeps_the_last_weights(tmp_path: Path) -> None:
    table = sentiment_s3(tmp_path, rounds=1, dev_fraction=0)
    with SimServer(reply=sentiment_reply) as sim:
        report = run(make_config(sim.url, table), tmp_path / "out")
    assert report["data"]["dev"] == 0 and report["data"]["mining"] == 60
    assert report["selection"] == NO_DEV_NOTE
    assert report["final"]["dev"] is None and report["final"]["test"]["n"] == 40
    metrics = json.loads((tmp_path / "out/round_1/metrics.json").read_text())
    assert metrics["history"] == [] and metrics["best_step"] is None


def test_several_extrapolations_per_error_are_distinct_requests(tmp_path: Path) -> None:
    table = sentiment_s3(tmp_path, rounds=1, extrapolate_per_error=3)
    with SimServer(reply=sentiment_reply, record=True) as sim:
        report = run(make_config(sim.url, table), tmp_path / "out")
        bodies = [b for b in sim.stats.bodies if kind_of(_user(b)) == "extrapolate"]
    errors = read_jsonl(tmp_path / "out/round_1/errors.jsonl")
    assert errors and len(bodies) == 3 * len(errors)
    by_prompt: dict[str, set[int]] = {}
    for body in bodies:
        by_prompt.setdefault(_user(body), set()).add(body["seed"])
    assert len(by_prompt) == len(errors) and all(len(s) == 3 for s in by_prompt.values())
    added = read_jsonl(tmp_path / "out/round_1/added.jsonl")
    assert report["rounds"][0]["added"] == len(added) <= 3 * len(errors)
    assert Counter(row["from"] for row in added).most_common(1)[0][1] > 1
    assert {row["id"].rsplit("-", 1)[1] for row in added} <= {"0", "1", "2"}


def test_review_seed_reviews_the_seed_and_asks_again_for_the_same_label(tmp_path: Path) -> None:
    seen: list[ReviewSample] = []

    async def reviewer(samples: list[ReviewSample]) -> list[tuple[bool, dict[str, Any]]]:
        seen.extend(samples)
        return [("meadow" not in s.response, {"mu": 9.0}) for s in samples]

    table = sentiment_s3(tmp_path, rounds=0, review_seed=True)
    with SimServer(reply=sentiment_reply) as sim:
        report = run(make_config(sim.url, table), tmp_path / "out", reviewer=reviewer)
    out = tmp_path / "out"
    reviews = read_jsonl(out / "seed.reviews.jsonl")
    assert len(reviews) == len(seen) > 60  # rejected slots were reviewed again
    rejected = [r for r in reviews if not r["accepted"]]
    assert rejected
    seed = read_jsonl(out / "seed.jsonl")
    assert all("meadow" not in row["text"] for row in seed)
    by_id = {row["id"]: row for row in seed}
    for sample in seen:  # every answer of a slot was asked for that slot's label
        if sample.key in by_id:
            assert f'label "{by_id[sample.key]["label"]}"' in sample.instruction
    assert report["cleaning"]["dropped"]["review_rejected"] == len(rejected)
    assert report["seed"]["size"] + report["seed"]["unfilled"] == 60


def test_k_zero_writes_the_seed_without_rationales(tmp_path: Path) -> None:
    table = sentiment_s3(tmp_path, rounds=1, k=0)
    with SimServer(reply=sentiment_reply, record=True) as sim:
        report = run(make_config(sim.url, table), tmp_path / "out")
        bodies = list(sim.stats.bodies)
    assert not (tmp_path / "out/rationales.json").exists() and report["rationales"] is None
    assert not any(kind_of(_user(b)) == "rationales" for b in bodies)
    seeds = [_user(b) for b in bodies if kind_of(_user(b)) == "seed"]
    assert seeds and not any("aspects" in m for m in seeds)
    assert all("rationales" not in row for row in read_jsonl(tmp_path / "out/seed.jsonl"))
    state = json.loads((tmp_path / "out/state.json").read_text())
    assert "rationales" not in state["steps"]


def test_a_round_without_errors_stops_the_loop(tmp_path: Path) -> None:
    # Gold with the seed's own keywords only: the first student gets all of it right.
    hidden = {*HIDDEN["positive"], *HIDDEN["negative"]}
    gold = gold_rows(80, 1, ["positive", "negative"])
    easy = [r for r in gold if not hidden & set(r["text"].split())]
    write_jsonl(tmp_path / "gold.jsonl", easy)
    table = sentiment_s3(tmp_path, rounds=3, student={**TINY_STUDENT, "epochs": 30})
    del table["test"]
    events = Events()
    with SimServer(reply=sentiment_reply) as sim:
        report = run(make_config(sim.url, table), tmp_path / "out", on_event=events)
    assert len(report["rounds"]) == 1 and report["rounds"][0]["errors"] == 0
    assert report["stopped_early"] is True and report["rounds"][0]["added"] == 0
    assert any(e.kind == "note" and e.data.get("converged") for e in events.events)
    assert events.trained() == ["final", "round_1/train"]


def test_rounds_zero_trains_the_final_student_on_the_seed(tmp_path: Path) -> None:
    table = sentiment_s3(tmp_path, rounds=0)
    with SimServer(reply=sentiment_reply) as sim:
        report = run(make_config(sim.url, table), tmp_path / "out")
    assert report["rounds"] == [] and not report["stopped_early"]
    assert report["final"]["train_size"] == report["seed"]["size"]
    assert report["final"]["by_source"] == {"seed": report["seed"]["size"]}
    assert not (tmp_path / "out/round_1").exists()


def test_resume_refuses_a_swapped_model_params_or_student_weights(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(resolve_model("minilm"), weights)
    student = {**TINY_STUDENT, "model": str(weights), "epochs": 1}
    table = sentiment_s3(tmp_path, rounds=0, seed_size=8, student=student)
    out = tmp_path / "out"
    with SimServer(reply=sentiment_reply) as sim:
        run(make_config(sim.url, table), out)
        run(make_config(sim.url, table), out)  # the same setup resumes (nothing to do)
        with pytest.raises(RunFolderError, match=r"changed: endpoints\.llm\.model\)"):
            run(make_config(sim.url, table, model="another-model"), out)
        with pytest.raises(RunFolderError, match=r"changed: endpoints\.llm\.params\.top_p\)"):
            run(make_config(sim.url, table, params={"top_p": 0.5}), out)
        config = json.loads((weights / "config.json").read_text())
        (weights / "config.json").write_text(json.dumps({**config, "swapped": True}))
        with pytest.raises(RunFolderError, match=r"changed: student_weights\)"):
            run(make_config(sim.url, table), out)


def test_weights_fingerprint_follows_the_files() -> None:
    local = weights_fingerprint("minilm")
    assert local.startswith("local:") and local == weights_fingerprint("all-MiniLM-L6-v2")
    tiny = weights_fingerprint("minilm", {"model_type": "bert", "hidden_size": 32})
    assert tiny != local and "+random:" in tiny
    assert weights_fingerprint("org/no-such-model") == "hub:org/no-such-model@unresolved"


def test_errors_are_mined_with_the_best_checkpoint_not_the_last(tmp_path: Path) -> None:
    """Dev labels contradict the training data, so dev accuracy falls as training goes on."""
    from asyncsynth.pipelines.s3.tasks import example
    from asyncsynth.student import train_student

    flipped = [
        {**row, "label": "negative" if row["label"] == "positive" else "positive"}
        for row in gold_rows(20, 9, ["positive", "negative"])
    ]
    dev = write_jsonl(tmp_path / "dev.jsonl", flipped)
    student = {**TINY_STUDENT, "eval_every": 2}
    table = sentiment_s3(tmp_path, rounds=1, dev=str(dev), student=student)
    del table["dev_fraction"]
    with SimServer(reply=sentiment_reply) as sim:
        config = make_config(sim.url, table)
        run(config, tmp_path / "out")
    out = tmp_path / "out"
    metrics = json.loads((out / "round_1/metrics.json").read_text())
    last_step = metrics["history"][-1]["step"]
    assert metrics["best_step"] < last_step  # best and last differ
    # The same student again, independently: its best checkpoint's misses are the errors.
    settings = load_s3_settings(config)
    train = [example(r) for r in read_jsonl(out / "round_1/train.jsonl")]
    dev_examples = [example(r) for r in flipped]
    mining = [
        example({**r, "id": f"gold-{i}"}) for i, r in enumerate(read_jsonl(tmp_path / "gold.jsonl"))
    ]
    best = train_student(train, dev_examples, settings.label_names, settings.student)
    last = train_student(train, [], settings.label_names, settings.student)
    errors = {(e["text"], e["predicted"]) for e in read_jsonl(out / "round_1/errors.jsonl")}
    best_misses = {
        (ex.text, p) for ex, p in zip(mining, best.predict(mining), strict=True) if p != ex.label
    }
    last_misses = {
        (ex.text, p) for ex, p in zip(mining, last.predict(mining), strict=True) if p != ex.label
    }
    assert errors == best_misses and errors != last_misses


def test_s3_dry_run_sends_nothing_and_bounds_what_a_run_sends(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from test_s3 import STUDENT_TOML

    from asyncsynth.cli import main
    from asyncsynth.estimate import s3_estimate

    table = sentiment_s3(tmp_path, rounds=2, extrapolate_per_error=2)
    price = {"input": 1.0, "output": 2.0, "batch": 0.5}
    with SimServer(reply=sentiment_reply, record=True, tokenize=True) as sim:
        labels = "\n".join(f'{k} = "{v}"' for k, v in LABELS.items())
        (tmp_path / "s3.toml").write_text(
            f'[endpoints.llm]\nbase_url = "{sim.url}"\nmodel = "sim"\nrpm = 600\n'
            "price = { input = 1.0, output = 2.0, batch = 0.5 }\n\n"
            '[s3]\ngold = "gold.jsonl"\ntest = "test.jsonl"\ndev_fraction = 0.3\nseed_size = 60\n'
            "k = 2\nrationales = { count = 3, samples = 1 }\nrounds = 2\n"
            f"extrapolate_per_error = 2\nsave_student = false\n\n[s3.labels]\n{labels}\n\n"
            f"[s3.student]\n{STUDENT_TOML}\n"
        )
        args = ["s3", str(tmp_path / "s3.toml"), "--out", str(tmp_path / "out"), "--dry-run"]
        shown = CliRunner().invoke(main, [*args, "--assume-error-rate", "0.25"])
        assert shown.exit_code == 0, shown.output
        assert sim.stats.requests == 0 and not (tmp_path / "out").exists()
        config = make_config(sim.url, table, price=price, rpm=600)
        estimate = anyio.run(lambda: s3_estimate(config))
        run(config, tmp_path / "out")
        kinds = Counter(kind_of(_user(b)) for b in sim.stats.bodies)
        sent = sim.stats.requests
    text = shown.output
    assert "rationales     2 requests exactly" in text and "seed           60 requests" in text
    mining = estimate.mining
    assert f"{2 * mining * 2:,} requests at most (2 rounds x {mining} mining examples" in text
    assert f"~{round(2 * mining * 2 * 0.25):,} at an assumed student error rate of 0.25" in text
    assert "llm's tokenizer (/tokenize)" in text and "batch $" in text
    # the steps before the first round: exactly what the run sent for them
    assert estimate.rationales.requests == kinds["rationales"] == 2
    assert estimate.seed.requests == kinds["seed"] == 60
    # the rounds: the upper bound holds what the run sent
    assert 0 < kinds["extrapolate"] <= estimate.extrapolation_upper
    assert estimate.scenarios["upper"].requests >= sent
    assert estimate.scenarios["first"].requests == 62
    assert estimate.scenarios["upper"].endpoints[0].online_max_usd is not None
