"""asyncsynth: high-concurrency training-data synthesis from OpenAI-compatible endpoints."""

from .config import Config, EndpointConfig, EngineSettings, load_config, single_endpoint_config
from .engine import (
    AsyncsynthError,
    ClientError,
    ConfigError,
    ConnectError,
    ConnectionDropped,
    DeadlineExceeded,
    Engine,
    InputError,
    Journal,
    MalformedResponse,
    RateLimited,
    Request,
    RequestError,
    RequestTimeout,
    Result,
    ServerError,
    StatusError,
    TransportError,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncsynthError",
    "ClientError",
    "Config",
    "ConfigError",
    "ConnectError",
    "ConnectionDropped",
    "DeadlineExceeded",
    "EndpointConfig",
    "Engine",
    "EngineSettings",
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
    "TransportError",
    "load_config",
    "single_endpoint_config",
]
