"""Student training throughput: ours vs transformers' Trainer vs the original S3 recipe.

Three setups fine-tune the same model on the same balanced train/dev split of
``examples/s3/sentiment/gold.jsonl`` for the same epochs, learning rate and batch size, in
one run:

* ``ours``: asyncsynth's trainer (pad each batch to its longest sequence, length-bucketed
  batches, AdamW, linear warm-up and decay, gradient clipping);
* ``trainer``: transformers' ``Trainer`` as a practitioner would set it up: dynamic padding
  (``DataCollatorWithPadding``), ``group_by_length=True``, the same optimiser, schedule and
  clipping, no checkpoints, no logging integrations;
* ``official``: the official S3 recipe: every sequence padded to 512 tokens, plain shuffling.

All train without a dev set (no checkpoint selection) and are scored once on the 60 dev rows
afterwards. Throughput is training examples per second of the training loop (wall clock);
CPU seconds per example (model loading included) is printed too, as it is steadier on a
shared machine. ``--repeats N`` runs ours and Trainer N times, interleaved, and prints the
best and the spread; the official recipe (20x slower) runs once, ``--no-official`` skips it.

    HF_HUB_OFFLINE=1 python benchmarks/student_throughput.py --epochs 3 --max-rows 120
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from asyncsynth.student import Example, StudentConfig, train_student

_GOLD = Path(__file__).resolve().parents[1] / "examples" / "s3" / "sentiment" / "gold.jsonl"
_LABELS = ["negative", "positive"]
_DEV_PER_CLASS = 30


def _split(max_rows: int) -> tuple[list[Example], list[Example]]:
    """Balanced split: the last 30 rows of each class are dev, up to ``max_rows`` train."""
    rows = [json.loads(line) for line in _GOLD.read_text(encoding="utf-8").splitlines()]
    by_class = {
        label: [Example(r["text"], label=label) for r in rows if r["label"] == label]
        for label in _LABELS
    }
    dev = [ex for items in by_class.values() for ex in items[-_DEV_PER_CLASS:]]
    pools = [items[:-_DEV_PER_CLASS] for items in by_class.values()]
    train = [ex for pair in zip(*pools, strict=True) for ex in pair][:max_rows]
    return train, dev


def _ours(train: list[Example], dev: list[Example], config: StudentConfig) -> dict[str, Any]:
    cpu = time.process_time()
    student = train_student(train, [], _LABELS, config)
    cpu = time.process_time() - cpu
    return {
        "train_seconds": student.train_seconds,
        "cpu_seconds": cpu,
        "dev_accuracy": student.evaluate(dev).accuracy,
    }


def _hf_trainer(train: list[Example], dev: list[Example], config: StudentConfig) -> dict[str, Any]:
    """The same fine-tuning through transformers' Trainer (group_by_length, dynamic padding)."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from asyncsynth.student import resolve_model

    hf_logging.set_verbosity_error()
    cpu = time.process_time()
    path = resolve_model(config.model)
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(_LABELS))
    ids = {name: i for i, name in enumerate(_LABELS)}

    def features(examples: list[Example]) -> list[dict[str, Any]]:
        enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=config.max_length)
        return [
            {**{k: enc[k][i] for k in enc}, "labels": ids[ex.label]}
            for i, ex in enumerate(examples)
        ]

    accepted = inspect.signature(TrainingArguments.__init__).parameters
    versioned: dict[str, Any] = {}  # transformers 5 renamed two arguments
    if "group_by_length" in accepted:
        versioned.update(group_by_length=True, warmup_ratio=config.warmup_ratio)
    else:
        versioned.update(train_sampling_strategy="group_by_length")
        versioned.update(warmup_steps=config.warmup_ratio)  # a float < 1 is a ratio
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            **versioned,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.lr,
            weight_decay=config.weight_decay,
            num_train_epochs=config.epochs,
            lr_scheduler_type="linear",
            max_grad_norm=1.0,
            seed=config.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=features(train),  # type: ignore[arg-type]
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(dev), 64):
            chunk = dev[start : start + 64]
            batch = tokenizer(
                [ex.text for ex in chunk],
                truncation=True,
                max_length=config.max_length,
                padding=True,
                return_tensors="pt",
            )
            pred = model(**batch).logits.argmax(-1).tolist()
            correct += sum(p == ids[ex.label] for p, ex in zip(pred, chunk, strict=True))
    return {"train_seconds": seconds, "cpu_seconds": cpu, "dev_accuracy": correct / len(dev)}


Setup = Callable[[list[Example], list[Example], StudentConfig], dict[str, Any]]


def _measure(
    name: str, fn: Setup, train: list[Example], dev: list[Example], config: StudentConfig
) -> dict[str, Any]:
    print(f"training {name} ...", flush=True)
    out = fn(train, dev, config)
    n = len(train) * config.epochs
    return {
        "name": name,
        "examples_per_s": n / out["train_seconds"],
        "cpu_seconds_per_example": out["cpu_seconds"] / n,
        **out,
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = sorted(r["examples_per_s"] for r in runs)
    best = max(runs, key=lambda r: r["examples_per_s"])
    cpu = min(r["cpu_seconds_per_example"] for r in runs)
    spread = (rates[-1] - rates[0]) / rates[-1] if len(rates) > 1 else 0.0
    return {**best, "cpu_seconds_per_example": cpu, "runs": len(runs), "spread": spread}


def main() -> None:
    """Parse flags, train the setups, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model", default="minilm", help="HF id, local path or 'minilm'")
    parser.add_argument("--max-rows", type=int, default=120, help="training rows (max 180)")
    parser.add_argument("--batch-size", type=int, default=8, help="8: the official recipe's")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=1, help="runs of ours and Trainer")
    parser.add_argument("--no-official", action="store_true", help="skip the official recipe")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import asyncsynth.student.trainer  # noqa: F401  (import torch/transformers before timing)

    train, dev = _split(args.max_rows)
    config = StudentConfig(
        model=args.model,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        batch_size=args.batch_size,
        max_length=args.max_length,
        patience=None,
    )
    print(
        f"model={args.model} train={len(train)} dev={len(dev)} epochs={args.epochs} "
        f"batch={args.batch_size} repeats={args.repeats}"
    )
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trainer": []}
    for _ in range(args.repeats):
        runs["ours"].append(_measure("ours", _ours, train, dev, config))
        runs["trainer"].append(_measure("trainer", _hf_trainer, train, dev, config))
    results = [_summary(runs["ours"]), _summary(runs["trainer"])]
    if not args.no_official:
        official = replace(config, padding="max_length", eval_batch_size=8)
        results.append(_summary([_measure("official", _ours, train, dev, official)]))

    header = f"{'setup':<9} {'examples/s':>10} {'spread':>7} {'train s':>8} {'cpu s/ex':>9}"
    print(f"\n{header} {'dev acc':>8}")
    for r in results:
        print(
            f"{r['name']:<9} {r['examples_per_s']:>10.2f} {100 * r['spread']:>6.1f}% "
            f"{r['train_seconds']:>8.1f} {r['cpu_seconds_per_example']:>9.3f} "
            f"{r['dev_accuracy']:>8.3f}"
        )
    ours = results[0]
    for other in results[1:]:
        wall = ours["examples_per_s"] / other["examples_per_s"]
        cpu = other["cpu_seconds_per_example"] / ours["cpu_seconds_per_example"]
        print(f"ours vs {other['name']}: {wall:.2f}x examples/s, {cpu:.2f}x less CPU per example")


if __name__ == "__main__":
    main()
