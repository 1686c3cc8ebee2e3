"""``asyncsynth estimate`` and ``run --dry-run``: what a job will ask, cost and take.

For every request of an input file: the prompt tokens (the engine's own estimate, the one
its rate limits use, corrected by the server's own tokenizer route on a sample of the
requests where the server has one: vLLM's ``/tokenize``, llama.cpp's), the completion
budget (``max_tokens``), and whether the journal already holds its answer (those cost
nothing). Then per endpoint of the role: the cost online and through the Batch API at its
price, and the wall time at its configured limits.

``pilot=N`` first sends N requests sampled evenly from the rest (online, into the job's
journal when there is one, so the job does not pay for them again) and measures what they
really took: prompt tokens against the estimate, completion lengths, latency. The expected
figures then come from those measurements rather than from ``max_tokens``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from .config import Config
from .engine import Engine, InputError, Journal, Request
from .engine.batch import CHAT_URL, BatchSettings
from .engine.client import make_transport
from .engine.cost import usd
from .engine.engine import token_estimate
from .engine.journal import journal_path_for, request_key
from .engine.limits import DEFAULT_CONCURRENCY_CAP
from .engine.tokens import TokenCounter
from .io import read_requests

PILOT_SEED = 0
TOKENIZE_SAMPLE = 200
"""Requests sampled from the input to count with the server's tokenizer route."""


@dataclass
class Tokenized:
    """Prompt tokens of sampled requests as the server's tokenizer route counted them."""

    route: str
    """The route that answered (see :mod:`asyncsynth.engine.tokens`)."""
    endpoint: str
    requests: int = 0
    estimated: float = 0.0
    counted: int = 0

    @property
    def ratio(self) -> float:
        """Counted prompt tokens per estimated one."""
        return self.counted / self.estimated if self.estimated else 1.0


async def count_prompt_tokens(
    config: Config, name: str, sample: list[tuple[Request, float]]
) -> Tokenized | None:
    """Count ``sample``'s prompts with endpoint ``name``'s tokenizer route (the engine's
    :class:`~asyncsynth.engine.tokens.TokenCounter`); None where the server has none (a
    hosted API): the engine's estimate then stands."""
    ep = config.endpoints[name]
    if ep.base_url is None:  # a local endpoint: not started for an estimate
        return None
    transport = make_transport(ep.transport, ep.base_url, ep.api_key(), name=name)
    try:
        counter = TokenCounter(getattr(transport, "post_root", None), ep.model)
        (first, estimated), rest = sample[0], sample[1:]
        n = await counter.prompt_tokens(first.messages)
        if counter.route is None:
            return None
        out = Tokenized(counter.route, name, requests=1, estimated=estimated, counted=n)
        for request, estimated in rest:
            out.requests += 1
            out.estimated += estimated
            out.counted += await counter.prompt_tokens(request.messages)
        return out
    finally:
        await transport.aclose()


@dataclass
class Pilot:
    """What the pilot requests measured."""

    requests: int = 0
    failed: int = 0
    prompt_estimated: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float | None = None

    @property
    def prompt_ratio(self) -> float:
        """Real prompt tokens per estimated one."""
        return self.prompt_tokens / self.prompt_estimated if self.prompt_estimated else 1.0

    @property
    def mean_completion(self) -> float:
        return self.completion_tokens / self.requests if self.requests else 0.0

    @property
    def mean_latency(self) -> float:
        return self.latency_s / self.requests if self.requests else 0.0


@dataclass
class EndpointEstimate:
    """The job's cost and time if one endpoint of the role answered all of it."""

    name: str
    model: str
    price: dict[str, Any] | None
    online_usd: float | None
    online_max_usd: float | None
    batch_usd: float | None
    requests_per_s: float | None
    """At its configured limits (and the pilot's latency); None: unknown without a pilot."""
    bound: str
    """What limits it: rpm, tpm, or concurrency x latency."""
    batch_files: int | None
    """Batch files the job needs at its limits (None: not in batch mode)."""


@dataclass
class Estimate:
    """What a job asks for, before it runs (see the module's description)."""

    requests: int = 0
    cached: int = 0
    """Answered already (in the journal): they cost nothing."""
    in_batches: int = 0
    """Held by batches an earlier run submitted: paid for, their answers to come."""
    bad_lines: int = 0
    prompt_tokens: float = 0.0
    """Estimated prompt tokens of the requests to send (corrected by the pilot when run)."""
    max_completion_tokens: int = 0
    completion_tokens: float | None = None
    """Expected completion tokens (from the pilot); None without one."""
    pilot: Pilot | None = None
    tokenized: Tokenized | None = None
    endpoints: list[EndpointEstimate] = field(default_factory=list)
    wall_online_s: float | None = None
    completion_window: str | None = None

    @property
    def to_send(self) -> int:
        return self.requests - self.cached - self.in_batches

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "requests": self.requests,
            "cached": self.cached,
            "in_batches": self.in_batches,
            "bad_lines": self.bad_lines,
            "prompt_tokens": round(self.prompt_tokens),
            "max_completion_tokens": self.max_completion_tokens,
            "completion_tokens": None
            if self.completion_tokens is None
            else round(self.completion_tokens),
            "wall_online_s": self.wall_online_s,
            "completion_window": self.completion_window,
            "endpoints": [vars(e) for e in self.endpoints],
        }
        if self.pilot is not None:
            data["pilot"] = {**vars(self.pilot), "prompt_ratio": self.pilot.prompt_ratio}
        if self.tokenized is not None:
            data["tokenized"] = {**vars(self.tokenized), "ratio": self.tokenized.ratio}
        return data


async def estimate_file(
    config: Config,
    input_path: str | os.PathLike[str],
    *,
    role: str | None = None,
    output: str | os.PathLike[str] | None = None,
    pilot: int = 0,
) -> Estimate:
    """Estimate the job ``run INPUT -o OUTPUT`` would do (``output`` names its journal)."""
    names = config.role(role)
    eps = [config.endpoints[n] for n in names]
    params = {n: _request_params(config, n) for n in names}
    models = sorted({ep.model for ep in eps})
    first = names[0]
    key_params = config.params_for(first)  # as Engine.key builds it
    if not key_params.get("extra_body", True):
        key_params.pop("extra_body")
    estimate = Estimate()
    journal_path = journal_path_for(output) if output is not None else None
    journal = Journal(journal_path) if journal_path and journal_path.exists() else None
    rngs = (random.Random(PILOT_SEED), random.Random(PILOT_SEED + 1))
    sample: list[tuple[Request, float]] = []
    counted: list[tuple[Request, float]] = []  # for the tokenizer route
    seen = 0
    lines: dict[str, list[int]] = {n: [] for n in names}

    def on_bad_line(error: InputError, raw: bytes) -> None:
        estimate.bad_lines += 1

    try:
        for request in read_requests(input_path, on_bad_line):
            estimate.requests += 1
            if journal is not None and _answered(journal, estimate, request, models, key_params):
                continue
            prompt, budget = token_estimate(request, params[first])
            estimate.prompt_tokens += prompt
            estimate.max_completion_tokens += budget
            for n in names:
                lines[n].append(_line_bytes(request, config, n, params[n]))
            seen += 1
            for rng, chosen, size in zip(
                rngs, (sample, counted), (pilot, TOKENIZE_SAMPLE), strict=True
            ):
                if len(chosen) < size:  # reservoir sampling: every request equally likely
                    chosen.append((request, prompt))
                elif size and (j := rng.randrange(seen)) < size:
                    chosen[j] = (request, prompt)
    finally:
        if journal is not None:
            journal.close()
    if counted:
        estimate.tokenized = await count_prompt_tokens(config, first, counted)
    if sample:
        estimate.pilot = await _run_pilot(config, role, names, sample, journal_path)
    _conclude(estimate, config, names, lines)
    return estimate


def _answered(
    journal: Journal,
    estimate: Estimate,
    request: Request,
    models: list[str],
    key_params: dict[str, Any],
) -> bool:
    """Whether ``journal`` answers ``request`` or an earlier run's batch holds it (counted in
    ``estimate``)."""
    merged = {**key_params, **request.params} if request.params else key_params
    key = request_key(models, request.messages, merged, request.sample)
    if journal.get(key) is not None:
        estimate.cached += 1
        return True
    if journal.batch_holding(key) is not None:
        estimate.in_batches += 1
        return True
    return False


def _request_params(config: Config, name: str) -> dict[str, Any]:
    params = config.params_for(name)
    params.pop("extra_body", None)
    return params


def _line_bytes(request: Request, config: Config, name: str, params: dict[str, Any]) -> int:
    """Bytes of the request's line in a batch file for endpoint ``name``."""
    ep = config.endpoints[name]
    if ep.batch is None:
        return 0
    body: dict[str, Any] = {"model": ep.model, "messages": request.messages, **params}
    if request.params:
        body.update(request.params)
    return len(orjson.dumps(body)) + len(CHAT_URL) + 80  # custom_id, method, url, braces


async def _run_pilot(
    config: Config,
    role: str | None,
    names: tuple[str, ...],
    sample: list[tuple[Request, float]],
    journal_path: Path | None,
) -> Pilot:
    """Send the sampled requests online and measure them."""
    online = replace(
        config,
        endpoints={
            n: replace(ep, batch=None) if n in names else ep for n, ep in config.endpoints.items()
        },
    )
    pilot = Pilot()
    estimated = {id(request): prompt for request, prompt in sample}
    costs: list[float | None] = []
    async with Engine(online, journal=journal_path) as engine:
        async for result in engine.map([r for r, _ in sample], role=role):
            if not result.ok or result.usage is None:
                pilot.failed += 1
                continue
            pilot.requests += 1
            pilot.prompt_estimated += estimated[id(result.request)]
            pilot.prompt_tokens += result.usage.get("prompt_tokens", 0)
            pilot.completion_tokens += result.usage.get("completion_tokens", 0)
            pilot.latency_s += result.latency_s
            costs.append(result.first_cost if result.cached else result.cost)
    if costs and all(c is not None for c in costs):
        pilot.cost_usd = sum(c for c in costs if c is not None)
    return pilot


def _conclude(
    estimate: Estimate, config: Config, names: tuple[str, ...], lines: dict[str, list[int]]
) -> None:
    """Expected tokens, then cost and time per endpoint of the role."""
    pilot = estimate.pilot
    n = estimate.to_send
    if estimate.tokenized is not None:
        estimate.prompt_tokens *= estimate.tokenized.ratio
    elif pilot is not None and pilot.requests:
        estimate.prompt_tokens *= pilot.prompt_ratio
    if pilot is not None and pilot.requests:
        estimate.completion_tokens = pilot.mean_completion * n
    completion = estimate.completion_tokens
    per_request = (estimate.prompt_tokens + (completion or estimate.max_completion_tokens)) / max(
        n, 1
    )
    rates: list[float] = []
    for name in names:
        ep = config.endpoints[name]
        price = ep.price
        usage = {"prompt_tokens": round(estimate.prompt_tokens)}
        online = online_max = batch = None
        if price is not None:
            most = {**usage, "completion_tokens": estimate.max_completion_tokens}
            online_max = price.cost(most)
            online = price.cost({**usage, "completion_tokens": round(completion)}) if (
                completion is not None
            ) else online_max  # fmt: skip
            batch = online * price.batch
        rate, bound = _rate(ep, per_request, pilot)
        if rate is not None:
            rates.append(rate)
        files = _batch_files(lines[name], ep.batch) if ep.batch is not None else None
        if ep.batch is not None:
            estimate.completion_window = ep.batch.completion_window
        estimate.endpoints.append(
            EndpointEstimate(
                name=name,
                model=ep.model,
                price=price.to_dict() if price is not None else None,
                online_usd=online,
                online_max_usd=online_max,
                batch_usd=batch,
                requests_per_s=rate,
                bound=bound,
                batch_files=files,
            )
        )
    if n == 0:
        estimate.wall_online_s = 0.0
    elif rates and len(rates) == len(names):
        estimate.wall_online_s = n / sum(rates)


def _rate(ep: Any, tokens_per_request: float, pilot: Pilot | None) -> tuple[float | None, str]:
    """Requests per second an endpoint allows at its limits, and which limit it is."""
    bounds: list[tuple[float, str]] = []
    if ep.rpm:
        bounds.append((ep.rpm / 60, f"rpm {ep.rpm:,.0f}"))
    if ep.tpm and tokens_per_request:
        bounds.append((ep.tpm / 60 / tokens_per_request, f"tpm {ep.tpm:,.0f}"))
    latency = pilot.mean_latency if pilot is not None and pilot.requests else None
    concurrency = ep.max_concurrency or DEFAULT_CONCURRENCY_CAP
    if latency:
        what = f"{concurrency:,} at once x {latency * 1000:,.0f} ms (pilot)"
        bounds.append((concurrency / latency, what))
    if not bounds:
        return None, "the server's speed (run a --pilot to measure it)"
    rate, bound = min(bounds)
    if latency is None:
        bound += " (at best: no pilot measured the latency)"
    return rate, bound


def _batch_files(sizes: list[int], settings: BatchSettings) -> int:
    """Files the requests fill at the endpoint's limits (lines and bytes per file)."""
    files = count = size = 0
    for line in sizes:
        if count and (count >= settings.max_requests or size + line > settings.max_bytes):
            files += 1
            count = size = 0
        count += 1
        size += line
    return files + (1 if count else 0)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.1f} min"
    return f"{minutes / 60:.1f} h"


def format_estimate(e: Estimate) -> str:
    """The estimate as the aligned text the command prints."""
    rows: list[tuple[str, str]] = []
    cached = f" ({e.cached:,} already answered in the journal: $0)" if e.cached else ""
    if e.in_batches:
        cached += f" ({e.in_batches:,} in batches already submitted)"
    bad = f"; {e.bad_lines:,} bad input lines skipped" if e.bad_lines else ""
    rows.append(("requests", f"{e.requests:,}{cached}{bad}"))
    pilot, counted = e.pilot, e.tokenized
    if counted is not None:
        how = (
            f"{counted.endpoint}'s tokenizer ({counted.route}) on {counted.requests:,} sampled "
            f"requests: {counted.ratio:.2f} tokens per estimated one"
        )
    elif pilot and pilot.requests:
        how = f"pilot of {pilot.requests}: {pilot.prompt_ratio:.2f} real tokens per estimated one"
    else:
        how = "estimated at ~4 characters a token: the server has no tokenizer route"
    rows.append(("input tokens", f"{e.prompt_tokens:,.0f} ({how})"))
    out = f"up to {e.max_completion_tokens:,} (max_tokens)"
    if e.completion_tokens is not None and pilot is not None:
        out = (
            f"{e.completion_tokens:,.0f} expected (pilot: {pilot.mean_completion:,.1f} a request); "
            + out
        )
    rows.append(("output tokens", out))
    if pilot is not None:
        failed = f", {pilot.failed} failed" if pilot.failed else ""
        rows.append(
            (
                "pilot",
                f"{pilot.requests} requests sent{failed}, {usd(pilot.cost_usd)}, mean latency "
                f"{pilot.mean_latency * 1000:,.0f} ms (kept in the journal when -o is given)",
            )
        )
    for ep in e.endpoints:
        head = f"{ep.name} ({ep.model})"
        if ep.price is None:
            rows.append((head, "cost unknown: no price (price = { input = ..., output = ... })"))
        else:
            expected = usd(ep.online_usd)
            most = usd(ep.online_max_usd)
            line = f"online {expected}" + (f" (at most {most})" if most != expected else "")
            line += f"; batch {usd(ep.batch_usd)} (x{ep.price['batch']:g})"
            rows.append((head, line))
        speed = (
            f"{ep.requests_per_s:,.1f} req/s, bound by {ep.bound}"
            if ep.requests_per_s is not None
            else f"unknown: bound by {ep.bound}"
        )
        rows.append(("", f"online speed {speed}"))
        if ep.batch_files is not None:
            rows.append(("", f"batch mode: {ep.batch_files:,} batch file(s)"))
    rows.append(("wall time online", _duration(e.wall_online_s)))
    if e.completion_window:
        rows.append(("wall time batch", f"within the completion window ({e.completion_window})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# -- GRA: per accepted sample, from a pilot run ---------------------------------------------------


def gra_estimate(config: Config, report: Mapping[str, Any] | None, target: int) -> dict[str, Any]:
    """What a GRA run of ``target`` accepted samples should ask and cost, from a pilot run's
    ``report`` (a small target run into the same folder: the real run goes on from it, so
    nothing the pilot made is paid twice). Without a report, only what one candidate asks.
    """
    from .pipelines.gra import GraSettings

    settings = GraSettings.from_config(config)
    reviewers = settings.committee.reviewers
    out: dict[str, Any] = {
        "target": target,
        "per_candidate": {
            "generate": 2,
            "review": 2 * reviewers,
            "adjudicate": "1 when the reviewers disagree",
            "summarize": "1 when accepted",
        },
    }
    if report is None:
        return out
    accepted = report.get("accepted") or 0
    tokens, cost = report.get("tokens") or {}, report.get("cost") or {}
    stages = tokens.get("by_stage") or {}
    requests = sum(s.get("requests", 0) for s in stages.values())
    pilot = {
        "accepted": accepted,
        "candidates": report.get("candidates", 0),
        "requests": requests,
        "tokens_in": tokens.get("in", 0),
        "tokens_out": tokens.get("out", 0),
        "cost_usd": cost.get("total_usd"),
        "wall_s": (report.get("engine") or {}).get("wall_s"),
    }
    out["pilot"] = pilot
    if not accepted:
        out["projection"] = None
        return out
    scale = target / accepted
    by_model = cost.get("by_model") or {}
    batch: float | None = None
    if pilot["cost_usd"] is not None and by_model:
        batch = 0.0
        for model, usd_ in by_model.items():
            price = config.endpoints[config.role(model)[0]].price
            batch += (usd_ or 0.0) * (price.batch if price is not None else 1.0)
    out["projection"] = {
        "candidates": round(pilot["candidates"] * scale),
        "requests": round(requests * scale),
        "tokens_in": round(pilot["tokens_in"] * scale),
        "tokens_out": round(pilot["tokens_out"] * scale),
        "cost_usd": None if pilot["cost_usd"] is None else pilot["cost_usd"] * scale,
        "batch_usd": None if batch is None else batch * scale,
        "wall_s": None if pilot["wall_s"] is None else pilot["wall_s"] * scale,
    }
    return out


def format_gra_estimate(e: Mapping[str, Any]) -> str:
    """The GRA estimate as the aligned text ``gra --dry-run`` prints."""
    each = e["per_candidate"]
    rows = [
        (
            "each candidate",
            f"{each['generate']} generator requests, {each['review']} reviews; an adjudication "
            "when the reviewers disagree; a summary when accepted",
        )
    ]
    pilot = e.get("pilot")
    if pilot is None:
        rows.append(
            ("cost", "depends on the acceptance rate: run a pilot (--pilot N accepted samples)")
        )
    else:
        rows.append(
            (
                "pilot",
                f"{pilot['accepted']:,} accepted of {pilot['candidates']:,} candidates, "
                f"{pilot['requests']:,} requests, {pilot['tokens_in']:,} tokens in, "
                f"{pilot['tokens_out']:,} out, {usd(pilot['cost_usd'])} (kept: the run goes on "
                "from it)",
            )
        )
        p = e.get("projection")
        if p is None:
            rows.append(("projection", "none: the pilot accepted nothing"))
        else:
            rows += [
                (f"target {e['target']:,}", f"~{p['candidates']:,} candidates, "
                 f"~{p['requests']:,} requests"),
                ("tokens", f"~{p['tokens_in']:,} in, ~{p['tokens_out']:,} out"),
                ("cost", f"online {usd(p['cost_usd'])}; batch {usd(p['batch_usd'])}"),
                ("wall time", _duration(p["wall_s"])),
            ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# -- S3: the steps before the first round exactly, the rounds as a range --------------------------

ASSUMED_ERROR_RATE = 0.3
"""The student error rate ``s3 --dry-run`` assumes for its typical figure (an assumption)."""
PLACEHOLDER_REASON = "a reason of about ten words that leads an example to this label"
"""Stands for each drawn rationale in the seed prompts: the real ones come from the LLM."""
EXTRAPOLATE_SAMPLE = 2000
"""Mining examples whose extrapolation prompts are rendered (sampled evenly from the rest)."""


@dataclass
class StepFigure:
    """One S3 step's requests: how many, their estimated prompt tokens, their budget."""

    requests: int = 0
    prompt_tokens: float = 0.0
    max_completion_tokens: int = 0
    line_bytes: float = 0.0
    """Mean bytes of a request's batch-file line (0 without batch mode)."""

    def add(self, request: Request, config: Config, name: str, params: dict[str, Any]) -> float:
        """Count ``request`` in; its estimated prompt tokens."""
        prompt, budget = token_estimate(request, params)
        n = self.requests
        self.requests += 1
        self.prompt_tokens += prompt
        self.max_completion_tokens += budget
        line = _line_bytes(request, config, name, params)
        self.line_bytes = (self.line_bytes * n + line) / self.requests
        return prompt

    def scaled(self, requests: int) -> StepFigure:
        """The same requests' means, ``requests`` times."""
        f = requests / self.requests if self.requests else 0.0
        return StepFigure(
            requests, self.prompt_tokens * f, round(self.max_completion_tokens * f), self.line_bytes
        )


@dataclass
class S3Estimate:
    """What ``s3`` would ask: the steps before the first round exactly (their first asks), the
    extrapolation rounds as an upper bound (every mining example wrong in every round) and a
    typical figure at an assumed student error rate (see :func:`s3_estimate`)."""

    llm: str
    rounds: int
    mining: int
    per_error: int
    error_rate: float
    rationales: StepFigure = field(default_factory=StepFigure)
    seed: StepFigure = field(default_factory=StepFigure)
    extrapolation: StepFigure = field(default_factory=StepFigure)
    """One request per mining example, sampled: the rounds scale it."""
    seed_reasks: int = 0
    """Seed requests asked again, at most, when cleaning drops answers."""
    rationale_reasks: int = 0
    review_per_example: int | None = None
    """GRA review requests per new example, at most (``review = "gra"``); None: no review."""
    review_seed: bool = False
    tokenized: Tokenized | None = None
    scenarios: dict[str, Estimate] = field(default_factory=dict)
    """``first`` (rationales + seed), ``upper`` and ``typical`` (all of the run)."""

    @property
    def extrapolation_upper(self) -> int:
        return self.rounds * self.mining * self.per_error

    @property
    def extrapolation_typical(self) -> int:
        return round(self.extrapolation_upper * self.error_rate)

    def to_dict(self) -> dict[str, Any]:
        skip = {"rationales", "seed", "extrapolation", "tokenized", "scenarios"}
        data: dict[str, Any] = {k: v for k, v in vars(self).items() if k not in skip}
        data.update(
            rationales_requests=self.rationales.requests,
            seed_requests=self.seed.requests,
            extrapolation_upper=self.extrapolation_upper,
            extrapolation_typical=self.extrapolation_typical,
            scenarios={k: e.to_dict() for k, e in self.scenarios.items()},
        )
        return data


async def s3_estimate(
    config: Config, settings: Any = None, *, error_rate: float = ASSUMED_ERROR_RATE
) -> S3Estimate:
    """What ``asyncsynth s3`` would ask, sending nothing: its prompts rendered with the real
    templates (the seed's with a placeholder for each drawn rationale, the extrapolation's
    for a sample of the mining set), counted by the server's tokenizer route where it has one,
    then cost and wall time at the configured limits (LLM requests only: training is local).
    ``settings`` defaults to the config's ``[s3]`` section."""
    from .pipelines.s3 import load_s3_settings

    settings = settings or load_s3_settings(config)
    names = config.role(settings.llm)
    out = S3Estimate(settings.llm, settings.rounds, 0, settings.extrapolate_per_error, error_rate)
    gold_only = settings.baseline == "gold"  # the paper's gold baseline asks no LLM
    sample = [] if gold_only else _s3_figures(out, config, settings, names)
    if sample:
        out.tokenized = await count_prompt_tokens(config, names[0], sample)
    first = (out.rationales, out.seed)
    upper = (*first, out.extrapolation.scaled(out.extrapolation_upper))
    typical = (*first, out.extrapolation.scaled(out.extrapolation_typical))
    for key, parts in (("first", first), ("upper", upper), ("typical", typical)):
        out.scenarios[key] = _scenario(config, names, parts, out.tokenized)
    return out


def _s3_figures(
    out: S3Estimate, config: Config, settings: Any, names: tuple[str, ...]
) -> list[tuple[Request, float]]:
    """Render every request of the steps before the first round, and one extrapolation for a
    sample of the mining set; a sample of them to count with the server's tokenizer route."""
    from .pipelines.s3.gold import load_gold
    from .pipelines.s3.prompts import label_values, load_prompt_set, render
    from .pipelines.s3.rationales import RATIONALE_REASKS
    from .pipelines.s3.seed import SEED_ATTEMPTS, seed_draw
    from .pipelines.s3.tasks import make_task

    gold = load_gold(settings)
    prompts = load_prompt_set(settings, span=gold.needs_span)
    task = make_task(settings, gold.contexts)
    # batch-file lines as the first endpoint in batch mode writes them
    name = next((n for n in names if config.endpoints[n].batch is not None), names[0])
    params = _request_params(config, names[0])
    base: dict[str, Any] = {"temperature": settings.temperature, **settings.params}
    rng, seen = random.Random(PILOT_SEED), 0
    sample: list[tuple[Request, float]] = []

    def add(figure: StepFigure, messages: list[dict[str, str]]) -> None:
        nonlocal seen
        request = Request(messages=messages, params=dict(base))
        prompt = figure.add(request, config, name, params)
        seen += 1
        if len(sample) < TOKENIZE_SAMPLE:  # reservoir sampling, as estimate_file does
            sample.append((request, prompt))
        elif (j := rng.randrange(seen)) < TOKENIZE_SAMPLE:
            sample[j] = (request, prompt)

    reasons: dict[str, list[str]] = {}
    if prompts.rationales is not None and settings.k > 0:
        count = settings.rationales.count
        for label in settings.labels:
            messages = render(prompts.rationales, {**label_values(settings, label), "count": count})
            for _ in range(settings.rationales.samples):
                add(out.rationales, messages)
            reasons[label.name] = [PLACEHOLDER_REASON] * count * settings.rationales.samples
        out.rationale_reasks = RATIONALE_REASKS * out.rationales.requests
    for j in range(settings.seed_size):
        draw = seed_draw(settings, task, j, reasons)
        add(out.seed, render(task.seed_prompt(prompts, draw), draw.values))
    out.seed_reasks = (SEED_ATTEMPTS - 1) * settings.seed_size
    out.mining = len(gold.mining)
    rows = gold.mining
    if len(rows) > EXTRAPOLATE_SAMPLE:
        rows = random.Random(PILOT_SEED).sample(rows, EXTRAPOLATE_SAMPLE)
    for row in rows if settings.rounds else ():
        add(out.extrapolation, render(prompts.extrapolate, task.extrapolation_values(row)))
    if settings.review == "gra":
        from .pipelines.gra import CommitteeSettings

        reviewers = CommitteeSettings.from_config(config).reviewers
        out.review_per_example = 2 * reviewers + 1  # two phases each, an adjudication
        out.review_seed = settings.review_seed
    return sample


def _scenario(
    config: Config,
    names: tuple[str, ...],
    parts: tuple[StepFigure, ...],
    tokenized: Tokenized | None,
) -> Estimate:
    estimate = Estimate(
        requests=sum(p.requests for p in parts),
        prompt_tokens=sum(p.prompt_tokens for p in parts),
        max_completion_tokens=sum(p.max_completion_tokens for p in parts),
        tokenized=tokenized,
    )
    lines = [round(p.line_bytes) for p in parts for _ in range(p.requests)]
    _conclude(estimate, config, names, {n: lines for n in names})
    return estimate


def format_s3_estimate(e: S3Estimate) -> str:
    """The S3 estimate as the text ``s3 --dry-run`` prints: the requests per step, then the
    figures of :func:`format_estimate` for each scenario."""
    rows = [("training", "no LLM requests (the student trains here)")]
    if e.rationales.requests:
        rows.insert(
            0,
            (
                "rationales",
                f"{e.rationales.requests:,} requests exactly (a label "
                f"without usable reasons asks again: up to {e.rationale_reasks:,} more)",
            ),
        )
    if e.seed.requests:
        rows.insert(
            -1,
            (
                "seed",
                f"{e.seed.requests:,} requests exactly (answers cleaning drops "
                f"are asked again: up to {e.seed_reasks:,} more)",
            ),
        )
    rounds = f"{e.rounds} round{'s' * (e.rounds != 1)}"
    per = f"{e.per_error} per error" if e.per_error != 1 else "1 per error"
    rows.insert(
        -1,
        (
            "extrapolation",
            f"{e.extrapolation_upper:,} requests at most ({rounds} x "
            f"{e.mining:,} mining examples, every one wrong, x {per}); "
            f"~{e.extrapolation_typical:,} at an assumed student error rate of "
            f"{e.error_rate:g} (an assumption, not a measurement: --assume-error-rate)",
        ),
    )
    if e.review_per_example is not None:
        seed = " and each seed example" if e.review_seed else ""
        rows.insert(-1, ("review (gra)", f"up to {e.review_per_example} committee requests per "
                     f"new example{seed}: not counted in the figures below"))  # fmt: skip
    width = max(len(k) for k, _ in rows)
    text = [f"asyncsynth s3 --dry-run: role {e.llm!r}; nothing sent"]
    text += [f"{k.ljust(width)}  {v}" for k, v in rows]
    heads = {
        "first": "Before the first round (rationales and seed, first asks): exact",
        "upper": "All rounds, upper bound (every mining example wrong in every round)",
        "typical": f"All rounds, typical (student error rate {e.error_rate:g} assumed)",
    }
    for key, head in heads.items():
        if key != "first" and not e.rounds:
            continue
        body = format_estimate(e.scenarios[key]).replace("\n", "\n  ")
        body = body.replace(" (run a --pilot to measure it)", "")  # s3 has no pilot
        text += ["", head, f"  {body}"]
    text += ["", "Wall time counts the LLM's requests only: training the student adds to it."]
    return "\n".join(text)
