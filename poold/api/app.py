"""The HTTP API (v1); its contract is ``openapi.json`` beside this file (served at
``/openapi.json``, linked from docs/), which tests/api/test_openapi.py keeps true.

Every ``/v1`` route needs a bearer token that maps to one tenant; another
tenant's job answers 404 exactly like a job that does not exist. Bad input
gets a 4xx with ``{"error": "<a sentence>"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote

import structlog
from aiohttp import web
from pydantic import ValidationError

from poold.api.bodies import JobRequest, describe, lone_surrogate
from poold.api.console import ModuleListing, add_console_routes
from poold.api.export import export_jobs
from poold.api.guard import (
    BodyRules,
    BodyTooLarge,
    SlowBody,
    TooManyUploads,
    UploadSlots,
    body_chunks,
    broken_off,
    cut_off,
    head_arrived,
    read_body,
)
from poold.config import Settings
from poold.data.kafka import DataPlane, DataUnavailable
from poold.jobs.files import JobFiles
from poold.jobs.model import Job, JobState, Limits
from poold.jobs.store import JobStore
from poold.metrics import Metrics
from poold.modules.runtimes import Runtime, Runtimes, runtime_names
from poold.modules.store import ModuleStore
from poold.runtime.inspect import ModuleRejected
from poold.sched.pool import Pool
from poold.sched.scheduler import QueueFull, Scheduler
from poold.sched.tuning import PoolTuner, TuningError
from poold.types import JobId, ModuleHash, TenantName, new_job_id

log = structlog.get_logger(__name__)

MODULE_KEYS_KEPT = 10_000
"""Idempotency-Keys of ``PUT /v1/modules`` remembered (all tenants), the oldest
forgotten first. Only a retry needs its key, within seconds or minutes; an upload
repeated after its key is forgotten is answered 200, as any repeat of the same
bytes (modules are stored by content), just without ``Idempotent-Replayed``."""
OPENAPI = (resources.files("poold.api") / "openapi.json").read_bytes()
"""The API's contract, also at docs/openapi.json (a link to this one file)."""

TENANT: web.RequestKey[TenantName] = web.RequestKey("tenant", TenantName)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class Api:
    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        scheduler: Scheduler,
        pool: Pool,
        tuner: PoolTuner,
        modules: ModuleStore,
        data: DataPlane,
        files: JobFiles,
        metrics: Metrics,
        ready: Callable[[], bool],
        accepting: Callable[[], bool] = lambda: True,
        runtimes: Runtimes | None = None,
    ) -> None:
        self.settings = settings
        self.runtimes = runtimes if runtimes is not None else Runtimes({}, modules)
        self.store = store
        self.scheduler = scheduler
        self.pool = pool
        self.tuner = tuner
        """Changes the pool's settings (``PUT /v1/pool``; SIGHUP goes through it too)."""
        self.modules = modules
        self.data = data
        self.files = files
        self.metrics = metrics
        self.ready = ready
        self.accepting = accepting
        self._module_keys: dict[tuple[TenantName, str], tuple[int, dict[str, Any]]] = {}
        self._submitting: dict[tuple[TenantName, str], asyncio.Future[web.Response]] = {}
        self._tokens = {t.token_sha256: TenantName(name) for name, t in settings.tenants.items()}
        self.body_rules = BodyRules.from_settings(settings.server)
        self.uploads = UploadSlots(total=settings.server.max_uploads,
                                   per_tenant=settings.server.max_uploads_per_tenant,
                                   gauge=metrics.uploads_in_progress)

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[head_arrived, self._errors, self._auth],
            client_max_size=self.settings.server.max_input_mb * 1024 * 1024,
            # aiohttp arms this timer when a connection opens and after each response,
            # and closes the connection if no request has arrived when it fires
            handler_args={"keepalive_timeout": self.settings.server.idle_timeout_s},
        )
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics_text)
        r.add_put("/v1/modules", self.put_module)
        r.add_get("/v1/modules", ModuleListing(modules=self.modules, jobs=self.store,
                                               tenant=lambda request: request[TENANT]).get)
        add_console_routes(r)
        r.add_post("/v1/jobs", self.post_job)
        r.add_get("/v1/jobs", self.list_jobs)
        r.add_get("/v1/jobs/export", self.export_jobs)  # before /v1/jobs/{id}
        r.add_get("/v1/jobs/{id}", self.get_job)
        r.add_delete("/v1/jobs/{id}", self.delete_job)
        r.add_get("/v1/jobs/{id}/output", self.get_output)
        r.add_get("/v1/jobs/{id}/logs", self.get_logs)
        r.add_get("/v1/jobs/{id}/artifacts", self.list_artifacts)
        r.add_get("/v1/jobs/{id}/artifacts/{name:.+}", self.get_artifact)
        r.add_get("/v1/pool", self.get_pool)
        r.add_get("/v1/runtimes", self.list_runtimes)
        r.add_put("/v1/pool", self.put_pool)
        r.add_get("/openapi.json", self.openapi)
        return app

    # -- middleware --------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as e:
            if 400 <= e.status < 500:
                self.metrics.http_errors.labels(str(e.status)).inc()
            if e.status >= 400 and e.content_type != "application/json":
                text = {
                    404: "no such route; see the API table in the README",
                    405: f"{request.method} is not allowed on {request.path}",
                    413: "the request body is too large (server.max_input_mb)",
                }.get(e.status, e.reason)
                return error(e.status, text)
            raise
        except SlowBody as e:
            self.metrics.http_errors.labels("408").inc()
            log.info("request body too slow; connection closed", path=request.path,
                     error=str(e))
            return await cut_off(request, str(e))
        except BodyTooLarge as e:
            response = error(413, str(e))
        except DataUnavailable as e:
            if request.writer.output_size:  # a stream had begun: it is cut, not answered
                log.warning("kafka unavailable; the answer under way was cut off",
                            path=request.path, error=str(e))
                return broken_off(request)
            log.warning("kafka unavailable", error=str(e))
            response = error(503, f"Kafka is unavailable right now; retry shortly ({e})",
                             **{"Retry-After": "5"})
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            if request.writer.output_size:
                log.exception("request failed after its answer began; the answer was cut off",
                              path=request.path)
                return broken_off(request)
            log.exception("request failed", path=request.path)
            response = error(500, "poold failed to handle this request; it has been logged")
        if 400 <= response.status < 500:
            self.metrics.http_errors.labels(str(response.status)).inc()
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401, "this route needs an 'Authorization: Bearer <token>' header",
                         **{"WWW-Authenticate": "Bearer"})
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        admin = self.settings.server.admin_token_sha256
        is_admin = admin is not None and hmac.compare_digest(admin, digest)
        if request.path == "/v1/pool" and request.method == "PUT":
            if is_admin:
                return await handler(request)
            if any(hmac.compare_digest(known, digest) for known in self._tokens):
                return error(403, "changing the pool needs the administrator's token "
                                  "(server.admin_token_sha256), not a tenant's")
            return error(401, "the bearer token is not the administrator's",
                         **{"WWW-Authenticate": "Bearer"})
        if is_admin and request.path == "/v1/pool":
            return await handler(request)
        tenant = None
        for known, name in self._tokens.items():
            if hmac.compare_digest(known, digest):
                tenant = name
        if tenant is None:
            return error(401, "the bearer token is not valid for any tenant",
                         **{"WWW-Authenticate": "Bearer"})
        request[TENANT] = tenant
        return await handler(request)

    # -- plain routes --------------------------------------------------------------

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        if self.ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "starting"}, status=503)

    async def metrics_text(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    async def openapi(self, _: web.Request) -> web.Response:
        return web.Response(body=OPENAPI, content_type="application/json")

    async def get_pool(self, _: web.Request) -> web.Response:
        return web.json_response(self.pool.figures())

    async def put_pool(self, request: web.Request) -> web.Response:
        """Re-tune the pool (admin only): validated like the config file, kept in
        ``state.dir/pool.json`` so a restart keeps it."""
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body must be a JSON object of [pool] keys, "
                              'e.g. {"min_idle": 8}')
        if not isinstance(body, dict) or not body:
            return error(400, "the body must be a non-empty JSON object of [pool] keys, "
                              'e.g. {"min_idle": 8}')
        try:
            await self.tuner.put(body)
        except TuningError as e:
            return error(400, str(e))
        return web.json_response(self.pool.figures())

    # -- modules -------------------------------------------------------------------

    def _refuse_while_draining(self) -> web.Response | None:
        if self.accepting():
            return None
        return error(503, "poold is shutting down and accepts no new work; retry shortly "
                     "(another replica, or this one after its restart, will take it)",
                     **{"Retry-After": "5"})

    async def put_module(self, request: web.Request) -> web.Response:
        refused = self._refuse_while_draining()
        if refused is not None:
            return refused
        key = request.headers.get("Idempotency-Key")
        if key:
            seen = self._module_keys.get((request[TENANT], key))
            if seen is not None:
                return web.json_response(seen[1], status=seen[0],
                                         headers={"Idempotent-Replayed": "true"})
        try:
            with self.uploads.hold(request[TENANT]):
                response = await self._put_module(request)
        except TooManyUploads as e:
            return error(429, str(e), **{"Retry-After": "1"})
        if key and response.status in (200, 201) and response.body is not None:
            self._module_keys[(request[TENANT], key)] = (
                response.status, json.loads(bytes(response.body)))  # type: ignore[arg-type]
            while len(self._module_keys) > MODULE_KEYS_KEPT:
                del self._module_keys[next(iter(self._module_keys))]
        return response

    async def _put_module(self, request: web.Request) -> web.Response:
        length = request.content_length
        limit = self.modules.max_bytes
        if length is not None and length > limit:
            self.metrics.uploads_rejected.labels("too_large").inc()
            return error(413, f"the module is {length} bytes; the upload limit is "
                         f"{limit // (1024 * 1024)} MiB (server.max_upload_mb)")

        try:
            stored = await self.modules.put(body_chunks(request, self.body_rules),
                                            tenant=request[TENANT])
        except ModuleRejected as e:
            self.metrics.uploads_rejected.labels(e.reason).inc()
            status = 413 if e.reason == "too_large" else 400
            return error(status, str(e))
        self.metrics.uploads.labels("created" if stored.created else "existing").inc()
        return web.json_response(
            {"sha256": stored.sha256, "size": stored.size},
            status=201 if stored.created else 200,
        )

    # -- jobs ----------------------------------------------------------------------

    def _job(self, request: web.Request) -> Job:
        job_id = JobId(request.match_info["id"])
        job = self.store.get(job_id)
        if job is None and self.store.expired.get(job_id) == request[TENANT]:
            raise web.HTTPGone(
                text=json.dumps({"error": "the job finished longer ago than this server keeps "
                                 "jobs (retention.finished_jobs_s) and was removed"}),
                content_type="application/json",
            )
        if job is None or job.tenant != request[TENANT]:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "no such job"}), content_type="application/json"
            )
        return job

    async def post_job(self, request: web.Request) -> web.Response:
        refused = self._refuse_while_draining()
        if refused is not None:
            return refused
        tenant = request[TENANT]
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return await self._post_job(request, None)
        if len(key) > 200:
            return error(400, "the Idempotency-Key header is longer than 200 characters")
        existing = self.store.by_key(tenant, key)
        if existing is not None:
            return web.json_response(self.record(existing), status=200,
                                     headers={"Idempotent-Replayed": "true",
                                              "Location": f"/v1/jobs/{existing.id}"})
        inflight = self._submitting.get((tenant, key))
        if inflight is not None:  # the same retry racing its original: wait for it
            first = await asyncio.shield(inflight)
            if first.status == 202:
                again = self.store.by_key(tenant, key)
                if again is not None:
                    return web.json_response(self.record(again), status=200,
                                             headers={"Idempotent-Replayed": "true"})
            return first
        future: asyncio.Future[web.Response] = asyncio.get_running_loop().create_future()
        self._submitting[(tenant, key)] = future
        try:
            response = await self._post_job(request, key)
            future.set_result(response)
            return response
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved here; the racing retry sees it too
            raise
        finally:
            del self._submitting[(tenant, key)]

    async def _post_job(self, request: web.Request, key: str | None) -> web.Response:
        tenant = request[TENANT]
        if not request.can_read_body:
            return error(400, "send the job as a JSON object, e.g. {\"module\": \"<sha256>\"}")
        data = await read_body(request, self.body_rules,
                               max_bytes=self.settings.server.max_input_mb * 1024 * 1024,
                               key="server.max_input_mb")
        try:
            raw = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            return error(400, f"the body is not UTF-8 text (byte {e.start} is not); send the "
                         "JSON encoded as UTF-8")
        except json.JSONDecodeError as e:
            return error(400, f"the body is not valid JSON: {e}")
        except RecursionError:
            return error(400, "the JSON is nested too deeply; a job is an object of strings, "
                         "lists of strings and one level of objects")
        where = lone_surrogate(raw)
        if where is not None:
            return error(400, f"invalid job: {where}: contains an unpaired UTF-16 surrogate "
                         "(a \\uD800-\\uDFFF escape without its partner), which is not a "
                         "character; send valid Unicode text")
        try:
            body = JobRequest.model_validate(raw)
        except ValidationError as e:
            return error(400, describe(e))
        limits, problem = self._limits(body)
        if problem:
            return error(400, problem)
        assert limits is not None
        runtime: Runtime | None = None
        module: str
        size: int | None
        if body.runtime is not None:
            runtime = self.runtimes.get(body.runtime)
            if runtime is None:
                return error(400, f"unknown runtime {body.runtime!r}; this server offers: "
                             f"{runtime_names(self.runtimes)}")
            script_bytes = len((body.script or "").encode("utf-8"))
            if script_bytes > runtime.max_script_bytes:
                return error(400, f"the script is {script_bytes} bytes; the {runtime.name} "
                             f"runtime takes scripts of at most {runtime.max_script_bytes} bytes "
                             f"(runtimes.{runtime.name}.max_script_kb)")
            if runtime.sha256 is None or runtime.size is None:
                return error(400, f"the runtime {runtime.name!r} is not available on this "
                             f"server: {runtime.unavailable}")
            module, size = runtime.sha256, runtime.size
        else:
            assert body.module is not None
            module = body.module
            size = self.modules.size(module, tenant=tenant)
            if size is None:
                return error(404 if len(module) == 64 else 400,
                             f"unknown module {module}; upload it with PUT /v1/modules first")
        if runtime is not None:
            # a flavour still compiling is no reason to refuse: the job waits for it
            refused = self.runtimes.refusal(runtime.name, fuel=limits.fuel is not None)
            if refused is not None:
                return error(400, refused)
        problem = self.modules.compile_problem(module) if runtime is None else None
        if problem is not None:
            return error(400, f"module {module} cannot run on this server: {problem}. "
                         "Make it smaller (fewer or smaller functions) or ask the operator to "
                         "raise the limit; uploading it again retries the compilation")
        if not await self.data.check():
            return error(503, "Kafka is unavailable, so the job cannot be accepted; nothing "
                         "was stored, retry shortly", **{"Retry-After": "5"})
        if not self.pool.backend_ok:
            return error(503, "the worker backend is unavailable, so the job cannot be "
                         "accepted; nothing was stored, retry shortly", **{"Retry-After": "5"})
        job = Job(
            id=new_job_id(), tenant=tenant, module=ModuleHash(module), module_size=size,
            limits=limits, args=_args(runtime, body), env=_env(runtime, body),
            runtime=body.runtime, script=body.script if runtime is not None else None,
            input_count=len(body.input), idempotency_key=key,
        )
        try:
            job = await self.scheduler.submit(job, [r.encode() for r in body.input])
        except QueueFull as e:
            return error(429, str(e), **{"Retry-After": "5"})
        return web.json_response(self.record(job), status=202,
                                 headers={"Location": f"/v1/jobs/{job.id}"})

    def record(self, job: Job) -> dict[str, Any]:
        """The job's record as the API shows it, with ``waiting`` worked out now: why a
        queued runtime's job waits without a worker (its interpreter still compiling,
        or not yet on the shared volume), from the runtimes' readiness as it is."""
        waiting = None
        if job.state is JobState.QUEUED and job.runtime is not None:
            found = self.runtimes.waiting(job.runtime, fuel=job.limits.fuel is not None)
            waiting = None if found is None else found.public()
        return job.public(waiting=waiting)

    async def list_runtimes(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"runtimes": [r.public(self.modules) for _, r in sorted(self.runtimes.items())]})

    def _limits(self, body: JobRequest) -> tuple[Limits | None, str | None]:
        caps = self.settings.limits
        asked = body.limits
        timeout = asked.timeout_s if asked.timeout_s is not None else caps.default_timeout_s
        memory = asked.memory_mb if asked.memory_mb is not None else caps.default_memory_mb
        if timeout > caps.max_timeout_s:
            return None, (f"limits.timeout_s {timeout:g} exceeds this server's maximum of "
                          f"{caps.max_timeout_s:g} s")
        if memory > caps.max_memory_mb:
            return None, (f"limits.memory_mb {memory} exceeds this server's maximum of "
                          f"{caps.max_memory_mb} MiB")
        if asked.fuel is not None and caps.max_fuel is not None and asked.fuel > caps.max_fuel:
            return None, (
                f"limits.fuel {asked.fuel} exceeds this server's maximum of {caps.max_fuel}"
            )
        return Limits(timeout_s=timeout, memory_mb=memory, fuel=asked.fuel), None

    async def list_jobs(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", self.settings.server.page_size))
        except ValueError:
            return error(400, "limit must be a whole number")
        if not 1 <= limit <= 1000:
            return error(400, "limit must be between 1 and 1000")
        before = request.query.get("before")
        jobs = self.store.list(request[TENANT], limit=limit + 1,
                               before=JobId(before) if before else None)
        # a page ends at its byte budget too (always holding one job), so neither many
        # jobs nor big records (long args) make a response of unbounded size
        budget = self.settings.server.max_page_kb * 1024 - 200  # room for the envelope
        parts: list[str] = []
        used = 0
        for job in jobs[:limit]:
            text = json.dumps(listed(job, self.record(job)))
            if parts and used + len(text) + 2 > budget:
                break
            parts.append(text)
            used += len(text) + 2
        more = len(jobs) > len(parts)
        last = jobs[len(parts) - 1].id if parts else None
        link = f"/v1/jobs?limit={limit}&before={last}" if more and last else None
        return web.Response(text=f'{{"jobs": [{", ".join(parts)}], "next": {json.dumps(link)}}}',
                            content_type="application/json")

    async def get_job(self, request: web.Request) -> web.Response:
        return web.json_response(self.record(self._job(request)))

    async def export_jobs(self, request: web.Request) -> web.StreamResponse:
        return await export_jobs(request, store=self.store, tenant=request[TENANT],
                                 record=self.record)

    async def delete_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.state.terminal:
            return error(409, f"the job already ended ({job.state.value}); nothing to cancel")
        job = await self.scheduler.cancel(job)
        return web.json_response(self.record(job))

    async def get_output(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        follow = request.query.get("follow", "false").lower() in {"1", "true", "yes"}
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        if follow:
            while job.output is None and not job.state.terminal:
                job = await self.store.wait_change(job.id, job)
            # a follow answers at once: it may wait long for the next record
            await response.prepare(request)
        out = job.output
        if out is not None:
            key = job.id.encode()
            position = out.start
            if out.end is not None or not follow:
                end = out.end if out.end is not None else self.scheduler.output_so_far(job)
                ends: AsyncIterator[int] = _once(end if end is not None else position)
            else:
                ends = self.scheduler.output_ends(job)
            # only records Kafka has acknowledged are asked for: no fetch waits
            async for end in ends:
                async for record in self.data.read(
                    out.topic, out.partition, position, end, key=key
                ):
                    if not response.prepared:  # Kafka answered: a 503 can no longer be due
                        await response.prepare(request)
                    await response.write(record + b"\n")
                position = max(position, end)
            if follow:
                while not job.state.terminal:  # the stream ends with the job
                    job = await self.store.wait_change(job.id, job)
        await response.prepare(request)
        await response.write_eof()
        return response

    async def _ended(self, job: Job) -> Job:
        """The job's record once it has ended."""
        while not job.state.terminal:
            job = await self.store.wait_change(job.id, job)
        return job

    async def get_logs(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        sse = "text/event-stream" in request.headers.get("Accept", "")
        if not sse:
            return web.Response(body=self.files.read_log(job.id),
                                content_type="text/plain", charset="utf-8")
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        })
        await response.prepare(request)
        async for chunk in self.files.follow_log(job.id, ended=self._ended(job)):
            text = chunk.decode("utf-8", "replace")
            payload = "".join(f"data: {line}\n" for line in text.split("\n"))
            await response.write(f"event: log\n{payload}\n".encode())
        final = self.store.get(job.id) or job
        await response.write(f"event: end\ndata: {final.state.value}\n\n".encode())
        await response.write_eof()
        return response

    async def list_artifacts(self, request: web.Request) -> web.Response:
        job = self._job(request)
        return web.json_response({
            "state": job.state.value,
            "artifacts": [
                {"name": n, "size": s, "url": f"/v1/jobs/{job.id}/artifacts/{quote(n)}"}
                for n, s in job.artifacts
            ],
        })

    async def get_artifact(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        name = request.match_info["name"]
        if name not in {n for n, _ in job.artifacts}:
            return error(404, f"the job has no artifact named {name!r}")
        path = self.files.artifact(job.id, name)
        if path is None:
            return error(404, f"the job has no artifact named {name!r}")
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


def listed(job: Job, record: dict[str, Any]) -> dict[str, Any]:
    """A job as ``GET /v1/jobs`` shows it (``record``: its :meth:`Api.record`): its
    artifacts as a count and a link, since a job may leave many files and a page holds
    many jobs."""
    record = dict(record)
    record["artifact_count"] = len(record.pop("artifacts"))
    record.pop("artifacts_dropped", None)  # listed with the artifacts
    record["artifacts_url"] = f"/v1/jobs/{job.id}/artifacts"
    return record


async def _once(value: int) -> AsyncIterator[int]:
    yield value


def _args(runtime: Runtime | None, body: JobRequest) -> tuple[str, ...]:
    """A runtime's own arguments (its script's path, say) come before the job's."""
    before = runtime.settings.args if runtime is not None else []
    return (*before, *body.args)


def _env(runtime: Runtime | None, body: JobRequest) -> tuple[tuple[str, str], ...]:
    """The job's variables win over the runtime's defaults of the same name."""
    merged = dict(runtime.settings.env) if runtime is not None else {}
    merged.update(body.env)
    return tuple(merged.items())
