"""Fine-tune a small sequence classifier: a plain torch loop with dynamic padding."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from asyncsynth.student.config import Example, StudentConfig, TrainingCancelled, resolve_model
from asyncsynth.student.metrics import Metrics, compute_metrics

__all__ = ["TrainedStudent", "train_student"]

_MEGA_BATCHES = 50  # batches per length-sorted chunk
_MAX_GRAD_NORM = 1.0
_META_FILE = "student.json"

_Features = dict[str, list[int]]


def _pick_device(name: str) -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; anything else is passed to torch."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars while loading or saving."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load(
    config: StudentConfig, labels: Sequence[str]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tokenizer from ``config.model``; weights pretrained, or random from ``from_config``."""
    path = resolve_model(config.model)
    label_kw: dict[str, Any] = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:  # decoder-only tokenizers (GPT-2 style)
            tokenizer.pad_token = tokenizer.eos_token
        label_kw["pad_token_id"] = tokenizer.pad_token_id
        if config.from_config is None:
            model = AutoModelForSequenceClassification.from_pretrained(path, **label_kw)
        else:
            kw = {"vocab_size": len(tokenizer), **config.from_config, **label_kw}
            model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(**kw))
    return model, tokenizer


def _encode(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int
) -> list[_Features]:
    """Tokenize without padding; single texts and pairs may be mixed."""
    out: list[_Features | None] = [None] * len(examples)
    for paired in (False, True):
        idx = [i for i, ex in enumerate(examples) if (ex.text_pair is not None) == paired]
        if not idx:
            continue
        texts = [examples[i].text for i in idx]
        pairs = [examples[i].text_pair for i in idx] if paired else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        keys = list(enc.keys())
        for j, i in enumerate(idx):
            out[i] = {k: enc[k][j] for k in keys}
    return [f for f in out if f is not None]


def _collate(
    feats: Sequence[_Features], pad_id: int, pad_to: int | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """Stack features, right-padded to ``pad_to`` or to the longest sequence."""
    width = pad_to or max(len(f["input_ids"]) for f in feats)
    batch: dict[str, torch.Tensor] = {}
    for key in feats[0]:
        fill = pad_id if key == "input_ids" else 0
        rows = [f[key] + [fill] * (width - len(f[key])) for f in feats]
        batch[key] = torch.tensor(rows, dtype=torch.long, device=device)
    return batch


def _train_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, bucket: bool
) -> list[list[int]]:
    """Shuffle; if ``bucket``, sort by length within mega-chunks, then shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not bucket:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    chunk = batch_size * _MEGA_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lengths.__getitem__)
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor of 0-based step ``step``: linear warm-up, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _optimizer(model: torch.nn.Module, config: StudentConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
        (no_decay if skip else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def _train_step(
    model: PreTrainedModel,
    batch: dict[str, torch.Tensor],
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> float:
    """One optimiser step with gradient clipping; returns the batch loss."""
    loss = F.cross_entropy(model(**batch).logits, target)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), _MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _predict_ids(
    model: PreTrainedModel,
    feats: Sequence[_Features],
    pad_id: int,
    config: StudentConfig,
    device: torch.device,
) -> list[int]:
    """Argmax class ids, batched in length order (not shuffled), returned in input order."""
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]), reverse=True)
    pad_to = config.max_length if config.padding == "max_length" else None
    out = [0] * len(feats)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), config.eval_batch_size):
            idx = order[start : start + config.eval_batch_size]
            batch = _collate([feats[i] for i in idx], pad_id, pad_to, device)
            pred = model(**batch).logits.argmax(-1).tolist()
            for i, p in zip(idx, pred, strict=True):
                out[i] = p
    model.train(was_training)
    return out


class TrainedStudent:
    """A fine-tuned classifier with its tokenizer, label names and training history.

    ``history`` holds one dict per dev evaluation; ``best_epoch``/``best_step`` locate the
    restored checkpoint (None without dev); ``train_seconds`` is the wall time of the
    training loop, dev evaluations included, model loading and tokenization excluded.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        labels: Sequence[str],
        config: StudentConfig,
        *,
        history: list[dict[str, Any]],
        best_epoch: int | None,
        best_step: int | None,
        train_seconds: float,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.config = config
        self.history = history
        self.best_epoch = best_epoch
        self.best_step = best_step
        self.train_seconds = train_seconds
        self.device = next(model.parameters()).device

    def predict(self, examples: Sequence[Example]) -> list[str]:
        """Predicted label names, in input order."""
        if not examples:
            return []
        feats = _encode(self.tokenizer, examples, self.config.max_length)
        ids = _predict_ids(self.model, feats, self.tokenizer.pad_token_id, self.config, self.device)
        return [self.labels[i] for i in ids]

    def evaluate(self, examples: Sequence[Example]) -> Metrics:
        """Metrics of :meth:`predict` against the examples' labels."""
        return compute_metrics([ex.label for ex in examples], self.predict(examples), self.labels)

    def save(self, path: str | Path) -> Path:
        """Write model, tokenizer and ``student.json`` (labels, config, history) to ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with _quiet_transformers():
            self.model.save_pretrained(path)
            self.tokenizer.save_pretrained(path)
        meta = {
            "labels": self.labels,
            "config": asdict(self.config),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "train_seconds": self.train_seconds,
        }
        (path / _META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> TrainedStudent:
        """Load a student written by :meth:`save`."""
        path = Path(path)
        meta = json.loads((path / _META_FILE).read_text(encoding="utf-8"))
        known = {f.name for f in fields(StudentConfig)}
        config = StudentConfig(**{k: v for k, v in meta["config"].items() if k in known})
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path)
        model.to(_pick_device(device)).eval()
        return cls(
            model,
            tokenizer,
            meta["labels"],
            config,
            history=meta["history"],
            best_epoch=meta["best_epoch"],
            best_step=meta["best_step"],
            train_seconds=meta["train_seconds"],
        )


class _Best:
    """Best dev score so far, a CPU copy of its weights, and the early-stopping count."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.score = -math.inf
        self.state: dict[str, torch.Tensor] | None = None
        self.epoch: int | None = None
        self.step: int | None = None
        self.bad_evals = 0

    def update(self, score: float, model: torch.nn.Module, epoch: int, step: int) -> bool:
        """Record one evaluation; return whether it strictly improved on the best."""
        if score <= self.score:
            self.bad_evals += 1
            return False
        self.score, self.epoch, self.step, self.bad_evals = score, epoch, step, 0
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    @property
    def stop(self) -> bool:
        """Whether ``patience`` evaluations in a row brought no improvement."""
        return self.patience is not None and self.bad_evals >= self.patience


def _check_labels(examples: Sequence[Example], label_ids: dict[str, int], what: str) -> None:
    unknown = {ex.label for ex in examples} - label_ids.keys()
    if unknown:
        raise ValueError(f"{what} has labels outside {list(label_ids)}: {sorted(unknown)}")


def train_student(
    train: Sequence[Example],
    dev: Sequence[Example],
    labels: Sequence[str],
    config: StudentConfig,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: threading.Event | None = None,
) -> TrainedStudent:
    """Fine-tune ``config.model`` on ``train``, selecting the best checkpoint on ``dev``.

    The model is re-initialised on every call. AdamW with linear warm-up and linear decay
    to zero over exactly ``epochs * ceil(len(train) / batch_size)`` steps; evaluation every
    ``eval_every`` steps (default once per epoch) and at the last step; early stopping after
    ``patience`` evaluations without a strict improvement of ``config.metric``; the best
    weights are restored at the end. With an empty ``dev`` the last weights are kept.

    ``progress`` receives ``{"event": "step", "epoch", "step", "steps", "loss", "lr",
    "seq_len"}`` after each step and each history entry (``"event": "eval"``, with
    ``dev_accuracy``, ``dev_macro_f1``, ``best``, ...) after each evaluation. Setting
    ``cancel`` stops training before the next step with :class:`TrainingCancelled`.
    """
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and unique, got {labels}")
    if not train:
        raise ValueError("train is empty")
    label_ids = {name: i for i, name in enumerate(labels)}
    _check_labels(train, label_ids, "train")
    _check_labels(dev, label_ids, "dev")

    device = _pick_device(config.device)
    torch.manual_seed(config.seed)
    model, tokenizer = _load(config, labels)
    model.to(device).train()
    pad_id = tokenizer.pad_token_id
    pad_to = config.max_length if config.padding == "max_length" else None

    train_feats = _encode(tokenizer, train, config.max_length)
    dev_feats = _encode(tokenizer, dev, config.max_length) if dev else []
    train_y = [label_ids[ex.label] for ex in train]
    dev_gold = [ex.label for ex in dev]
    lengths = [len(f["input_ids"]) for f in train_feats]

    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.epochs * steps_per_epoch
    eval_every = config.eval_every or steps_per_epoch
    optimizer = _optimizer(model, config)
    warmup = round(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(warmup, total))
    rng = random.Random(config.seed)
    started = time.perf_counter()

    history: list[dict[str, Any]] = []
    best = _Best(config.patience)
    loss_sum, loss_steps, step = 0.0, 0, 0
    for epoch in range(1, config.epochs + 1):
        for idx in _train_batches(lengths, config.batch_size, rng, pad_to is None):
            if cancel is not None and cancel.is_set():
                raise TrainingCancelled(f"training cancelled at step {step}/{total}")
            batch = _collate([train_feats[i] for i in idx], pad_id, pad_to, device)
            target = torch.tensor([train_y[i] for i in idx], device=device)
            lr = scheduler.get_last_lr()[0]
            loss_value = _train_step(model, batch, target, optimizer, scheduler)
            step += 1
            loss_sum += loss_value
            loss_steps += 1
            position = {"epoch": epoch, "step": step, "steps": total}
            if progress is not None:
                seq_len = batch["input_ids"].shape[1]
                progress(
                    {"event": "step", **position, "loss": loss_value, "lr": lr, "seq_len": seq_len}
                )
            if not dev or (step % eval_every and step != total):
                continue
            t0 = time.perf_counter()
            pred = [labels[i] for i in _predict_ids(model, dev_feats, pad_id, config, device)]
            m = compute_metrics(dev_gold, pred, labels)
            improved = best.update(getattr(m, config.metric), model, epoch, step)
            entry = {
                "event": "eval",
                **position,
                "loss": loss_sum / loss_steps,
                "lr": lr,
                "dev_accuracy": m.accuracy,
                "dev_macro_f1": m.macro_f1,
                "best": improved,
                "eval_seconds": time.perf_counter() - t0,
                "elapsed": time.perf_counter() - started,
            }
            history.append(entry)
            loss_sum, loss_steps = 0.0, 0
            if progress is not None:
                progress(dict(entry))
            if best.stop:
                break
        if best.stop:
            break

    if best.state is not None:
        model.load_state_dict(best.state)
    model.eval()
    return TrainedStudent(
        model,
        tokenizer,
        labels,
        copy.deepcopy(config),
        history=history,
        best_epoch=best.epoch,
        best_step=best.step,
        train_seconds=time.perf_counter() - started,
    )
