"""The ``[s3]`` config table: what S3 synthesizes, from which gold data, with which student.

Validated with :func:`asyncsynth.config.check_table`, so unknown keys and bad values are
refused with the config file, the dotted key and the reason. Paths are relative to the
config file's folder.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ...config import (
    BOOLEAN,
    NAMES,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    STRING,
    TABLE,
    Check,
    Config,
    check_params,
    check_table,
)
from ...engine import ConfigError
from ...student.config import QA_METRICS, StudentConfig
from .cleaning import CleaningSettings

__all__ = ["LabelSpec", "RationaleSettings", "S3Settings", "load_s3_settings", "s3_settings"]

TASKS = ("single", "pair", "qa")
REVIEWS = ("none", "gra")
BASELINES = ("none", "gold", "zerogen", "no_extrapolation")
GOLD_DUPLICATES = ("report", "remove")
DEFAULT_PROMPT_SETS = {"single": "generic", "pair": "generic-pair", "qa": "generic-qa"}


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """A label: its name (as in the gold data), what it means, and how prompts say it."""

    name: str
    description: str
    phrase: str
    """The words put in the paper's prompts for this label ("positive", "not in")."""


@dataclass(frozen=True, slots=True)
class RationaleSettings:
    count: int = 5
    """Reasons asked for in one request."""
    samples: int = 2
    """Requests per label (temperature sampling)."""


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Everything an S3 run needs besides the endpoints (see the README for each key)."""

    labels: tuple[LabelSpec, ...]
    gold: str
    task: Literal["single", "pair", "qa"] = "single"
    text_field: str = "text"
    text_pair_field: str | None = None
    label_field: str = "label"
    question_field: str = "question"
    answers_field: str = "answers"
    label_map: Mapping[str, str] | None = None
    dev: str | None = None
    dev_fraction: float = 0.3
    test: str | None = None
    contexts: str | None = None
    context_field: str = "text"
    llm: str | None = None
    seed: int = 0
    seed_size: int = 200
    k: int = 2
    rationales: RationaleSettings = RationaleSettings()
    rounds: int = 2
    extrapolate_per_error: int = 1
    temperature: float = 0.9
    params: Mapping[str, Any] = field(default_factory=dict)
    request_seed: bool = True
    review: Literal["none", "gra"] = "none"
    review_seed: bool = False
    prompt_set: str = "generic"
    prompts_dir: str | None = None
    text_kind: str = "text"
    context_kind: str = "passage"
    max_failures: float = 0.1
    save_student: bool = True
    baseline: Literal["none", "gold", "zerogen", "no_extrapolation"] = "none"
    gold_duplicates: Literal["report", "remove"] = "report"
    cleaning: CleaningSettings = field(default_factory=CleaningSettings)
    student: StudentConfig = field(default_factory=StudentConfig)
    base_dir: str | None = None
    """Folder that relative paths are taken from (the config file's)."""

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def path(self, source: str | None) -> str | None:
        """A data source with a relative path resolved against :attr:`base_dir`."""
        from ...data import resolve_source

        return None if source is None else resolve_source(source, self.base_dir)

    def fingerprint(self) -> dict[str, Any]:
        """The settings as plain JSON (for ``state.json``: a resumed run must match them)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "base_dir":
                continue
            if f.name == "labels":
                value = {lab.name: [lab.description, lab.phrase] for lab in value}
            elif f.name in ("rationales", "cleaning", "student"):
                value = {g.name: _plain(getattr(value, g.name)) for g in fields(value)}
            out[f.name] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# -- checks ---------------------------------------------------------------------------------


def _choice(*choices: str) -> Check:
    def check(value: Any, where: str) -> Any:
        if value not in choices:
            raise ConfigError(f"{where}: must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


def _integer(minimum: int) -> Check:
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
        return value

    return check


def _fraction(*, upper_open: bool) -> Check:
    def check(value: Any, where: str) -> float:
        value = NON_NEGATIVE(value, where)
        if value > 1 or (upper_open and value == 1):
            bound = "[0, 1)" if upper_open else "[0, 1]"
            raise ConfigError(f"{where}: must be in {bound}, got {value!r}")
        return float(value)

    return check


def _jaccard(value: Any, where: str) -> float:
    value = POSITIVE(value, where)
    if value > 1:
        raise ConfigError(f"{where}: must be in (0, 1], got {value!r}")
    return float(value)


def _string_table(value: Any, where: str) -> dict[str, str]:
    table = TABLE(value, where)
    for key, item in table.items():
        STRING(item, f"{where}.{key}")
    return dict(table)


def _labels(value: Any, where: str) -> tuple[LabelSpec, ...]:
    table = TABLE(value, where)
    if len(table) < 2:
        raise ConfigError(f"{where}: needs at least two labels, got {len(table)}")
    out = []
    for name, spec in table.items():
        at = f"{where}.{name}"
        if isinstance(spec, str):
            out.append(LabelSpec(name, STRING(spec, at), name))
            continue
        values = check_table(
            TABLE(spec, at),
            {"description": STRING, "phrase": STRING},
            at,
            required=("description",),
        )
        out.append(LabelSpec(name, values["description"], values.get("phrase", name)))
    return tuple(out)


def _rationales(value: Any, where: str) -> RationaleSettings:
    spec = {"count": POSITIVE_INT, "samples": POSITIVE_INT}
    return RationaleSettings(**check_table(TABLE(value, where), spec, where))


def _cleaning(value: Any, where: str) -> CleaningSettings:
    if value == "none":
        return CleaningSettings.none()
    if isinstance(value, str):
        raise ConfigError(f'{where}: a table of cleaning settings, or "none"; got {value!r}')
    spec: dict[str, Check] = {
        "strip": BOOLEAN,
        "builtin_refusals": BOOLEAN,
        "dedup": BOOLEAN,
        "min_chars": _integer(0),
        "max_chars": POSITIVE_INT,
        "near_duplicate": _jaccard,
        "shingle": POSITIVE_INT,
        "drop_truncated": BOOLEAN,
        "refusal_patterns": NAMES,
    }
    values = check_table(TABLE(value, where), spec, where)
    for i, pattern in enumerate(values.get("refusal_patterns", ())):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"{where}.refusal_patterns[{i}]: not a regular expression: {exc}"
            ) from None
    return CleaningSettings(**values)


def _type_check(hint: Any) -> Check:
    """A check for one StudentConfig field from its type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = _type_check(next(a for a in args if a is not type(None)))

        def nullable(value: Any, where: str) -> Any:
            return None if value is False else inner(value, where)

        return nullable
    if origin is Literal:
        return _choice(*args)
    if hint is bool:
        return BOOLEAN
    if hint is int:
        return _integer(0)
    if hint is float:
        return lambda value, where: float(NON_NEGATIVE(value, where))
    if hint is str:
        return STRING
    if origin is dict or hint is dict:
        return TABLE
    return lambda value, where: value


def _student(value: Any, where: str) -> dict[str, Any]:
    hints = typing.get_type_hints(StudentConfig)
    spec = {f.name: _type_check(hints[f.name]) for f in fields(StudentConfig)}
    return check_table(TABLE(value, where), spec, where)


_SPEC: dict[str, Check] = {
    "task": _choice(*TASKS),
    "labels": _labels,
    "gold": STRING,
    "text_field": STRING,
    "text_pair_field": STRING,
    "label_field": STRING,
    "question_field": STRING,
    "answers_field": STRING,
    "label_map": _string_table,
    "dev": STRING,
    "dev_fraction": _fraction(upper_open=True),
    "test": STRING,
    "contexts": STRING,
    "context_field": STRING,
    "llm": STRING,
    "seed": _integer(0),
    "seed_size": POSITIVE_INT,
    "k": _integer(0),
    "rationales": _rationales,
    "rounds": _integer(0),
    "extrapolate_per_error": POSITIVE_INT,
    "temperature": NON_NEGATIVE,
    "params": check_params,
    "request_seed": BOOLEAN,
    "review": _choice(*REVIEWS),
    "review_seed": BOOLEAN,
    "prompt_set": STRING,
    "prompts_dir": STRING,
    "text_kind": STRING,
    "context_kind": STRING,
    "max_failures": _fraction(upper_open=False),
    "save_student": BOOLEAN,
    "baseline": _choice(*BASELINES),
    "gold_duplicates": _choice(*GOLD_DUPLICATES),
    "cleaning": _cleaning,
    "student": _student,
}


def _task_defaults(values: dict[str, Any], where: str) -> None:
    """Defaults and consistency checks that depend on the task."""
    task = values.get("task", "single")
    values.setdefault("prompt_set", DEFAULT_PROMPT_SETS[task])
    values.setdefault("k", 2 if task == "single" else 0)
    if task == "pair":
        values.setdefault("text_pair_field", "text_pair")
        values.setdefault("text_kind", "sentence")
        if "contexts" not in values:
            raise ConfigError(f"{where}.contexts: a pair task needs a pool of contexts")
    elif task == "qa":
        values.setdefault("context_field", "context")
        values.setdefault("text_kind", "question")
        for key in ("labels", "label_field", "label_map", "text_pair_field"):
            if key in values:
                raise ConfigError(f"{where}.{key}: an extractive QA task has no labels")
        if values.get("k"):
            raise ConfigError(f"{where}.k: an extractive QA task has no rationales (k = 0)")
        values["labels"] = ()
    elif "contexts" in values:
        raise ConfigError(f"{where}.contexts: only pair and qa tasks draw contexts")
    elif "text_pair_field" in values:
        raise ConfigError(f"{where}.text_pair_field: only a pair task has a second text")
    if task != "qa" and "labels" not in values:
        raise ConfigError(f"{where}.labels: required for a {task} task")


def _baseline(values: dict[str, Any], where: str) -> None:
    """A baseline of the paper is S3 with steps left out (see the README)."""
    baseline = values.get("baseline", "none")
    if baseline == "zerogen":  # no rationales, no extrapolation: label-conditioned prompts
        values.update(k=0, rounds=0)
    elif baseline in ("no_extrapolation", "gold"):  # gold: the student on gold data, no LLM
        values["rounds"] = 0


def _student_config(values: dict[str, Any], where: str) -> StudentConfig:
    student = values.pop("student", {})
    student.setdefault("seed", values.get("seed", 0))
    if values.get("task") == "qa":
        student.setdefault("metric", "f1")
        if student["metric"] not in QA_METRICS:
            raise ConfigError(f"{where}.student.metric: QA students use f1 or exact_match")
    elif student.get("metric", "accuracy") in QA_METRICS:
        raise ConfigError(f"{where}.student.metric: classifiers are chosen on accuracy or macro_f1")
    try:
        return StudentConfig(**student)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.student: {exc}") from None


def s3_settings(
    table: Mapping[str, Any], *, where: str = "s3", base_dir: str | None = None
) -> S3Settings:
    """Validate an ``[s3]`` table (as parsed from TOML) into :class:`S3Settings`."""
    values = check_table(table, _SPEC, where, required=("gold",))
    _task_defaults(values, where)
    if values.get("dev") is not None and "dev_fraction" in values:
        raise ConfigError(f"{where}.dev_fraction: give either dev or dev_fraction, not both")
    _baseline(values, where)
    student = _student_config(values, where)
    return S3Settings(**values, student=student, base_dir=base_dir)


def load_s3_settings(config: Config) -> S3Settings:
    """The ``[s3]`` section of ``config``, validated; errors name the config file."""
    table = config.sections.get("s3")
    where = f"{config.source}: s3"
    if table is None:
        raise ConfigError(f"{config.source}: no [s3] section")
    source = Path(config.source)
    base_dir = str(source.resolve().parent) if source.is_file() else None
    settings = s3_settings(table, where=where, base_dir=base_dir)
    if settings.llm is not None or len(config.roles) != 1:
        try:
            config.role(settings.llm)
        except ConfigError as exc:
            raise ConfigError(f"{where}.llm: {exc}") from None
    if settings.review == "gra":  # a pool that cannot review s3.llm's text is refused now
        from ..gra.settings import CommitteeSettings

        CommitteeSettings.for_review(config, writer=settings.llm)
    return settings
