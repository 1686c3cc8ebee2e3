"""The S3 loop: rationales, seed synthesis, then rounds of train, mine errors, extrapolate.

Each step is its own module, a function of the run's :class:`~.context.RunContext`:

- ``rationales.py``: per label, reasons that lead to it (only when ``k > 0``);
- ``seed.py``: ``seed_size`` examples, each from a drawn label (and context, or context
  and answer); a dropped one is asked again for the same draw;
- ``mining.py`` (``round_<r>/train``): a fresh student trained on the seed and everything
  added so far, its checkpoint chosen on dev; every mining example it gets wrong is an error;
- ``extrapolation.py`` (``round_<r>/extrapolate``): per error, new examples like it with
  its gold label (answer); cleaned (``cleaning.py``), reviewed if asked (``review.py``);
- ``final.py``: the student on all of it, chosen on dev, then evaluated once on test.

What differs between single texts, pairs and extractive QA is in ``tasks.py``; the gold
data and its hygiene in ``gold.py``. Each step is written atomically into the output
folder and recorded in ``state.json`` when finished (a re-run loads finished steps and
goes on from the first unfinished one). Every request goes through the engine with the
run's journal, and its content (and ``seed`` parameter) is fixed by the run's seed, so a
crash in the middle of a step re-sends nothing already answered.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import Config
from ...engine import ConfigError, Engine
from ...student.config import weights_fingerprint
from ..events import OnEvent
from ..runfolder import RunFolder, digest
from .context import Reviewer, RunContext
from .extrapolation import extrapolate_step
from .final import final_step
from .gold import GoldData, load_gold
from .mining import train_round
from .placement import WHAT as PLACEMENT
from .placement import student_cluster
from .prompts import PromptSet, load_prompt_set
from .rationales import rationales_step
from .seed import seed_step
from .settings import S3Settings, load_s3_settings
from .tasks import Row, make_task

__all__ = ["JOURNAL_FILE", "RESUMABLE_CHANGES", "S3Result", "run_s3"]

JOURNAL_FILE = "s3.journal.sqlite"
RESUMABLE_CHANGES = frozenset(
    {
        "rounds",
        "max_failures",
        "save_student",
        "student.device",
        "student.placement",
        "student.ray_address",
        "student.num_gpus",
    }
)
"""Settings a resumed run may change: the other ones would make finished steps stale."""


def _endpoints(config: Config, settings: S3Settings) -> dict[str, Any]:
    """What decides the answers: each writing (and reviewing) endpoint's model and params."""
    names = list(config.role(settings.llm))
    if settings.review == "gra":
        names += [n for n in config.endpoints if n not in names]
    out = {}
    for name in names:
        endpoint = config.endpoints[name]
        out[name] = {
            "model": endpoint.model,
            "gguf": endpoint.gguf,
            "params": config.params_for(name),
        }
    return out


def fingerprint(
    config: Config, settings: S3Settings, gold: GoldData, prompts: PromptSet
) -> dict[str, Any]:
    """Everything that decides a run's results; a resumed run must match it."""
    student = settings.student
    return {
        **settings.fingerprint(),
        "data": gold.digest(),
        "prompts": {name: digest(text) for name, text in prompts.texts().items()},
        "endpoints": _endpoints(config, settings) if settings.baseline != "gold" else {},
        "student_weights": weights_fingerprint(student.model, student.from_config),
    }


async def _loop(run: RunContext) -> list[Row]:
    """The steps in order; the final training set."""
    settings = run.settings
    if settings.baseline == "gold":  # the paper's "gold data" row: no LLM at all
        return [{**row, "source": "gold"} for row in run.gold.mining]
    rationales = await rationales_step(run)
    rows = await seed_step(run, rationales)
    for r in range(1, settings.rounds + 1):
        errors = await train_round(run, r, rows)
        rows = [*rows, *await extrapolate_step(run, r, errors)]
        if not errors:
            run.emit("note", f"round_{r}/train", converged=True)
            break
    return rows


@dataclass
class S3Result:
    """What :func:`run_s3` made and where it wrote it."""

    out_dir: Path
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.json"

    @property
    def final(self) -> dict[str, Any]:
        """The final student: train size, dev and test metrics."""
        final: dict[str, Any] = self.report["final"]
        return final

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """Per round: train size, dev and mining metrics, errors, examples added."""
        rounds: list[dict[str, Any]] = self.report["rounds"]
        return rounds


async def run_s3(
    config: Config,
    out_dir: str | os.PathLike[str],
    *,
    settings: S3Settings | None = None,
    on_event: OnEvent | None = None,
    reviewer: Reviewer | None = None,
) -> S3Result:
    """Run (or resume) S3 into the folder ``out_dir``; the report is also ``report.json``.

    ``settings`` defaults to the config's ``[s3]`` section. ``on_event`` sees the progress
    (a :class:`~asyncsynth.pipelines.events.PipelineEvent` per step, answer and epoch).
    ``reviewer`` reviews new examples; by default ``review = "gra"`` uses the GRA committee
    of the config's ``[gra]`` section. Everything is checked (config, data, prompts) before
    the first request.
    """
    settings = settings or load_s3_settings(config)
    try:
        config.role(settings.llm)
    except ConfigError as exc:
        raise ConfigError(f"{config.source}: s3.llm: {exc}") from None
    gold = load_gold(settings)
    prompts = load_prompt_set(settings, span=gold.needs_span)
    if settings.student.placement == "ray":  # the cluster trains (and needs torch), not here
        from ...distributed.ray_run import require_ray

        require_ray(PLACEMENT)
    else:
        _check_student_extra()
    with student_cluster(settings.student):  # reached (or refused) before the folder opens
        folder = RunFolder(out_dir, journal_name=JOURNAL_FILE)
        task = make_task(settings, gold.contexts)
        run = RunContext(config, folder, settings, gold, task, prompts, on_event, reviewer)
        folder.open(
            fingerprint(config, settings, gold, prompts),
            resumable=RESUMABLE_CHANGES,
            atomic={"labels"},
            what="S3 run",
        )
        _gold_note(run)
        failure = await _steps(run, config, folder, settings, on_event)
    if failure is not None:
        raise failure
    from .report import write_report

    return S3Result(folder.path, write_report(folder.path, settings, gold, folder.state))


async def _steps(
    run: RunContext,
    config: Config,
    folder: RunFolder,
    settings: S3Settings,
    on_event: OnEvent | None,
) -> Exception | None:
    """Every step through one engine; the exception that stopped them, if any."""
    failure: Exception | None = None
    async with Engine(config, journal=folder.journal, on_event=on_event) as engine:
        run.engine = engine
        try:
            if run.reviewer is None and settings.review == "gra":
                from .review import gra_reviewer

                run.reviewer = gra_reviewer(engine, config, settings)
            rows = await _loop(run)
            await final_step(run, rows)
        except Exception as exc:  # raised by the caller, not in the engine's exception group
            failure = exc
    return failure


def _gold_note(run: RunContext) -> None:
    """Tell what gold hygiene found, before anything trains."""
    found = run.gold.duplicates
    total = sum(found.get("within", {}).values()) + sum(found.get("across", {}).values())
    if total:
        run.emit("note", "gold", duplicates=found)


def _check_student_extra() -> None:
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"S3 trains a student and needs {' and '.join(missing)}: "
            "pip install 'asyncsynth[student]'"
        )
