"""gearmill: a Gearman job server, client and worker, wire-compatible with gearmand."""

from ._accel import IMPLEMENTATION
from .client.admin import AdminClient
from .client.aio import DEFAULT_TIMEOUT, AsyncClient, Job, JobRequest, JobStatus
from .client.sync import Client, SyncJob
from .data import JSON, Codec
from .errors import (
    CannotConnect,
    ConnectionLost,
    GearmanError,
    JobException,
    JobFailed,
    NoServersAvailable,
    NotAJobServer,
    ProtocolError,
    ServerError,
    Timeout,
)
from .protocol.packets import Priority
from .worker.aio import AsyncWorker, WorkerJob
from .worker.sync import Worker

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
    "IMPLEMENTATION",
    "JSON",
    "AdminClient",
    "AsyncClient",
    "AsyncWorker",
    "CannotConnect",
    "Client",
    "Codec",
    "ConnectionLost",
    "GearmanError",
    "Job",
    "JobException",
    "JobFailed",
    "JobRequest",
    "JobStatus",
    "NoServersAvailable",
    "NotAJobServer",
    "Priority",
    "ProtocolError",
    "ServerError",
    "SyncJob",
    "Timeout",
    "Worker",
    "WorkerJob",
    "__version__",
]
