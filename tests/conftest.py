"""Shared fixtures: the simulated endpoint, anyio on asyncio, and a config builder."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# Nothing in the tests may reach a model hub: MiniLM and tiny models are local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from asyncsynth.config import Config, config_from_dict
from asyncsynth.testing import pytest_plugin

# The sim fixtures, whether or not the package's pytest11 entry point is installed.
sim = pytest_plugin.sim
sim_factory = pytest_plugin.sim_factory

FAST_ENGINE = {"backoff_base": 0.001, "backoff_max": 0.01, "max_attempts": 4, "deadline": 20.0}
"""Engine settings for tests: tiny backoff so retries cost milliseconds."""


def _real_llm_missing(modules: tuple[str, ...]) -> str | None:
    """Why the real llama.cpp endpoint (plus ``modules``) cannot run here, or None."""
    from asyncsynth.local import LocalEndpointError, check_extra, resolve_gguf

    try:
        check_extra()
        resolve_gguf(None)
    except LocalEndpointError as exc:
        return str(exc)
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(missing)}" if missing else None


def _redis_missing(modules: tuple[str, ...]) -> str | None:
    """Why a real Redis server cannot run here, or None."""
    from asyncsynth.testing.services import redis_server_binary

    if importlib.util.find_spec("redis") is None:
        return "needs the redis package (the redis extra: scripts/setup.sh installs it)"
    if redis_server_binary() is None:
        return "no redis-server (apt-get install redis-server; scripts/setup.sh does)"
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(missing)}" if missing else None


CHROMIUM = os.environ.get("ASYNCSYNTH_CHROMIUM", "/usr/bin/chromium")
"""Debian's chromium, installed by scripts/setup.sh; Playwright never downloads a browser."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _browser_missing(modules: tuple[str, ...]) -> str | None:
    """Why Playwright cannot drive the system chromium here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "needs the playwright package (the dev extra: scripts/setup.sh installs it)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no {CHROMIUM} (apt-get install chromium; scripts/setup.sh does)"
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(missing)}" if missing else None


def _ray_missing(modules: tuple[str, ...]) -> str | None:
    """Why a local Ray cluster cannot run here, or None."""
    missing = [m for m in ("ray", *modules) if importlib.util.find_spec(m) is None]
    return (
        f"needs {', '.join(missing)} (the ray extra: scripts/setup.sh installs it)"
        if missing
        else None
    )


def _tools_missing(modules: tuple[str, ...]) -> str | None:
    """Why the linters in ``modules`` cannot run here, or None."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(missing)} (the dev extra)" if missing else None


@dataclass(frozen=True)
class RealComponent:
    """A real component some tests need: a marker, why it is missing, the CI switch."""

    marker: str
    what: str
    missing: Callable[[tuple[str, ...]], str | None]
    """Why it cannot run here (given the marker's extra module names), or None."""
    require: str
    """With this environment variable set to 1 (CI) nothing is skipped: missing fails."""


REAL_COMPONENTS = (
    RealComponent(
        "real_llm", "real llama.cpp endpoint", _real_llm_missing, "ASYNCSYNTH_REQUIRE_REAL_LLM"
    ),
    RealComponent("redis", "real Redis server", _redis_missing, "ASYNCSYNTH_REQUIRE_REDIS"),
    RealComponent("ray", "local Ray cluster", _ray_missing, "ASYNCSYNTH_REQUIRE_RAY"),
    RealComponent("browser", "real browser", _browser_missing, "ASYNCSYNTH_REQUIRE_BROWSER"),
    RealComponent("lint", "linter", _tools_missing, "ASYNCSYNTH_REQUIRE_LINT"),
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip tests of a missing real component (:data:`REAL_COMPONENTS`), with the reason.

    ``@pytest.mark.real_llm("torch", ...)`` (or ``redis(...)``, ``ray(...)``,
    ``browser(...)``) names further modules a test needs. Where the component's ``require``
    variable is 1 (CI), nothing is skipped, so a missing component fails.
    """
    for component in REAL_COMPONENTS:
        if os.environ.get(component.require) == "1":
            continue
        reasons: dict[tuple[str, ...], str | None] = {}
        for item in items:
            marker = item.get_closest_marker(component.marker)
            if marker is None:
                continue
            args = tuple(marker.args)
            if args not in reasons:
                reasons[args] = component.missing(args)
            if reason := reasons[args]:
                item.add_marker(pytest.mark.skip(reason=f"{component.what}: {reason}"))


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``redis-server`` on a free loopback port (tests marked ``redis``); stopped after."""
    from asyncsynth.testing.services import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless system chromium driven by Playwright (tests marked ``browser``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster (2 CPUs, loopback) for one module's tests (its address); shut
    down after them (tests marked ``ray``)."""
    import ray

    # A short folder: Ray's socket paths must stay under the OS limit of 107 bytes.
    folder = tempfile.mkdtemp(prefix="asr", dir="/tmp")
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=folder,
        )
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_config(url: str, *, engine: dict[str, Any] | None = None, **endpoint: Any) -> Config:
    """A config with one endpoint, ``a`` (model ``m``), at ``url``; fast retries."""
    table = {"base_url": url, "model": "m", **endpoint}
    return config_from_dict(
        {"endpoints": {"a": table}, "engine": {**FAST_ENGINE, **(engine or {})}}
    )


@pytest.fixture
def config_for() -> Callable[..., Config]:
    return make_config
