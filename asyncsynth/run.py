"""``asyncsynth run``: a JSONL file of requests through the engine, to a JSONL file of answers.

Resuming is re-running: the journal next to the output holds every completed answer,
so a second run sends only what had not completed and rewrites the output whole,
each row exactly once (answers from the journal are marked ``"cached": true``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from .config import Config
from .engine import BudgetExceeded, EndpointsFailed, Engine, InputError, Journal, Request
from .engine.errors import first_leaf
from .engine.events import ignore
from .engine.journal import journal_path_for
from .engine.limits import open_limits_backend
from .io import JsonlWriter, count_lines, error_row, input_error_row, output_row, read_requests
from .progress import Progress, summary

if TYPE_CHECKING:
    from .distributed.ray_run import RayExecutor
    from .io import Span


@dataclass
class RunReport:
    output: Path
    errors: Path
    written: int = 0
    failed: int = 0
    bad_lines: int = 0
    interrupted: bool = False
    budget: BudgetExceeded | None = None
    """Set when a cap stopped the run (what was answered is written; re-run to go on)."""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.bad_lines or self.interrupted or self.budget)


def errors_path_for(output: str | os.PathLike[str]) -> Path:
    out = Path(output)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.errors.jsonl")


async def run_file(
    config: Config,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    role: str | None = None,
    cache: bool = True,
    progress: bool | Progress = True,
    stream: TextIO | None = None,
    executor: RayExecutor | None = None,
    span: Span | None = None,
) -> RunReport:
    """Answer every request in ``input_path``; write answers, errors, and return a report.

    ``progress``: show the start block, the progress and the summary on ``stream``
    (stderr by default; see :class:`~asyncsynth.progress.Progress`), or give the
    :class:`Progress` to show them with. Cancelling it (Ctrl-C) stops cleanly: the journal
    and output hold exactly the answers received, and running it again resumes. If no
    endpoint answers within the start-up grace it raises
    :class:`~asyncsynth.engine.EndpointsUnreachable` (the answers received are kept too);
    when every endpoint of the role was taken out (a bad key, an unknown model) it raises
    :class:`~asyncsynth.engine.EndpointsFailed`, and running it again resumes as well.

    ``executor``: spread the job over a Ray cluster (see
    :mod:`asyncsynth.distributed.ray_run`); ``span``: answer only those lines of the input
    (one shard of a job; the executor's workers do that).

    A budget cap reached stops it like Ctrl-C, with ``report.budget`` set.
    """
    for name in config.role(role):  # refuse what cannot run before touching any file
        ep = config.endpoints[name]
        ep.api_key()
        if ep.kind == "local":
            from .local import check_local_endpoint

            await anyio.to_thread.run_sync(check_local_endpoint, ep)
    if (url := config.engine.limits_backend) is not None:
        await (await open_limits_backend(url, ignore)).aclose()  # reachable, or exit 2
    if executor is not None:
        executor.check(config)
    output_path = Path(output_path)
    report = RunReport(output=output_path, errors=errors_path_for(output_path))
    for target in (output_path, report.errors):
        if target.exists() and target.samefile(input_path):
            raise InputError(
                f"writing {target.name} would overwrite the input; choose another output",
                source=os.fspath(input_path),
            )
    owned = not isinstance(progress, Progress)
    display = Progress(stream=stream, quiet=not progress) if owned else progress
    assert isinstance(display, Progress)
    try:
        if span is not None:
            lines: int | None = span.lines
        else:
            lines = count_lines(input_path) if progress is not False else None
        read = f"{lines:,} input lines from {input_path}" if lines is not None else input_path
        display.header(
            f"asyncsynth run: {read}", ("output", f"{output_path} (failures: {report.errors})")
        )
        if executor is not None:
            from .distributed.ray_run import run_on_ray

            report = await run_on_ray(
                config, input_path, output_path, executor,
                role=role, cache=cache, display=display, lines=lines,
            )  # fmt: skip
        else:
            report.errors.unlink(missing_ok=True)
            journal = Journal(journal_path_for(output_path)) if cache else None
            await _answer(config, input_path, report, journal, role, display, lines, span)
        display.finish(report.stats)
    finally:
        if owned:
            display.close()
    return report


async def _answer(
    config: Config,
    input_path: str | os.PathLike[str],
    report: RunReport,
    journal: Journal | None,
    role: str | None,
    display: Progress,
    lines: int | None,
    span: Span | None = None,
) -> None:
    with (
        JsonlWriter(report.output) as out,
        JsonlWriter(report.errors, lazy=True) as errors,
    ):
        async with Engine(config, journal=journal, on_event=display.on_event) as engine:
            totals = engine.totals
            totals.total = lines

            def on_bad_line(error: InputError, raw: bytes) -> None:
                report.bad_lines += 1
                if totals.total:  # the line was counted but asks for nothing
                    totals.total -= 1
                errors.write(input_error_row(error, raw))
                display.note(f"skipped {error}")

            def counted(requests: Iterator[Request]) -> Iterator[Request]:
                """The requests, each extra sample of a line added to the total."""
                for request in requests:
                    if request.sample and totals.total:
                        totals.total += 1
                    yield request

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(display.run)
                    requests = read_requests(
                        input_path,
                        on_bad_line,
                        max_n=config.input.max_n,
                        allow_duplicate_ids=config.input.allow_duplicate_ids,
                        span=span,
                    )
                    try:
                        async for result in engine.map(counted(requests), role=role):
                            if result.ok:
                                out.write(output_row(result))
                            else:
                                report.failed += 1
                                errors.write(error_row(result))
                    except BudgetExceeded as exc:  # what was in flight is in: stop like Ctrl-C
                        report.budget = exc
                    tg.cancel_scope.cancel()
            except anyio.get_cancelled_exc_class():
                report.interrupted = True
                raise
            except BaseExceptionGroup as group:  # the progress task's group wraps what map raised
                stopped, _ = group.split(EndpointsFailed)
                if stopped is None:
                    raise
                raise first_leaf(stopped) from None
            finally:
                report.written = out.rows
                report.stats = summary(engine)
