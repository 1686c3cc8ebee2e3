"""Labelled examples, QA examples and text pools from JSONL files or Hugging Face datasets.

A *source* is either a file path or ``hf:NAME[:SUBSET][:SPLIT]`` (split ``train`` when
left out), loaded with ``datasets`` when it is installed. Files are read by suffix:
``.jsonl`` / ``.json`` (one JSON object a line) or ``.txt`` (one text a line, as the
field ``text``). Relative paths are taken from ``base_dir`` (a config file's folder).

Extractive-QA rows are SQuAD-style: ``context``, ``question`` and ``answers`` (a table
``{"text": [...], "answer_start": [...]}`` as SQuAD and AdversarialQA have it, or a list of
``{"text", "answer_start"}`` tables); every answer must be found at its offset.

Every bad row is refused with an :class:`~asyncsynth.engine.InputError` naming the
source, the line (or row number) and what is wrong: a missing field, an empty text, a
label outside the task's labels, an answer that is not where it says it is.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import ConfigError, InputError
from .io import read_jsonl
from .student.config import Example, QAExample

__all__ = [
    "HF_PREFIX",
    "Fields",
    "QAFields",
    "load_examples",
    "load_qa_examples",
    "load_qa_pool",
    "load_texts",
    "qa_split",
    "resolve_source",
    "stratified_split",
]

HF_PREFIX = "hf:"


@dataclass(frozen=True, slots=True)
class Fields:
    """Which row fields hold the text, the optional second text and the label."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"


@dataclass(frozen=True, slots=True)
class QAFields:
    """Which row fields hold an extractive-QA example's context, question and answers."""

    context: str = "context"
    question: str = "question"
    answers: str = "answers"


def resolve_source(source: str, base_dir: str | os.PathLike[str] | None = None) -> str:
    """``source`` with a relative file path made absolute against ``base_dir``."""
    if source.startswith(HF_PREFIX) or base_dir is None:
        return source
    path = Path(source).expanduser()
    return str(path if path.is_absolute() else Path(base_dir) / path)


def _parse_hf(source: str) -> tuple[str, str | None, str]:
    parts = source[len(HF_PREFIX) :].split(":")
    if not parts[0] or len(parts) > 3 or not all(parts):
        raise ConfigError(f"{source!r}: expected hf:NAME[:SUBSET][:SPLIT]")
    if len(parts) == 1:
        return parts[0], None, "train"
    if len(parts) == 2:
        return parts[0], None, parts[1]
    return parts[0], parts[1], parts[2]


def _hf_rows(source: str, label_field: str | None) -> tuple[Iterator[dict[str, Any]], list[str]]:
    """Rows of a Hugging Face dataset, and the class names of ``label_field`` if it has them."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"{source}: Hugging Face datasets need the 'datasets' package "
            "(pip install 'asyncsynth[datasets]')"
        ) from None
    name, subset, split = _parse_hf(source)
    try:
        dataset = _hf_load(datasets, name, subset, split)
    except ConfigError:
        raise
    except Exception as exc:  # the library raises many kinds; all mean "cannot load"
        raise ConfigError(f"{source}: could not load the dataset: {exc}") from None
    names: list[str] = []
    feature = getattr(dataset, "features", {}).get(label_field) if label_field else None
    if feature is not None and hasattr(feature, "names"):
        names = list(feature.names)
    return iter(dataset), names


def _saved(folder: Path) -> bool:
    """Whether ``folder`` holds a dataset written by ``save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _hf_load(datasets: Any, name: str, subset: str | None, split: str) -> Any:
    """The split of a hub dataset, or of a local ``save_to_disk`` folder of that name.

    A folder at ``NAME`` (or ``NAME/SUBSET``) holding a saved dataset is read with
    ``load_from_disk``, as ``load_dataset`` reads a local folder of data files: handy for
    offline copies (and tests) under the hub's names.
    """
    for folder in (Path(name, subset) if subset else None, Path(name)):
        if folder is not None and folder.is_dir() and _saved(folder):
            saved = datasets.load_from_disk(str(folder))
            if isinstance(saved, datasets.DatasetDict):
                if split not in saved:
                    raise ConfigError(
                        f"hf:{name}: the saved dataset in {folder} has no split {split!r} "
                        f"(splits: {', '.join(saved)})"
                    )
                return saved[split]
            return saved
    return datasets.load_dataset(name, subset, split=split)


def _file_rows(path: str) -> Iterator[tuple[int, Any]]:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: file not found")
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    yield line_no, {"text": line.rstrip("\n")}
        return
    yield from read_jsonl(path)


def _rows(source: str, label_field: str | None) -> tuple[Iterator[tuple[int, Any]], list[str]]:
    if source.startswith(HF_PREFIX):
        rows, names = _hf_rows(source, label_field)
        return enumerate(rows, 1), names
    return _file_rows(source), []


def _objects(source: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(line, row) of every row of ``source`` (no class labels), each a JSON object."""
    rows, _ = _rows(source, None)
    for line, row in rows:
        if not isinstance(row, Mapping):
            raise InputError("a row must be a JSON object", source=source, line=line)
        yield line, row


def _text(row: Mapping[str, Any], field: str, source: str, line: int) -> str:
    if field not in row:
        raise InputError(f"no field {field!r} (fields: {', '.join(row)})", source=source, line=line)
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"field {field!r} must be a non-empty string", source=source, line=line)
    return value


def _label(
    value: Any,
    class_names: Sequence[str],
    label_map: Mapping[str, str] | None,
    source: str,
    line: int,
) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(
            f"label must be a string or an integer, got {value!r}", source=source, line=line
        )
    if value == -1 and class_names:
        raise InputError(
            "label -1: this split hides its labels (as GLUE's test splits do); "
            "use the validation split as the test set",
            source=source,
            line=line,
        )
    keys = [str(value)]
    if isinstance(value, int) and 0 <= value < len(class_names):
        keys.append(class_names[value])
    if label_map:
        for key in keys:
            if key in label_map:
                return label_map[key]
        raise InputError(
            f"label {value!r} is not in label_map (keys: {', '.join(label_map)})",
            source=source,
            line=line,
        )
    return keys[-1]


def load_examples(
    source: str,
    *,
    fields: Fields = Fields(),
    labels: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> list[Example]:
    """Every labelled row of ``source`` as an :class:`Example`.

    A row's label is ``label_map[str(value)]`` when a map is given (a Hugging Face class
    label may also be mapped by its class name), else the class name of an integer class
    label, else the value as a string. With ``labels`` given, any other label is refused.
    """
    source = resolve_source(source, base_dir)
    rows, class_names = _rows(source, fields.label)
    known = set(labels) if labels is not None else None
    examples: list[Example] = []
    for line, row in rows:
        if not isinstance(row, Mapping):
            raise InputError("a row must be a JSON object", source=source, line=line)
        text = _text(row, fields.text, source, line)
        pair = _text(row, fields.text_pair, source, line) if fields.text_pair else None
        if fields.label not in row:
            raise InputError(f"no field {fields.label!r}", source=source, line=line)
        label = _label(row[fields.label], class_names, label_map, source, line)
        if known is not None and label not in known:
            raise InputError(
                f"label {label!r} is not one of the task's labels ({', '.join(labels or ())}); "
                "map it with label_map",
                source=source,
                line=line,
            )
        examples.append(Example(text=text, text_pair=pair, label=label))
    if not examples:
        raise InputError("no examples", source=source)
    return examples


def load_texts(
    source: str, *, field: str = "text", base_dir: str | os.PathLike[str] | None = None
) -> list[str]:
    """The non-empty texts in ``field`` of every row of ``source`` (a context pool)."""
    source = resolve_source(source, base_dir)
    texts: list[str] = []
    for line, row in _objects(source):
        texts.append(_text(row, field, source, line))
    if not texts:
        raise InputError("no texts", source=source)
    return texts


def stratified_split(
    examples: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split into (rest, held_out) with about ``fraction`` of every label held out.

    Seeded and independent of input order within a label; every label with at least two
    examples keeps at least one on each side (when ``0 < fraction < 1``). Both parts keep
    the input order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    by_label: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_label.setdefault(ex.label, []).append(i)
    held: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        n = round(len(idx) * fraction)
        if fraction > 0 and len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        order = sorted(idx, key=lambda i: (examples[i].text, examples[i].text_pair or "", i))
        random.Random(f"{seed}:split:{label}").shuffle(order)
        held.update(order[:n])
    rest = [ex for i, ex in enumerate(examples) if i not in held]
    return rest, [ex for i, ex in enumerate(examples) if i in held]


def _answers(
    value: Any, context: str, source: str, line: int
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """SQuAD answers (a table of lists, or a list of tables), checked against the context."""
    if isinstance(value, Mapping):
        texts, starts = value.get("text"), value.get("answer_start")
        if isinstance(texts, str) and isinstance(starts, int):
            texts, starts = [texts], [starts]
    elif isinstance(value, list) and all(isinstance(a, Mapping) for a in value):
        texts = [a.get("text") for a in value]
        starts = [a.get("answer_start") for a in value]
    else:
        texts = starts = None
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise InputError(
            'answers must be {"text": [...], "answer_start": [...]} of equal lengths',
            source=source,
            line=line,
        )
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str) or not text or isinstance(start, bool):
            raise InputError(f"bad answer {text!r}", source=source, line=line)
        if not isinstance(start, int) or context[start : start + len(text)] != text:
            raise InputError(
                f"answer {text!r} is not at offset {start} of the context", source=source, line=line
            )
    return tuple(texts), tuple(starts)


def load_qa_examples(
    source: str,
    *,
    fields: QAFields = QAFields(),
    base_dir: str | os.PathLike[str] | None = None,
) -> list[QAExample]:
    """Every SQuAD-style row of ``source`` (context, question, at least one answer)."""
    source = resolve_source(source, base_dir)
    examples: list[QAExample] = []
    for line, row in _objects(source):
        context = _text(row, fields.context, source, line)
        question = _text(row, fields.question, source, line)
        if fields.answers not in row:
            raise InputError(f"no field {fields.answers!r}", source=source, line=line)
        texts, starts = _answers(row[fields.answers], context, source, line)
        if not texts:
            raise InputError("a question needs at least one answer", source=source, line=line)
        examples.append(QAExample(context, question, texts, starts))
    if not examples:
        raise InputError("no examples", source=source)
    return examples


def load_qa_pool(
    source: str,
    *,
    fields: QAFields = QAFields(),
    base_dir: str | os.PathLike[str] | None = None,
) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """Contexts for QA seed synthesis, each with its answer spans (none: the LLM picks one).

    A row may hold ``answers`` as a QA example does; a context repeated over several rows
    (SQuAD has one row per question) keeps one entry per distinct answer.
    """
    source = resolve_source(source, base_dir)
    pool: dict[tuple[str, str, int], tuple[str, tuple[str, ...], tuple[int, ...]]] = {}
    for line, row in _objects(source):
        context = _text(row, fields.context, source, line)
        if row.get(fields.answers) is None:
            pool.setdefault((context, "", -1), (context, (), ()))
            continue
        texts, starts = _answers(row[fields.answers], context, source, line)
        for text, start in zip(texts[:1], starts[:1], strict=True):
            pool.setdefault((context, text, start), (context, (text,), (start,)))
    if not pool:
        raise InputError("no contexts", source=source)
    return list(pool.values())


def qa_split(
    examples: Sequence[QAExample], fraction: float, seed: int
) -> tuple[list[QAExample], list[QAExample]]:
    """Split QA examples into (rest, held_out), whole contexts on one side.

    Questions about one context stay together (a held-out question whose context trained
    the student would flatter it); about ``fraction`` of the contexts are held out, seeded
    and independent of input order. Both parts keep the input order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    contexts = sorted({ex.context for ex in examples})
    random.Random(f"{seed}:split:qa").shuffle(contexts)
    n = round(len(contexts) * fraction)
    if fraction > 0 and len(contexts) >= 2:
        n = min(max(n, 1), len(contexts) - 1)
    held = set(contexts[:n])
    rest = [ex for ex in examples if ex.context not in held]
    return rest, [ex for ex in examples if ex.context in held]
