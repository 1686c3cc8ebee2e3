"""Testing helpers: a fast simulated OpenAI-compatible endpoint and pytest fixtures."""

from asyncsynth.testing.sim import (
    Reply,
    ReplyContext,
    ReplyHook,
    SimConfig,
    SimServer,
    SimStats,
    serve,
    start_process,
)

__all__ = [
    "Reply",
    "ReplyContext",
    "ReplyHook",
    "SimConfig",
    "SimServer",
    "SimStats",
    "serve",
    "start_process",
]
