"""Shared fixtures: the simulated endpoint, anyio on asyncio, and a config builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from asyncsynth.config import Config, config_from_dict
from asyncsynth.testing import pytest_plugin

# The sim fixtures, whether or not the package's pytest11 entry point is installed.
sim = pytest_plugin.sim
sim_factory = pytest_plugin.sim_factory

FAST_ENGINE = {"backoff_base": 0.001, "backoff_max": 0.01, "max_attempts": 4, "deadline": 20.0}
"""Engine settings for tests: tiny backoff so retries cost milliseconds."""


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
