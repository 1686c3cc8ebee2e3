"""Student training throughput: dynamic padding + length buckets vs the original S3 recipe.

Both sides fine-tune the same model on the same balanced train/dev split of
``examples/s3/sentiment/gold.jsonl`` for the same epochs and learning rate:

* ours: pad each batch to its longest sequence, length-bucketed batches;
* official S3: pad every sequence to 512 tokens, batch size 8, plain shuffling.

Both train without a dev set (no checkpoint selection) and are scored once on the 60 dev
rows afterwards. Throughput is training examples per second of the training loop (wall
clock); CPU seconds per example (model loading included) is printed too, as it is steadier
on a shared machine.
The default (120 rows, 3 epochs) takes about 4 minutes on 2 idle CPU cores, nearly all of it
on the official side; ``--max-rows 180 --epochs 5`` gives a more telling accuracy.

    HF_HUB_OFFLINE=1 python benchmarks/student_throughput.py --epochs 3 --max-rows 120
"""

from __future__ import annotations

import argparse
import json
import os
import time
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


def _run(
    name: str, train: list[Example], dev: list[Example], config: StudentConfig
) -> dict[str, Any]:
    print(f"training {name}: {config.padding} padding, batch {config.batch_size} ...", flush=True)
    cpu = time.process_time()
    student = train_student(train, [], _LABELS, config)
    cpu = time.process_time() - cpu
    started = time.perf_counter()
    accuracy = student.evaluate(dev).accuracy
    return {
        "name": name,
        "examples_per_s": len(train) * config.epochs / student.train_seconds,
        "train_seconds": student.train_seconds,
        "cpu_seconds_per_example": cpu / (len(train) * config.epochs),
        "eval_seconds": time.perf_counter() - started,
        "dev_accuracy": accuracy,
    }


def main() -> None:
    """Parse flags, train both setups, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model", default="minilm", help="HF id, local path or 'minilm'")
    parser.add_argument("--max-rows", type=int, default=120, help="training rows (max 180)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="batch size of ours; the default 8 matches the official side step for step",
    )
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import asyncsynth.student.trainer  # noqa: F401  (import torch/transformers before timing)

    train, dev = _split(args.max_rows)
    common: dict[str, Any] = {
        "model": args.model,
        "epochs": args.epochs,
        "lr": args.lr,
        "seed": args.seed,
    }
    print(f"model={args.model} train={len(train)} dev={len(dev)} epochs={args.epochs}")
    results = [
        _run("ours", train, dev, StudentConfig(batch_size=args.batch_size, **common)),
        _run(
            "official-s3",
            train,
            dev,
            StudentConfig(
                batch_size=8, eval_batch_size=8, max_length=512, padding="max_length", **common
            ),
        ),
    ]
    header = f"{'setup':<12} {'examples/s':>10} {'train s':>8} {'cpu s/ex':>9} {'eval s':>7}"
    print(f"\n{header} {'dev acc':>8}")
    for r in results:
        print(
            f"{r['name']:<12} {r['examples_per_s']:>10.2f} {r['train_seconds']:>8.1f} "
            f"{r['cpu_seconds_per_example']:>9.3f} {r['eval_seconds']:>7.1f} "
            f"{r['dev_accuracy']:>8.3f}"
        )
    ours, official = results
    wall = ours["examples_per_s"] / official["examples_per_s"]
    cpu = official["cpu_seconds_per_example"] / ours["cpu_seconds_per_example"]
    print(f"\nspeed-up: {wall:.1f}x examples/s (wall clock), {cpu:.1f}x CPU time per example")
    print(
        f"dev accuracy: ours {ours['dev_accuracy']:.3f} vs official {official['dev_accuracy']:.3f}"
    )


if __name__ == "__main__":
    main()
