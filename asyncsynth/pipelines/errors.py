"""The errors a pipeline run stops with (besides config and request errors)."""

from __future__ import annotations

from ..engine.errors import AsyncsynthError


class PipelineError(AsyncsynthError):
    """A pipeline run cannot go on: the message says why and what to do."""


class RunFolderError(PipelineError):
    """A run folder cannot be resumed: another version wrote it, or the setup changed."""
