"""S3's student on a Ray task (``student.placement = "ray"``) on a real local Ray cluster.

With ``num_gpus = 0`` (this machine has no GPU) the same seed gives the same run as the
local placement: the same metrics, errors and saved student, only the wall times differ.
Both run the same CPU kernels in one thread order (the Ray worker, like the driver here,
trains with the torch threads of one process), so they agree exactly, not within a
tolerance. Without ray installed the placement is refused before anything runs.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_s3 import TINY_STUDENT, make_config, needs_student, run, sentiment_reply, sentiment_s3

from asyncsynth.engine import ConfigError
from asyncsynth.pipelines.events import PipelineEvent
from asyncsynth.pipelines.s3 import s3_settings
from asyncsynth.testing import SimServer

WALL = {"train_seconds", "eval_seconds", "seconds", "elapsed", "elapsed_s"}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster (2 CPUs, loopback) for this module; shut down after it."""
    import ray

    folder = tempfile.mkdtemp(prefix="asp", dir="/tmp")  # Ray's socket paths stay short
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=folder,
        )
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def _without_wall(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_wall(v) for k, v in value.items() if k not in WALL}
    if isinstance(value, list):
        return [_without_wall(v) for v in value]
    return value


def _files(folder: Path) -> dict[str, Any]:
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
def test_a_ray_placement_gives_the_local_run(tmp_path: Path, ray_cluster: str) -> None:
    outs, trained = {}, {}
    for placement in ("local", "ray"):
        student = {**TINY_STUDENT, "placement": placement}
        if placement == "ray":
            student["num_gpus"] = 0
        table = sentiment_s3(tmp_path, rounds=1, save_student=True, student=student)
        events: list[PipelineEvent] = []
        with SimServer(reply=sentiment_reply) as sim:
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
def test_a_remote_error_arrives_whole(tmp_path: Path, ray_cluster: str) -> None:
    student = {**TINY_STUDENT, "placement": "ray", "num_gpus": 0}
    student["from_config"] = {"model_type": "no-such-model"}
    table = sentiment_s3(tmp_path, rounds=1, student=student)
    with SimServer(reply=sentiment_reply) as sim, pytest.raises(ValueError) as caught:
        run(make_config(sim.url, table), tmp_path / "out")
    assert type(caught.value).__module__.split(".")[0] != "ray"
    assert "no-such-model" in str(caught.value)


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
