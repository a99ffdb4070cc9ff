"""What every client command shares: where to connect, and exit codes scripts can rely on.

| code | meaning |
|---|---|
| 0 | done (for ``run`` and ``jobs wait``: the job succeeded) |
| 1-255 | ``run`` / ``jobs wait``: the module's own exit code when the job ``failed`` |
| 2 | wrong usage of the command (click's) |
| 65 | the server refused the request (400, 409, 413: the message says why) |
| 66 | no such job, module or artifact (404), or the job expired (410) |
| 69 | poold is unreachable or unavailable (connection refused, 5xx, 429 after retries) |
| 70 | the job ended in ``error`` (poold or the platform failed it) |
| 75 | a deadline passed: ``--timeout`` of ``jobs wait``, or a request's own |
| 77 | the token was refused (401, 403) |
| 78 | the client configuration is unusable (no token, bad contexts file, mode not 0600) |
| 124 | the job ``timed_out`` |
| 130 | the job was ``cancelled`` (or you pressed Ctrl-C) |
| 141 | the reader of our output went away (``| head``) |
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click

from poold.client import (
    ApiError,
    AsyncClient,
    ConfigError,
    Conflict,
    ConnectionFailed,
    Gone,
    Job,
    JobWaitTimeout,
    NotFound,
    PooldError,
    RequestTimeout,
    Unauthorized,
)
from poold.client.contexts import Target, resolve
from poold.client.errors import BadRequest, Forbidden

T = TypeVar("T")

EXIT_OK = 0
EXIT_REFUSED = 65
EXIT_NOT_FOUND = 66
EXIT_UNAVAILABLE = 69
EXIT_JOB_ERROR = 70
EXIT_DEADLINE = 75
EXIT_AUTH = 77
EXIT_CONFIG = 78
EXIT_TIMED_OUT = 124
EXIT_CANCELLED = 130
EXIT_BROKEN_PIPE = 141


def exit_code_of(job: Job) -> int:
    """How a job's end becomes ``run``'s and ``jobs wait``'s exit code."""
    if job.state == "succeeded":
        return EXIT_OK
    if job.state == "failed" and job.exit_code:
        return int(job.exit_code) & 0xFF or 1
    return {"timed_out": EXIT_TIMED_OUT, "cancelled": EXIT_CANCELLED,
            "error": EXIT_JOB_ERROR}.get(job.state, 1)


def exit_code_for_error(error: PooldError) -> int:
    if isinstance(error, Unauthorized | Forbidden):
        return EXIT_AUTH
    if isinstance(error, NotFound | Gone):
        return EXIT_NOT_FOUND
    if isinstance(error, BadRequest | Conflict):
        return EXIT_REFUSED
    if isinstance(error, ApiError):
        return EXIT_UNAVAILABLE if error.status >= 429 else EXIT_REFUSED
    if isinstance(error, ConnectionFailed):
        return EXIT_UNAVAILABLE
    if isinstance(error, RequestTimeout | JobWaitTimeout):
        return EXIT_DEADLINE
    if isinstance(error, ConfigError):
        return EXIT_CONFIG
    return 1


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"poold: {message}", err=True)
    sys.exit(code)


@dataclass
class Connection:
    """The ``--url``, ``--token`` and ``--context`` of one command, resolved lazily."""

    url: str | None
    token: str | None
    context: str | None
    #: seconds a request may take, its retries included
    request_timeout: float = 60.0
    _target: Target | None = None

    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = resolve(url=self.url, token=self.token, context=self.context)
        return self._target

    def client(self, *, need_token: bool = True) -> AsyncClient:
        target = self.target
        if need_token and not target.token:
            raise ConfigError(
                "no token: set POOLD_TOKEN, pass --token, or add a context with "
                "`poold config set-context NAME --url URL --token-file FILE`")
        return AsyncClient(target.url, target.token, timeout=self.request_timeout)

    def call(self, work: Callable[[AsyncClient], Awaitable[T]], *, need_token: bool = True
             ) -> T:
        async def go() -> T:
            async with self.client(need_token=need_token) as client:
                return await work(client)

        return asyncio.run(go())

    def explain(self, error: PooldError) -> str:
        """The error's sentence, with where the URL or token came from when that helps."""
        if isinstance(error, ApiError):
            text = f"{error.message} ({error.status})"
            if isinstance(error, Unauthorized) and self._target is not None:
                text += (f"; the token came from {self._target.token_from}, check it "
                         f"(poold config get-contexts)")
            return text
        if isinstance(error, ConnectionFailed) and self._target is not None:
            return f"{error} (the URL came from {self._target.url_from})"
        return str(error)


@contextlib.contextmanager
def exit_codes(conn: Connection | None) -> Iterator[None]:
    """Turn the client's errors into a message on stderr and a documented exit code."""
    try:
        yield
    except PooldError as e:
        fail(conn.explain(e) if conn else str(e), exit_code_for_error(e))
    except BrokenPipeError:
        # our reader went away (`| head`): stop quietly, as other tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    except KeyboardInterrupt:
        sys.exit(EXIT_CANCELLED)


def client_command(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--url/--token/--context`` and pass a :class:`Connection` first."""

    @functools.wraps(f)
    def wrapper(*args: Any, url: str | None, token: str | None, context: str | None,
                request_timeout: float, **kw: Any) -> Any:
        conn = Connection(url=url, token=token, context=context,
                          request_timeout=request_timeout)
        with exit_codes(conn):
            return f(conn, *args, **kw)

    wrapper = click.option(
        "--request-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0,
        show_default=True, metavar="SECONDS",
        help="How long one request may take, retries included (exit code 75 after). "
        "Following a job's output or log is not bounded by it.",
    )(wrapper)
    wrapper = click.option(
        "--context", default=None, metavar="NAME",
        help="Context of the client config to use (default: its current_context).",
    )(wrapper)
    wrapper = click.option(
        "--token", default=None, metavar="TOKEN",
        help="Bearer token; overrides POOLD_TOKEN and the context (prefer those: a flag "
        "shows in `ps`).",
    )(wrapper)
    return click.option(
        "--url", default=None, metavar="URL",
        help="poold's URL; overrides POOLD_URL and the context (default "
        "http://127.0.0.1:8080).",
    )(wrapper)


def quiet_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-q", "--quiet", is_flag=True,
                        help="Print only ids (one per line), for scripts.")(f)
