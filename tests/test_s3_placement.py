"""S3's student on a Ray task (``student.placement = "ray"``) on a real local Ray cluster.

With ``num_gpus = 0`` (this machine has no GPU) the same seed gives the same run as the
local placement, byte for byte: the same data, errors, metrics, training history and
saved weights; only the wall times differ. A Ray worker of one CPU runs torch on one
thread, so the local run here does too (on more threads, sums are added in another order
and the losses differ in their last digits). Without ray installed, asking for a GPU the
cluster lacks, or naming an address nothing answers, the run is refused before its
folder exists, and from the CLI with exit 2.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_s3 import (
    LABELS,
    STUDENT_TOML,
    TINY_STUDENT,
    make_config,
    needs_student,
    run,
    sentiment_reply,
    sentiment_s3,
)

from asyncsynth.cli import main
from asyncsynth.engine import ConfigError
from asyncsynth.pipelines.events import PipelineEvent
from asyncsynth.pipelines.s3 import s3_settings
from asyncsynth.student import StudentConfig
from asyncsynth.testing import SimServer

WALL = {"train_seconds", "eval_seconds", "seconds", "elapsed", "elapsed_s"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.ray  # first in the module: the cluster of the tests below is not started yet
def test_an_address_nothing_answers_is_refused(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    student = {**TINY_STUDENT, "placement": "ray", "num_gpus": 0, "ray_address": address}
    config = make_config("http://127.0.0.1:9", sentiment_s3(tmp_path, student=student))
    with pytest.raises(ConfigError, match=f"cannot connect to the Ray cluster at {address}"):
        run(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _without_wall(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_wall(v) for k, v in value.items() if k not in WALL}
    if isinstance(value, list):
        return [_without_wall(v) for v in value]
    return value


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch on ``n`` threads meanwhile (a Ray worker of one CPU runs it on one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _files(folder: Path) -> dict[str, Any]:
    """Every file of a run folder that says what it made (JSON without wall times)."""
    out: dict[str, Any] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if path.suffix == ".json":
            out[name] = _without_wall(json.loads(path.read_text()))
        elif path.suffix in (".jsonl", ".safetensors", ".txt"):
            out[name] = path.read_bytes()
    return out


@needs_student
@pytest.mark.ray("torch", "transformers")
@pytest.mark.slow
def test_a_ray_placement_gives_the_local_run(tmp_path: Path, ray_cluster: str) -> None:
    outs, trained = {}, {}
    for placement in ("local", "ray"):
        student = {**TINY_STUDENT, "placement": placement}
        if placement == "ray":
            student["num_gpus"] = 0
        table = sentiment_s3(tmp_path, rounds=1, save_student=True, student=student)
        events: list[PipelineEvent] = []
        with SimServer(reply=sentiment_reply) as sim, torch_threads(1):
            report = run(make_config(sim.url, table), tmp_path / placement, on_event=events.append)
        outs[placement] = (_without_wall(report), _files(tmp_path / placement))
        trained[placement] = [
            _without_wall(e.data) for e in events if e.kind == "train" and e.step == "final"
        ]
    (local_report, local_files), (ray_report, ray_files) = outs["local"], outs["ray"]
    assert ray_report["final"] == local_report["final"]
    assert ray_report["rounds"] == local_report["rounds"]
    assert "final/student/model.safetensors" in ray_files
    assert set(ray_files) == set(local_files)
    for name in local_files:
        if name not in ("state.json", "report.json"):  # their fingerprints name the placement
            assert ray_files[name] == local_files[name], name
    assert trained["ray"] and trained["ray"] == trained["local"]  # progress came back live


@needs_student
@pytest.mark.ray("torch", "transformers")
@pytest.mark.slow
def test_a_remote_error_arrives_whole(tmp_path: Path, ray_cluster: str) -> None:
    student = {**TINY_STUDENT, "placement": "ray", "num_gpus": 0}
    student["from_config"] = {"model_type": "no-such-model"}
    table = sentiment_s3(tmp_path, rounds=1, student=student)
    with SimServer(reply=sentiment_reply) as sim, pytest.raises(ValueError) as caught:
        run(make_config(sim.url, table), tmp_path / "out")
    assert type(caught.value).__module__.split(".")[0] != "ray"
    assert "no-such-model" in str(caught.value)


@pytest.mark.ray
@pytest.mark.slow
def test_a_gpu_the_cluster_lacks_is_refused_before_anything_runs(
    tmp_path: Path, ray_cluster: str
) -> None:
    table = sentiment_s3(tmp_path, student={**TINY_STUDENT, "placement": "ray"})  # 1 GPU
    with SimServer(reply=sentiment_reply) as sim:
        with pytest.raises(ConfigError, match=r"has 0 GPUs and student.num_gpus asks for 1"):
            run(make_config(sim.url, table), tmp_path / "out")
        assert sim.stats.requests == 0
    assert not (tmp_path / "out").exists()


def _toml(tmp_path: Path, url: str, student: str) -> Path:
    sentiment_s3(tmp_path)  # writes the gold and test files
    labels = "\n".join(f'{k} = "{v}"' for k, v in LABELS.items())
    path = tmp_path / "s3.toml"
    path.write_text(
        f"""
[endpoints.llm]
base_url = "{url}"
model = "sim"

[s3]
gold = "gold.jsonl"
test = "test.jsonl"
dev_fraction = 0.3
seed_size = 40
rounds = 1
text_kind = "movie review"

[s3.labels]
{labels}

[s3.student]
{STUDENT_TOML}
{student}
""",
        encoding="utf-8",
    )
    return path


@needs_student
@pytest.mark.ray("torch", "transformers")
@pytest.mark.slow
def test_the_cli_trains_on_the_cluster_and_refuses_a_missing_gpu(
    tmp_path: Path, ray_cluster: str
) -> None:
    cli = CliRunner()
    with SimServer(reply=sentiment_reply) as sim:
        gpu = _toml(tmp_path, sim.url, f'placement = "ray"\nray_address = "{ray_cluster}"')
        refused = cli.invoke(main, ["s3", str(gpu), "--out", str(tmp_path / "gpu"), "-q"])
        assert refused.exit_code == 2, refused.output
        assert "num_gpus asks for 1" in refused.output and sim.stats.requests == 0
        cpu = _toml(
            tmp_path, sim.url, f'placement = "ray"\nnum_gpus = 0\nray_address = "{ray_cluster}"'
        )
        done = cli.invoke(main, ["s3", str(cpu), "--out", str(tmp_path / "cpu"), "-q"])
        assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "cpu" / "report.json").read_text())
    assert report["final"]["test"] is not None
    assert (tmp_path / "cpu" / "final/student/model.safetensors").is_file()


def test_a_ray_placement_without_ray_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as without the extra
    student = {**TINY_STUDENT, "placement": "ray"}
    config = make_config("http://127.0.0.1:9", sentiment_s3(tmp_path, student=student))
    with pytest.raises(
        ConfigError, match=r'placement = "ray" needs the ray extra.*asyncsynth\[ray\]'
    ):
        run(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("student", "message"),
    [
        ({"placement": "gpu"}, "placement: must be one of local, ray"),
        ({"num_gpus": 1}, 'num_gpus needs placement = "ray"'),
        ({"ray_address": "ray://h:10001"}, 'ray_address needs placement = "ray"'),
        ({"placement": "ray", "num_gpus": -1}, "student.num_gpus"),
        ({"placement": "ray", "gpus": 1}, "gpus"),
    ],
)
def test_placement_keys_are_checked(tmp_path: Path, student: dict[str, Any], message: str) -> None:
    table = sentiment_s3(tmp_path, student=student)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        s3_settings(table)


def test_a_ray_placement_defaults_to_one_gpu(tmp_path: Path) -> None:
    settings = s3_settings(sentiment_s3(tmp_path, student={"placement": "ray"}))
    assert settings.student.gpus == 1.0 and settings.student.ray_address is None
    zero = s3_settings(sentiment_s3(tmp_path, student={"placement": "ray", "num_gpus": 0}))
    assert zero.student.gpus == 0.0


def test_train_student_refuses_a_ray_placement() -> None:
    with pytest.raises(ValueError, match='placement = "ray" is for S3 runs'):
        StudentConfig(placement="ray").check_local()
    StudentConfig().check_local()
