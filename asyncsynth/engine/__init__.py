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
    EndpointsFailed,
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
from .fleet import TakenOut
from .journal import Journal, journal_path_for, request_key
from .tokens import TokenCounter, estimate_prompt_tokens

__all__ = [
    "AsyncsynthError",
    "ClientError",
    "Completion",
    "ConfigError",
    "ConnectError",
    "ConnectionDropped",
    "DeadlineExceeded",
    "EndpointsFailed",
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
    "TakenOut",
    "TokenCounter",
    "Totals",
    "Transport",
    "TransportError",
    "estimate_prompt_tokens",
    "journal_path_for",
    "request_key",
]
