"""Shared fixtures: the simulated endpoint, anyio on asyncio, and a config builder."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip ``real_llm`` tests, with the reason, when the local endpoint is missing.

    ``@pytest.mark.real_llm("torch", ...)`` names further modules a test needs. With
    ``ASYNCSYNTH_REQUIRE_REAL_LLM=1`` (CI) nothing is skipped, so a missing extra fails.
    """
    if os.environ.get("ASYNCSYNTH_REQUIRE_REAL_LLM") == "1":
        return
    for item in items:
        marker = item.get_closest_marker("real_llm")
        if marker is not None and (reason := _real_llm_missing(tuple(marker.args))):
            item.add_marker(pytest.mark.skip(reason=f"real llama.cpp endpoint: {reason}"))


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
