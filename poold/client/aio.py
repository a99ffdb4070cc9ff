"""The asynchronous client: every route of the HTTP API, typed.

One ``aiohttp`` session per client, created on first use inside the running
loop. Every call has a deadline (``timeout``, seconds, covering its retries);
streams that follow a running job have a connect deadline and, if asked, an
overall one, because a job may legitimately run for an hour. Tokens go only
into the ``Authorization`` header: never into a URL, a message or ``repr``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from poold.client.contexts import DEFAULT_URL, resolve
from poold.client.errors import (
    Conflict,
    ConnectionFailed,
    JobWaitTimeout,
    PooldError,
    RequestTimeout,
    error_for,
)
from poold.client.models import Artifact, Job, JobResult, Module, Pool
from poold.client.retry import RetryPolicy, call_with_retries
from poold.jobs.model import JobState

ModuleSource = bytes | str | os.PathLike[str]

#: How long to read a stream that is not following before giving up on silence.
STREAM_READ_TIMEOUT_S = 60.0
CHUNK = 64 * 1024


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _quote(segment: str) -> str:
    return quote(segment, safe="")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return float(headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _message(body: bytes, reason: str | None) -> str:
    """The server's sentence: ``{"error": ...}``, else its text, else the reason."""
    try:
        value = json.loads(body)["error"]
        if isinstance(value, str):
            return value
    except (ValueError, KeyError, TypeError):
        pass
    text = body.decode("utf-8", "replace").strip()
    return text[:500] or (reason or "no reason given")


def _transport_error(e: aiohttp.ClientError, what: str, url: str) -> PooldError:
    if isinstance(e, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return ConnectionFailed(f"{what}: cannot connect to {url} ({e})", before_sending=True)
    if isinstance(e, aiohttp.ServerTimeoutError):
        return RequestTimeout(f"{what}: the server went silent ({e})")
    return ConnectionFailed(f"{what}: the connection to {url} broke ({e})")


async def iter_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Lines (without their ``\\n``) of a byte stream, however long each one is."""
    pending: list[bytes] = []
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            pending.append(chunk[start:end])
            yield b"".join(pending)
            pending.clear()
            start = end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    if pending:
        yield b"".join(pending)


async def iter_sse(lines: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` pairs of a Server-Sent Events stream."""
    event, data = "message", list[str]()
    async for raw in lines:
        line = raw.decode("utf-8", "replace").removesuffix("\r")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


class AsyncClient:
    """A tenant's view of one poold. Use ``async with AsyncClient(...) as c``.

    ``timeout`` bounds each call (retries included); ``connect_timeout`` each
    connection attempt. ``retry`` says how temporary failures are retried.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry = retry or RetryPolicy()
        self._session = session
        self._own_session = session is None

    @classmethod
    def from_config(
        cls,
        *,
        context: str | None = None,
        url: str | None = None,
        token: str | None = None,
        **options: Any,
    ) -> AsyncClient:
        """A client for the current (or named) context of ``~/.config/poold/config.toml``,
        with ``POOLD_URL`` / ``POOLD_TOKEN`` and the arguments taking precedence."""
        target = resolve(url=url, token=token, context=context)
        return cls(target.url, target.token, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    # -- plumbing ------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        """Per request, not on the session: a session passed in is used as it is."""
        headers = {"User-Agent": "poold-client"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        headers.update(extra or {})
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        *,
        safe: bool,
        timeout: float | None = None,
        ok: Iterable[int] = (),
        **kw: Any,
    ) -> _Reply:
        """One request with its body read, retried as :mod:`retry` allows."""
        what = f"{method} {path.split('?', maxsplit=1)[0]}"
        url = self.url + path
        allowed = set(ok)
        kw["headers"] = self._headers(kw.get("headers"))

        async def once() -> _Reply:
            try:
                async with self._http().request(
                    method, url, timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=self.connect_timeout), **kw,
                ) as r:
                    body = await r.read()
                    if r.status >= 400 and r.status not in allowed:
                        raise error_for(status=r.status, message=_message(body, r.reason),
                                        method=method, path=path.split("?", maxsplit=1)[0],
                                        retry_after=_retry_after(r.headers))
                    return _Reply(r.status, r.headers, body)
            except aiohttp.ClientError as e:
                raise _transport_error(e, what, self.url) from e

        deadline = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(deadline):
                return await call_with_retries(once, policy=self.retry, safe=safe, what=what)
        except TimeoutError as e:
            if isinstance(e, PooldError):
                raise
            raise RequestTimeout(f"{what}: no answer within {deadline:g} s") from e

    async def _stream(
        self,
        path: str,
        *,
        follow: bool,
        timeout: float | None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[bytes]:
        """The body of a GET in chunks. Opening it is retried; a broken stream is not
        (resuming could repeat or skip data), it raises :class:`ConnectionFailed`."""
        what = f"GET {path}"
        client_timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=self.connect_timeout,
            sock_read=None if follow else STREAM_READ_TIMEOUT_S,
        )

        async def once() -> aiohttp.ClientResponse:
            try:
                r = await self._http().get(self.url + path, headers=self._headers(headers),
                                           params=params,
                                           timeout=client_timeout)
            except aiohttp.ClientError as e:
                raise _transport_error(e, what, self.url) from e
            except TimeoutError as e:
                raise RequestTimeout(f"{what}: no answer within {timeout:g} s") from e
            if r.status >= 400:
                body = await r.read()
                r.release()
                raise error_for(status=r.status, message=_message(body, r.reason),
                                method="GET", path=path, retry_after=_retry_after(r.headers))
            return r

        response = await call_with_retries(once, policy=self.retry, safe=True, what=what)
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                yield chunk
        except aiohttp.ClientError as e:
            raise _transport_error(e, what, self.url) from e
        except TimeoutError as e:
            raise RequestTimeout(f"{what}: the stream ran past its {timeout} s timeout") from e
        finally:
            response.release()

    # -- modules ---------------------------------------------------------------------

    async def upload_module(
        self, source: ModuleSource, *, timeout: float | None = None
    ) -> Module:
        """Upload a ``.wasm`` (bytes, or a path). Stored by content, so repeating is safe."""
        data = source if isinstance(source, bytes) else await asyncio.to_thread(
            Path(source).read_bytes)
        reply = await self._call("PUT", "/v1/modules", safe=True, timeout=timeout, data=data,
                                 headers={"Content-Type": "application/wasm"})
        return Module.from_json(reply.json(), created=reply.status == 201)

    async def list_modules(self, *, timeout: float | None = None) -> list[Module]:
        """This tenant's modules (``GET /v1/modules``), following pages if there are any."""
        found: list[Module] = []
        path: str | None = "/v1/modules"
        while path is not None:
            body = (await self._call("GET", path, safe=True, timeout=timeout)).json()
            items = body if isinstance(body, list) else body.get("modules", [])
            found.extend(Module.from_json(m) for m in items)
            path = body.get("next") if isinstance(body, dict) else None
        return found

    # -- jobs --------------------------------------------------------------------------

    async def submit(
        self,
        module: str | None = None,
        *,
        runtime: str | None = None,
        script: str | None = None,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        input: Iterable[str] = (),
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        fuel: int | None = None,
        idempotency_key: str | None = None,
        extra: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submit a job running ``module`` (a sha256 from :meth:`upload_module`), or
        ``script`` on the interpreter ``runtime`` (one of :meth:`list_runtimes`).

        The request carries an ``Idempotency-Key`` (generated unless given), so a
        retry after a lost answer gets the same job instead of a second one.
        ``extra`` adds request fields this client does not name yet.
        """
        limits = {k: v for k, v in
                  (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("fuel", fuel))
                  if v is not None}
        body: dict[str, Any] = {"args": list(args), "env": dict(env or {}),
                                "input": list(input)}
        if module is not None:
            body["module"] = module
        if runtime is not None:
            body["runtime"] = runtime
        if script is not None:
            body["script"] = script
        if limits:
            body["limits"] = limits
        body.update(extra or {})
        key = idempotency_key or f"poold-client-{uuid.uuid4().hex}"
        reply = await self._call("POST", "/v1/jobs", safe=True, timeout=timeout, json=body,
                                 headers={"Idempotency-Key": key})
        return Job.from_json(reply.json())

    async def iter_jobs(
        self, *, state: str | Iterable[str] | None = None, page_size: int = 100,
        timeout: float | None = None,
    ) -> AsyncIterator[Job]:
        """This tenant's jobs, newest first, page after page (filtered by ``state``)."""
        states = {state} if isinstance(state, str) else set(state or ())
        path: str | None = f"/v1/jobs?limit={page_size}"
        while path is not None:
            body = (await self._call("GET", path, safe=True, timeout=timeout)).json()
            for item in body.get("jobs", []):
                job = Job.from_json(item)
                if not states or job.state in states:
                    yield job
            path = body.get("next")

    def stream_export(
        self, *, format: str = "csv", since: str | None = None, until: str | None = None,
        state: str | Iterable[str] | None = None, timeout: float | None = None,
    ) -> AsyncIterator[bytes]:
        """``GET /v1/jobs/export``: every record of this tenant, oldest first, one flat
        row per job (CSV with a header, or NDJSON), as the server streams it; ``since``
        and ``until`` are RFC 3339 times on ``submitted_at``."""
        states = [state] if isinstance(state, str) else list(state or ())
        params = {"format": format}
        params.update({k: v for k, v in (("since", since), ("until", until)) if v})
        if states:
            params["state"] = ",".join(states)
        return self._stream("/v1/jobs/export", follow=False, timeout=timeout, params=params)

    async def list_jobs(
        self, *, limit: int | None = 50, state: str | Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> list[Job]:
        """Up to ``limit`` of this tenant's newest jobs (None: all of them)."""
        page = 1000 if limit is None else max(1, min(limit, 1000))
        jobs: list[Job] = []
        async for job in self.iter_jobs(state=state, page_size=page, timeout=timeout):
            jobs.append(job)
            if limit is not None and len(jobs) >= limit:
                break
        return jobs

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        reply = await self._call("GET", f"/v1/jobs/{_quote(job_id)}", safe=True,
                                 timeout=timeout)
        return Job.from_json(reply.json())

    async def cancel(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Cancel a queued or running job; :class:`Conflict` if it already ended otherwise.

        A job that is already ``cancelled`` answers with its record, not an error:
        aiohttp repeats a DELETE whose connection broke (RFC 9112 treats DELETE as
        idempotent), and the repeat of a cancel that did happen must not look like
        a failure."""
        path = f"/v1/jobs/{_quote(job_id)}"
        try:
            reply = await self._call("DELETE", path, safe=False, timeout=timeout)
        except Conflict:
            job = await self.get_job(job_id, timeout=timeout)
            if job.state == JobState.CANCELLED:
                return job
            raise
        return Job.from_json(reply.json())

    async def wait(
        self, job_id: str, *, timeout: float | None = None, poll_max_s: float = 1.0
    ) -> Job:
        """The job's record once it has ended. Polls, starting at 50 ms and doubling up
        to ``poll_max_s``; :class:`JobWaitTimeout` after ``timeout`` seconds (None:
        as long as the job takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.05
        while True:
            job = await self.get_job(job_id)
            if job.terminal:
                return job
            if deadline is not None and time.monotonic() + pause > deadline:
                waiting = job.record.get("waiting")
                why = f": {waiting['message']}" if isinstance(waiting, dict) and \
                    waiting.get("message") else ""
                raise JobWaitTimeout(
                    f"job {job_id} is still {job.state} after {timeout:g} s{why}")
            await asyncio.sleep(pause)
            pause = min(pause * 2, poll_max_s)

    async def run(
        self,
        module: ModuleSource,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> JobResult:
        """Upload (if ``module`` is bytes or a path), submit, collect the output while it
        runs, and return the final record with the output records. ``fields`` are
        :meth:`submit`'s; ``timeout`` bounds the whole run (None: the job's own limit)."""
        if isinstance(module, str) and _is_sha256(module):
            sha = module
        else:
            sha = (await self.upload_module(module)).sha256
        job = await self.submit(sha, **fields)
        output = [line async for line in self.stream_output(job.id, follow=True,
                                                            timeout=timeout)]
        return JobResult(job=await self.wait(job.id, timeout=self.timeout), output=output)

    async def run_many(
        self,
        module: ModuleSource,
        jobs: Iterable[Mapping[str, Any]],
        *,
        concurrency: int = 16,
        timeout: float | None = None,
    ) -> list[JobResult]:
        """Upload ``module`` once, then :meth:`run` one job per item of ``jobs`` (each a
        dict of :meth:`submit`'s fields), ``concurrency`` at a time; results in order."""
        if isinstance(module, str) and _is_sha256(module):
            sha = module
        else:
            sha = (await self.upload_module(module)).sha256
        gate = asyncio.Semaphore(concurrency)

        async def one(fields: Mapping[str, Any]) -> JobResult:
            async with gate:
                return await self.run(sha, timeout=timeout, **fields)

        return list(await asyncio.gather(*(one(f) for f in jobs)))

    # -- output, logs, artifacts ----------------------------------------------------------

    def stream_output_bytes(
        self, job_id: str, *, follow: bool = True, timeout: float | None = None
    ) -> AsyncIterator[bytes]:
        """The job's output records as bytes, one per item; with ``follow`` until the
        job ends (records arrive as the module prints them)."""
        params = {"follow": "true"} if follow else None
        return iter_lines(self._stream(f"/v1/jobs/{_quote(job_id)}/output", follow=follow,
                                       timeout=timeout, params=params))

    async def stream_output(
        self, job_id: str, *, follow: bool = True, timeout: float | None = None
    ) -> AsyncIterator[str]:
        """:meth:`stream_output_bytes` decoded as UTF-8 (invalid bytes become U+FFFD)."""
        async for record in self.stream_output_bytes(job_id, follow=follow, timeout=timeout):
            yield record.decode("utf-8", "replace")

    async def output(self, job_id: str, *, timeout: float | None = None) -> list[str]:
        """The output records written so far (all of them once the job has ended)."""
        deadline = self.timeout if timeout is None else timeout
        return [r async for r in self.stream_output(job_id, follow=False, timeout=deadline)]

    async def stream_logs(
        self, job_id: str, *, follow: bool = True, timeout: float | None = None
    ) -> AsyncIterator[str]:
        """The module's stderr in chunks as it writes it; ends when the job ends."""
        path = f"/v1/jobs/{_quote(job_id)}/logs"
        if not follow:
            async for chunk in self._stream(path, follow=False, timeout=timeout):
                yield chunk.decode("utf-8", "replace")
            return
        chunks = self._stream(path, follow=True, timeout=timeout,
                              headers={"Accept": "text/event-stream"})
        async for event, data in iter_sse(iter_lines(chunks)):
            if event == "log":
                yield data
            elif event == "end":
                return

    async def logs(self, job_id: str, *, timeout: float | None = None) -> str:
        """The module's stderr so far (all of it once the job has ended)."""
        deadline = self.timeout if timeout is None else timeout
        return "".join([c async for c in self.stream_logs(job_id, follow=False,
                                                          timeout=deadline)])

    async def list_artifacts(self, job_id: str, *, timeout: float | None = None
                             ) -> list[Artifact]:
        reply = await self._call("GET", f"/v1/jobs/{_quote(job_id)}/artifacts", safe=True,
                                 timeout=timeout)
        return [Artifact.from_json(a) for a in reply.json().get("artifacts", [])]

    def stream_artifact(self, job_id: str, name: str, *, timeout: float | None = None
                        ) -> AsyncIterator[bytes]:
        path = f"/v1/jobs/{_quote(job_id)}/artifacts/{quote(name, safe='/')}"
        return self._stream(path, follow=False, timeout=timeout)

    async def get_artifact(self, job_id: str, name: str, *, timeout: float | None = None
                           ) -> bytes:
        deadline = self.timeout if timeout is None else timeout
        return b"".join([c async for c in self.stream_artifact(job_id, name,
                                                               timeout=deadline)])

    async def download_artifact(
        self, job_id: str, name: str, directory: str | os.PathLike[str] = ".",
        *, timeout: float | None = None,
    ) -> Path:
        """Save an artifact as ``directory/name`` (sub-folders made as needed); a name
        that would land outside ``directory`` is refused."""
        base = await asyncio.to_thread(Path(directory).resolve)
        target = await asyncio.to_thread((base / name).resolve)
        if not target.is_relative_to(base) or target == base:
            raise PooldError(f"artifact name {name!r} would be written outside {base}")
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.part")
        try:
            with temp.open("wb") as f:
                async for chunk in self.stream_artifact(job_id, name, timeout=timeout):
                    f.write(chunk)
            temp.replace(target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return target

    # -- pool and health ----------------------------------------------------------------

    async def pool(self, *, timeout: float | None = None) -> Pool:
        return Pool.from_json((await self._call("GET", "/v1/pool", safe=True,
                                                timeout=timeout)).json())

    async def tune_pool(self, changes: dict[str, Any], *,
                        timeout: float | None = None) -> Pool:
        """Change ``min_idle``, ``min_idle_floor``, ``max_pods``, ``idle_ttl_s`` at run
        time (``PUT /v1/pool``; needs the administrator's token)."""
        reply = await self._call("PUT", "/v1/pool", safe=True, timeout=timeout, json=changes)
        return Pool.from_json(reply.json())

    async def list_runtimes(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The interpreters jobs may name as ``runtime`` (``GET /v1/runtimes``)."""
        body = (await self._call("GET", "/v1/runtimes", safe=True, timeout=timeout)).json()
        return list(body.get("runtimes", []))

    async def health(self, *, timeout: float | None = None) -> bool:
        """``/healthz``: the daemon is alive."""
        reply = await self._call("GET", "/healthz", safe=True, timeout=timeout)
        return reply.status == 200

    async def ready(self, *, timeout: float | None = None) -> bool:
        """``/readyz``: the daemon takes work now (False while it starts)."""
        reply = await self._call("GET", "/readyz", safe=True, timeout=timeout, ok=(503,))
        return reply.status == 200

    async def openapi(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``/openapi.json``: the server's own description of its API."""
        body: dict[str, Any] = (await self._call("GET", "/openapi.json", safe=True,
                                                 timeout=timeout)).json()
        return body

    async def request(
        self, method: str, path: str, *, data: bytes | None = None,
        content_type: str | None = None, timeout: float | None = None,
    ) -> bytes:
        """Any route, for what this client does not name yet (``poold api`` uses it):
        the body of the answer; errors raise as everywhere. Only GET is retried."""
        headers = {"Content-Type": content_type} if content_type else None
        reply = await self._call(method.upper(), path if path.startswith("/") else "/" + path,
                                 safe=method.upper() == "GET", timeout=timeout, data=data,
                                 headers=headers)
        return reply.body

    async def metrics(self, *, timeout: float | None = None) -> str:
        """``/metrics`` in Prometheus' text format."""
        reply = await self._call("GET", "/metrics", safe=True, timeout=timeout)
        return reply.body.decode()


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


