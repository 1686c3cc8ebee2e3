"""The dataset card (``README.md``) of an exported run, as the Hugging Face Hub reads it.

YAML metadata (license, task categories, size category, tags, configs with their data
files, features and split sizes) then a body: the method with its citation, the models
per role, the selection (acceptance and rejection reasons, or S3's rounds), token use
and cost where known, the configuration with secrets left out, and the asyncsynth
version. Needs ``huggingface_hub`` and ``datasets`` (``asyncsynth[export]``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..config import Config
from .exporter import Source
from .runs import RunFiles, iter_rows

__all__ = ["CITATIONS", "RunStats", "dataset_card", "public_config", "size_category"]

CITATIONS = {
    "gra": """@article{gao2025gra,
  title   = {A Strategic Coordination Framework of Small LLMs Matches Large LLMs in Data Synthesis},
  author  = {Gao, Xin and others},
  journal = {arXiv preprint arXiv:2504.12322},
  year    = {2025}
}""",
    "s3": """@inproceedings{wang2023s3,
  title     = {Let's Synthesize Step by Step: Iterative Dataset Synthesis with Large Language
               Models by Extrapolating Errors from Small Models},
  author    = {Wang, Ruida and Zhou, Wangchunshu and Sachan, Mrinmaya},
  booktitle = {Findings of the Association for Computational Linguistics: EMNLP 2023},
  year      = {2023},
  eprint    = {2310.13671}
}""",
}
METHODS = {
    "gra": (
        "GRA (Generator-Reviewer-Adjudicator, "
        "[arXiv 2504.12322](https://arxiv.org/abs/2504.12322)): small LLMs of a pool take "
        "turns as generator, reviewers and adjudicator. Each sample's "
        "instruction is checked by every reviewer, its response scored 0-10 on six criteria; "
        "the committee accepts it when the reviewers' mean reaches tau with a deviation of at "
        "most delta, and an adjudicator settles disputes. Accepted samples are deduplicated "
        "and summarised into the pool the next round's generators read."
    ),
    "s3": (
        "S3 (Synthesis Step by Step, [arXiv 2310.13671](https://arxiv.org/abs/2310.13671)): "
        "an LLM writes a seed set from rationales; a small student trained on it labels a "
        "gold set, and every gold example it gets wrong is extrapolated by the LLM into new "
        "examples like it, for several rounds. The training split is the final synthetic "
        "set; validation and test are the gold dev and test sets of the run."
    ),
    "run": (
        "`asyncsynth run`: every input row was sent to an OpenAI-compatible endpoint; each "
        "row keeps the input's fields with the model's completion."
    ),
}
TASKS = {"gra": "text-generation", "run": "text-generation", "qa": "question-answering"}
SIZES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)
_SECRET = re.compile(r"key|token|secret|password|auth", re.IGNORECASE)
_PATH_SETTINGS = ("gold", "dev", "test", "contexts", "prompts_dir", "seed_data", "base_dir")

GRA_COLUMNS = """| column | meaning |
|---|---|
| `messages` | the sample as a chat (user, assistant): ready for TRL's `SFTTrainer` |
| `instruction`, `response` | the sample |
| `domain`, `keywords`, `summary` | its domain, keyword triplet and summary (the pool's entry) |
| `mode`, `round` | `generate` or `refine`; the round that made it |
| `generator`, `reviewers`, `adjudicator`, `summarized_by` | the models in each role |
| `mu`, `sigma`, `decision` | the committee's mean and deviation; `consensus` or `adjudicated` |
| `review_scores` | each reviewer's score (mean of six criteria) |
| `checks` | each reviewer's instruction check: rationality, completeness, clarity, assessment |
| `reviews` | each reviewer's six scores, strengths and weaknesses |
| `adjudication` | the adjudicator's scores and assessment (disputed samples) |
| `generated_keywords`, `pool_examples` | the generator's keywords; the pool entries it saw |
| `seed`, `original_response` | refine mode: the seed and its response before rewriting |
| `requests`, `tokens_in`, `tokens_out`, `cost_usd` | what it cost (USD; null: no price) |"""


def size_category(n: int) -> str:
    """The Hub's size category for ``n`` rows."""
    return next((name for bound, name in SIZES if n < bound), "n>1T")


def _scrub(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items() if not _SECRET.search(str(k))}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _file_name(value: Any) -> Any:
    if isinstance(value, str) and value and not value.startswith("hf:"):
        return Path(value).name
    return value


def public_config(config: Config) -> dict[str, Any]:
    """A config without secrets or where things live: models, roles, params, sections.

    Left out: API keys and the variables naming them, base URLs, local paths (only file
    names are kept), and any key that names a key, token, secret or password.
    """
    endpoints = {}
    for name, ep in config.endpoints.items():
        entry: dict[str, Any] = {"model": ep.model, "kind": ep.kind}
        if ep.gguf:
            entry["gguf"] = _file_name(ep.gguf)
        if ep.params:
            entry["params"] = _scrub(dict(ep.params))
        endpoints[name] = entry
    out: dict[str, Any] = {"endpoints": endpoints}
    if config.roles:
        out["roles"] = {k: list(v) for k, v in config.roles.items()}
    if config.defaults:
        out["defaults"] = _scrub(dict(config.defaults))
    for section, table in config.sections.items():
        clean = _scrub(dict(table))
        for key in _PATH_SETTINGS:
            if key in clean:
                clean[key] = _file_name(clean[key])
        out[section] = clean
    return out


@dataclass
class RunStats:
    """What a ``run`` output says about itself (counted in one pass over its rows)."""

    rows: int = 0
    errors: int = 0
    models: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    error_types: Counter[str] = field(default_factory=Counter)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float | None = None

    @classmethod
    def of(cls, run: RunFiles) -> RunStats:
        stats = cls()
        assert run.output is not None
        for _, row in iter_rows(run.output):
            stats.rows += 1
            stats.models[str(row.get("model"))] += 1
            stats.finish_reasons[str(row.get("finish_reason"))] += 1
            usage = row.get("usage") if isinstance(row.get("usage"), Mapping) else {}
            stats.tokens_in += int(usage.get("prompt_tokens") or 0)
            stats.tokens_out += int(usage.get("completion_tokens") or 0)
            cost = _cost(row.get("cost_usd"))
            if cost is not None:
                stats.cost = (stats.cost or 0.0) + cost
        errors = run.errors
        if errors is not None and errors.exists():
            for _, row in iter_rows(errors):
                stats.errors += 1
                error = row.get("error") if isinstance(row.get("error"), Mapping) else {}
                stats.error_types[str(error.get("type"))] += 1
        return stats


def _cost(value: Any) -> float | None:
    """A cost in USD as rows (``cost_usd``) and reports (``cost.total_usd``) give it."""
    if isinstance(value, Mapping):
        value = value.get("total_usd")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` where it is a table, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _pct(part: Any) -> str:
    return f"{100 * part:.1f}%" if isinstance(part, int | float) else "-"


def _acc(metrics: Any) -> str:
    """Accuracy, or SQuAD's F1 and exact match for extractive QA."""
    if not isinstance(metrics, Mapping):
        return "-"
    if "accuracy" not in metrics and "f1" in metrics:
        return f"F1 {_pct(metrics['f1'])}, EM {_pct(metrics.get('exact_match'))}"
    return _pct(metrics.get("accuracy"))


def _json(data: Any) -> str:
    return "```json\n" + orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n```"


def _tokens(tokens_in: int, tokens_out: int, cost: float | None) -> str:
    spent = f"${cost:,.4f}" if cost is not None else "unknown (no prices configured)"
    return f"{tokens_in:,} tokens in, {tokens_out:,} out; cost {spent}."


# -- bodies -----------------------------------------------------------------------------------


def _gra_sections(source: Source, report: Mapping[str, Any] | None) -> list[str]:
    out = []
    if source.filter is not None and (words := source.filter.describe()):
        out.append("Exported: the accepted samples of " + "; ".join(words) + ".")
    if not report:
        return [*out, "The run's report.json was not found: no selection figures."]
    committee = report.get("committee") or {}
    models = report.get("models") or {}
    out.append("## Models\n")
    out.append(
        _table(
            (
                "model",
                "generated",
                "accepted",
                "reviews",
                "review mean",
                "agreement",
                "adjudicated",
            ),
            (
                (
                    name,
                    (m.get("generator") or {}).get("candidates"),
                    (m.get("generator") or {}).get("accepted"),
                    (m.get("reviewer") or {}).get("reviews"),
                    ((m.get("reviewer") or {}).get("score") or {}).get("mean"),
                    _pct((m.get("reviewer") or {}).get("decision_agreement")),
                    (m.get("adjudicator") or {}).get("adjudications"),
                )
                for name, m in models.items()
            ),
        )
    )
    out.append(
        f"\nEach sample had {committee.get('reviewers', '?')} reviewers; tau = "
        f"{committee.get('tau', '?')}, delta = {committee.get('delta', '?')} "
        f"({committee.get('std', 'population')} deviation), role assignment "
        f"{committee.get('assignment', 'random')}."
    )
    adjudication = report.get("adjudication") or {}
    out.append("\n## Selection\n")
    out.append(
        f"{report.get('candidates', 0):,} candidates in {len(report.get('rounds') or [])} "
        f"rounds, {report.get('accepted', 0):,} accepted ({_pct(report.get('acceptance'))}); "
        f"{adjudication.get('disputed', 0):,} disputed, of which the adjudicator kept "
        f"{adjudication.get('kept', 0):,}.\n"
    )
    rejected = report.get("rejected") or {}
    out.append(_table(("rejected because", "samples"), ((k, v) for k, v in rejected.items())))
    rounds = report.get("rounds") or []
    if rounds:
        keys = ("round", "candidates", "accepted")
        out.append("\n" + _table(keys, ([r.get(k) for k in keys] for r in rounds)))
    tokens = report.get("tokens") or {}
    out.append("\n## Tokens and cost\n")
    out.append(
        _tokens(tokens.get("in", 0), tokens.get("out", 0), _cost(report.get("cost")))
        + (
            f" {tokens['per_accepted']:,} tokens per accepted sample."
            if tokens.get("per_accepted")
            else ""
        )
    )
    cost = _mapping(report.get("cost"))
    if isinstance(cost.get("per_accepted_usd"), int | float):
        out.append(f" ${cost['per_accepted_usd']:,.6f} per accepted sample.")
    stage_cost = _mapping(cost.get("by_stage"))
    by_stage = tokens.get("by_stage") or {}
    if by_stage:
        out.append(
            "\n"
            + _table(
                ("stage", "requests", "tokens in", "tokens out", "cost (USD)"),
                (
                    (k, v.get("requests"), v.get("in"), v.get("out"), stage_cost.get(k))
                    for k, v in by_stage.items()
                ),
            )
        )
    by_model = _mapping(cost.get("by_model"))
    if by_model and cost.get("total_usd") is not None:
        out.append("\n" + _table(("model", "cost (USD)"), by_model.items()))
    out.append("\n## Columns\n\n" + GRA_COLUMNS)
    return out


def _s3_sections(source: Source, report: Mapping[str, Any] | None) -> list[str]:
    out = [f"Task: {source.task}; labels, in the order of the `ClassLabel`: "]
    out[0] += ", ".join(f"`{label}`" for label in source.labels or []) + "."
    if not report:
        return [*out, "The run's report.json was not found: no round figures."]
    data = report.get("data") or {}
    out.append(
        f"\nThe LLM role `{report.get('llm') or '(the only one)'}` wrote the data; the student "
        f"was `{report.get('student')}`. Gold data: {data.get('mining')} mining, "
        f"{data.get('dev')} dev, {data.get('test')} test examples. {report.get('selection', '')}"
    )
    out.append("\n## Rounds\n")
    final = report.get("final") or {}
    rows: list[Sequence[Any]] = [
        (
            f"round {r['round']}",
            r.get("train_size"),
            _acc(r.get("dev")),
            _acc(r.get("mining")),
            r.get("errors"),
            r.get("added"),
        )
        for r in report.get("rounds") or []
    ]
    rows.append(("final", final.get("train_size"), _acc(final.get("dev")), "", "", ""))
    out.append(_table(("", "train size", "dev", "mining", "errors", "added"), rows))
    if final.get("test"):
        out.append(f"\nThe final student on the test set: {_acc(final['test'])}.")
    cleaning = report.get("cleaning") or {}
    dropped = cleaning.get("dropped") or {}
    out.append(
        f"\nCleaning kept {cleaning.get('kept', 0):,} of "
        f"{cleaning.get('received', 0):,} synthesized texts"
        + (
            " (dropped: " + ", ".join(f"{k} {v}" for k, v in dropped.items()) + ")."
            if dropped
            else "."
        )
    )
    requests = report.get("requests") or {}
    out.append("\n## Tokens and cost\n")
    out.append(
        f"{requests.get('total', 0):,} requests ({requests.get('failed', 0):,} failed). "
        + _tokens(
            requests.get("tokens_in", 0), requests.get("tokens_out", 0), _cost(report.get("cost"))
        )
    )
    return out


def _run_sections(stats: RunStats) -> list[str]:
    out = ["## Models\n"]
    out.append(_table(("model", "rows"), stats.models.most_common()))
    out.append(
        f"\n{stats.rows:,} answers; {stats.errors:,} requests failed"
        + (
            " (" + ", ".join(f"{k} {v}" for k, v in stats.error_types.most_common()) + ")."
            if stats.errors
            else "."
        )
        + " Finish reasons: "
        + ", ".join(f"{k} {v:,}" for k, v in stats.finish_reasons.most_common())
        + "."
    )
    out.append("\n## Tokens and cost\n")
    out.append(_tokens(stats.tokens_in, stats.tokens_out, stats.cost))
    return out


def _settings_of(source: Source, config: Config | None) -> dict[str, Any] | None:
    if config is not None:
        return public_config(config)
    run = source.run
    if run.kind == "s3":
        settings = _scrub(run.s3_settings)
        for key in _PATH_SETTINGS:
            if key in settings:
                settings[key] = _file_name(settings[key])
        return {"s3": settings}
    report = run.report if run.kind == "gra" else None
    if report:
        keys = ("mode", "seed", "committee", "dedup", "structured_formats")
        return {"gra": {k: report[k] for k in keys if k in report}}
    return None


def dataset_card(
    source: Source,
    rows: Mapping[str, int],
    *,
    features: Any = None,
    data_files: Mapping[str, str] | None = None,
    num_bytes: Mapping[str, int] | None = None,
    license: str = "unknown",
    pretty_name: str | None = None,
    language: Sequence[str] | None = None,
    config: Config | None = None,
    repo_id: str | None = None,
    run_stats: RunStats | None = None,
) -> str:
    """The card's text: YAML metadata between ``---`` lines, then the body (Markdown).

    ``data_files`` maps each split to its files' pattern in the repository (the card's
    ``configs``); ``features`` (``datasets.Features``) and ``num_bytes`` go into its
    ``dataset_info``.
    """
    from huggingface_hub import DatasetCardData

    from .. import __version__

    run = source.run
    kind = run.kind
    total = sum(rows.values())
    task = TASKS.get(source.task or "", "text-classification") if kind == "s3" else TASKS[kind]
    name = pretty_name or (repo_id.split("/")[-1] if repo_id else run.name)
    data = DatasetCardData(
        license=license,
        language=list(language) if language else None,
        task_categories=[task],
        size_categories=[size_category(total)],
        tags=["synthetic", "asyncsynth", *([kind] if kind != "run" else [])],
        pretty_name=name,
    )
    if data_files:
        data["configs"] = [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": p} for s, p in data_files.items()],
            }
        ]
    if features is not None:
        from datasets.info import DatasetInfo, DatasetInfosDict
        from datasets.splits import SplitDict, SplitInfo

        splits = SplitDict()
        for split, n in rows.items():
            splits.add(
                SplitInfo(name=split, num_examples=n, num_bytes=(num_bytes or {}).get(split, 0))
            )
        info = DatasetInfo(
            features=features, splits=splits, dataset_size=sum((num_bytes or {}).values())
        )
        DatasetInfosDict({"default": info}).to_dataset_card_data(data)

    report = run.report if kind in ("gra", "s3") else None
    body = [
        f"# {name}\n",
        f"Synthesized with [asyncsynth](https://pypi.org/project/asyncsynth/) {__version__}.\n",
    ]
    body.append("## Method\n\n" + METHODS[kind] + "\n")
    body.append(_table(("split", "rows"), rows.items()) + "\n")
    if kind == "gra":
        body += _gra_sections(source, report)
    elif kind == "s3":
        body += _s3_sections(source, report)
    else:
        body += _run_sections(run_stats or RunStats.of(run))
    settings = _settings_of(source, config)
    if settings:
        body.append("\n## Configuration\n\nSecrets, endpoint addresses and local paths left out.\n")
        body.append(_json(settings))
    load = repo_id or str(run.root)
    body.append(
        "\n## Use\n\n```python\nfrom datasets import load_dataset\n\n"
        f'data = load_dataset("{load}")\n```'
    )
    if kind in CITATIONS:
        body.append("\n## Citation\n\n```bibtex\n" + CITATIONS[kind] + "\n```")
    return "---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body).strip() + "\n"
