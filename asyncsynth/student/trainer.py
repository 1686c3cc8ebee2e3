"""Fine-tune a small student: a plain torch loop, measured faster than ``Trainer``.

``benchmarks/student_throughput.py`` runs this loop, transformers' ``Trainer`` (dynamic
padding, ``group_by_length``) and the official S3 recipe on the same model and data: with
the fused AdamW kernel this loop trains faster than ``Trainer`` (README, "Student training
speed"), so it stays ours. What it does:

- a fresh model per call, seeded; AdamW (fused where torch has it), linear warm-up then
  linear decay to zero over exactly the steps run, gradient clipping;
- dynamic padding: each batch padded to its longest sequence, batches length-bucketed;
- mixed precision on CUDA (bf16, or fp16 with a gradient scaler) and TF32, as
  :func:`~asyncsynth.student.device.choose_hardware` decides; several processes under
  ``torchrun`` train one replica each (DDP: gradients all-reduced, each process a slice
  of every global batch);
- the best dev checkpoint kept **in memory** (a CPU copy of its weights) and restored at
  the end; early stopping after ``patience`` evaluations without a strict improvement;
- **cancellation** from another thread (the S3 event loop) before the next step, and
  **progress** after every step and evaluation;
- one code path for sequence classification (single texts and pairs) and extractive QA
  (start/end logits, long contexts in overlapping windows).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from asyncsynth.student.config import (
    CLASSIFICATION_METRICS,
    QA_METRICS,
    Example,
    QAExample,
    StudentConfig,
    TrainingCancelled,
    resolve_model,
)
from asyncsynth.student.device import Hardware, choose_hardware
from asyncsynth.student.metrics import Metrics, QAMetrics, compute_metrics, compute_qa_metrics
from asyncsynth.student.qa import best_spans, encode_qa

__all__ = ["TrainedQAStudent", "TrainedStudent", "train_qa_student", "train_student"]

_MAX_GRAD_NORM = 1.0
_MEGA_BATCHES = 50  # batches per length-sorted chunk
_META_FILE = "student.json"

Progress = Callable[[dict[str, Any]], None]


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


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor of 0-based step ``step``: linear warm-up, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _autocast(hardware: Hardware) -> contextlib.AbstractContextManager[Any]:
    """Half-precision autocast for the forward pass (fp32: none)."""
    if hardware.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if hardware.precision == "bf16" else torch.float16
    return torch.autocast(hardware.device, dtype=dtype)


# -- what differs between tasks -----------------------------------------------------------


class _Head(Protocol):
    """A student's task: its model class, its inputs, its predictions and its metrics."""

    kind: str

    def load(self, path: str, config: StudentConfig) -> tuple[PreTrainedModel, Any]: ...

    def inputs(self, tokenizer: Any, examples: Sequence[Any], config: StudentConfig) -> list[Any]:
        """Training inputs, each with its target."""
        ...

    def predict(
        self, model: PreTrainedModel, tokenizer: Any, examples: Sequence[Any], config: StudentConfig
    ) -> list[str]: ...

    def score(self, examples: Sequence[Any], predicted: Sequence[str]) -> Metrics | QAMetrics: ...


def _from_pretrained_or_config(
    auto: Any, path: str, config: StudentConfig, **kw: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:  # decoder-only tokenizers (GPT-2 style)
            tokenizer.pad_token = tokenizer.eos_token
        kw["pad_token_id"] = tokenizer.pad_token_id
        if config.from_config is None:
            model = auto.from_pretrained(path, **kw)
        else:
            settings = {"vocab_size": len(tokenizer), **config.from_config, **kw}
            model = auto.from_config(AutoConfig.for_model(**settings))
    return model, tokenizer


def _batches(lengths: Sequence[int], size: int) -> Iterator[list[int]]:
    """Indices in descending length, ``size`` at a time (inference: the least padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _pad(
    tokenizer: PreTrainedTokenizerBase, items: Sequence[dict[str, Any]], config: StudentConfig
) -> dict[str, torch.Tensor]:
    padding = "max_length" if config.padding == "max_length" else "longest"
    with _quiet_transformers():
        batch = tokenizer.pad(
            list(items), padding=padding, max_length=config.max_length, return_tensors="pt"
        )
    return dict(batch)


class _Classification:
    kind = "classification"

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.ids = {name: i for i, name in enumerate(self.labels)}

    def load(self, path: str, config: StudentConfig) -> tuple[PreTrainedModel, Any]:
        return _from_pretrained_or_config(
            AutoModelForSequenceClassification,
            path,
            config,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id=dict(self.ids),
        )

    def encode(
        self, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int
    ) -> list[dict[str, Any]]:
        """Tokenize without padding; single texts and pairs may be mixed."""
        out: list[dict[str, Any] | None] = [None] * len(examples)
        for paired in (False, True):
            idx = [i for i, ex in enumerate(examples) if (ex.text_pair is not None) == paired]
            if not idx:
                continue
            texts = [examples[i].text for i in idx]
            pairs = [examples[i].text_pair for i in idx] if paired else None
            enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
            for j, i in enumerate(idx):
                out[i] = {k: enc[k][j] for k in enc}
        return [f for f in out if f is not None]

    def inputs(
        self, tokenizer: Any, examples: Sequence[Example], config: StudentConfig
    ) -> list[dict[str, Any]]:
        feats = self.encode(tokenizer, examples, config.max_length)
        return [{**f, "labels": self.ids[ex.label]} for f, ex in zip(feats, examples, strict=True)]

    def predict(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        examples: Sequence[Example],
        config: StudentConfig,
    ) -> list[str]:
        feats = self.encode(tokenizer, examples, config.max_length)
        out = [0] * len(feats)
        device = next(model.parameters()).device
        for idx in _batches([len(f["input_ids"]) for f in feats], config.eval_batch_size):
            batch = _pad(tokenizer, [feats[i] for i in idx], config)
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            for i, p in zip(idx, logits.argmax(-1).tolist(), strict=True):
                out[i] = p
        return [self.labels[i] for i in out]

    def score(self, examples: Sequence[Example], predicted: Sequence[str]) -> Metrics:
        return compute_metrics([ex.label for ex in examples], predicted, self.labels)


class _QA:
    kind = "qa"

    def load(self, path: str, config: StudentConfig) -> tuple[PreTrainedModel, Any]:
        return _from_pretrained_or_config(AutoModelForQuestionAnswering, path, config)

    def inputs(
        self, tokenizer: Any, examples: Sequence[QAExample], config: StudentConfig
    ) -> list[dict[str, Any]]:
        return encode_qa(
            tokenizer, examples, config.max_length, config.doc_stride, targets=True
        ).inputs

    def predict(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        examples: Sequence[QAExample],
        config: StudentConfig,
    ) -> list[str]:
        feats = encode_qa(tokenizer, examples, config.max_length, config.doc_stride, targets=False)
        starts: list[list[float]] = [[] for _ in feats.inputs]
        ends: list[list[float]] = [[] for _ in feats.inputs]
        device = next(model.parameters()).device
        lengths = [len(f["input_ids"]) for f in feats.inputs]
        for idx in _batches(lengths, config.eval_batch_size):
            batch = _pad(tokenizer, [feats.inputs[i] for i in idx], config)
            out = model(**{k: v.to(device) for k, v in batch.items()})
            s_logits, e_logits = out.start_logits.float().cpu(), out.end_logits.float().cpu()
            for row, i in enumerate(idx):
                starts[i] = s_logits[row, : lengths[i]].tolist()
                ends[i] = e_logits[row, : lengths[i]].tolist()
        return best_spans(feats, starts, ends, examples, config.max_answer_length)

    def score(self, examples: Sequence[QAExample], predicted: Sequence[str]) -> QAMetrics:
        return compute_qa_metrics(predicted, [ex.answers for ex in examples])


def _predict(
    head: _Head,
    model: PreTrainedModel,
    tokenizer: Any,
    examples: Sequence[Any],
    config: StudentConfig,
    hardware: Hardware,
) -> list[str]:
    if not examples:
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _autocast(hardware):
            return head.predict(model, tokenizer, examples, config)
    finally:
        model.train(was_training)


# -- the training loop --------------------------------------------------------------------


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


class _Fit:
    """One training run: the head, the dev data, the hardware and what was learnt."""

    def __init__(
        self, head: _Head, dev: Sequence[Any], config: StudentConfig, hardware: Hardware
    ) -> None:
        self.head = head
        self.dev = list(dev)
        self.config = config
        self.hardware = hardware
        self.best = _Best(config.patience)
        self.history: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.tokenizer: Any = None

    def evaluate(
        self, model: Any, position: dict[str, int], loss: float, lr: float
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        predicted = _predict(self.head, model, self.tokenizer, self.dev, self.config, self.hardware)
        summary = self.head.score(self.dev, predicted).summary()
        improved = self.best.update(
            float(summary[self.config.metric]), model, position["epoch"], position["step"]
        )
        entry = {
            "event": "eval",
            **position,
            "loss": loss,
            "lr": lr,
            **{f"dev_{k}": v for k, v in summary.items() if k != "n"},
            "best": improved,
            "eval_seconds": time.perf_counter() - t0,
            "elapsed": time.perf_counter() - self.started,
        }
        self.history.append(entry)
        return entry


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


def _collate(
    feats: Sequence[dict[str, Any]], pad_id: int, pad_to: int | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """Stack features, sequences right-padded to ``pad_to`` or to the longest one."""
    width = pad_to or max(len(f["input_ids"]) for f in feats)
    batch: dict[str, torch.Tensor] = {}
    for key in feats[0]:
        values = [f[key] for f in feats]
        if isinstance(values[0], list):
            fill = pad_id if key == "input_ids" else 0
            values = [v + [fill] * (width - len(v)) for v in values]
        batch[key] = torch.tensor(values, dtype=torch.long, device=device)
    return batch


def _optimizer(model: torch.nn.Module, config: StudentConfig) -> torch.optim.Optimizer:
    """AdamW, no decay on biases and norms; the fused kernel where torch has one."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
        (no_decay if skip else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    try:  # fused: one kernel for all parameters (measured 1.45x the step rate on CPU)
        return torch.optim.AdamW(groups, lr=config.lr, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=config.lr)


class _Stepper:
    """One optimiser step: autocast in half precision, a loss scaler for fp16, clipping."""

    def __init__(self, model: Any, optimizer: Any, scheduler: Any, hardware: Hardware) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.hardware = hardware
        self.scaler = torch.amp.GradScaler(hardware.device) if hardware.scaler else None

    def __call__(self, batch: dict[str, torch.Tensor]) -> float:
        with _autocast(self.hardware):
            loss = self.model(**batch).loss
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), _MAX_GRAD_NORM)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.item())


def _set_tf32(enabled: bool) -> None:
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def _loop(
    run: _Fit,
    model: Any,
    inputs: list[dict[str, Any]],
    pad_id: int,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> None:
    """The training loop: epochs of shuffled (length-bucketed) batches, evaluations, stops."""
    config, hardware = run.config, run.hardware
    group = _group()
    device = _device(hardware, group)
    module = model.to(device)
    module.train()
    trained = _wrap(module, device, group)
    world = group[1] if group else 1
    pad_to = config.max_length if config.padding == "max_length" else None
    lengths = [len(f["input_ids"]) for f in inputs]
    per_epoch = math.ceil(len(inputs) / (config.batch_size * world))
    total = config.epochs * per_epoch
    warmup = (
        config.warmup_steps
        if config.warmup_steps is not None
        else round(config.warmup_ratio * total)
    )
    optimizer = _optimizer(module, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(warmup, total))
    stepper = _Stepper(trained, optimizer, scheduler, hardware)
    rng = random.Random(config.seed)
    eval_every = config.eval_every or per_epoch
    loss_sum, loss_steps, step = 0.0, 0, 0
    run.started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        for idx in _train_batches(lengths, config.batch_size * world, rng, pad_to is None):
            if cancel is not None and cancel.is_set():
                raise TrainingCancelled(f"training cancelled at step {step}/{total}")
            mine = idx[group[0] :: world] if group else idx
            batch = _collate([inputs[i] for i in mine or idx[:1]], pad_id, pad_to, device)
            lr = float(scheduler.get_last_lr()[0])
            loss = stepper(batch)
            step += 1
            loss_sum, loss_steps = loss_sum + loss, loss_steps + 1
            position = {"epoch": epoch, "step": step, "steps": total}
            if progress is not None:
                width = int(batch["input_ids"].shape[1])
                progress({"event": "step", **position, "loss": loss, "lr": lr, "seq_len": width})
            if not run.dev or (step % eval_every and step != total):
                continue
            entry = run.evaluate(module, position, loss_sum / loss_steps, lr)
            loss_sum, loss_steps = 0.0, 0
            if progress is not None:
                progress(dict(entry))
            if run.best.stop:
                return


def _group() -> tuple[int, int] | None:
    """(rank, world size) when running under ``torchrun`` with several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _device(hardware: Hardware, group: tuple[int, int] | None) -> torch.device:
    if hardware.device == "cuda" and group is not None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(hardware.device)


def _wrap(module: Any, device: torch.device, group: tuple[int, int] | None) -> Any:
    """The model as trained: wrapped for DDP when there are several processes."""
    if group is None:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def _fit(
    head: _Head,
    train: Sequence[Any],
    dev: Sequence[Any],
    config: StudentConfig,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> tuple[PreTrainedModel, Any, _Fit]:
    """Train a freshly initialised model of ``head`` on ``train``, choosing on ``dev``."""
    if not train:
        raise ValueError("train is empty")
    hardware = choose_hardware(config.device, config.precision, config.tf32)
    _set_tf32(hardware.tf32)
    torch.manual_seed(config.seed)
    model, tokenizer = head.load(resolve_model(config.model), config)
    run = _Fit(head, dev, config, hardware)
    run.tokenizer = tokenizer
    inputs = head.inputs(tokenizer, train, config)
    _loop(run, model, inputs, tokenizer.pad_token_id, progress, cancel)
    if run.best.state is not None:
        model.load_state_dict(run.best.state)
    model.eval()
    return model, tokenizer, run


# -- trained students ---------------------------------------------------------------------


class _Student:
    """A fine-tuned model with its tokenizer, config and training history.

    ``history`` holds one dict per dev evaluation; ``best_epoch``/``best_step`` locate the
    restored checkpoint (None without dev); ``train_seconds`` is the wall time of the
    training loop, dev evaluations included, model loading and tokenization excluded.
    """

    head: _Head

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: StudentConfig,
        *,
        history: list[dict[str, Any]],
        best_epoch: int | None,
        best_step: int | None,
        train_seconds: float,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.history = history
        self.best_epoch = best_epoch
        self.best_step = best_step
        self.train_seconds = train_seconds
        self.device = next(model.parameters()).device
        self.hardware = choose_hardware(
            self.device.type if self.device.type in ("cpu", "cuda", "mps") else "auto",
            config.precision if self.device.type == "cuda" else "fp32",
            config.tf32,
        )

    def _predict(self, examples: Sequence[Any]) -> list[str]:
        return _predict(self.head, self.model, self.tokenizer, examples, self.config, self.hardware)

    def _meta(self) -> dict[str, Any]:
        return {
            "task": self.head.kind,
            "config": asdict(self.config),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "train_seconds": self.train_seconds,
        }

    def save(self, path: str | Path) -> Path:
        """Write model, tokenizer and ``student.json`` (config, history) to ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with _quiet_transformers():
            self.model.save_pretrained(path)
            self.tokenizer.save_pretrained(path)
        (path / _META_FILE).write_text(json.dumps(self._meta(), indent=2), encoding="utf-8")
        return path

    @staticmethod
    def _read(path: Path, auto: Any, device: str) -> tuple[dict[str, Any], Any, Any, Any]:
        meta = json.loads((path / _META_FILE).read_text(encoding="utf-8"))
        known = {f.name for f in fields(StudentConfig)}
        config = StudentConfig(**{k: v for k, v in meta["config"].items() if k in known})
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = auto.from_pretrained(path)
        hardware = choose_hardware(device, "fp32", config.tf32)
        model.to(hardware.device).eval()
        return meta, config, model, tokenizer


_TRAINED = ("history", "best_epoch", "best_step", "train_seconds")


def _trained(meta: dict[str, Any]) -> dict[str, Any]:
    """What a saved student's ``student.json`` says about its training."""
    return {key: meta[key] for key in _TRAINED}


class TrainedStudent(_Student):
    """A fine-tuned classifier; ``labels`` are its class names."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        labels: Sequence[str],
        config: StudentConfig,
        **kw: Any,
    ) -> None:
        super().__init__(model, tokenizer, config, **kw)
        self.labels = list(labels)
        self.head = _Classification(self.labels)

    def predict(self, examples: Sequence[Example]) -> list[str]:
        """Predicted label names, in input order."""
        return self._predict(examples)

    def evaluate(self, examples: Sequence[Example]) -> Metrics:
        """Metrics of :meth:`predict` against the examples' labels."""
        return compute_metrics([ex.label for ex in examples], self.predict(examples), self.labels)

    def _meta(self) -> dict[str, Any]:
        return {**super()._meta(), "labels": self.labels}

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> TrainedStudent:
        """Load a student written by :meth:`save`."""
        meta, config, model, tokenizer = cls._read(
            Path(path), AutoModelForSequenceClassification, device
        )
        return cls(model, tokenizer, meta["labels"], config, **_trained(meta))


class TrainedQAStudent(_Student):
    """A fine-tuned extractive-QA model: it answers with a span of the context."""

    head = _QA()

    def predict(self, examples: Sequence[QAExample]) -> list[str]:
        """The answer span of each example ("" when no span fits), in input order."""
        return self._predict(examples)

    def evaluate(self, examples: Sequence[QAExample]) -> QAMetrics:
        """SQuAD exact match and F1 of :meth:`predict` against the examples' answers."""
        return compute_qa_metrics(self.predict(examples), [ex.answers for ex in examples])

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> TrainedQAStudent:
        """Load a QA student written by :meth:`save`."""
        meta, config, model, tokenizer = cls._read(
            Path(path), AutoModelForQuestionAnswering, device
        )
        return cls(model, tokenizer, config, **_trained(meta))


def _check_labels(examples: Sequence[Example], label_ids: dict[str, int], what: str) -> None:
    unknown = {ex.label for ex in examples} - label_ids.keys()
    if unknown:
        raise ValueError(f"{what} has labels outside {list(label_ids)}: {sorted(unknown)}")


def _distributed(config: StudentConfig) -> bool:
    """Whether to hand training to ``torchrun`` (not when already inside it)."""
    return config.processes > 1 and "LOCAL_RANK" not in os.environ


def train_student(
    train: Sequence[Example],
    dev: Sequence[Example],
    labels: Sequence[str],
    config: StudentConfig,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> TrainedStudent:
    """Fine-tune ``config.model`` as a classifier on ``train``, choosing the checkpoint on ``dev``.

    The model is re-initialised on every call. AdamW with linear warm-up and linear decay
    to zero over exactly ``epochs * ceil(len(train) / batch_size)`` steps; evaluation every
    ``eval_every`` steps (default once per epoch) and at the last step; early stopping after
    ``patience`` evaluations without a strict improvement of ``config.metric``; the best
    weights are restored at the end. With an empty ``dev`` the last weights are kept.

    ``progress`` receives ``{"event": "step", "epoch", "step", "steps", "loss", "lr",
    "seq_len"}`` after each step and each history entry (``"event": "eval"``, with
    ``dev_accuracy``, ``dev_macro_f1``, ``best``, ...) after each evaluation. Setting
    ``cancel`` stops training before the next step with :class:`TrainingCancelled`.
    ``config.processes > 1`` trains in ``torchrun`` child processes (DDP).
    """
    config.check_local()
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and unique, got {labels}")
    if config.metric not in CLASSIFICATION_METRICS:
        raise ValueError(f"a classifier is chosen on accuracy or macro_f1, not {config.metric}")
    head = _Classification(labels)
    _check_labels(train, head.ids, "train")
    _check_labels(dev, head.ids, "dev")
    if _distributed(config):
        from asyncsynth.student.distributed import train_distributed

        return train_distributed(
            "classification", train, dev, labels, config, progress=progress, cancel=cancel
        )
    model, tokenizer, run = _fit(head, train, dev, config, progress, cancel)
    return TrainedStudent(model, tokenizer, labels, copy.deepcopy(config), **_done(run))


def train_qa_student(
    train: Sequence[QAExample],
    dev: Sequence[QAExample],
    config: StudentConfig,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> TrainedQAStudent:
    """Fine-tune ``config.model`` for extractive QA, as :func:`train_student` does a classifier.

    Any ``AutoModelForQuestionAnswering`` (the paper: distilbert-base-uncased) with a fast
    tokenizer; ``config.metric`` is ``f1`` or ``exact_match`` (SQuAD's, on ``dev``);
    evaluation history entries carry ``dev_exact_match`` and ``dev_f1``.
    """
    config.check_local()
    if config.metric not in QA_METRICS:
        raise ValueError(f"a QA student is chosen on exact_match or f1, not {config.metric}")
    if config.doc_stride >= config.max_length // 2:
        raise ValueError(
            f"doc_stride ({config.doc_stride}) must be below half of max_length "
            f"({config.max_length}): the windows would overlap more than they advance"
        )
    if _distributed(config):
        from asyncsynth.student.distributed import train_distributed

        return train_distributed("qa", train, dev, None, config, progress=progress, cancel=cancel)
    model, tokenizer, run = _fit(_QA(), train, dev, config, progress, cancel)
    return TrainedQAStudent(model, tokenizer, copy.deepcopy(config), **_done(run))


def _done(run: _Fit) -> dict[str, Any]:
    return {
        "history": run.history,
        "best_epoch": run.best.epoch,
        "best_step": run.best.step,
        "train_seconds": time.perf_counter() - run.started,
    }
