"""What a pipeline tells its caller while it runs: one event type for every pipeline.

``run_gra`` and ``run_s3`` take ``on_event``, a callable that receives a
:class:`PipelineEvent` for each thing that happens, and the events of the run's engine
(:mod:`asyncsynth.engine.events`: endpoints down and back, retries, 429 pauses...), so
one listener hears everything; the command line draws them with the one progress module
(:class:`asyncsynth.progress.Progress`), and a notebook can simply ``print`` them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..engine.events import Event

EventKind = Literal["start", "skip", "done", "request", "train", "note"]


@dataclass(frozen=True, slots=True)
class PipelineEvent:
    """One step of a pipeline run.

    ``kind``: ``start`` (a step begins), ``skip`` (finished by an earlier run),
    ``done`` (a step ends; ``data`` holds its record), ``request`` (an answer of the
    step arrived: counts so far), ``train`` (the student trainer's progress) or
    ``note`` (anything worth telling, ``data["message"]``). ``step`` names the step,
    e.g. ``"seed"``, ``"round_2/extrapolate"``, ``"round_3"``.
    """

    kind: EventKind
    step: str
    data: Mapping[str, Any] = field(default_factory=dict)
    pipeline: str = ""
    """``"gra"`` or ``"s3"``."""


OnEvent = Callable[["PipelineEvent | Event"], None]
