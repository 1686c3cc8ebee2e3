"""The request engine: knows endpoints, limits, retries and journals; nothing of GRA or S3."""

from .batch import BatchSettings
from .client import Completion, Transport
from .cost import Ledger, Price, book_cost, made_cost, sum_usd
from .engine import Engine, Request, Result, Totals, tune_gc
from .errors import (
    AsyncsynthError,
    BatchError,
    BudgetExceeded,
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
    "BatchError",
    "BatchSettings",
    "BudgetExceeded",
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
    "Ledger",
    "MalformedResponse",
    "Price",
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
    "book_cost",
    "estimate_prompt_tokens",
    "journal_path_for",
    "made_cost",
    "request_key",
    "sum_usd",
    "tune_gc",
]
