"""poold's Python client: every route of the HTTP API, typed, sync and async.

    from poold.client import Client
    with Client("http://127.0.0.1:8080", token="poold-local-demo-token") as c:
        result = c.run("tests/fixtures/wasm/upper.wasm", input=["hello"])
        print(result.job.state, result.output)

:class:`AsyncClient` is the core (aiohttp); :class:`Client` runs it on a loop of
its own thread, so it works in scripts and in notebooks alike. See
docs/client.md.
"""

from poold.client.aio import AsyncClient
from poold.client.contexts import ClientConfig, Context, resolve
from poold.client.errors import (
    ApiError,
    BadRequest,
    ConfigError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    JobWaitTimeout,
    NotFound,
    PooldError,
    RequestTimeout,
    ServerError,
    TooManyRequests,
    Unauthorized,
)
from poold.client.models import (
    TERMINAL_STATES,
    Artifact,
    Job,
    JobResult,
    Module,
    Pool,
)
from poold.client.retry import RetryPolicy
from poold.client.sync import Client
from poold.jobs.model import JobState

__all__ = [
    "TERMINAL_STATES",
    "ApiError",
    "Artifact",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientConfig",
    "ConfigError",
    "Conflict",
    "ConnectionFailed",
    "Context",
    "Forbidden",
    "Gone",
    "Job",
    "JobResult",
    "JobState",
    "JobWaitTimeout",
    "Module",
    "NotFound",
    "Pool",
    "PooldError",
    "RequestTimeout",
    "RetryPolicy",
    "ServerError",
    "TooManyRequests",
    "Unauthorized",
    "resolve",
]
