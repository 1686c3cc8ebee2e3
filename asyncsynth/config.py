"""The one config model: endpoints, roles, request params, engine settings.

Loaded from TOML and validated at load: unknown keys, missing fields and bad
values are refused with the file, the dotted key and the reason. Pipeline
sections (``[gra]``, ``[s3]``) are kept as raw tables here and validated by
their pipelines with the same helpers (:func:`check_table`).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .distributed.backends import check_backend_url
from .engine.batch import BatchSettings, check_batch
from .engine.cost import Price, check_price
from .engine.errors import ConfigError
from .engine.http1 import split_url
from .engine.retry import (
    DEFAULT_DEADLINE,
    DEFAULT_FAIL_FAST,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_STARTUP_GRACE,
    DEFAULT_TIMEOUT,
    INITIAL_BACKOFF,
    MAX_BACKOFF,
)

DEFAULT_CONFIG = "asyncsynth.toml"

# Request parameters that may be set in config; anything vendor-specific goes in extra_body.
PARAM_DOCS: dict[str, str] = {
    "temperature": "sampling temperature",
    "top_p": "nucleus sampling: the probability mass sampled from",
    "max_tokens": "the completion's token limit",
    "seed": "the sampling seed, for servers that honour it",
    "stop": "a string or list of strings that end the completion",
    "presence_penalty": "penalty on tokens already present (-2 to 2)",
    "frequency_penalty": "penalty on tokens by their frequency so far (-2 to 2)",
    "logit_bias": "a table of token id to bias",
    "response_format": "OpenAI's response_format table (json_object, json_schema)",
    "extra_body": "a table merged into the request body as it is (e.g. vLLM's guided_json)",
}
"""What each request parameter does (the config reference is generated from these)."""
PARAM_KEYS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "seed",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "response_format",
        "extra_body",
    }
)

TRANSPORTS = ("http1", "aiohttp", "httpx", "openai")
LOCAL_CONCURRENCY = 2
"""Default ``max_concurrency`` of a ``kind = "local"`` endpoint (one answering, one waiting)."""
KINDS = ("remote", "local")


# -- validation helpers -------------------------------------------------------------------------

Check = Callable[[Any, str], Any]


def _fail(where: str, reason: str) -> ConfigError:
    return ConfigError(f"{where}: {reason}")


def _number(*, minimum: float = 0.0, integer: bool = False, allow_zero: bool = True) -> Check:
    def check(value: Any, where: str) -> Any:
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
            kind = "an integer" if integer else "a number"
            raise _fail(where, f"expected {kind}, got {value!r}")
        if value < minimum or (not allow_zero and value == 0):
            bound = f"> {minimum}" if not allow_zero else f">= {minimum}"
            raise _fail(where, f"must be {bound}, got {value!r}")
        return value

    return check


def _string(*, choices: tuple[str, ...] | None = None) -> Check:
    def check(value: Any, where: str) -> Any:
        if not isinstance(value, str) or not value:
            raise _fail(where, f"expected a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise _fail(where, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"expected true or false, got {value!r}")
    return value


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a table, got {value!r}")
    return value


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, f"expected a name or a non-empty list of names, got {value!r}")
    return tuple(value)


POSITIVE = _number(allow_zero=False)
POSITIVE_INT = _number(integer=True, minimum=1)
NON_NEGATIVE = _number()
STRING = _string()
BOOLEAN: Check = _boolean
TABLE: Check = _table
NAMES: Check = _string_list


def optional(check: Check) -> Check:
    return lambda value, where: None if value is None else check(value, where)


def check_table(
    table: Mapping[str, Any],
    spec: Mapping[str, Check],
    where: str,
    *,
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Validate ``table`` against ``spec`` (key -> check); refuse unknown and missing keys."""
    for key in table:
        if key not in spec:
            known = ", ".join(sorted(spec))
            raise _fail(f"{where}.{key}" if where else key, f"unknown key (known keys: {known})")
    for key in required:
        if key not in table:
            raise _fail(f"{where}.{key}" if where else key, "missing required key")
    return {
        key: spec[key](value, f"{where}.{key}" if where else key) for key, value in table.items()
    }


def check_params(value: Any, where: str) -> dict[str, Any]:
    """Request parameters: the keys in :data:`PARAM_KEYS`, checked where it matters."""
    table = _table(value, where)
    spec: dict[str, Check] = {k: lambda v, w: v for k in PARAM_KEYS}
    spec |= {
        "temperature": _number(),
        "top_p": _number(),
        "max_tokens": POSITIVE_INT,
        "seed": _number(integer=True, minimum=-(2**63)),
        "presence_penalty": _number(minimum=-2.0),
        "frequency_penalty": _number(minimum=-2.0),
        "response_format": _table,
        "extra_body": _table,
        "logit_bias": _table,
    }
    return check_table(table, spec, where)


# -- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One OpenAI-compatible server serving one model."""

    name: str
    """The endpoint's name: the ``NAME`` of its ``[endpoints.NAME]`` table."""
    model: str
    """The model name sent in requests (required, except for ``kind = "local"``, where it
    defaults to the GGUF's name)."""
    base_url: str | None = None
    """The server's OpenAI-compatible base URL, e.g. ``http://localhost:8000/v1`` (required
    unless ``kind = "local"``)."""
    kind: str = "remote"
    """``remote``, or ``local``: asyncsynth starts llama.cpp's server itself."""
    gguf: str | None = None
    """For ``local``: a GGUF path, ``smollm2`` (SmolLM2-135M-Instruct, the default) or
    ``gemma3-270m``."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself never appears
    in config, output, logs or errors)."""
    max_concurrency: int | None = None
    """The ceiling on requests in flight: adaptation finds the level under it (unset: 1024;
    local: 2); with ``adaptive = false``, exactly this many."""
    adaptive: bool = True
    """Adapt concurrency to 429s, 503s, timeouts and latency; ``false`` fixes it at
    ``max_concurrency``."""
    rpm: float | None = None
    """Requests per minute at most (unset: unlimited)."""
    tpm: float | None = None
    """Tokens per minute at most, prompt and completion (unset: unlimited)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds one attempt may take."""
    transport: str = "http1"
    """The HTTP client: ``http1`` (asyncsynth's own, the fastest measured), ``aiohttp``
    (which follows redirects), ``httpx``, or ``openai`` (the official SDK, its own retries
    off)."""
    n_ctx: int = 2048
    """For ``local``: the context length llama.cpp is started with."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Request parameters for this endpoint (``[endpoints.NAME.params]``, see
    ``[defaults]``); they win over ``[defaults]``."""
    budget_key: str | None = None
    """The name its limits are shared under (with ``[engine] limits_backend``); by default
    made from its base URL, model and a hash of its key (never the key), e.g. to share one
    budget between two URLs of one account."""
    price: Price | None = None
    """``{ input, output, cached_input, batch }``: USD per million tokens (``cached_input``:
    prompt tokens served from the provider's prompt cache; ``batch``: the multiplier for
    Batch API answers); unset: cost unknown, never guessed."""
    max_cost: float | None = None
    """This endpoint's cap in USD (the job's earlier runs included): exit 5 when reached."""
    max_tokens_total: int | None = None
    """This endpoint's cap in tokens, prompt and completion (earlier runs included)."""
    batch: BatchSettings | None = None
    """``true``, or a table (``[endpoints.NAME.batch]``): answer through the Batch API
    (``/v1/files`` + ``/v1/batches``); unset: online only."""

    def api_key(self) -> str | None:
        """The key, read from the environment at use; it is never stored in config."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if key is None:
            raise ConfigError(
                f"endpoints.{self.name}.api_key_env: environment variable "
                f"{self.api_key_env} is not set"
            )
        return key

    def __repr__(self) -> str:  # never shows the key, only where it comes from
        return (
            f"EndpointConfig(name={self.name!r}, model={self.model!r}, "
            f"base_url={self.base_url!r}, kind={self.kind!r})"
        )


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The ``[engine]`` table: retries, deadlines, the journal, fail-fast, the start-up grace,
    shared limits and the job's budgets."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    """Attempts per request, the first included."""
    deadline: float = DEFAULT_DEADLINE
    """Seconds a request may take across all its attempts and waits."""
    backoff_base: float = INITIAL_BACKOFF
    """First retry's backoff in seconds (exponential, full jitter)."""
    backoff_max: float = MAX_BACKOFF
    """Longest backoff between two attempts, in seconds."""
    journal: bool = True
    """Keep the resume journal next to the output (every answer, for resume and cache)."""
    fail_fast: int = DEFAULT_FAIL_FAST
    """Answers in a row (401, 403, 404, the same 400 or 422) that take an endpoint out for
    the run (exit 3 when a role has none left); ``--fail-fast N``; 0: never."""
    startup_grace: float | None = DEFAULT_STARTUP_GRACE
    """Seconds a role may go without any endpoint answering before the job stops;
    ``None`` waits up to the request ``deadline``."""
    limits_backend: str | None = None
    """``redis://HOST:PORT/DB``: every process naming an endpoint's key shares its rpm, tpm
    and max_concurrency through that server (see :mod:`asyncsynth.distributed`)."""
    max_cost: float | None = None
    """USD the whole job (earlier runs of its journal included) may spend at most: exit 5
    when reached (``--max-cost``)."""
    max_tokens_total: int | None = None
    """Tokens, prompt and completion, the whole job may use at most (earlier runs
    included): exit 5 when reached."""


DEFAULT_MAX_N = 10_000
"""The most samples (``"n"``) one input line may ask for."""


@dataclass(frozen=True, slots=True)
class InputSettings:
    """Checks on input files (``[input]``)."""

    max_n: int = DEFAULT_MAX_N
    """The most samples (``"n"``) one input line may ask for (``--max-n``)."""
    allow_duplicate_ids: bool = False
    """Duplicate ``id``s make output rows that cannot be told apart: refused unless allowed
    (``--allow-duplicate-ids``)."""


@dataclass(frozen=True, slots=True)
class Config:
    """A whole config file: endpoints, roles, request defaults, engine settings and the
    pipelines' sections."""

    endpoints: Mapping[str, EndpointConfig]
    """``[endpoints.NAME]``: one table per OpenAI-compatible server serving one model."""
    roles: Mapping[str, tuple[str, ...]]
    """``[roles]``: ``ROLE = ["endpoint", ...]``, the endpoints serving a role (a fleet)."""
    engine: EngineSettings = EngineSettings()
    """``[engine]``: see :class:`EngineSettings`."""
    input: InputSettings = InputSettings()
    """``[input]``: checks on input files, see :class:`InputSettings`."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """``[defaults]``: request parameters for every endpoint (an endpoint's own win)."""
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The pipelines' tables, ``[gra]`` and ``[s3]``, validated by their pipelines."""
    source: str = "<config>"
    """Where the config came from (its path), for error messages."""

    def role(self, name: str | None) -> tuple[str, ...]:
        """Endpoint names serving ``name``; ``None`` means the only role, or the only endpoint.

        Several endpoints serve one role only when a ``[roles]`` entry says so.
        """
        if name is None:
            if len(self.roles) == 1:
                return next(iter(self.roles.values()))
            if not self.endpoints:
                raise ConfigError(f"{self.source}: no endpoints are defined ([endpoints.NAME])")
            if not self.roles and len(self.endpoints) == 1:
                return tuple(self.endpoints)
            what = "roles" if self.roles else "endpoints and no [roles]"
            names = ", ".join(self.roles or self.endpoints)
            raise ConfigError(f"{self.source}: several {what} are defined ({names}); choose one")
        if name in self.roles:
            return self.roles[name]
        if name in self.endpoints:
            return (name,)
        known = ", ".join(dict.fromkeys([*self.roles, *self.endpoints])) or "none"
        raise ConfigError(f"{self.source}: no role or endpoint named {name!r} (known: {known})")

    def params_for(self, endpoint: str) -> dict[str, Any]:
        """Request params for ``endpoint``: global defaults, then the endpoint's own.

        ``extra_body`` tables are merged key by key, as their keys end up in the body.
        """
        own = self.endpoints[endpoint].params
        merged = {**self.defaults, **own}
        if "extra_body" in self.defaults and "extra_body" in own:
            merged["extra_body"] = {**self.defaults["extra_body"], **own["extra_body"]}
        return merged

    def with_endpoint_overrides(self, names: tuple[str, ...], **changes: Any) -> Config:
        """A copy where the named endpoints take ``changes`` (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        params = {k: changes.pop(k) for k in list(changes) if k in PARAM_KEYS}
        if not changes and not params:
            return self
        endpoints = dict(self.endpoints)
        for name in names:
            ep = endpoints[name]
            endpoints[name] = replace(ep, **changes, params={**ep.params, **params})
        return replace(self, endpoints=endpoints)


_ENDPOINT_SPEC: dict[str, Check] = {
    "base_url": STRING,
    "model": STRING,
    "kind": _string(choices=KINDS),
    "gguf": STRING,
    "api_key_env": STRING,
    "max_concurrency": POSITIVE_INT,
    "adaptive": BOOLEAN,
    "rpm": POSITIVE,
    "tpm": POSITIVE,
    "timeout": POSITIVE,
    "transport": _string(choices=TRANSPORTS),
    "n_ctx": POSITIVE_INT,
    "params": check_params,
    "budget_key": STRING,
    "price": check_price,
    "max_cost": NON_NEGATIVE,
    "max_tokens_total": POSITIVE_INT,
    "batch": check_batch,
}

_ENGINE_SPEC: dict[str, Check] = {
    "max_attempts": POSITIVE_INT,
    "deadline": POSITIVE,
    "backoff_base": NON_NEGATIVE,
    "backoff_max": NON_NEGATIVE,
    "journal": BOOLEAN,
    "fail_fast": _number(integer=True),
    "startup_grace": POSITIVE,
    "limits_backend": lambda value, where: check_backend_url(STRING(value, where), where),
    "max_cost": NON_NEGATIVE,
    "max_tokens_total": POSITIVE_INT,
}

_INPUT_SPEC: dict[str, Check] = {"max_n": POSITIVE_INT, "allow_duplicate_ids": BOOLEAN}

PIPELINE_SECTIONS = ("gra", "s3")

_TOP_SPEC: dict[str, Check] = {
    "endpoints": TABLE,
    "roles": TABLE,
    "engine": TABLE,
    "input": TABLE,
    "defaults": check_params,
    **{section: TABLE for section in PIPELINE_SECTIONS},
}


def endpoint_from_table(name: str, table: Mapping[str, Any], where: str) -> EndpointConfig:
    values = check_table(table, _ENDPOINT_SPEC, where)
    kind = values.get("kind", "remote")
    if kind == "remote" and "base_url" not in values:
        raise _fail(f"{where}.base_url", 'missing required key (or set kind = "local")')
    if kind == "local":
        values.setdefault("model", Path(values.get("gguf", "SmolLM2-135M-Instruct")).stem)
        # llama-cpp-python's server answers one request at a time: more would only queue there.
        values.setdefault("max_concurrency", LOCAL_CONCURRENCY)
    elif "model" not in values:
        raise _fail(f"{where}.model", "missing required key")
    if "base_url" in values:
        values["base_url"] = _http_url(values["base_url"], f"{where}.base_url")
    return EndpointConfig(name=name, **values)


def _http_url(url: str, where: str) -> str:
    """``url`` without its trailing ``/``, once it is an ``http(s)://host...`` URL."""
    try:
        split_url(url)
    except ValueError as exc:
        raise _fail(where, str(exc)) from None
    return url.rstrip("/")


def config_from_dict(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """Build and validate a :class:`Config` from parsed TOML (or any nested mapping)."""
    values = check_table(data, _TOP_SPEC, "")
    try:
        endpoints = {
            name: endpoint_from_table(name, _table(table, f"endpoints.{name}"), f"endpoints.{name}")
            for name, table in values.get("endpoints", {}).items()
        }
        roles = {
            name: _string_list(members, f"roles.{name}")
            for name, members in values.get("roles", {}).items()
        }
        for role, members in roles.items():
            for member in members:
                if member not in endpoints:
                    raise _fail(f"roles.{role}", f"names unknown endpoint {member!r}")
        engine = EngineSettings(**check_table(values.get("engine", {}), _ENGINE_SPEC, "engine"))
        inputs = InputSettings(**check_table(values.get("input", {}), _INPUT_SPEC, "input"))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return Config(
        endpoints=endpoints,
        roles=roles,
        engine=engine,
        input=inputs,
        defaults=values.get("defaults", {}),
        sections={s: values[s] for s in PIPELINE_SECTIONS if s in values},
        source=source,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config; errors name the file, the key and the reason."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return config_from_dict(data, str(path))
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(
            message if message.startswith(str(path)) else f"{path}: {message}"
        ) from None


def single_endpoint_config(
    *,
    base_url: str | None = None,
    model: str | None = None,
    kind: str = "remote",
    **settings: Any,
) -> Config:
    """A config with one endpoint (and one role), both named ``default``: the CLI's flags mode."""
    table: dict[str, Any] = {"kind": kind}
    if base_url:
        table["base_url"] = base_url
    if model:
        table["model"] = model
    params = {k: settings.pop(k) for k in list(settings) if k in PARAM_KEYS}
    table.update({k: v for k, v in settings.items() if v is not None})
    if params := {k: v for k, v in params.items() if v is not None}:
        table["params"] = params
    return config_from_dict(
        {"endpoints": {"default": table}, "roles": {"default": ["default"]}}, "command line"
    )
