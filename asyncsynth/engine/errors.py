"""The exception hierarchy, layered like httpx's.

AsyncsynthError
├── ConfigError                    bad config file, key or value
├── InputError                     a bad input line (file and line number)
├── EndpointsFailed                every endpoint of a role was taken out: the job stops
├── EndpointsUnreachable           no endpoint of a role answered within the start-up grace
├── BudgetExceeded                 a hard budget (max_cost, max_tokens_total) was reached
└── RequestError                   one request failed (carries .attempts)
    ├── TransportError             nothing usable came back
    │   ├── ConnectError           connection refused / DNS
    │   ├── ConnectionDropped      the server closed the connection mid-request
    │   ├── RequestTimeout         per-attempt timeout
    │   └── MalformedResponse      a body that is not a chat completion
    ├── StatusError                an HTTP error status
    │   ├── RateLimited            429
    │   ├── ServerError            5xx
    │   └── ClientError            4xx that is the request's own fault
    ├── BatchError                 a Batch API line or batch that did not answer
    └── DeadlineExceeded           the per-request deadline ran out across attempts
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar


class AsyncsynthError(Exception):
    """Base of every error asyncsynth raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable whatever the subclass's keyword arguments (a Ray worker's error
        # reaches the driver whole).
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(cls: type[AsyncsynthError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(AsyncsynthError, ValueError):
    """A config file, key or value was refused. The message names the file and key."""


class InputError(AsyncsynthError, ValueError):
    """An input row could not be turned into a request."""

    def __init__(self, message: str, *, source: str = "", line: int | None = None) -> None:
        self.source = source
        self.line = line
        where = f"{source}:{line}: " if line is not None else (f"{source}: " if source else "")
        super().__init__(f"{where}{message}")


class EndpointsFailed(AsyncsynthError):
    """Every endpoint of a role was taken out for the run: no request to it can succeed.

    An endpoint is taken out after answering 401, 403, 404 or a redirect (a bad key, an
    unknown model, a moved URL), or the same 400 or 422, to several requests in a row
    (``[engine] fail_fast``). ``reasons`` maps each endpoint to why it was taken out.
    Raised by ``Engine.map`` and ``Engine.complete``; the CLI exits with code 3. Fix the
    cause and run again: the journal keeps every answer received.
    """

    def __init__(self, role: str, reasons: Mapping[str, str]) -> None:
        self.role = role
        self.reasons = dict(reasons)
        super().__init__(
            f"every endpoint of role {role!r} was taken out: " + "; ".join(self.reasons.values())
        )


class EndpointsUnreachable(AsyncsynthError):
    """No endpoint of a role answered within the start-up grace: the job stops.

    Raised out of ``async with Engine(...)`` (every request in flight is cancelled, every
    answer received is kept). ``errors`` holds the last error of each endpoint.
    """

    def __init__(self, message: str, *, role: str, errors: Mapping[str, str]) -> None:
        super().__init__(message)
        self.role = role
        self.errors = dict(errors)


class RequestError(AsyncsynthError):
    """A request to an endpoint failed."""

    status: int | None = None
    retryable: bool = False
    reroute: bool = False
    """Set by the fleet when another attempt should go at once to the role's endpoints
    (the answer speaks of the endpoint, a bad key or unknown model, not of the request)."""

    def __init__(self, message: str, *, endpoint: str = "", attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.attempts = attempts

    @property
    def kind(self) -> str:
        return type(self).__name__


class TransportError(RequestError):
    retryable = True


class ConnectError(TransportError):
    """The endpoint refused the connection or could not be reached."""


class ConnectionDropped(TransportError):
    """The server closed the connection before answering."""


class RequestTimeout(TransportError):
    """One attempt took longer than the endpoint's timeout."""


class MalformedResponse(TransportError):
    """The server answered 2xx with a body that is not a chat completion."""


class StatusError(RequestError):
    """The server answered an HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        headers: Mapping[str, str] | None = None,
        endpoint: str = "",
        attempts: int = 1,
        code: str | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint, attempts=attempts)
        self.status = status
        self.headers = dict(headers or {})
        self.code = code
        """The error body's ``code`` (or ``type``), e.g. ``invalid_api_key``."""


class RateLimited(StatusError):
    retryable = True


class ServerError(StatusError):
    retryable = True


class ClientError(StatusError):
    """A 4xx that retrying cannot fix (400, 401, 403, 404, 422...); 408 and 409 are retried."""

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status in (408, 409)


class DeadlineExceeded(RequestError):
    """The per-request deadline ran out before an attempt succeeded."""


class BatchError(RequestError):
    """A request that a batch did not answer: an error line, a batch failed, expired, cancelled.

    ``code`` is the provider's (``batch_expired``, ``batch_cancelled``...) or the HTTP status
    of the line; whether it is retried depends on it.
    """

    def __init__(
        self, message: str, *, code: str | None = None, retryable: bool = True, endpoint: str = ""
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.code = code
        self._retryable = retryable

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self._retryable


class BudgetExceeded(AsyncsynthError):
    """A hard budget was reached: nothing more is sent; what was in flight was kept.

    ``cap`` names it (``max_cost``, ``endpoints.NAME.max_tokens_total``...), ``limit`` is
    its value and ``spent`` what the job had spent (earlier runs of its journal included).
    """

    def __init__(self, cap: str, limit: float, spent: float, *, flag: str, key: str) -> None:
        self.cap = cap
        self.limit = limit
        self.spent = spent
        self.flag = flag
        self.key = key
        if cap.endswith("max_cost"):
            shown = f"${limit:,.4g}", f"${spent:,.4f}"
        else:
            shown = f"{limit:,.0f} tokens", f"{spent:,.0f} tokens"
        super().__init__(
            f"budget reached: {cap} = {shown[0]} ({shown[1]} spent on this job, earlier runs "
            f"included); nothing more was sent and every answer received is kept. Raise it "
            f"({flag} or {key}) and run the same command again to go on."
        )


E = TypeVar("E", bound=BaseException)


def first_leaf(group: BaseExceptionGroup[E]) -> E:
    """The first exception in ``group`` that is not itself a group, however deep it lies."""
    found: E | BaseExceptionGroup[E] = group.exceptions[0]
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found
