"""Waiting for a condition another thread makes true (the simulated servers run in threads)."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` on the event loop until it holds; TimeoutError after ``timeout``."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)
