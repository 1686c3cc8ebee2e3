"""The request engine: knows endpoints, limits, retries and journals; nothing of GRA or S3."""

from .client import Completion, Transport
from .engine import Engine, Request, Result, Totals
from .errors import (
    AsyncsynthError,
    ClientError,
    ConfigError,
    ConnectError,
    ConnectionDropped,
    DeadlineExceeded,
    EndpointsUnreachable,
    InputError,
    MalformedResponse,
    RateLimited,
    RequestError,
    RequestTimeout,
    ServerError,
    StatusError,
    TransportError,
)
from .journal import Journal, journal_path_for, request_key

__all__ = [
    "AsyncsynthError",
    "ClientError",
    "Completion",
    "ConfigError",
    "ConnectError",
    "ConnectionDropped",
    "DeadlineExceeded",
    "EndpointsUnreachable",
    "Engine",
    "InputError",
    "Journal",
    "MalformedResponse",
    "RateLimited",
    "Request",
    "RequestError",
    "RequestTimeout",
    "Result",
    "ServerError",
    "StatusError",
    "Totals",
    "Transport",
    "TransportError",
    "journal_path_for",
    "request_key",
]
