"""The ``[gra]`` config section: committee settings and pipeline settings, validated at load.

Every key is optional except that the pool must be able to fill the roles. Unknown keys
and bad values are refused with the config file, the dotted key and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
from ...engine.errors import ConfigError
from ...structured import MODES

DEFAULT_DOMAINS = (
    "coding",
    "math",
    "QA",
    "reasoning",
    "role-play",
    "language",
    "creative writing",
)
STAGES = ("generate", "refine", "review", "adjudicate", "annotate", "summarize")
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "generate": {"temperature": 0.9},
    "refine": {"temperature": 0.7},
    "review": {"temperature": 0.0},
    "adjudicate": {"temperature": 0.0},
    "annotate": {"temperature": 0.0},
    "summarize": {"temperature": 0.0},
}
"""Request parameters per stage; ``[gra.params.STAGE]`` adds to or overrides them."""
SEED_FIELDS = ("instruction", "response", "domain", "keywords", "summary")
SEED_FORMATS = ("auto", "fields", "alpaca", "sharegpt", "messages")
DEFAULT_INPUT_TEMPLATE = "{{instruction}}\n\n{{input}}"
"""How an Alpaca row's ``input`` joins its ``instruction`` (when the input is not empty)."""
MODES_RUN = ("generate", "refine")
TRUNCATED = ("reject", "review")


def _choice(*choices: str) -> Check:
    def check(value: Any, where: str) -> str:
        if value not in choices:
            raise ConfigError(f"{where}: must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return check


def _fraction(value: Any, where: str) -> float:
    POSITIVE(value, where)
    if value > 1:
        raise ConfigError(f"{where}: must be in (0, 1], got {value!r}")
    return float(value)


def _score(value: Any, where: str) -> float:
    NON_NEGATIVE(value, where)
    if value > 10:
        raise ConfigError(f"{where}: scores run from 0 to 10, got {value!r}")
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: expected a whole number >= 0, got {value!r}")
    return value


def _domains(value: Any, where: str) -> tuple[str, ...]:
    names = NAMES(value, where)
    if len({n.casefold() for n in names}) != len(names):
        raise ConfigError(f"{where}: domains must be distinct")
    return names


@dataclass(frozen=True, slots=True)
class FixedRoles:
    """A fixed role assignment (``assignment = "fixed"``)."""

    generator: str
    reviewers: tuple[str, ...]
    adjudicator: str


@dataclass(frozen=True, slots=True)
class CommitteeSettings:
    """Who reviews and how the committee decides; shared by GRA and S3's ``--review gra``."""

    pool: tuple[str, ...]
    reviewers: int = 3
    tau: float = 8.0
    delta: float = 1.5
    std: str = "population"
    min_reviews: int | None = None
    """Reviews that must be usable for a decision (default: all of them)."""
    assignment: str = "random"
    fixed: FixedRoles | None = None
    allow_shared_roles: bool = False
    structured: str = "auto"
    reasks: int = 1
    request_seed: bool = True
    """Send a per-request ``seed`` derived from the run's seed (reproducible sampling)."""
    review_params: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_PARAMS["review"]))
    adjudicate_params: Mapping[str, Any] = field(
        default_factory=lambda: dict(DEFAULT_PARAMS["adjudicate"])
    )
    prompts_dir: str | None = None
    source: str = "<config>"

    @property
    def needed_reviews(self) -> int:
        return self.min_reviews or self.reviewers

    def distinct_needed(self, *, with_generator: bool) -> int:
        """Distinct models a fully distinct draw needs."""
        return self.reviewers + 1 + int(with_generator)

    def check_pool(self, *, with_generator: bool) -> None:
        """Refuse a pool too small for distinct roles, unless sharing is allowed."""
        if self.assignment == "fixed" or self.allow_shared_roles:
            return
        need = self.distinct_needed(with_generator=with_generator)
        if len(self.pool) >= need:
            return
        roles = ("1 generator + " if with_generator else "") + (
            f"{self.reviewers} reviewer{'s' * (self.reviewers != 1)} + 1 adjudicator"
        )
        raise ConfigError(
            f"{self.source}: gra.pool has {len(self.pool)} model"
            f"{'s' * (len(self.pool) != 1)} ({', '.join(self.pool)}) but every sample needs "
            f"{need} distinct ones ({roles}). Add models to gra.pool, lower gra.reviewers, or "
            "set gra.allow_shared_roles = true to let a model hold several roles of a sample "
            "(reviews by the model that wrote the sample are then possible; the report says so)."
        )

    def check_review_pool(self, config: Config, writer: str | None) -> None:
        """Refuse, naming the reason, a pool that cannot review what ``writer`` wrote.

        The writer (a role or endpoint of ``config``, e.g. S3's ``s3.llm``) never reviews
        its own text: when it is in the pool, the pool must seat the reviewers and the
        adjudicator without it."""
        if self.assignment == "fixed" or self.allow_shared_roles:
            return
        try:
            names = {*config.role(writer), *([writer] if writer is not None else [])}
        except ConfigError:  # no single writer to exclude
            names = set()
        excluded = sorted(names & set(self.pool))
        if not excluded:
            self.check_pool(with_generator=False)
            return
        need = self.distinct_needed(with_generator=True)
        if len(self.pool) >= need:
            return
        raise ConfigError(
            f"{self.source}: gra.pool has {len(self.pool)} models ({', '.join(self.pool)}); "
            f"{excluded[0]!r} wrote the samples and may not review them, which leaves "
            f"{len(self.pool) - 1} for {self.reviewers} reviewer{'s' * (self.reviewers != 1)} "
            "+ 1 adjudicator, all distinct. Add models to gra.pool, lower gra.reviewers, or set "
            "gra.allow_shared_roles = true."
        )

    @classmethod
    def for_review(cls, config: Config, *, writer: str | None) -> CommitteeSettings:
        """The committee of ``config``'s ``[gra]`` section, checked for reviewing samples that
        ``writer`` wrote (see :meth:`check_review_pool`)."""
        committee = GraSettings.from_config(config, check_pool=False).committee
        committee.check_review_pool(config, writer)
        return committee

    @property
    def shares_roles(self) -> bool:
        """Whether some draws will put one model in two roles of a sample."""
        if self.assignment == "fixed":
            fixed = self.fixed
            assert fixed is not None
            names = [fixed.generator, *fixed.reviewers, fixed.adjudicator]
            return len(set(names)) != len(names)
        return len(self.pool) < self.distinct_needed(with_generator=True)

    @classmethod
    def from_config(cls, config: Config) -> CommitteeSettings:
        """The committee part of ``config.sections["gra"]`` (validated like the whole).

        The pool must hold the reviewers and the adjudicator (a generator is not drawn).
        """
        committee = GraSettings.from_config(config, check_pool=False).committee
        committee.check_pool(with_generator=False)
        return committee


@dataclass(frozen=True, slots=True)
class GraSettings:
    """Everything a GRA run needs besides the engine config."""

    committee: CommitteeSettings
    domains: tuple[str, ...] = DEFAULT_DOMAINS
    seed_data: str | None = None
    seed_fields: Mapping[str, str] = field(default_factory=lambda: {f: f for f in SEED_FIELDS})
    seed_limit: int | None = None
    """At most this many seeds: a random subset drawn with the run's seed."""
    seed_format: str = "auto"
    """``fields`` (seed_fields), ``alpaca``, ``sharegpt``, ``messages``, or ``auto`` (the
    first row decides)."""
    seed_input_template: str = DEFAULT_INPUT_TEMPLATE
    domain_map: Mapping[str, str] = field(default_factory=dict)
    """Seed domains renamed to domains of :attr:`domains` (matched case-insensitively)."""
    examples_per_prompt: int = 3
    target: int | None = None
    mode: str = "generate"
    rounds: int = 5
    """Planned rounds: each round aims at ``target / rounds`` accepted samples."""
    round_size: int | None = None
    """Fixed candidates per round (default: sized from the acceptance rate seen so far)."""
    max_rounds: int = 20
    time_budget: float | None = None
    """Seconds after which no new candidate starts: the run finishes the candidates in
    flight and their round, writes its outputs and report, and stops (``time_budget``)."""
    truncated: str = "reject"
    """A response cut at the token limit: ``reject`` it (reason ``truncated``) or ``review``
    it anyway (its row says ``generation.truncated``)."""
    initial_acceptance: float = 0.5
    """Acceptance rate assumed to size the first round."""
    refine_attempts: int = 1
    summarize_early: bool = True
    """Summarise a sample when the committee passes it, not after dedup (same pool; the
    round's end waits for no summaries; a duplicate's summary is wasted)."""
    embedding_model: str = "all-MiniLM-L6-v2"
    dedup_threshold: float = 0.9
    dedup_text: str = "instruction"
    embedding_batch_size: int = 64
    max_in_flight: int | None = None
    params: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_PARAMS.items()}
    )
    seed: int = 0

    @property
    def prompts_dir(self) -> str | None:
        return self.committee.prompts_dir

    def with_overrides(self, **changes: Any) -> GraSettings:
        """A copy with the non-``None`` ``changes`` (command-line flags) applied."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "mode" in changes and changes["mode"] not in MODES_RUN:
            raise ConfigError(f"mode must be one of {', '.join(MODES_RUN)}")
        return replace(self, **changes) if changes else self

    @classmethod
    def from_config(cls, config: Config, *, check_pool: bool = True) -> GraSettings:
        """Parse ``[gra]``; with ``check_pool`` the pool must fill generator, reviewers and
        adjudicator with distinct models (or ``allow_shared_roles`` must be set)."""
        table = dict(config.sections.get("gra", {}))
        try:
            settings = _parse(config, table, "gra")
            if check_pool:
                settings.committee.check_pool(with_generator=True)
            return settings
        except ConfigError as exc:
            message = str(exc)
            if not message.startswith(config.source):
                message = f"{config.source}: {message}"
            raise ConfigError(message) from None


def _fields(value: Any, where: str) -> dict[str, str]:
    table = check_table(TABLE(value, where), dict.fromkeys(SEED_FIELDS, STRING), where)
    return {f: table.get(f, f) for f in SEED_FIELDS}


def _stage_params(value: Any, where: str) -> dict[str, dict[str, Any]]:
    table = check_table(TABLE(value, where), dict.fromkeys(STAGES, check_params), where)
    return {stage: {**DEFAULT_PARAMS[stage], **table.get(stage, {})} for stage in STAGES}


def _domain_map(value: Any, where: str) -> dict[str, str]:
    table = TABLE(value, where)
    for key, target in table.items():
        STRING(target, f"{where}.{key}")
    return {str(k): str(v) for k, v in table.items()}


def _input_template(value: Any, where: str) -> str:
    from ...prompts import parse_prompt

    text = STRING(value, where)
    fields = parse_prompt(text, "seed_input_template", where).fields
    if fields != {"instruction", "input"}:
        raise ConfigError(
            f"{where}: must hold {{{{instruction}}}} and {{{{input}}}} and nothing else, "
            f"got {', '.join(sorted(fields)) or 'no placeholder'}"
        )
    return text


def _fixed(value: Any, where: str) -> dict[str, Any]:
    spec = {"generator": STRING, "reviewers": NAMES, "adjudicator": STRING}
    return check_table(TABLE(value, where), spec, where, required=tuple(spec))


_SPEC: dict[str, Check] = {
    "pool": NAMES,
    "reviewers": POSITIVE_INT,
    "tau": _score,
    "delta": NON_NEGATIVE,
    "std": _choice("population", "sample"),
    "min_reviews": POSITIVE_INT,
    "assignment": _choice("random", "fixed"),
    "fixed": _fixed,
    "allow_shared_roles": BOOLEAN,
    "structured": _choice(*MODES),
    "reasks": _count,
    "request_seed": BOOLEAN,
    "prompts_dir": STRING,
    "domains": _domains,
    "seed_data": STRING,
    "seed_fields": _fields,
    "seed_limit": POSITIVE_INT,
    "seed_format": _choice(*SEED_FORMATS),
    "seed_input_template": _input_template,
    "domain_map": _domain_map,
    "examples_per_prompt": POSITIVE_INT,
    "target": POSITIVE_INT,
    "mode": _choice(*MODES_RUN),
    "rounds": POSITIVE_INT,
    "round_size": POSITIVE_INT,
    "max_rounds": POSITIVE_INT,
    "time_budget": POSITIVE,
    "truncated": _choice(*TRUNCATED),
    "initial_acceptance": _fraction,
    "refine_attempts": POSITIVE_INT,
    "summarize_early": BOOLEAN,
    "embedding_model": STRING,
    "dedup_threshold": _fraction,
    "dedup_text": _choice("instruction", "response", "both"),
    "embedding_batch_size": POSITIVE_INT,
    "max_in_flight": POSITIVE_INT,
    "params": _stage_params,
    "seed": _count,
}


_COMMITTEE_KEYS = (
    "reviewers",
    "tau",
    "delta",
    "std",
    "min_reviews",
    "assignment",
    "allow_shared_roles",
    "structured",
    "reasks",
    "request_seed",
)


def _pool(config: Config, values: dict[str, Any], where: str) -> tuple[str, ...]:
    pool = values.pop("pool", None) or tuple(config.endpoints)
    if not pool:
        raise ConfigError(f"{where}.pool: no models: name roles or endpoints of the config")
    if len(set(pool)) != len(pool):
        raise ConfigError(f"{where}.pool: names must be distinct (each is one model)")
    for name in pool:
        try:
            config.role(name)
        except ConfigError:
            known = ", ".join([*config.roles, *config.endpoints]) or "none"
            raise ConfigError(
                f"{where}.pool: {name!r} is neither a role nor an endpoint (known: {known})"
            ) from None
    return tuple(pool)


def _fixed_roles(values: dict[str, Any], pool: tuple[str, ...], where: str) -> FixedRoles | None:
    table = values.pop("fixed", None)
    if values.get("assignment", "random") != "fixed":
        if table is not None:
            raise ConfigError(f'{where}.fixed: only used with assignment = "fixed"')
        return None
    if table is None:
        raise ConfigError(
            f'{where}.fixed: assignment = "fixed" needs a [gra.fixed] table with '
            "generator, reviewers and adjudicator"
        )
    fixed = FixedRoles(table["generator"], tuple(table["reviewers"]), table["adjudicator"])
    names = [fixed.generator, *fixed.reviewers, fixed.adjudicator]
    for name in names:
        if name not in pool:
            raise ConfigError(f"{where}.fixed: {name!r} is not in gra.pool")
    values.setdefault("reviewers", len(fixed.reviewers))
    if values["reviewers"] != len(fixed.reviewers):
        raise ConfigError(
            f"{where}.reviewers: {values['reviewers']} but gra.fixed.reviewers names "
            f"{len(fixed.reviewers)}"
        )
    if len(set(names)) != len(names) and not values.get("allow_shared_roles", False):
        raise ConfigError(
            f"{where}.fixed: a model holds two roles; name distinct models or set "
            "gra.allow_shared_roles = true"
        )
    return fixed


def _check_domain_map(values: dict[str, Any], where: str) -> None:
    domains = {d.casefold(): d for d in values.get("domains", DEFAULT_DOMAINS)}
    mapped: dict[str, str] = {}
    for source, target in values.get("domain_map", {}).items():
        if target.casefold() not in domains:
            raise ConfigError(
                f"{where}.domain_map.{source}: {target!r} is not one of gra.domains "
                f"({', '.join(domains.values())})"
            )
        mapped[source] = domains[target.casefold()]
    if "domain_map" in values:
        values["domain_map"] = mapped


def _parse(config: Config, table: dict[str, Any], where: str) -> GraSettings:
    values = check_table(table, _SPEC, where)
    base = Path(config.source).parent if Path(config.source).is_file() else Path.cwd()
    pool = _pool(config, values, where)
    fixed = _fixed_roles(values, pool, where)
    _check_domain_map(values, where)
    params = values.pop("params", None) or _stage_params({}, f"{where}.params")
    reviewers = values.get("reviewers", 3)
    if (mr := values.get("min_reviews")) is not None and mr > reviewers:
        raise ConfigError(f"{where}.min_reviews: {mr} is more than the {reviewers} reviewers")
    prompts_dir = values.pop("prompts_dir", None)
    if prompts_dir is not None:
        prompts_dir = str((base / prompts_dir).resolve())
    committee = CommitteeSettings(
        pool=pool,
        fixed=fixed,
        review_params=params["review"],
        adjudicate_params=params["adjudicate"],
        prompts_dir=prompts_dir,
        source=config.source,
        **{k: values.pop(k) for k in _COMMITTEE_KEYS if k in values},
    )
    if (seed_data := values.get("seed_data")) and not seed_data.startswith("hf:"):
        values["seed_data"] = str(base / seed_data)
    return GraSettings(committee=committee, params=params, **values)
