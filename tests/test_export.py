"""`asyncsynth export`: every format loaded back and checked against the run's rows."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from sample_runs import HAS_STUDENT, make_gra_run, make_run_output, make_s3_run, read_rows

from asyncsynth import InputError
from asyncsynth.cli import main
from asyncsynth.config import load_config
from asyncsynth.export import export_run, open_run, parse_rounds
from asyncsynth.export.records import RUN_ENGINE_FIELDS, gra_record

datasets = pytest.importorskip("datasets", reason="needs asyncsynth[export]")
pyarrow = pytest.importorskip("pyarrow", reason="needs asyncsynth[export]")
needs_student = pytest.mark.skipif(not HAS_STUDENT, reason="needs the [student] extra")


@pytest.fixture(scope="module")
def gra(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_gra_run(tmp_path_factory.mktemp("export-gra"))


@pytest.fixture(scope="module")
def run_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_output(tmp_path_factory.mktemp("export-run"))


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not HAS_STUDENT:
        pytest.skip("needs the [student] extra")
    return make_s3_run(tmp_path_factory.mktemp("export-s3"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A cache folder for `datasets` (never the user's)."""
    return str(tmp_path_factory.mktemp("hf-cache"))


def load_json(path: Path, cache: str) -> list[Any]:
    return datasets.Dataset.from_json(str(path), cache_dir=cache).to_list()


def load_parquet(path: Path, cache: str) -> Any:
    return datasets.Dataset.from_parquet(str(path), cache_dir=cache)


# -- run folders --------------------------------------------------------------------------------


def test_run_kinds_are_recognised_and_other_folders_refused(
    gra: Path, run_output: Path, tmp_path: Path
) -> None:
    assert open_run(gra).kind == "gra"
    run = open_run(run_output.parent)
    assert (run.kind, run.output, run.errors) == (
        "run",
        run_output,
        run_output.with_name("answers.errors.jsonl"),
    )
    assert open_run(run_output.with_name("answers.errors.jsonl")).output == run_output
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a run folder"):
        open_run(tmp_path)
    shutil.copy(run_output, tmp_path / "a.jsonl")
    shutil.copy(run_output, tmp_path / "b.jsonl")
    with pytest.raises(InputError, match=r"several `run` outputs \(a.jsonl, b.jsonl\)"):
        open_run(tmp_path)


# -- GRA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "alpaca"])
def test_gra_chat_formats_hold_each_accepted_sample(
    gra: Path, tmp_path: Path, cache: str, fmt: str
) -> None:
    accepted = read_rows(gra / "accepted.jsonl")
    out = tmp_path / f"gra_{fmt}.jsonl"
    result = export_run(gra, fmt, out, system="You are helpful.")
    assert result.rows == {"train": len(accepted)} and result.left_out == 0
    rows = load_json(out, cache)
    assert len(rows) == len(accepted)
    for row, source in zip(rows, accepted, strict=True):
        if fmt == "messages":
            assert row["messages"] == [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": source["instruction"]},
                {"role": "assistant", "content": source["response"]},
            ]
        elif fmt == "sharegpt":
            assert row["system"] == "You are helpful."
            assert row["conversations"] == [
                {"from": "human", "value": source["instruction"]},
                {"from": "gpt", "value": source["response"]},
            ]
        else:
            assert (row["instruction"], row["input"], row["output"]) == (
                source["instruction"],
                "",
                source["response"],
            )
    info = orjson.loads((tmp_path / "dataset_info.json").read_bytes())
    entry = info[f"gra_{fmt}"]
    assert entry["file_name"] == out.name
    if fmt == "alpaca":
        assert entry["columns"] == {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
        }
    else:
        assert entry["formatting"] == "sharegpt"


def test_dataset_info_keeps_other_entries(gra: Path, tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text('{"alpaca_en": {"file_name": "alpaca.json"}}')
    export_run(gra, "alpaca", tmp_path / "mine.jsonl")
    export_run(gra, "sharegpt", tmp_path / "mine2.jsonl")
    info = orjson.loads((tmp_path / "dataset_info.json").read_bytes())
    assert list(info) == ["alpaca_en", "mine", "mine2"]


@pytest.mark.parametrize("fmt", ["dataset", "parquet"])
def test_gra_provenance_is_typed_columns(gra: Path, tmp_path: Path, cache: str, fmt: str) -> None:
    accepted = read_rows(gra / "accepted.jsonl")
    out = tmp_path / ("ds" if fmt == "dataset" else "gra.parquet")
    export_run(gra, fmt, out)
    data = datasets.load_from_disk(str(out)) if fmt == "dataset" else load_parquet(out, cache)
    features = data.features
    assert features["mu"] == datasets.Value("float64")
    assert features["round"] == datasets.Value("int32")
    assert features["reviewers"] == datasets.List(datasets.Value("string"))
    assert features["reviews"].feature["correctness"] == datasets.Value("float64")
    assert features["checks"].feature["clarity"] == datasets.Value("bool")
    assert len(data) == len(accepted)
    decisions = set()
    for got, row in zip(data, accepted, strict=True):
        decisions.add(got["decision"])
        for key in ("id", "instruction", "response", "domain", "keywords", "summary", "round"):
            assert got[key] == row[key], key
        assert (got["generator"], got["reviewers"], got["adjudicator"]) == (
            row["generator"],
            row["reviewers"],
            row["adjudicator"],
        )
        assert (got["mu"], got["sigma"], got["decision"]) == (
            row["mu"],
            row["sigma"],
            row["decision"],
        )
        reviews = row["review"]["reviews"]
        assert got["review_scores"] == [r["score"] for r in reviews]
        assert [(r["model"], r["correctness"], r["strengths"]) for r in got["reviews"]] == [
            (r["model"], r["scores"]["correctness"], r["strengths"]) for r in reviews
        ]
        assert [c["passed"] for c in got["checks"]] == [
            c["passed"] for c in row["review"]["checks"]
        ]
        adjudication = row["review"].get("adjudication")
        assert (got["adjudication"] or {}).get("score") == (adjudication or {}).get("score")
        assert got["messages"][-1] == {"role": "assistant", "content": row["response"]}
        assert got["pool_examples"] == row["generation"]["examples"]
        assert (got["tokens_in"], got["tokens_out"]) == (row["tokens"]["in"], row["tokens"]["out"])
    assert decisions == {"consensus", "adjudicated"}


def test_rounds_are_cumulative_and_filters_combine(gra: Path, tmp_path: Path) -> None:
    accepted = read_rows(gra / "accepted.jsonl")
    assert len({r["round"] for r in accepted}) >= 3

    def exported(**options: Any) -> list[str]:
        out = tmp_path / "f.jsonl"
        result = export_run(gra, "alpaca", out, **options)
        rows = [r["instruction"] for r in read_rows(out)]
        assert result.left_out == len(accepted) - len(rows)
        return rows

    def expected(keep: Any) -> list[str]:
        return [r["instruction"] for r in accepted if keep(r)]

    assert exported(rounds="1-2") == expected(lambda r: r["round"] in (1, 2))
    assert exported(rounds="1,3") == expected(lambda r: r["round"] in (1, 3))
    assert exported(rounds="2") == expected(lambda r: r["round"] == 2)
    assert exported(min_mu=9) == expected(lambda r: r["mu"] >= 9)
    domain = accepted[0]["domain"]
    assert exported(domains=[domain.upper()]) == expected(lambda r: r["domain"] == domain)
    assert exported(decisions=["adjudicated"]) == expected(lambda r: r["decision"] == "adjudicated")
    combined = exported(rounds="1-3", min_mu=8.5, decisions=["consensus"])
    assert combined == expected(
        lambda r: r["round"] <= 3 and r["mu"] >= 8.5 and r["decision"] == "consensus"
    )
    assert 0 < len(combined) < len(accepted)


def test_parse_rounds() -> None:
    assert parse_rounds("1-3") == {1, 2, 3}
    assert parse_rounds("1, 3-4") == {1, 3, 4}
    for bad in ("x", "3-1", "0", "1-"):
        with pytest.raises(ValueError, match="--rounds"):
            parse_rounds(bad)


def test_rows_of_later_versions_export_with_their_new_fields(gra: Path, tmp_path: Path) -> None:
    """Fields this version does not know are kept: typed from the data, or JSON when mixed."""
    copy = tmp_path / "gra"
    shutil.copytree(gra, copy)
    rows = read_rows(gra / "accepted.jsonl")
    for i, row in enumerate(rows):
        row["quality_estimate"] = 0.001 * (i + 1)
        row["judge_notes"] = {"length": i} if i % 2 else "short"
        row["generation"]["future_field"] = [1, 2]
    (copy / "accepted.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    export_run(copy, "dataset", tmp_path / "ds")
    data = datasets.load_from_disk(str(tmp_path / "ds"))
    assert data.features["quality_estimate"] == datasets.Value("float64")
    assert data["quality_estimate"] == [r["quality_estimate"] for r in rows]
    assert [orjson.loads(v) for v in data["judge_notes"]] == [r["judge_notes"] for r in rows]
    assert gra_record(rows[0])["quality_estimate"] == rows[0]["quality_estimate"]


def test_gra_filters_are_refused_for_other_runs(run_output: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="filter GRA runs only"):
        export_run(run_output, "jsonl", tmp_path / "x.jsonl", min_mu=8)
    with pytest.raises(InputError, match="exports as jsonl, messages, parquet, dataset"):
        export_run(run_output, "alpaca", tmp_path / "x.jsonl")


def test_a_folder_that_is_not_an_export_is_never_replaced(gra: Path, tmp_path: Path) -> None:
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds no exported dataset"):
        export_run(gra, "dataset", keep)
    assert (keep / "notes.txt").read_text() == "mine"
    export_run(gra, "dataset", tmp_path / "ds")
    export_run(gra, "dataset", tmp_path / "ds", rounds="1")  # an earlier export is replaced
    assert len(datasets.load_from_disk(str(tmp_path / "ds"))) < len(
        read_rows(gra / "accepted.jsonl")
    )


# -- S3 -----------------------------------------------------------------------------------------


@needs_student
def test_s3_dataset_dict_has_train_dev_and_test_with_class_labels(
    s3: tuple[Path, Path], tmp_path: Path
) -> None:
    from asyncsynth.pipelines.s3 import load_gold, load_s3_settings

    out, config_path = s3
    config = load_config(config_path)
    result = export_run(out, "dataset", tmp_path / "ds", config=config)
    data = datasets.load_from_disk(str(tmp_path / "ds"))
    assert list(data) == ["train", "validation", "test"]
    assert result.rows == {name: len(data[name]) for name in data}
    label = data["train"].features["label"]
    assert label.names == ["positive", "negative"]  # the config's order
    gold = load_gold(load_s3_settings(config))
    train = read_rows(out / "final" / "train.jsonl")

    def decoded(split: str) -> list[tuple[str, str, str]]:
        return [(r["id"], r["text"], label.int2str(r["label"])) for r in data[split]]

    assert decoded("train") == [(r["id"], r["text"], r["label"]) for r in train]
    assert decoded("validation") == [(r["id"], r["text"], r["label"]) for r in gold.dev]
    assert gold.test is not None
    assert decoded("test") == [(r["id"], r["text"], r["label"]) for r in gold.test]
    assert {r["source"] for r in data["train"]} == {"seed", "round_1"}


@needs_student
def test_s3_parquet_and_jsonl_splits_and_the_note_without_config(
    s3: tuple[Path, Path], tmp_path: Path, cache: str
) -> None:
    out, config_path = s3
    result = export_run(out, "jsonl", tmp_path / "j")
    assert result.rows == {"train": len(read_rows(out / "final" / "train.jsonl"))}
    assert "--config" in result.notes[0]
    export_run(out, "parquet", tmp_path / "p", config=load_config(config_path))
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]
    test = load_parquet(tmp_path / "p" / "test.parquet", cache)
    assert test.features["label"].names == ["positive", "negative"]


@needs_student
def test_s3_export_refuses_a_config_whose_data_changed(
    s3: tuple[Path, Path], tmp_path: Path
) -> None:
    out, config_path = s3
    folder = tmp_path / "cfg"
    shutil.copytree(config_path.parent, folder, ignore=shutil.ignore_patterns("s3"))
    test = folder / "test.jsonl"
    test.write_text(test.read_text().replace("positive", "negative", 1))
    with pytest.raises(InputError, match=r"test data of .* differ from those the run used"):
        export_run(out, "dataset", tmp_path / "ds", config=load_config(folder / "s3.toml"))


def fake_s3_run(folder: Path, task: str, rows: list[dict[str, Any]], **settings: Any) -> Path:
    """An S3 run folder as the pipeline leaves it (state.json, final/train.jsonl)."""
    (folder / "final").mkdir(parents=True)
    state = {"version": 1, "fingerprint": {"task": task, **settings, "data": {}}, "steps": {}}
    (folder / "state.json").write_bytes(orjson.dumps(state))
    (folder / "final" / "train.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return folder


def test_s3_pair_rows_take_the_gold_data_column_names(tmp_path: Path) -> None:
    rows = [
        {"id": "seed-0", "text": "A man sleeps.", "text_pair": "He rests.", "label": "entailment"},
        {
            "id": "r1-x",
            "text": "A man sleeps.",
            "text_pair": "He runs.",
            "label": "contradiction",
            "source": "round_1",
            "from": "gold-3",
            "predicted": "entailment",
        },
    ]
    run = fake_s3_run(
        tmp_path / "run",
        "pair",
        rows,
        labels={"entailment": ["", "true"], "contradiction": ["", "false"]},
        text_field="premise",
        text_pair_field="hypothesis",
    )
    export_run(run, "dataset", tmp_path / "ds")
    data = datasets.load_from_disk(str(tmp_path / "ds"))
    assert data.column_names[:4] == ["id", "premise", "hypothesis", "label"]
    assert data.features["label"].names == ["entailment", "contradiction"]
    assert [(r["premise"], r["hypothesis"], r["label"]) for r in data] == [
        ("A man sleeps.", "He rests.", 0),
        ("A man sleeps.", "He runs.", 1),
    ]
    assert data[1]["from"] == "gold-3"


def test_s3_qa_rows_export_as_squad_columns(tmp_path: Path, cache: str) -> None:
    rows = [
        {
            "id": "q0",
            "context": "Paris is in France.",
            "question": "Where is Paris?",
            "answers": {"text": ["France"], "answer_start": [12]},
            "source": "seed",
        },
        {
            "id": "q1",
            "context": "Ice is cold.",
            "question": "What is cold?",
            "answers": [{"text": "Ice", "answer_start": 0}],
            "source": "round_1",
            "from": "g7",
        },
        {
            "id": "q2",
            "context": "Tea is hot.",
            "question": "What is hot?",
            "answer": "Tea",
            "answer_start": 0,
            "source": "round_1",
        },
    ]
    run = fake_s3_run(tmp_path / "run", "qa", rows)
    export_run(run, "parquet", tmp_path / "p")
    data = load_parquet(tmp_path / "p" / "train.parquet", cache)
    assert data.column_names[:4] == ["id", "context", "question", "answers"]
    assert data["answers"] == [
        {"text": ["France"], "answer_start": [12]},
        {"text": ["Ice"], "answer_start": [0]},
        {"text": ["Tea"], "answer_start": [0]},
    ]
    assert data.features["answers"]["answer_start"] == datasets.List(datasets.Value("int32"))


# -- run ----------------------------------------------------------------------------------------


def test_run_output_exports_input_fields_and_completion(
    run_output: Path, tmp_path: Path, cache: str
) -> None:
    source = read_rows(run_output)
    export_run(run_output.parent, "jsonl", tmp_path / "a.jsonl")
    rows = read_rows(tmp_path / "a.jsonl")
    assert len(rows) == len(source)
    for row, raw in zip(rows, source, strict=True):
        assert row == {k: v for k, v in raw.items() if k not in RUN_ENGINE_FIELDS}
        assert "cost_usd" in raw and "cost_usd" not in row  # the request's own figures stay out
        assert row["completion"].startswith("answer to")
    export_run(run_output, "parquet", tmp_path / "a.parquet")
    data = load_parquet(tmp_path / "a.parquet", cache)
    assert data["completion"] == [r["completion"] for r in source]
    assert data.features["messages"] == datasets.List(
        {"role": datasets.Value("string"), "content": datasets.Value("string")}
    )
    export_run(run_output, "dataset", tmp_path / "ds")
    assert datasets.load_from_disk(str(tmp_path / "ds"))["id"] == [r["id"] for r in source]


def test_run_messages_are_the_request_and_its_answer(
    run_output: Path, tmp_path: Path, cache: str
) -> None:
    export_run(run_output, "messages", tmp_path / "m.jsonl")
    source = read_rows(run_output)
    by_id = {r["id"]: r for r in source}
    rows = load_json(tmp_path / "m.jsonl", cache)
    assert len(rows) == len(source)
    first = rows[0]["messages"]
    assert first[-1]["role"] == "assistant"
    sampled = [r["messages"] for r in rows if r["messages"][0]["content"] == "Chat question?"]
    assert len(sampled) == 2  # the two samples of one line
    prompts = {r["prompt"]: r["completion"] for r in by_id.values() if "prompt" in r}
    for row in rows:
        user, answer = row["messages"][-2]["content"], row["messages"][-1]["content"]
        if user in prompts:
            assert prompts[user] == answer


def test_cli_exports_and_says_what_it_wrote(gra: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "train.jsonl"
    result = runner.invoke(
        main,
        ["export", str(gra), "-f", "sharegpt", "-o", str(out), "--rounds", "1-2", "--min-mu", "9"],
    )
    assert result.exit_code == 0, result.output
    kept = len(read_rows(out))
    assert f"exported {kept:,} train rows" in result.output
    assert "left out by the filters" in result.output
    bad = runner.invoke(main, ["export", str(gra), "-o", str(out), "--rounds", "two"])
    assert bad.exit_code == 2 and "--rounds" in bad.output
    none = runner.invoke(main, ["export", str(gra)])
    assert none.exit_code == 2 and "--out" in none.output
    wrong = runner.invoke(main, ["export", str(gra), "-f", "jsonl", "-o", str(out)])
    assert wrong.exit_code == 1 and "a gra run exports as messages" in wrong.output


# -- memory -------------------------------------------------------------------------------------

PEAKS = """
import json, sys, tracemalloc
from pathlib import Path
import orjson, pyarrow
from asyncsynth.export import arrow, export_run

arrow.BATCH_ROWS = 500
folder = Path(sys.argv[1])
peaks = {}
for fmt in ("jsonl", "parquet"):
    for n in (4_000, 20_000):
        source = folder / f"{fmt}{n}" / "out.jsonl"
        source.parent.mkdir()
        with open(source, "wb") as f:
            for i in range(n):
                row = {"id": f"line-{i}", "prompt": f"Question {i}?", "completion": "x" * 200,
                       "usage": {"prompt_tokens": 5, "completion_tokens": 50}, "model": "m",
                       "finish_reason": "stop", "latency_s": 0.01, "attempts": 1}
                f.write(orjson.dumps(row) + b"\\n")
        tracemalloc.start()
        result = export_run(source, fmt, folder / f"{fmt}{n}.out")
        python = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert result.rows == {"train": n}, result.rows
        # the Arrow pool's peak only grows: measured small first, so growth would show
        peaks[f"{fmt}{n}"] = python + pyarrow.default_memory_pool().max_memory()
print(json.dumps(peaks))
"""


def test_export_memory_does_not_grow_with_the_rows(tmp_path: Path) -> None:
    """Five times the rows, the same peak: Python objects and Arrow buffers (a fresh
    process, batches of 500 rows, so that 20,000 rows are 40 batches)."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", PEAKS, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    peaks = json.loads(done.stdout)
    for fmt in ("jsonl", "parquet"):
        small, large = peaks[f"{fmt}4000"], peaks[f"{fmt}20000"]
        assert large < 1.2 * small + (1 << 20), peaks
    # what holding the 20,000 rows would take, for scale: about 20 MB
    assert peaks["jsonl20000"] < 5 << 20
