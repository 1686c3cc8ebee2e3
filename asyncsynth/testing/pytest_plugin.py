"""Pytest plugin (entry point ``asyncsynth``): fixtures running simulated endpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from asyncsynth.testing.sim import SimConfig, SimServer


@pytest.fixture
def sim() -> Iterator[SimServer]:
    """A running sim with default settings (background thread), stopped after the test."""
    with SimServer() as server:
        yield server


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., SimServer]]:
    """Start sims with ``sim_factory(config=None, host=..., port=..., **overrides)``.

    Every server it started is stopped after the test.
    """
    servers: list[SimServer] = []

    def start(config: SimConfig | None = None, **kwargs: Any) -> SimServer:
        server = SimServer(config, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.stop()
