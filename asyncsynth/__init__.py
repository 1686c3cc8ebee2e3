"""asyncsynth: high-concurrency training-data synthesis from OpenAI-compatible endpoints."""

from .config import Config, EndpointConfig, EngineSettings, load_config, single_endpoint_config
from .demo import DemoResult, run_demo
from .engine import (
    AsyncsynthError,
    BatchError,
    BatchSettings,
    BudgetExceeded,
    ClientError,
    ConfigError,
    ConnectError,
    ConnectionDropped,
    DeadlineExceeded,
    EndpointsFailed,
    EndpointsUnreachable,
    Engine,
    InputError,
    Journal,
    MalformedResponse,
    Price,
    RateLimited,
    Request,
    RequestError,
    RequestTimeout,
    Result,
    ServerError,
    StatusError,
    TransportError,
)
from .export import ExportResult, export_run, push_to_hub
from .pipelines.errors import PipelineError, RunFolderError
from .pipelines.events import PipelineEvent
from .pipelines.gra import (
    CommitteeSettings,
    GraResult,
    GraSettings,
    Verdict,
    review_sample,
    run_gra,
)
from .pipelines.s3 import S3Error, S3Result, S3Settings, load_s3_settings, run_s3
from .progress import Progress
from .view import ViewServer

__version__ = "0.1.0"

__all__ = [
    "AsyncsynthError",
    "BatchError",
    "BatchSettings",
    "BudgetExceeded",
    "ClientError",
    "CommitteeSettings",
    "Config",
    "ConfigError",
    "ConnectError",
    "ConnectionDropped",
    "DeadlineExceeded",
    "DemoResult",
    "EndpointConfig",
    "EndpointsFailed",
    "EndpointsUnreachable",
    "Engine",
    "EngineSettings",
    "ExportResult",
    "GraResult",
    "GraSettings",
    "InputError",
    "Journal",
    "MalformedResponse",
    "PipelineError",
    "PipelineEvent",
    "Price",
    "Progress",
    "RateLimited",
    "Request",
    "RequestError",
    "RequestTimeout",
    "Result",
    "RunFolderError",
    "S3Error",
    "S3Result",
    "S3Settings",
    "ServerError",
    "StatusError",
    "TransportError",
    "Verdict",
    "ViewServer",
    "export_run",
    "load_config",
    "load_s3_settings",
    "push_to_hub",
    "review_sample",
    "run_demo",
    "run_gra",
    "run_s3",
    "single_endpoint_config",
]
