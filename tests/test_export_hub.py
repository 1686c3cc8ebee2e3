"""Dataset cards and the Hub upload, without the network: a loopback stand-in for the
Hub's HTTP API receives what `huggingface_hub` would send to huggingface.co."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from click.testing import CliRunner
from sample_runs import HAS_STUDENT, make_gra_run, make_run_output, make_s3_run, read_rows

from asyncsynth import InputError
from asyncsynth.cli import main
from asyncsynth.config import config_from_dict, load_config
from asyncsynth.export import hub_folder, push_to_hub

datasets = pytest.importorskip("datasets", reason="needs asyncsynth[export]")
huggingface_hub = pytest.importorskip("huggingface_hub", reason="needs asyncsynth[export]")
yaml = pytest.importorskip("yaml")

TOKEN = "hf_standin_token_0123456789"


# -- the stand-in Hub ---------------------------------------------------------------------------


def _known(name: str) -> list[str]:
    path = Path(datasets.__file__).parent / "utils" / "resources" / f"{name}.json"
    return json.loads(path.read_text())


# What the Hub's metadata validation accepts (a subset of its lists, enough for the cards).
LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc0-1.0", "other", "unknown"}
TASKS = {"text-generation", "text-classification", "question-answering"}


def validate_card(content: str) -> list[str]:
    """The errors the Hub would report for a dataset card's YAML."""
    if not content.startswith("---\n"):
        return ["no YAML metadata"]
    meta = yaml.safe_load(content.split("---\n", 2)[1])
    errors = []
    if meta.get("license") not in LICENSES:
        errors.append(f"license: {meta.get('license')!r} is not a license identifier")
    for task in meta.get("task_categories") or []:
        if task not in TASKS:
            errors.append(f"task_categories: {task!r}")
    for size in meta.get("size_categories") or []:
        if size not in _known("size_categories"):
            errors.append(f"size_categories: {size!r}")
    for config in meta.get("configs") or []:
        if "config_name" not in config:
            errors.append("configs: config_name missing")
        for item in config.get("data_files") or []:
            if set(item) != {"split", "path"}:
                errors.append(f"configs.data_files: {item!r}")
    return errors


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)


class StandInHub(ThreadingHTTPServer):
    """The few routes of the Hub's API an upload uses; everything it is sent is kept."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.validated: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(BaseHTTPRequestHandler):
    server: StandInHub

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _record(self) -> str:
        path = urlsplit(self.path).path
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append((self.command, path, headers))
        return path

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._reply(401, {"error": "Invalid credentials"})
            return False
        return True

    def do_GET(self) -> None:
        path = self._record()
        if not self._authorised():
            return
        parts = path.strip("/").split("/")  # api datasets OWNER NAME tree main
        if parts[:2] == ["api", "datasets"] and len(parts) >= 6 and parts[4] == "tree":
            repo = self.server.repos.get(f"{parts[2]}/{parts[3]}")
            if repo is None:
                self._reply(404, {"error": "Repository not found"})
                return
            entries = [
                {"type": "file", "path": p, "size": len(b), "oid": f"oid-{len(b)}"}
                for p, b in sorted(repo.files.items())
            ]
            self._reply(200, entries)
            return
        self._reply(404, {"error": f"no route {path}"})

    def do_POST(self) -> None:
        path = self._record()
        body = self._body()
        if not self._authorised():
            return
        hub = self.server
        if path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}"
            assert data["type"] == "dataset"
            hub.repos.setdefault(repo_id, Repo(private=data.get("visibility") == "private"))
            self._reply(200, {"url": f"{hub.url}/datasets/{repo_id}", "name": repo_id})
            return
        if path == "/api/validate-yaml":
            data = json.loads(body)
            hub.validated.append(data["content"])
            errors = validate_card(data["content"]) if data["repoType"] == "dataset" else []
            if errors:
                self._reply(400, {"errors": [{"message": e} for e in errors]})
            else:
                self._reply(200, {"errors": [], "warnings": []})
            return
        parts = path.strip("/").split("/")  # api datasets OWNER NAME (preupload|commit) main
        repo = hub.repos.get("/".join(parts[2:4])) if len(parts) == 6 else None
        if repo is None:
            self._reply(404, {"error": "Repository not found"})
        elif parts[4] == "preupload":
            files = json.loads(body)["files"]
            modes = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
            ]
            self._reply(200, {"files": modes})
        elif parts[4] == "commit":
            for line in body.splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "file":
                    repo.files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    repo.files.pop(value["path"])
                elif item["key"] == "header":
                    repo.commits.append(value["summary"])
            oid = f"{len(repo.commits):040x}"
            url = f"{hub.url}/datasets/{'/'.join(parts[2:4])}/commit/{oid}"
            self._reply(200, {"commitUrl": url, "commitOid": oid})
        else:
            self._reply(404, {"error": f"no route {path}"})


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[StandInHub]:
    """The stand-in, with huggingface_hub pointed at it (HF_ENDPOINT) and online."""
    server = StandInHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # the suite runs offline (conftest); these tests reach only the loopback stand-in
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token")
    )
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gra(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_gra_run(tmp_path_factory.mktemp("hub-gra"))


@pytest.fixture(scope="module")
def run_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_output(tmp_path_factory.mktemp("hub-run"))


def card_of(folder: Path) -> tuple[dict[str, Any], str]:
    card = huggingface_hub.DatasetCard.load(folder / "README.md")
    return card.data.to_dict(), card.text


def check_metadata(meta: dict[str, Any], folder: Path, rows: dict[str, int], task: str) -> None:
    from datasets.utils.metadata import MetadataConfigs

    assert meta["license"] == "unknown"
    assert meta["task_categories"] == [task]
    assert meta["size_categories"] == ["n<1K"]
    assert "synthetic" in meta["tags"]
    assert validate_card((folder / "README.md").read_text()) == []
    configs = MetadataConfigs.from_dataset_card_data(huggingface_hub.DatasetCardData(**meta))
    assert list(configs) == ["default"]
    splits = {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]}
    assert splits == rows
    # what the Hub's dataset viewer and load_dataset read: the card's configs and files
    loaded = datasets.load_dataset(str(folder), cache_dir=str(folder.parent / "cache"))
    assert {name: len(split) for name, split in loaded.items()} == rows


def test_gra_card_metadata_and_body(gra: Path, tmp_path: Path) -> None:
    secret_config = config_from_dict(
        {
            "endpoints": {
                "qwen": {
                    "base_url": "http://gpu-7.internal.example:8000/v1",
                    "model": "Qwen/Qwen2.5-7B-Instruct",
                    "api_key_env": "MY_SECRET_KEY_VAR",
                    "params": {"temperature": 0.7, "extra_body": {"api_key": "sk-inline"}},
                }
            },
            "gra": {"pool": ["qwen"], "seed_data": "/home/me/private/seeds.jsonl"},
        }
    )
    folder = tmp_path / "hub"
    staged = hub_folder(gra, folder, repo_id="me/gra-small", config=secret_config, min_mu=8)
    accepted = [r for r in read_rows(gra / "accepted.jsonl") if r["mu"] >= 8]
    assert staged.rows == {"train": len(accepted)}
    assert [p.relative_to(folder).as_posix() for p in staged.files] == [
        "README.md",
        "data/train-00000-of-00001.parquet",
    ]
    meta, body = card_of(folder)
    check_metadata(meta, folder, staged.rows, "text-generation")
    assert meta["pretty_name"] == "gra-small"
    report = json.loads((gra / "report.json").read_text())
    assert "arXiv 2504.12322" in body and "@article{gao2025gra" in body
    assert f"{report['candidates']:,} candidates" in body
    for reason, n in report["rejected"].items():
        assert f"| {reason} | {n:,} |" in body
    assert f"{report['tokens']['in']:,} tokens in" in body
    assert "committee mean mu >= 8" in body
    assert '"model": "Qwen/Qwen2.5-7B-Instruct"' in body and "seeds.jsonl" in body
    text = (folder / "README.md").read_text()
    for secret in ("gpu-7.internal", "MY_SECRET_KEY_VAR", "sk-inline", "/home/me/private"):
        assert secret not in text
    from asyncsynth import __version__

    assert f"asyncsynth/) {__version__}" in body


@pytest.mark.skipif(not HAS_STUDENT, reason="needs the [student] extra")
def test_s3_card_has_splits_rounds_and_class_labels(tmp_path: Path) -> None:
    out, config_path = make_s3_run(tmp_path / "s3")
    folder = tmp_path / "hub"
    staged = hub_folder(out, folder, config=load_config(config_path))
    assert set(staged.rows) == {"train", "validation", "test"}
    meta, body = card_of(folder)
    check_metadata(meta, folder, staged.rows, "text-classification")
    label = next(f for f in meta["dataset_info"]["features"] if f["name"] == "label")
    assert label["dtype"]["class_label"]["names"] == {"0": "positive", "1": "negative"}
    assert "arXiv 2310.13671" in body and "## Rounds" in body and "| round 1 |" in body
    assert "refusal 2" in body or "refusal" in json.loads((out / "cleaning.json").read_text())


def test_run_card_counts_models_tokens_and_errors(run_output: Path, tmp_path: Path) -> None:
    folder = tmp_path / "hub"
    staged = hub_folder(run_output, folder)
    rows = read_rows(run_output)
    assert staged.rows == {"train": len(rows)}
    meta, body = card_of(folder)
    check_metadata(meta, folder, staged.rows, "text-generation")
    tokens_in = sum(r["usage"]["prompt_tokens"] for r in rows)
    errors = len(read_rows(run_output.with_name("answers.errors.jsonl")))
    assert f"{tokens_in:,} tokens in" in body
    assert f"{len(rows):,} answers; {errors:,} requests failed" in body
    assert "| sim-model |" in body
    assert "cost unknown" in body


def test_shards_split_a_large_split_as_the_hub_names_them(run_output: Path, tmp_path: Path) -> None:
    staged = hub_folder(run_output, tmp_path / "hub", max_rows=12)
    names = [p.name for p in staged.files[1:]]
    assert names == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    loaded = datasets.load_dataset(str(tmp_path / "hub"), cache_dir=str(tmp_path / "cache"))
    assert loaded["train"]["id"] == [r["id"] for r in read_rows(run_output)]


# -- the upload ---------------------------------------------------------------------------------


def test_push_sends_exactly_the_staged_files_in_one_commit(
    hub: StandInHub, gra: Path, tmp_path: Path
) -> None:
    pushed = push_to_hub(gra, "me/gra-small", private=True, token=TOKEN, rounds="1-2")
    repo = hub.repos["me/gra-small"]
    assert repo.private
    staged = hub_folder(gra, tmp_path / "expected", repo_id="me/gra-small", rounds="1-2")
    expected = {p.relative_to(staged.root).as_posix(): p.read_bytes() for p in staged.files}
    assert repo.files == expected  # byte for byte what hub_folder writes
    assert pushed.files == list(expected)
    assert hub.validated == [expected["README.md"].decode()]
    assert repo.commits == [f"asyncsynth export: {pushed.rows['train']:,} rows"]
    assert pushed.url == f"{hub.url}/datasets/me/gra-small"
    assert pushed.commit_url.startswith(f"{hub.url}/datasets/me/gra-small/commit/")
    routes = [(method, path) for method, path, _ in hub.requests]
    assert routes[0] == ("POST", "/api/repos/create")
    assert ("POST", "/api/datasets/me/gra-small/commit/main") in routes
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for _, _, h in hub.requests)


def test_a_second_push_replaces_the_data_and_deletes_stale_shards(
    hub: StandInHub, run_output: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncsynth.export import arrow

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(arrow, "SHARD_ROWS", 10)
    push_to_hub(run_output, "me/answers")
    repo = hub.repos["me/answers"]
    assert sorted(repo.files) == ["README.md"] + [
        f"data/train-{i:05d}-of-00003.parquet" for i in range(3)
    ]
    monkeypatch.setattr(arrow, "SHARD_ROWS", 1000)
    push_to_hub(run_output, "me/answers")
    assert sorted(repo.files) == ["README.md", "data/train-00000-of-00001.parquet"]
    assert len(repo.commits) == 2


def test_the_token_is_never_written(
    hub: StandInHub, gra: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    push_to_hub(gra, "me/gra-small", license="cc-by-4.0")
    for path in [*tmp_path.rglob("*"), *gra.rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_no_token_is_refused_before_any_request(hub: StandInHub, gra: Path) -> None:
    with pytest.raises(InputError, match="no Hugging Face token: set HF_TOKEN"):
        push_to_hub(gra, "me/gra-small")
    assert hub.requests == []


def test_the_hub_refusing_the_card_is_an_error_naming_why(
    hub: StandInHub, gra: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncsynth.export import HubError

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(HubError, match="is not a license identifier"):
        push_to_hub(gra, "me/gra-small", license="my-own-license")
    assert hub.repos["me/gra-small"].files == {}


def test_cli_pushes_with_the_environment_token(
    hub: StandInHub, gra: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "export",
            str(gra),
            "--push-to-hub",
            "me/cli",
            "--private",
            "-o",
            str(tmp_path / "t.jsonl"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "pushed" in result.output and f"{hub.url}/datasets/me/cli" in result.output
    assert hub.repos["me/cli"].private and (tmp_path / "t.jsonl").exists()
    bad = runner.invoke(main, ["export", str(gra), "--push-to-hub", "no-owner"])
    assert bad.exit_code == 1 and "expected OWNER/NAME" in bad.output
    monkeypatch.delenv("HF_TOKEN")
    missing = runner.invoke(main, ["export", str(gra), "--push-to-hub", "me/cli"])
    assert missing.exit_code == 1 and "no Hugging Face token" in missing.output


def test_cards_give_what_runs_cost(gra: Path, run_output: Path, tmp_path: Path) -> None:
    """Rows' ``cost_usd`` and reports' ``cost`` reach the card: in all, per accepted sample,
    by stage and by model."""
    priced_run = tmp_path / "run" / run_output.name
    shutil.copytree(run_output.parent, priced_run.parent)
    rows = read_rows(run_output)
    for i, row in enumerate(rows):
        row["cost_usd"] = 0.001 * (i + 1)
    priced_run.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    hub_folder(priced_run, tmp_path / "hub-run")
    _, body = card_of(tmp_path / "hub-run")
    assert f"cost ${sum(r['cost_usd'] for r in rows):,.4f}." in body

    priced_gra = tmp_path / "gra"
    shutil.copytree(gra, priced_gra)
    report = json.loads((gra / "report.json").read_text())
    report["cost"] = {
        "total_usd": 1.5,
        "per_accepted_usd": 0.25,
        "by_stage": {"annotate": 0.1, "generate": 0.6, "review": 0.7, "summarize": 0.1},
        "by_model": {"a": 1.0, "b": 0.5},
    }
    (priced_gra / "report.json").write_text(json.dumps(report))
    hub_folder(priced_gra, tmp_path / "hub-gra")
    _, body = card_of(tmp_path / "hub-gra")
    assert "cost $1.5000." in body and "$0.250000 per accepted sample." in body
    assert "| generate |" in body and "| 0.6 |" in body
    assert "| a | 1 |" in body and "| b | 0.5 |" in body
