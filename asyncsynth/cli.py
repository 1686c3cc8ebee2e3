"""The ``asyncsynth`` command line: run, sim, endpoints, cache, gra, s3, estimate, batches."""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import click

from .config import DEFAULT_CONFIG, TRANSPORTS, Config, load_config, single_endpoint_config
from .engine import (
    AsyncsynthError,
    BudgetExceeded,
    EndpointsFailed,
    EndpointsUnreachable,
    Journal,
    tune_gc,
)
from .engine.errors import first_leaf
from .engine.journal import journal_path_for
from .io import write_json
from .progress import DEFAULT_LOG_INTERVAL, Describe, Progress

if TYPE_CHECKING:
    from .distributed.ray_run import RayExecutor
    from .pipelines.s3 import S3Settings

T = TypeVar("T")

EXIT_FAILED_ROWS = 1
EXIT_BAD_CONFIG = 2
EXIT_ENDPOINTS_FAILED = 3
"""Every endpoint of a role was taken out (bad key, unknown model...): fix it, run again."""
EXIT_UNREACHABLE = 4
EXIT_BUDGET = 5
EXIT_INTERRUPTED = 130


class ConfigProblem(click.ClickException):
    exit_code = EXIT_BAD_CONFIG


class Stopped(click.ClickException):
    """The job stopped: no endpoint of a role can answer (:class:`EndpointsFailed`)."""

    exit_code = EXIT_ENDPOINTS_FAILED


class Unreachable(click.ClickException):
    """No endpoint of a role answered within the start-up grace."""

    exit_code = EXIT_UNREACHABLE


class BudgetReached(click.ClickException):
    """A hard budget stopped the job: what was answered is kept; a higher cap goes on."""

    exit_code = EXIT_BUDGET


def _problem(exc: AsyncsynthError) -> click.ClickException:
    """The exit a deliberate error of the job ends in."""
    if isinstance(exc, BudgetExceeded):
        return BudgetReached(str(exc))
    if isinstance(exc, EndpointsFailed):
        return Stopped(f"{exc}. Stopped; fix that and run the same command again to resume")
    if isinstance(exc, EndpointsUnreachable):
        return Unreachable(
            f"{exc}. The job stopped; every answer received is kept. Check the endpoints "
            "(asyncsynth endpoints check), or pass --wait-for-endpoints to wait for them up "
            "to the request deadline."
        )
    return ConfigProblem(str(exc))


def _run_async(fn: Callable[[], Awaitable[T]]) -> tuple[T | None, bool]:
    """Run ``fn`` on the event loop; Ctrl-C or SIGTERM cancel it cleanly.

    Returns ``(result, interrupted)``.
    """
    outcome: list[T] = []
    interrupted = False

    async def main() -> None:
        nonlocal interrupted
        async with anyio.create_task_group() as tg:

            async def watch_signals() -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        interrupted = True
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch_signals)
            outcome.append(await fn())
            tg.cancel_scope.cancel()

    options: dict[str, Any] = {}
    try:
        import uvloop  # noqa: F401

        options["use_uvloop"] = True
    except ImportError:
        pass
    try:
        anyio.run(main, backend="asyncio", backend_options=options)
    except AsyncsynthError as exc:
        raise _problem(exc) from None
    except BaseExceptionGroup as group:  # task groups wrap what the work raised
        found, rest = group.split(AsyncsynthError)
        if found is None or rest is not None:  # anything else is a bug: show it whole
            raise
        raise _problem(first_leaf(found)) from None
    return (outcome[0] if outcome else None), interrupted


def resolve_config(
    config_path: str | None,
    role: str | None,
    *,
    endpoint_flags: dict[str, Any],
    engine_flags: dict[str, Any] | None = None,
) -> Config:
    """The config a command runs with: a file (``--config``, else ./asyncsynth.toml), or flags.

    Endpoint flags override the chosen role's endpoints in a file.
    """
    flags = {k: v for k, v in endpoint_flags.items() if v is not None}
    try:
        if config_path is None and Path(DEFAULT_CONFIG).exists() and "base_url" not in flags:
            config_path = DEFAULT_CONFIG
        if config_path is not None:
            config = load_config(config_path)
            if flags:
                config = config.with_endpoint_overrides(config.role(role), **flags)
        elif ("base_url" in flags and "model" in flags) or flags.get("kind") == "local":
            config = single_endpoint_config(**flags)
        else:
            raise ConfigProblem(
                f"no config: give --config FILE (or create ./{DEFAULT_CONFIG}), "
                "or --base-url and --model for a one-off endpoint"
            )
    except AsyncsynthError as exc:
        raise ConfigProblem(str(exc)) from None
    if engine := {k: v for k, v in (engine_flags or {}).items() if v is not None}:
        config = replace(config, engine=replace(config.engine, **engine))
    return config


def endpoint_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The flags that define or override an endpoint, shared by every command that sends."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            help=f"TOML config (default: ./{DEFAULT_CONFIG} if present).",
        ),
        click.option("--role", help="Role (or endpoint) of the config to send to."),
        click.option("--base-url", help="One-off endpoint, e.g. http://localhost:8000/v1."),
        click.option("--model", help="Model name the endpoint serves."),
        click.option(
            "--local",
            "local",
            is_flag=True,
            help="Start the embedded llama.cpp endpoint (needs asyncsynth[local]).",
        ),
        click.option(
            "--gguf",
            type=click.Path(dir_okay=False),
            help="GGUF file for --local, or 'smollm2' (the default) or 'gemma3-270m'.",
        ),
        click.option("--api-key-env", help="Environment variable holding the API key."),
        click.option(
            "--concurrency", type=click.IntRange(min=1), help="Max requests in flight per endpoint."
        ),
        click.option(
            "--rpm", type=click.FloatRange(min=0, min_open=True), help="Requests per minute limit."
        ),
        click.option(
            "--tpm", type=click.FloatRange(min=0, min_open=True), help="Tokens per minute limit."
        ),
        click.option(
            "--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per attempt."
        ),
        click.option("--max-tokens", type=click.IntRange(min=1), help="Completion token limit."),
        click.option("--temperature", type=click.FloatRange(min=0), help="Sampling temperature."),
        click.option(
            "--transport",
            type=click.Choice(TRANSPORTS),
            help="HTTP client (default http1, asyncsynth's own).",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(min=1),
            help="Attempts per request, first included.",
        ),
        click.option(
            "--deadline",
            type=click.FloatRange(min=0, min_open=True),
            help="Seconds per request across all attempts.",
        ),
        click.option(
            "--fail-fast",
            type=click.IntRange(min=0),
            help="Take an endpoint out after N answers in a row that no request can get past "
            "(401, 403, 404, the same 400); 0: never (default 3).",
        ),
        click.option(
            "--price",
            callback=_price_flag,
            metavar="input=USD,output=USD[,cached_input=USD][,batch=X]",
            help="USD per million tokens (batch: the Batch API's multiplier, e.g. 0.5).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _price_flag(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from .engine.cost import parse_price

    try:
        return parse_price(value)
    except AsyncsynthError as exc:
        raise click.BadParameter(str(exc)) from None


def budget_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Hard caps of a job (its journal's earlier runs included): exit 5 when reached."""
    options = [
        click.option(
            "--max-cost",
            type=click.FloatRange(min=0),
            help="USD the job may spend in all (earlier runs included); exit 5 when reached.",
        ),
        click.option(
            "--max-tokens-total",
            type=click.IntRange(min=1),
            help="Tokens (prompt + completion) the job may use in all; exit 5 when reached.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def dry_run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--pilot",
        type=click.IntRange(min=0),
        default=0,
        help="With --dry-run: first send N sampled requests and measure their real lengths.",
    )(fn)
    return click.option(
        "--dry-run",
        is_flag=True,
        help="Send nothing: print requests, tokens, cost online vs batch and wall time.",
    )(fn)


def with_budget(config: Config, kw: dict[str, Any]) -> Config:
    """Pop ``--max-cost`` and ``--max-tokens-total`` from kwargs into the config's engine."""
    caps = {"max_cost": kw.pop("max_cost"), "max_tokens_total": kw.pop("max_tokens_total")}
    caps = {k: v for k, v in caps.items() if v is not None}
    return replace(config, engine=replace(config.engine, **caps)) if caps else config


def with_batch(config: Config, role: str | None) -> Config:
    """``--batch``: the role's endpoints answer through the Batch API (default settings)."""
    from .engine.batch import BatchSettings

    try:
        names = tuple(n for n in config.role(role) if config.endpoints[n].batch is None)
    except AsyncsynthError as exc:
        raise ConfigProblem(str(exc)) from None
    return config.with_endpoint_overrides(names, batch=BatchSettings())


def progress_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What a command shows while it runs, and how long it waits for endpoints."""
    options = [
        click.option(
            "-v", "--verbose", is_flag=True, help="Also log every retry and every failed probe."
        ),
        click.option(
            "--log-json",
            type=click.Path(dir_okay=False),
            help="Write every event, the status lines and the summary to FILE as JSON lines.",
        ),
        click.option(
            "--log-interval",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_LOG_INTERVAL,
            show_default=True,
            help="Seconds between status lines when stderr is not a terminal.",
        ),
        click.option(
            "--startup-grace",
            type=click.FloatRange(min=0, min_open=True),
            help="Stop (exit 4) when no endpoint of a role has answered after this many "
            "seconds (default: engine.startup_grace, else 60).",
        ),
        click.option(
            "--wait-for-endpoints",
            is_flag=True,
            help="Wait for unreachable endpoints up to the request deadline instead.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def progress_from_options(
    kw: dict[str, Any], *, quiet: bool, title: str, describe: Describe | None = None
) -> Progress:
    """Pop the display options from a command's kwargs and make its :class:`Progress`."""
    path = kw.pop("log_json")
    try:
        return Progress(
            quiet=quiet,
            verbose=kw.pop("verbose"),
            interval=kw.pop("log_interval"),
            log_json=path,
            title=title,
            describe=describe,
        )
    except OSError as exc:
        raise ConfigProblem(f"--log-json {path}: {exc.strerror or exc}") from None


def limits_backend_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--limits-backend``: share the endpoints' limits with other processes."""
    return click.option(
        "--limits-backend",
        metavar="URL",
        help="redis://HOST:PORT/DB: share every endpoint's rpm, tpm and concurrency with the "
        "other processes naming the same endpoint (overrides engine.limits_backend).",
    )(fn)


def with_limits_backend(config: Config, kw: dict[str, Any]) -> Config:
    """Pop --limits-backend; the config with it applied."""
    url = kw.pop("limits_backend")
    if url is None:
        return config
    from .distributed.backends import check_backend_url

    try:
        check_backend_url(url, "--limits-backend")
    except AsyncsynthError as exc:
        raise ConfigProblem(str(exc)) from None
    return replace(config, engine=replace(config.engine, limits_backend=url))


def executor_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--executor ray[=ADDRESS]`` and ``--actors N``: run the job on a Ray cluster."""
    fn = click.option(
        "--actors",
        type=click.IntRange(min=1),
        help="Ray workers for --executor ray (default: the cluster's CPUs).",
    )(fn)
    return click.option(
        "--executor",
        metavar="ray[=ADDRESS]",
        help="Spread the job over a Ray cluster (needs asyncsynth[ray]): ADDRESS is "
        "ray://HOST:10001, HOST:6379 or auto; without one, RAY_ADDRESS, else a local cluster "
        "for the job.",
    )(fn)


def executor_from_options(kw: dict[str, Any]) -> RayExecutor | None:
    """Pop --executor and --actors; the executor they name, if any."""
    spec, actors = kw.pop("executor"), kw.pop("actors")
    if spec is None:
        if actors is not None:
            raise ConfigProblem("--actors needs --executor ray")
        return None
    from .distributed.ray_run import RayExecutor

    try:
        return RayExecutor.parse(spec, actors=actors)
    except AsyncsynthError as exc:
        raise ConfigProblem(str(exc)) from None


def with_wait_options(config: Config, kw: dict[str, Any]) -> Config:
    """Pop --startup-grace and --wait-for-endpoints; the config with them applied."""
    grace, wait = kw.pop("startup_grace"), kw.pop("wait_for_endpoints")
    if wait and grace is not None:
        raise ConfigProblem("give --startup-grace or --wait-for-endpoints, not both")
    if not wait and grace is None:
        return config
    return replace(config, engine=replace(config.engine, startup_grace=None if wait else grace))


def config_from_options(kw: dict[str, Any]) -> Config:
    """Pop the shared endpoint options from a command's kwargs and resolve the config."""
    local = kw.pop("local")
    gguf = kw.pop("gguf")
    endpoint_flags = {
        "base_url": kw.pop("base_url"),
        "model": kw.pop("model"),
        "api_key_env": kw.pop("api_key_env"),
        "max_concurrency": kw.pop("concurrency"),
        "rpm": kw.pop("rpm"),
        "tpm": kw.pop("tpm"),
        "timeout": kw.pop("timeout"),
        "max_tokens": kw.pop("max_tokens"),
        "temperature": kw.pop("temperature"),
        "transport": kw.pop("transport"),
        "price": kw.pop("price"),
    }
    if local or gguf:
        from .local import default_model_name

        endpoint_flags |= {"kind": "local", "gguf": gguf}
        if endpoint_flags["model"] is None:  # the journal key names the model really used
            endpoint_flags["model"] = default_model_name(gguf)
    engine_flags = {
        "max_attempts": kw.pop("max_attempts"),
        "deadline": kw.pop("deadline"),
        "fail_fast": kw.pop("fail_fast"),
    }
    return resolve_config(
        kw.pop("config_path"),
        kw.get("role"),
        endpoint_flags=endpoint_flags,
        engine_flags=engine_flags,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="asyncsynth")
def main() -> None:
    """Synthesize training data at high concurrency from OpenAI-compatible endpoints."""
    tune_gc()


@main.command()
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Answers, one JSON line per request.",
)
@endpoint_options
@click.option(
    "--no-cache", is_flag=True, help="Neither read nor write the journal next to the output."
)
@click.option("-q", "--quiet", is_flag=True, help="No start block, progress or summary.")
@progress_options
@click.option(
    "--batch",
    "batch",
    is_flag=True,
    help="Answer through the endpoints' Batch API (/v1/files + /v1/batches): cheaper, slower.",
)
@budget_options
@dry_run_options
@click.option(
    "--stats-json", type=click.Path(dir_okay=False), help="Write the end-of-run summary as JSON."
)
@limits_backend_option
@executor_options
@click.option(
    "--max-n",
    type=click.IntRange(min=1),
    help='Most samples one line may ask for with "n" (default 10,000).',
)
@click.option(
    "--allow-duplicate-ids",
    is_flag=True,
    default=None,
    help="Send lines whose id an earlier line had (else they are refused as bad lines).",
)
def run(
    input_path: str,
    output_path: str,
    no_cache: bool,
    quiet: bool,
    stats_json: str | None,
    batch: bool,
    dry_run: bool,
    pilot: int,
    max_n: int | None,
    allow_duplicate_ids: bool | None,
    **kw: Any,
) -> None:
    """Send every request in INPUT.jsonl; answers go to OUTPUT, failures to OUTPUT.errors.jsonl.

    Input lines: {"messages": [...]}, {"prompt": "..."} or OpenAI Batch lines
    ({"custom_id": ..., "body": {...}}). Re-running the same command resumes. Exits 0 when
    every request succeeded, 1 when any failed or a line was bad, 2 for a bad config, 3 when
    every endpoint was taken out (a bad key, an unknown model), 4 when no endpoint answered
    within the start-up grace, 5 when a budget cap was reached, 130 when interrupted.
    """
    from .run import run_file

    display = progress_from_options(kw, quiet=quiet, title="run")
    config = with_budget(with_wait_options(config_from_options(kw), kw), kw)
    config = with_limits_backend(config, kw)
    ray = executor_from_options(kw)
    checks: dict[str, Any] = {"max_n": max_n, "allow_duplicate_ids": allow_duplicate_ids}
    if checks := {k: v for k, v in checks.items() if v is not None}:
        config = replace(config, input=replace(config.input, **checks))
    if batch:
        config = with_batch(config, kw["role"])
    if dry_run:
        _print_estimate(config, input_path, kw["role"], None if no_cache else output_path, pilot)
        return

    def saved() -> str:
        if no_cache or not journal_path_for(output_path).exists():
            return ""
        with Journal(journal_path_for(output_path)) as journal:
            return f" {len(journal):,} answers are saved in the journal;"

    try:
        with display:
            report, interrupted = _run_async(
                lambda: run_file(
                    config,
                    input_path,
                    output_path,
                    role=kw["role"],
                    cache=not no_cache,
                    progress=display,
                    executor=ray,
                )
            )
    except Stopped as exc:
        kept = saved().strip(" ;")
        click.echo(f"Error: {exc.message}." + (f" {kept}." if kept else ""), err=True)
        sys.exit(exc.exit_code)
    if interrupted or report is None:
        click.echo(f"Interrupted.{saved()} run the same command again to resume.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if stats_json:
        write_json(stats_json, report.stats)
    if report.budget is not None:
        click.echo(f"Stopped: {report.budget}", err=True)
        sys.exit(EXIT_BUDGET)
    if report.failed or report.bad_lines:
        click.echo(
            f"{report.failed:,} requests failed and {report.bad_lines:,} input lines were bad: "
            f"see {report.errors}",
            err=True,
        )
        sys.exit(EXIT_FAILED_ROWS)


def _print_estimate(
    config: Config, input_path: str, role: str | None, output: str | None, pilot: int
) -> None:
    from .estimate import estimate_file, format_estimate

    estimate, interrupted = _run_async(
        lambda: estimate_file(config, input_path, role=role, output=output, pilot=pilot)
    )
    if interrupted or estimate is None:
        sys.exit(EXIT_INTERRUPTED)
    click.echo(format_estimate(estimate))


@main.command("estimate")
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(dir_okay=False),
    help="The output the job will write: its journal's answers cost nothing; the pilot's go there.",
)
@endpoint_options
@click.option("--batch", "batch", is_flag=True, help="Estimate batch mode (files, window).")
@click.option(
    "--pilot",
    type=click.IntRange(min=0),
    default=0,
    help="First send N sampled requests online and measure their real lengths and latency.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
def estimate_command(
    input_path: str, output_path: str | None, batch: bool, pilot: int, as_json: bool, **kw: Any
) -> None:
    """Requests, tokens, cost online vs batch and wall time of a job, before running it.

    The same as `asyncsynth run INPUT -o OUTPUT --dry-run` with the same flags. For the
    gra and s3 pipelines use their own --dry-run.
    """
    import orjson

    from .estimate import estimate_file

    config = config_from_options(kw)
    if batch:
        config = with_batch(config, kw["role"])
    if not as_json:
        _print_estimate(config, input_path, kw["role"], output_path, pilot)
        return
    estimate, interrupted = _run_async(
        lambda: estimate_file(config, input_path, role=kw["role"], output=output_path, pilot=pilot)
    )
    if interrupted or estimate is None:
        sys.exit(EXIT_INTERRUPTED)
    click.echo(orjson.dumps(estimate.to_dict(), option=orjson.OPT_INDENT_2))


@main.group()
def batches() -> None:
    """A job's Batch API batches (kept in its journal): list, status, cancel, download."""


def _batch_rows(path: Path, ids: tuple[str, ...], *, live: bool = False) -> list[dict[str, Any]]:
    with Journal(path) as journal:
        rows = journal.batches()
    if ids:
        rows = [r for r in rows if r["batch_id"] in ids or str(r["id"]) in ids]
        if missing := set(ids) - {r["batch_id"] for r in rows} - {str(r["id"]) for r in rows}:
            raise click.ClickException(f"{path}: no batch {', '.join(sorted(missing))} here")
    elif live:
        rows = [r for r in rows if r["state"] in ("submitted", "ended", "creating")]
    return rows


def _format_batches(rows: list[dict[str, Any]]) -> str:
    import time

    if not rows:
        return "no batches"
    header = ("#", "endpoint", "batch id", "state", "status", "requests", "done", "failed", "age")
    table = [header]
    now = time.time()
    for r in rows:
        age = now - r["created"]
        table.append(
            (
                str(r["id"]),
                r["endpoint"],
                r["batch_id"] or "-",
                r["state"],
                r["status"] or "-",
                f"{r['requests']:,}",
                f"{r['completed']:,}",
                f"{r['failed']:,}",
                f"{age / 3600:.1f}h" if age >= 3600 else f"{age / 60:.0f}m",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table
    )


def _admin_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.argument("ids", nargs=-1, metavar="[BATCH_ID...]")(fn)
    fn = click.option(
        "--api-key-env", help="Environment variable of the key of an endpoint not in the config."
    )(fn)
    fn = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help=f"The job's config (default: ./{DEFAULT_CONFIG} if present): endpoints and keys.",
    )(fn)
    return click.argument("target", metavar="OUTPUT_OR_JOURNAL")(fn)


def _admin(
    target: str,
    config_path: str | None,
    api_key_env: str | None,
    ids: tuple[str, ...],
    work: Callable[[Any, dict[str, Any]], Awaitable[str]],
    *,
    live: bool = True,
) -> None:
    from .config import Config as _Config
    from .engine.batch import BatchAdmin

    path = _existing_journal(target)
    if config_path is None and Path(DEFAULT_CONFIG).exists():
        config_path = DEFAULT_CONFIG
    try:
        config = load_config(config_path) if config_path else _Config(endpoints={}, roles={})
    except AsyncsynthError as exc:
        raise ConfigProblem(str(exc)) from None
    rows = _batch_rows(path, ids, live=live)

    async def go() -> list[str]:
        lines = []
        with Journal(path) as journal:
            admin = BatchAdmin(config, journal, api_key_env=api_key_env)
            try:
                for row in rows:
                    lines.append(await work(admin, row))
            finally:
                await admin.aclose()
        return lines

    lines, interrupted = _run_async(go)
    if interrupted or lines is None:
        sys.exit(EXIT_INTERRUPTED)
    click.echo("\n".join(lines) if lines else "no batches to act on")


@batches.command("list")
@click.argument("target", metavar="OUTPUT_OR_JOURNAL")
def batches_list(target: str) -> None:
    """The batches of the journal of OUTPUT, as last recorded (no network)."""
    click.echo(_format_batches(_batch_rows(_existing_journal(target), ())))


@batches.command("status")
@_admin_options
def batches_status(
    target: str, config_path: str | None, api_key_env: str | None, ids: tuple[str, ...]
) -> None:
    """Ask the provider how the job's running batches are doing (all, or BATCH_ID...)."""

    async def work(admin: Any, row: dict[str, Any]) -> str:
        return _format_batches([await admin.refresh(row)]).splitlines()[-1]

    _admin(target, config_path, api_key_env, ids, work)


@batches.command("cancel")
@_admin_options
def batches_cancel(
    target: str, config_path: str | None, api_key_env: str | None, ids: tuple[str, ...]
) -> None:
    """Cancel running batches (all of the job's, or BATCH_ID...); answers so far are kept.

    The next run of the job downloads what they answered and sends the rest again.
    """

    async def work(admin: Any, row: dict[str, Any]) -> str:
        row = await admin.cancel(row)
        return f"batch {row['batch_id']}: {row['status']}"

    _admin(target, config_path, api_key_env, ids, work)


@batches.command("download")
@_admin_options
def batches_download(
    target: str, config_path: str | None, api_key_env: str | None, ids: tuple[str, ...]
) -> None:
    """Bring ended batches' answers into the journal now (the next run then has them)."""

    async def work(admin: Any, row: dict[str, Any]) -> str:
        answers, missing = await admin.download(row)
        row = admin.journal.batch(row["id"]) or row
        if row["state"] != "done":
            return f"batch {row['batch_id']}: {row['status']}, not ended yet"
        left = f", {missing:,} without an answer (the next run sends them again)" if missing else ""
        return f"batch {row['batch_id']}: {answers:,} answers imported{left}"

    _admin(target, config_path, api_key_env, ids, work)


@main.group()
def cache() -> None:
    """Inspect or clear the journal of completed answers kept next to an output."""


def _existing_journal(target: str) -> Path:
    """The journal of an output file (or the journal file itself); it must exist."""
    path = Path(target)
    if not path.name.endswith(".journal.sqlite"):
        path = journal_path_for(path)
    if not path.exists():
        raise click.ClickException(f"{path}: no journal here")
    return path


@cache.command("stats")
@click.argument("target", metavar="OUTPUT_OR_JOURNAL")
def cache_stats(target: str) -> None:
    """Entries and size of the journal of OUTPUT (or of a .journal.sqlite file)."""
    path = _existing_journal(target)
    with Journal(path) as journal:
        stats = journal.stats()
    click.echo(f"{stats['path']}: {stats['entries']:,} answers, {stats['bytes'] / 1e6:,.1f} MB")


@cache.command("clear")
@click.argument("target", metavar="OUTPUT_OR_JOURNAL")
def cache_clear(target: str) -> None:
    """Forget every answer in the journal of OUTPUT, so the next run sends everything again."""
    path = _existing_journal(target)
    with Journal(path) as journal:
        n = journal.clear()
    click.echo(f"{path}: cleared {n:,} answers")


@main.group()
def endpoints() -> None:
    """Inspect the configured endpoints."""


@endpoints.command("check")
@endpoint_options
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def endpoints_check(as_json: bool, **kw: Any) -> None:
    """Reachability, served models, a tiny completion's latency and JSON-schema support.

    Checks every endpoint of the config (only the role's with --role), all at once;
    local endpoints are started for the check. Exits 1 if any endpoint failed.
    """
    import orjson

    from .endpoints import check_endpoints, format_checks

    role = kw.get("role")
    config = config_from_options(kw)
    try:
        names = config.role(role) if role or not config.endpoints else list(config.endpoints)
    except AsyncsynthError as exc:
        raise ConfigProblem(str(exc)) from None
    checks, interrupted = _run_async(lambda: check_endpoints(config, names))
    if interrupted or checks is None:
        sys.exit(EXIT_INTERRUPTED)
    if as_json:
        click.echo(orjson.dumps([c.to_dict() for c in checks], option=orjson.OPT_INDENT_2))
    else:
        click.echo(format_checks(checks))
    if not all(c.ok for c in checks):
        sys.exit(EXIT_FAILED_ROWS)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--model", default="sim-model", show_default=True, help="Model name it reports.")
@click.option("--latency", default=0.0, type=click.FloatRange(min=0), help="Seconds per answer.")
@click.option("--jitter", default=0.0, type=click.FloatRange(min=0), help="Uniform +- seconds.")
@click.option("--capacity", type=click.IntRange(min=0), help="Requests served at once; 429 beyond.")
@click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="429 beyond this rate.")
@click.option("--tpm", type=click.FloatRange(min=0, min_open=True), help="429 beyond these tokens.")
@click.option(
    "--error-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of 5xx answers."
)
@click.option(
    "--drop-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of dropped connections."
)
@click.option("--hang-rate", default=0.0, type=click.FloatRange(0, 1), help="Share never answered.")
@click.option(
    "--malformed-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of broken bodies."
)
@click.option("--seed", type=int, help="Seed for reproducible faults and jitter.")
@click.option(
    "--batch-time",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Seconds a batch of the Batch API (/v1/batches) takes to answer.",
)
@click.option(
    "--batch-error-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Share of batch lines answered with a 500.",
)
@click.option(
    "--batch-expire-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Share of batches that expire with half their lines answered.",
)
def sim(
    host: str,
    port: int,
    batch_time: float,
    batch_error_rate: float,
    batch_expire_rate: float,
    **settings: Any,
) -> None:
    """Serve a simulated OpenAI-compatible endpoint (echoes the last user message).

    For trying asyncsynth, tests and benchmarks: configurable latency, capacity,
    rate limits and faults, and the Files + Batches API. Stop it with Ctrl-C.
    """
    from .testing.sim import SimConfig, serve

    batch = {
        "processing_time": batch_time,
        "line_error_rate": batch_error_rate,
        "expire_rate": batch_expire_rate,
    }
    try:
        config = SimConfig(**settings, batch=batch)
    except ValueError as exc:
        raise ConfigProblem(str(exc)) from None

    def ready(bound: int) -> None:
        click.echo(
            f"simulated endpoint at http://{host}:{bound}/v1 (model {config.model}); "
            "Ctrl-C stops it",
            err=True,
        )

    serve(config, host, port, ready=ready)


async def _showing(display: Progress, job: Callable[[], Awaitable[T]]) -> T:
    """Run ``job`` while ``display`` draws."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(display.run)
        result = await job()
        tg.cancel_scope.cancel()
    return result


@main.command("gra")
@click.argument("config_path", metavar="CONFIG.toml", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--target",
    type=click.IntRange(min=1),
    help="Accepted samples to make (default: gra.target; in refine mode every seed).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder; it also keeps the journal, so running again resumes.",
)
@click.option("--seed", type=click.IntRange(min=0), help="Run seed (default: gra.seed, else 0).")
@click.option(
    "--mode",
    type=click.Choice(["generate", "refine"]),
    help="generate new samples (default) or refine the seed data's responses.",
)
@click.option(
    "--round-size",
    type=click.IntRange(min=1),
    help="Candidates per round (default: sized from the acceptance rate so far).",
)
@click.option(
    "--seed-data",
    help="Seed JSONL file or hf:NAME[:SPLIT] / hf:NAME:CONFIG:SPLIT (default: gra.seed_data).",
)
@click.option(
    "--max-rounds", type=click.IntRange(min=1), help="Stop after this many rounds (gra.max_rounds)."
)
@click.option(
    "--time-budget",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds after which no new candidate starts; the run then ends with its report.",
)
@click.option("-q", "--quiet", is_flag=True, help="No start block, progress or summary table.")
@progress_options
@limits_backend_option
@executor_options
@budget_options
@dry_run_options
def gra(
    config_path: str,
    target: int | None,
    out_dir: str,
    seed: int | None,
    mode: str | None,
    round_size: int | None,
    seed_data: str | None,
    max_rounds: int | None,
    time_budget: float | None,
    quiet: bool,
    **kw: Any,
) -> None:
    """GRA synthesis: a committee of LLMs generates, reviews and adjudicates samples.

    Writes OUT/accepted.jsonl, rejected.jsonl, pool.jsonl and report.json, and ends by
    saying why samples were rejected. Exits 1 when the target was not reached, 4 when no
    endpoint of a role answered within the start-up grace, 5 when a budget cap was reached,
    130 when interrupted (run the same command to resume). --dry-run sends nothing and says
    what a candidate asks; --dry-run --pilot N runs N accepted samples into OUT first (the
    run goes on from them) and projects their cost to the target.
    """
    from .pipelines.gra import JOURNAL_NAME, GraSettings, explain, run_gra
    from .pipelines.gra.report import describe

    try:
        config = with_budget(load_config(config_path), kw)
        settings = GraSettings.from_config(config).with_overrides(
            target=target,
            seed=seed,
            mode=mode,
            round_size=round_size,
            seed_data=seed_data,
            max_rounds=max_rounds,
            time_budget=time_budget,
        )
    except AsyncsynthError as exc:
        raise ConfigProblem(str(exc)) from None
    config = with_limits_backend(with_wait_options(config, kw), kw)
    ray = executor_from_options(kw)
    dry_run, pilot = kw.pop("dry_run"), kw.pop("pilot")
    if dry_run:
        _gra_dry_run(config, settings, out_dir, pilot)
        return
    display = progress_from_options(kw, quiet=quiet, title="gra", describe=describe)
    with display:
        goal = f"target {settings.target:,}" if settings.target else "every seed"
        display.header(
            f"asyncsynth gra: {settings.mode}, {goal}, seed data {settings.seed_data or 'none'}",
            ("output", f"{out_dir} (accepted.jsonl, rejected.jsonl, pool.jsonl, report.json)"),
        )
        result, interrupted = _run_async(
            lambda: _showing(
                display,
                lambda: run_gra(
                    config, out_dir, settings=settings, on_event=display.on_event, executor=ray
                ),
            )
        )
        if result is not None:
            display.finish(result.report["engine"])
    if interrupted or result is None:
        click.echo(
            f"Interrupted. Every answer received is kept in {Path(out_dir) / JOURNAL_NAME}; "
            "run the same command again to resume.",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    report = result.report
    rejected = ", ".join(f"{n:,} {reason}" for reason, n in report["rejected"].items() if n)
    adjudicated = report["adjudication"]
    click.echo(
        f"GRA: {result.accepted:,} accepted of {result.candidates:,} candidates in "
        f"{result.rounds} round{'s' * (result.rounds != 1)} (target {result.target:,}); "
        f"rejected: {rejected or 'none'}; adjudicated {adjudicated['disputed']:,}, "
        f"kept {adjudicated['kept']:,}; outputs in {result.out_dir}",
        err=True,
    )
    if not quiet:
        click.echo("\n".join(explain(report)), err=True)
    if not result.target_reached:
        click.echo(f"Target not reached ({result.stopped}); see {result.report_path}", err=True)
        sys.exit(EXIT_FAILED_ROWS)


def _gra_dry_run(config: Config, settings: Any, out_dir: str, pilot: int) -> None:
    """``gra --dry-run``: what one candidate asks; with ``--pilot N``, a run of N accepted
    samples into OUT (the real run goes on from it) projected to the target."""
    from .estimate import format_gra_estimate, gra_estimate
    from .pipelines.gra import run_gra

    if not settings.target:
        raise ConfigProblem("gra --dry-run needs a target (--target N or gra.target)")
    report = None
    if pilot:
        piloted = settings.with_overrides(target=min(pilot, settings.target))
        result, interrupted = _run_async(lambda: run_gra(config, out_dir, settings=piloted))
        if interrupted or result is None:
            sys.exit(EXIT_INTERRUPTED)
        report = result.report
    click.echo(format_gra_estimate(gra_estimate(config, report, settings.target)))


def _seed_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        seeds = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected seeds like 1,2,3, got {value!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise click.BadParameter(f"expected distinct seeds >= 0 like 1,2,3, got {value!r}")
    return seeds


def _s3_settings(
    config_path: str,
    *,
    baseline: str | None,
    review: str | None,
    rounds: int | None,
    seed_size: int | None,
) -> tuple[Config, S3Settings]:
    """The config and [s3] settings of ``asyncsynth s3``, with its flags applied and checked."""
    from .pipelines.s3 import load_s3_settings, s3_settings

    try:
        config = load_config(config_path)
        settings = load_s3_settings(config)
        if baseline is not None:  # re-validated: a baseline changes other settings
            table = {**config.sections["s3"], "baseline": baseline}
            settings = s3_settings(table, where=f"{config.source}: s3", base_dir=settings.base_dir)
    except AsyncsynthError as exc:
        raise ConfigProblem(str(exc)) from None
    overrides: dict[str, Any] = {"review": review, "rounds": rounds, "seed_size": seed_size}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if review == "gra":  # the [gra] pool must seat a committee that excludes s3.llm
        from .pipelines.gra import CommitteeSettings

        try:
            CommitteeSettings.for_review(config, writer=settings.llm)
        except AsyncsynthError as exc:
            raise ConfigProblem(str(exc)) from None
    return config, settings


@main.command("s3")
@click.argument("config_path", metavar="CONFIG.toml", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for every output; running again with it resumes.",
)
@click.option(
    "--review",
    type=click.Choice(["none", "gra"]),
    help="Pass new examples through the GRA committee of [gra] (overrides s3.review).",
)
@click.option("--rounds", type=click.IntRange(min=0), help="Overrides s3.rounds.")
@click.option(
    "--baseline",
    type=click.Choice(["none", "gold", "zerogen", "no_extrapolation"]),
    help="A baseline of the paper instead of S3: the student on gold data, ZeroGen-style "
    "(no rationales, no extrapolation), or S3 without extrapolation (overrides s3.baseline).",
)
@click.option("--seed-size", type=click.IntRange(min=1), help="Overrides s3.seed_size.")
@click.option(
    "--seeds",
    callback=_seed_list,
    help="Run once per seed (e.g. 1,2,3) into OUT/seed-N; report mean and std per metric.",
)
@click.option("-q", "--quiet", is_flag=True, help="No start block, progress or summary.")
@progress_options
@limits_backend_option
@budget_options
@click.option(
    "--dry-run",
    is_flag=True,
    help="Send nothing: print requests per step, tokens, cost online vs batch and wall time.",
)
@click.option(
    "--assume-error-rate",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="With --dry-run: the student error rate of the typical figure (an assumption).",
)
def s3(
    config_path: str,
    out_dir: str,
    review: str | None,
    rounds: int | None,
    baseline: str | None,
    seed_size: int | None,
    seeds: list[int] | None,
    quiet: bool,
    **kw: Any,
) -> None:
    """S3: synthesize a seed set with rationales, then extrapolate a student's errors.

    Trains a local student (needs asyncsynth[student]) on the synthetic data, asks the LLM
    for new examples like each gold example it gets wrong, and repeats for the [s3]
    rounds. Writes datasets, metrics, report.json and report.png to --out; running the
    same command again resumes at the last finished step. Exits 1 when the run cannot go
    on, 4 when no endpoint of a role answered within the start-up grace, 5 when a budget
    cap was reached, 130 when interrupted. --dry-run sends nothing and says what the run
    asks: the steps before the first round exactly, the rounds as an upper bound (every
    mining example wrong) and at an assumed error rate.
    """
    from .pipelines.errors import PipelineError
    from .pipelines.s3 import run_s3
    from .pipelines.s3.baselines import format_table, run_seeds
    from .pipelines.s3.report import describe, format_report
    from .progress import summary

    config, settings = _s3_settings(
        config_path, baseline=baseline, review=review, rounds=rounds, seed_size=seed_size
    )
    config = with_budget(config, kw)
    config = with_limits_backend(with_wait_options(config, kw), kw)
    error_rate = kw.pop("assume_error_rate")
    if kw.pop("dry_run"):
        _s3_dry_run(config, settings, error_rate)
        return
    display = progress_from_options(kw, quiet=quiet, title="s3", describe=describe)

    async def go() -> Any:
        try:
            if seeds is not None:
                return await run_seeds(
                    config, out_dir, seeds, settings=settings, on_event=display.on_event
                )
            return await run_s3(config, out_dir, settings=settings, on_event=display.on_event)
        except PipelineError as exc:
            return exc

    with display:
        display.header(
            f"asyncsynth s3: {settings.task} task, {settings.rounds} rounds, "
            f"review {settings.review}",
            ("output", f"{out_dir} (datasets, metrics, report.json, report.png)"),
        )
        result, interrupted = _run_async(lambda: _showing(display, go))
        if result is not None and display.engine is not None:
            display.finish(summary(display.engine))
    if interrupted or result is None:
        click.echo(
            f"Interrupted. Finished steps are saved in {out_dir}; "
            "run the same command again to resume.",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    if isinstance(result, PipelineError):
        click.echo(f"Error: {result}", err=True)
        sys.exit(EXIT_FAILED_ROWS)
    if quiet:
        return
    if seeds is not None:
        click.echo(format_table([result]), err=True)
        click.echo(f"summary: {Path(out_dir) / 'seeds.json'}", err=True)
        return
    click.echo(format_report(result.report), err=True)
    click.echo(f"report: {Path(out_dir) / 'report.json'}", err=True)


def _s3_dry_run(config: Config, settings: S3Settings, error_rate: float) -> None:
    """``s3 --dry-run``: what the run asks, cost and takes; nothing sent."""
    from .estimate import format_s3_estimate, s3_estimate

    estimate, interrupted = _run_async(lambda: s3_estimate(config, settings, error_rate=error_rate))
    if interrupted or estimate is None:
        sys.exit(EXIT_INTERRUPTED)
    click.echo(format_s3_estimate(estimate))


@main.command("s3-table")
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False))
def s3_table(folders: tuple[str, ...]) -> None:
    """The paper's Table 2 beside the results of `asyncsynth s3 ... --seeds` runs."""
    from .pipelines.s3.baselines import format_table, read_summaries

    try:
        summaries = read_summaries(folders)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_table(summaries))


@main.command("export")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(exists=True))
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(["messages", "sharegpt", "alpaca", "jsonl", "parquet", "dataset"]),
    help="GRA: messages (default), sharegpt, alpaca, parquet, dataset; S3: dataset (default), "
    "parquet, jsonl; run: jsonl (default), messages, parquet, dataset.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(),
    help="File to write (a folder for datasets and for S3's splits).",
)
@click.option("--rounds", help="GRA: the cumulative set of these rounds, e.g. 1-3 or 1,2,4.")
@click.option("--min-mu", type=float, help="GRA: samples whose committee mean is at least this.")
@click.option("--domains", help="GRA: comma-separated domains to keep.")
@click.option(
    "--decision",
    "decisions",
    multiple=True,
    type=click.Choice(["consensus", "adjudicated"]),
    help="GRA: keep samples decided this way (repeatable).",
)
@click.option("--system", help="A system message for every exported conversation.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="The run's config: S3 adds its dev and test splits; the card lists its settings.",
)
@click.option("--push-to-hub", "repo_id", metavar="OWNER/NAME", help="Upload to this Hub dataset.")
@click.option("--private", is_flag=True, help="Create the Hub dataset private.")
@click.option("--license", "license_id", default="unknown", show_default=True, help="Card license.")
@click.option("--language", multiple=True, help="Card language code (repeatable), e.g. en.")
def export(
    run_dir: str,
    fmt: str | None,
    out: str | None,
    rounds: str | None,
    min_mu: float | None,
    domains: str | None,
    decisions: tuple[str, ...],
    system: str | None,
    config_path: str | None,
    repo_id: str | None,
    private: bool,
    license_id: str,
    language: tuple[str, ...],
) -> None:
    """Export a run (GRA or S3 folder, or a `run` output) as a training set.

    Writes --out in --format, and with --push-to-hub uploads it to the Hugging Face Hub
    (Parquet files and a dataset card; token from HF_TOKEN or `hf auth login`).
    """
    from .engine import ConfigError
    from .export import describe_export, open_source, push_to_hub
    from .export.exporter import export_source

    if out is None and repo_id is None:
        raise click.UsageError("give --out PATH, --push-to-hub OWNER/NAME, or both")
    try:
        config = load_config(config_path) if config_path else None
        source = open_source(
            run_dir,
            rounds=rounds,
            min_mu=min_mu,
            domains=[d.strip() for d in domains.split(",") if d.strip()] if domains else None,
            decisions=list(decisions) or None,
            system=system,
            config=config,
        )
        for note in source.notes:
            click.echo(f"note: {note}", err=True)
        if out is not None:
            click.echo(describe_export(export_source(source, fmt or "", out)), err=True)
        if repo_id is not None:
            pushed = push_to_hub(
                source,
                repo_id,
                private=private,
                license=license_id,
                language=list(language) or None,
                config=config,
            )
            counts = ", ".join(f"{n:,} {split}" for split, n in pushed.rows.items())
            click.echo(f"pushed {counts} rows to {pushed.url} ({pushed.commit_url})", err=True)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    except AsyncsynthError as exc:  # a bad run folder or row, the Hub's refusal
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:  # option values (--rounds)
        raise click.BadParameter(str(exc)) from None


@main.command("view")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(exists=True))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (loopback; another address makes the run visible to others).",
)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the web browser.")
def view(run_dir: str, host: str, port: int, open_browser: bool) -> None:
    """Look at a run in the browser: samples, reviews, charts (read-only, offline)."""
    import errno
    import threading
    import webbrowser

    from .view import ViewServer

    try:
        try:
            server = ViewServer(run_dir, host=host, port=port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            click.echo(f"port {port} is taken; using a free one", err=True)
            server = ViewServer(run_dir, host=host, port=0)
    except AsyncsynthError as exc:
        raise click.ClickException(str(exc)) from None
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    server.start()
    click.echo(f"{server.run.kind} run {server.run.name}: {server.url} (Ctrl-C stops)", err=True)
    if open_browser:
        webbrowser.open(server.url)
    try:
        while not stopped.wait(1.0):
            pass
    finally:
        server.stop()


@main.command("demo")
@click.argument("kind", type=click.Choice(["gra", "s3", "run"]))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Run folder (default: ./demo-KIND); its config and data go to OUT/demo/.",
)
@click.option("-q", "--quiet", is_flag=True, help="No start block, progress or summary.")
@click.pass_context
def demo(ctx: click.Context, kind: str, out_dir: str | None, quiet: bool) -> None:
    """Run a whole job in seconds against the built-in simulated endpoint.

    gra: five scripted models make every committee branch occur; s3: a full loop with a
    tiny student (needs asyncsynth[student]); run: 48 prompts. Writes a real run
    folder, then prints what to run next (view, export, the same job on your endpoint).
    """
    from .demo import INPUTS, needs, next_steps, prepare, replies
    from .testing.sim import SimServer

    if (missing := needs(kind)) is not None:  # type: ignore[arg-type]
        raise ConfigProblem(missing)
    out = out_dir or f"demo-{kind}"
    with SimServer(reply=replies(kind)) as sim:  # type: ignore[arg-type]
        config_path = str(prepare(kind, out, sim.url))  # type: ignore[arg-type]
        if kind == "gra":
            ctx.invoke(gra, config_path=config_path, out_dir=out, quiet=quiet)
        elif kind == "s3":
            ctx.invoke(s3, config_path=config_path, out_dir=out, quiet=quiet)
        else:
            prompts, answers = Path(out) / INPUTS / "prompts.jsonl", Path(out) / "answers.jsonl"
            ctx.invoke(
                run,
                input_path=str(prompts),
                output_path=str(answers),
                config_path=config_path,
                quiet=quiet,
            )
    click.echo(f"\nThe {kind} demo's run folder is {out}. Next:")
    for step in next_steps(kind, out):  # type: ignore[arg-type]
        click.echo(f"  {step}")
