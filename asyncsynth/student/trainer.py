"""Fine-tune a small student: transformers' ``Trainer`` with what S3 needs around it.

``benchmarks/student_throughput.py`` measured ``Trainer`` (dynamic padding,
``group_by_length``) faster on the same model and data than the plain torch loop this
module used to hold (README, "Student training speed"), and it brings mixed precision,
TF32 and DDP. So the training loop is ``Trainer``'s; this module adds what it lacks:

- the best dev checkpoint kept **in memory** (a CPU copy of its weights, no checkpoint
  files) and restored at the end; early stopping after ``patience`` evaluations without
  a strict improvement;
- **cancellation** from another thread (the S3 event loop): setting ``cancel`` stops
  before the next step with :class:`TrainingCancelled`;
- **progress** after every step (loss, learning rate, padded width) and every evaluation;
- our schedule: linear warm-up, then linear decay to zero over exactly the steps run;
- one code path for sequence classification (single texts and pairs) and extractive QA
  (start/end logits, long contexts in overlapping windows).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import tempfile
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
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
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
    if hardware.device == "cuda" and hardware.precision != "fp32":
        dtype = torch.bfloat16 if hardware.precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


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


class _StudentTrainer(Trainer):
    """``Trainer`` with our schedule, and the loss, LR and width of every step recorded."""

    def __init__(self, *args: Any, warmup: Callable[[int], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._warmup = warmup
        self.last: dict[str, Any] = {}

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        if self.lr_scheduler is None:
            schedule = _linear_schedule(self._warmup(num_training_steps), num_training_steps)
            optimizer = optimizer or self.optimizer
            assert optimizer is not None
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return self.lr_scheduler

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        lr = self.lr_scheduler.get_last_lr()[0] if self.lr_scheduler is not None else 0.0
        width = int(inputs["input_ids"].shape[1])
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.last = {"loss": float(loss.item()), "lr": lr, "seq_len": width}
        return loss


class _Watch(TrainerCallback):
    """Cancellation, progress, evaluation and the in-memory best checkpoint."""

    def __init__(
        self,
        run: _Fit,
        cancel: threading.Event | None,
        progress: Progress | None,
    ) -> None:
        self.run = run
        self.cancel = cancel
        self.progress = progress
        self.trainer: _StudentTrainer | None = None
        self.loss_sum, self.loss_steps = 0.0, 0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise TrainingCancelled(
                f"training cancelled at step {state.global_step}/{state.max_steps}"
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.trainer is not None
        run, step, total = self.run, state.global_step, state.max_steps
        per_epoch = max(1, math.ceil(total / run.config.epochs))
        position = {"epoch": (step - 1) // per_epoch + 1, "step": step, "steps": total}
        last = self.trainer.last
        self.loss_sum += last["loss"]
        self.loss_steps += 1
        if self.progress is not None:
            self.progress({"event": "step", **position, **last})
        eval_every = run.config.eval_every or per_epoch
        if not run.dev or (step % eval_every and step != total):
            return
        entry = run.evaluate(kwargs["model"], position, self.loss_sum / self.loss_steps, last)
        self.loss_sum, self.loss_steps = 0.0, 0
        if self.progress is not None:
            self.progress(dict(entry))
        if run.best.stop:
            control.should_training_stop = True


class _Fit:
    """One training run: the head, the data, the hardware and what was learnt."""

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
        self, model: Any, position: dict[str, int], loss: float, last: dict[str, Any]
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        predicted = _predict(self.head, model, self.tokenizer, self.dev, self.config, self.hardware)
        metrics = self.head.score(self.dev, predicted)
        summary = metrics.summary()
        score = float(summary[self.config.metric])
        improved = self.best.update(score, model, position["epoch"], position["step"])
        entry = {
            "event": "eval",
            **position,
            "loss": loss,
            "lr": last["lr"],
            **{f"dev_{k}": v for k, v in summary.items() if k != "n"},
            "best": improved,
            "eval_seconds": time.perf_counter() - t0,
            "elapsed": time.perf_counter() - self.started,
        }
        self.history.append(entry)
        return entry


def _arguments(output_dir: str, config: StudentConfig, hardware: Hardware) -> TrainingArguments:
    import inspect

    accepted = inspect.signature(TrainingArguments.__init__).parameters
    versioned: dict[str, Any] = {}  # transformers 5 renamed the sampler switch
    bucket = config.padding == "longest"
    if "train_sampling_strategy" in accepted:
        versioned["train_sampling_strategy"] = "group_by_length" if bucket else "random"
    else:
        versioned["group_by_length"] = bucket
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_grad_norm=_MAX_GRAD_NORM,
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=hardware.device == "cpu",
        bf16=hardware.precision == "bf16",
        fp16=hardware.precision == "fp16",
        **versioned,
    )


def _set_tf32(enabled: bool) -> None:
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


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
    padding = "max_length" if config.padding == "max_length" else "longest"
    collator = DataCollatorWithPadding(tokenizer, padding=padding, max_length=config.max_length)
    watch = _Watch(run, cancel, progress)
    with tempfile.TemporaryDirectory(prefix="asyncsynth-student-") as out, _quiet_transformers():
        trainer = _StudentTrainer(
            model=model,
            args=_arguments(out, config, hardware),
            train_dataset=inputs,
            data_collator=collator,
            callbacks=[watch],
            warmup=lambda total: (
                config.warmup_steps
                if config.warmup_steps is not None
                else round(config.warmup_ratio * total)
            ),
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        watch.trainer = trainer
        run.started = time.perf_counter()
        trainer.train()
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
        return cls(
            model,
            tokenizer,
            config,
            history=meta["history"],
            best_epoch=meta["best_epoch"],
            best_step=meta["best_step"],
            train_seconds=meta["train_seconds"],
        )


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

        return train_distributed(  # type: ignore[return-value]
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
    if config.metric not in QA_METRICS:
        raise ValueError(f"a QA student is chosen on exact_match or f1, not {config.metric}")
    if config.doc_stride >= config.max_length // 2:
        raise ValueError(
            f"doc_stride ({config.doc_stride}) must be below half of max_length "
            f"({config.max_length}): the windows would overlap more than they advance"
        )
    if _distributed(config):
        from asyncsynth.student.distributed import train_distributed

        return train_distributed(  # type: ignore[return-value]
            "qa", train, dev, None, config, progress=progress, cancel=cancel
        )
    model, tokenizer, run = _fit(_QA(), train, dev, config, progress, cancel)
    return TrainedQAStudent(model, tokenizer, copy.deepcopy(config), **_done(run))


def _done(run: _Fit) -> dict[str, Any]:
    return {
        "history": run.history,
        "best_epoch": run.best.epoch,
        "best_step": run.best.step,
        "train_seconds": time.perf_counter() - run.started,
    }
