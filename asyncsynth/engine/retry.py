"""What is retried, how long to wait, and every retry/timeout constant in one place.

The happy path never touches tenacity: an attempt that succeeds first time costs
nothing here. Only after a first retryable failure does a request enter
:func:`retrying`, a tenacity ``AsyncRetrying`` that waits with exponential backoff
and full jitter, or exactly as long as the server asked (``Retry-After``,
``x-ratelimit-reset-*``) when it said so.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from .errors import RequestError, StatusError

DEFAULT_TIMEOUT = 120.0
"""Seconds one attempt may take."""
DEFAULT_DEADLINE = 900.0
"""Seconds a request may take across all of its attempts and waits."""
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_STARTUP_GRACE = 60.0
"""Seconds a role may go without any endpoint answering (a probe or a request) before the
job stops with :class:`~asyncsynth.engine.errors.EndpointsUnreachable`."""
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 60.0
MAX_SERVER_WAIT = 600.0
"""A server asking for a longer pause than this is capped to it."""

DEFAULT_FAIL_FAST = 3
"""Answers in a row from one endpoint that no request can get past (401, 403, 404, the same
400 or 422) after which the endpoint is taken out for the run; 0 never takes one out."""

NOT_RETRIED_STATUS = frozenset({400, 401, 403, 404, 422})
"""Not retried as such; but while an endpoint may yet be taken out for them, a 401, 403 or 404
sends the request again at once, to the role's endpoints (see ``fleet.py``)."""
RETRIED_STATUS = frozenset({408, 409, 429})


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, RequestError) and (exc.retryable or exc.reroute)


def backoff(attempt: int, *, base: float = INITIAL_BACKOFF, cap: float = MAX_BACKOFF) -> float:
    """Full-jitter exponential backoff before attempt ``attempt + 1`` (``attempt`` >= 1)."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_duration(value: str) -> float | None:
    """``'1s'``, ``'250ms'``, ``'6m0s'`` or a bare number of seconds."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) else None
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def names_rate_limit(headers: dict[str, str]) -> bool:
    """Whether an answer speaks of a rate quota (``x-ratelimit-*`` headers), not momentary load."""
    return any(name.lower().startswith("x-ratelimit-") for name in headers)


def server_wait(headers: dict[str, str]) -> float | None:
    """Seconds the server asked us to wait, from ``Retry-After`` or ``x-ratelimit-reset-*``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    waits: list[float] = []
    if (ra := lowered.get("retry-after-ms")) and (millis := _parse_duration(ra)) is not None:
        waits.append(millis / 1000)
    if ra := lowered.get("retry-after"):
        seconds = _parse_duration(ra)
        if seconds is None:
            try:
                seconds = parsedate_to_datetime(ra).timestamp() - time.time()
            except (TypeError, ValueError):
                seconds = None
        if seconds is not None:
            waits.append(seconds)
    if not waits:
        for key in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
            if (value := lowered.get(key)) and (seconds := _parse_duration(value)) is not None:
                waits.append(seconds)
    if not waits:
        return None
    return min(max(max(waits), 0.0), MAX_SERVER_WAIT)


def wait_for(exc: BaseException, attempt: int, *, base: float, cap: float) -> float:
    """How long to wait after ``exc`` ended attempt number ``attempt``."""
    if isinstance(exc, RequestError) and exc.reroute:
        return 0.0  # another endpoint, or the verdict on this one: nothing to wait for
    if isinstance(exc, StatusError) and (asked := server_wait(exc.headers)) is not None:
        return asked
    return backoff(attempt, base=base, cap=cap)


def _failure(state: RetryCallState) -> BaseException:
    """The error the attempt in ``state`` failed with (tenacity waits only after a failure)."""
    error = state.outcome.exception() if state.outcome is not None else None
    assert error is not None
    return error


def retrying(
    *,
    attempts_left: int,
    deadline: float,
    base: float,
    cap: float,
    before_wait: Callable[[BaseException, int, float], None] | None = None,
) -> AsyncRetrying:
    """A tenacity controller for the attempts that follow a first failure.

    The caller has already waited after that failure. ``deadline`` is a
    ``time.monotonic()`` instant: no wait runs past it, and no attempt starts after it.
    ``before_wait(error, attempt, seconds)`` hears of each wait before another attempt;
    ``attempt`` is the number of the attempt that failed, counted from the request's first.
    """

    def _wait(state: RetryCallState) -> float:
        pause = wait_for(_failure(state), state.attempt_number + 1, base=base, cap=cap)
        return max(0.0, min(pause, deadline - time.monotonic()))

    def _stop(state: RetryCallState) -> bool:
        return state.attempt_number >= attempts_left or time.monotonic() >= deadline

    def _before_sleep(state: RetryCallState) -> None:
        assert before_wait is not None
        seconds = state.next_action.sleep if state.next_action is not None else 0.0
        before_wait(_failure(state), state.attempt_number + 1, seconds)

    return AsyncRetrying(
        stop=_stop,
        retry=retry_if_exception(is_retryable),
        wait=_wait,
        reraise=True,
        before_sleep=_before_sleep if before_wait is not None else None,
    )
