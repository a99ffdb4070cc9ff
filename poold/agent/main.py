"""The agent: the process inside a pod (or a local worker) that runs one job.

It comes up, announces that it is ready, and waits for ``in/job.json``: woken
by a nudge (``POST /run``) where poold can reach it, by a short poll
otherwise, never by inotify (which misses writes from other NFS clients). It
verifies the module against the sha256 in the job document, feeds the input
records to stdin, turns each stdout line into an output record, keeps stderr
as the log, and commits ``out/result.json``. Then it waits to be deleted,
or, when poold reuses the worker for the same tenant (``pool.reuse``), for
that tenant's next job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from poold.agent.quotas import OutDirWatch, Overrun, Quotas, cap_data
from poold.agent.runtimes import make_runner, wasmtime_runner
from poold.agent.settings import AgentSettings
from poold.agent.streams import LinePump, LogSink
from poold.agent.usage import Meter
from poold.atomic import write_atomic
from poold.data.kafka import MAX_RECORD_BYTES, AgentData, DataUnavailable
from poold.errors import Error
from poold.faults import agent_crash_point
from poold.protocol import JobDocument, ResultDocument, Unsupported
from poold.runtime.digest import file_sha256
from poold.runtime.runner import CANCELLED_BEFORE_START, Runner, RunRequest, RunResult
from poold.runtime.wasmtime_runner import WasmtimeRunner
from poold.slots import Slot, read_json, write_json_atomic

log = structlog.get_logger("poold.agent")

INLINE_HASH_BYTES = 1024 * 1024
"""Modules up to this size are hashed on the loop: a thread hop costs more."""
OUTPUT_REPORT_S = 0.01
"""Output progress goes to poold at most this often (the last one always goes
with the result)."""
STOP_GRACE_S = 2.0
"""After a stop, how long the module's thread may take to notice; a module asleep
in a host call (a WASI sleep of an hour) cannot be interrupted, so beyond this
the process exits without it rather than ignore SIGTERM."""
PARENT_CHECK_S = 0.5
LINK_CLOSE_S = 1.0
"""At shutdown, how long poold's open links get to take their last events and close."""
SHUTDOWN_S = 2.0
"""Then how long other requests (an event stream) may take before they are cut; the
server would wait 60 s (aiohttp's default) for each, and poold keeps one open for as
long as the worker lives, so an agent that failed would live on for minutes while
poold took it for running its job."""
KAFKA_STOP_S = 5.0
"""How long closing the Kafka clients may take (output is flushed at each job's end)."""


class Refused(Error):
    """A job document this worker will not act on; ``str()`` is the job's error."""


class EventLog:
    """Everything that happened to this worker's job, replayable to late subscribers."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.closed = False
        """No more events will come (the agent is shutting down)."""
        self._changed = asyncio.Event()
        """Set (and replaced) by each :meth:`publish`: followers wake without a task
        started per event to notify them."""

    def publish(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        """Followers end once they have had every event."""
        self.closed = True
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        i = 0
        while True:
            while len(self.events) <= i:
                if self.closed:
                    return
                await self._changed.wait()
            while i < len(self.events):
                event = self.events[i]
                i += 1
                yield event
                if event["type"] == "finished":
                    return


class Agent:
    def __init__(self, settings: AgentSettings, *, runner: Runner | None = None) -> None:
        self.settings = settings
        self.slot = Slot(settings.slot)
        self.data = AgentData(settings.kafka, on_acked=self._output_acked)
        self.runner: Runner = runner or make_runner(settings)
        """The driver of the job at hand (:meth:`_driver`): the worker's engine, or
        wasmtime for a runtime's job."""
        self._engine_runner = self.runner
        self._interpreter_runner: WasmtimeRunner | None = None
        self._data_limit = resource.getrlimit(resource.RLIMIT_DATA)
        """As the worker started: a job on WasmEdge after one on wasmtime (a hot pod)
        gets it back rather than the last job's cap."""
        self.events = EventLog()
        self._next_log = asyncio.Event()
        """Set (and replaced) each time :attr:`events` begins a new job's log."""
        self.state = "starting"
        self._nudge = asyncio.Event()
        self._stop = asyncio.Event()
        self._cancelled = False
        self._port = settings.port
        self._output_end: int | None = None
        self._output_reported: int | None = None
        self._output_report: asyncio.Handle | None = None
        self._output_reported_at = 0.0
        self._work_done = threading.Event()
        self._work_done.set()
        self._holding: str | None = None
        """The job whose ``job.json`` was read and whose result is not yet written."""
        self._closing = False
        self._links: set[asyncio.Task[Any]] = set()
        """The handlers of poold's open links (:meth:`_link`)."""

    # -- HTTP endpoint -------------------------------------------------------

    @web.middleware
    async def _authorised(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Every endpoint needs this worker's token: its events carry the job's live
        stderr and ``/cancel`` ends it, and any local process (or any pod the
        NetworkPolicy lets through) can reach the port."""
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {self.settings.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return web.json_response(
                {"error": "this endpoint needs the worker's token (Authorization: Bearer)"},
                status=401,
            )
        return await handler(request)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._authorised])
        app.router.add_get("/ready", self._ready)
        app.router.add_post("/run", self._run)
        app.router.add_get("/events", self._events)
        app.router.add_post("/cancel", self._cancel)
        app.router.add_get("/link", self._link)
        app.on_shutdown.append(self._close_links)
        return app

    async def _close_links(self, _: web.Application) -> None:
        """Let each open link send what is left of its job's events and close: poold
        learns at once that the worker is going, not when a connection times out."""
        self._closing = True
        self.events.close()  # the job loop has ended: nothing more will come
        began, self._next_log = self._next_log, asyncio.Event()
        began.set()
        if self._links:
            await asyncio.wait(self._links, timeout=LINK_CLOSE_S)

    async def _ready(self, _: web.Request) -> web.Response:
        status = 200 if self.state != "starting" else 503
        return web.json_response({"state": self.state}, status=status)

    async def _run(self, request: web.Request) -> web.StreamResponse:
        self._nudge.set()
        return await self._events(request)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        async for event in self.events.follow():
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        """poold's pre-opened line: ``run``/``cancel`` in, the job's events out, and
        on a worker that poold reuses (``pool.reuse``) the next job's events after
        the last one's ``finished``, until poold closes it."""
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)

        async def commands() -> None:
            async for message in ws:
                if message.type != web.WSMsgType.TEXT:
                    break
                op = json.loads(message.data).get("op")
                if op == "run":
                    self._nudge.set()
                elif op == "cancel":
                    self._request_cancel()

        async def forward() -> None:
            events = self.events
            while True:
                async for event in events.follow():
                    await ws.send_str(json.dumps(event))
                while self.events is events:  # until the next job's log begins
                    if self._closing:
                        return
                    await self._next_log.wait()
                events = self.events

        reader = asyncio.create_task(commands(), name="agent-link")
        writer = asyncio.create_task(forward(), name="agent-link-events")
        handler = asyncio.current_task()
        assert handler is not None
        self._links.add(handler)
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._links.discard(handler)
            reader.cancel()
            writer.cancel()
            ended = await asyncio.gather(reader, writer, return_exceptions=True)
        for error in ended:
            # a line poold closed under us ends with a connection error: nothing to say
            if isinstance(error, Exception) and not isinstance(error, ConnectionError):
                log.warning("the link to poold failed", error=repr(error))
        await ws.close()
        return ws

    def _request_cancel(self) -> None:
        self._cancelled = True
        self.runner.interrupt("cancel")
        self._nudge.set()

    async def _cancel(self, _: web.Request) -> web.Response:
        self._request_cancel()
        return web.json_response({"state": self.state})

    def _output_acked(self, end: int) -> None:
        """Kafka acknowledged output up to ``end``: tell poold (at most every
        OUTPUT_REPORT_S), so a follower reads records that are there instead of
        waiting in a fetch for ones that may come."""
        self._output_end = end
        if self._output_report is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._output_reported_at + OUTPUT_REPORT_S - loop.time())
        self._output_report = loop.call_later(delay, self._report_output)

    def _report_output(self) -> None:
        self._output_report = None
        self._output_reported_at = asyncio.get_running_loop().time()
        if self._output_end is not None and self._output_end != self._output_reported:
            self._output_reported = self._output_end
            self.events.publish({"type": "output", "end": self._output_end})

    # -- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        # a write past the /out quota (RLIMIT_FSIZE) fails with EFBIG instead of
        # killing the worker
        with contextlib.suppress(ValueError):  # not the main thread: nothing to set
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self._port = server.sockets[0].getsockname()[1]
        try:
            await loop.run_in_executor(None, getattr(self.runner, "warm_up", lambda: None))
            self.state = "idle"
            self._announce_ready()
            # connect for the output while idle: a job's first line never waits
            self.data.prepare_output()
            job_task = asyncio.create_task(self._serve(), name="agent-job")
            stop_task = asyncio.create_task(self._stop.wait(), name="agent-stop")
            watch = asyncio.create_task(self._watch_parent(), name="agent-parent")
            await asyncio.wait({job_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            watch.cancel()
            if not job_task.done():
                self.runner.interrupt("cancel")
                job_task.cancel()
                await asyncio.wait({job_task})  # its cancellation is not ours to swallow
                if not job_task.cancelled():
                    job_task.result()  # a failure while it stopped is not lost
                if not await asyncio.to_thread(self._work_done.wait, STOP_GRACE_S):
                    log.warning("the module did not stop within the grace; exiting without it",
                                grace_s=STOP_GRACE_S)
                    sys.stderr.flush()
                    os._exit(1)
            else:
                try:
                    job_task.result()  # None: no job came within linger_s of the last one
                except Exception as e:
                    self._crashed(e)
                    raise  # the process exits non-zero once the shutdown below is done
            stop_task.cancel()
        finally:
            try:
                async with asyncio.timeout(KAFKA_STOP_S):
                    await self.data.stop()
            except TimeoutError:
                log.warning("closing the Kafka clients took too long; exiting without",
                            timeout_s=KAFKA_STOP_S)
            await runner.cleanup()

    def _crashed(self, error: Exception) -> None:
        """The job loop failed outside a job's own handling (a bug, a result that could
        not be written). The job in hand ends ``error`` saying so, in its slot if the
        slot takes it and in the event stream poold follows, so poold ends it now; the
        agent then exits rather than leave poold waiting for a worker that does nothing."""
        log.error("the agent's job loop failed; exiting", exc_info=error)
        job_id, self._holding = self._holding, None
        if job_id is None:
            return
        result = _error(job_id, f"the worker's agent failed and exited: {error!r}; a job "
                                "that may have started is not run again: submit it again")
        try:
            write_json_atomic(self.slot.result_json, result.to_json(),
                              fsync=self.settings.fsync)
        except OSError as e:
            log.warning("the failed job's result could not be written", error=str(e))
        self.state = "done"
        self.events.publish({"type": "finished", "result": result.to_json()})

    async def _watch_parent(self) -> None:
        parent = self.settings.parent_pid
        if parent is None:
            return
        while os.getppid() == parent:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PARENT_CHECK_S):
                    await self._stop.wait()
                    return
        log.warning("the fork server is gone; stopping", parent=parent)
        self._stop.set()

    def _announce_ready(self) -> None:
        fd = self.settings.ready_fd
        if fd is None:
            return
        line = json.dumps(
            {"event": "ready", "pod": self.settings.pod,
             "endpoint": f"http://127.0.0.1:{self._port}"}
        )
        os.write(fd, line.encode() + b"\n")
        os.close(fd)

    async def _wait_for_job(self, *, served: str | None, within_s: float | None
                            ) -> dict[str, Any] | None:
        """The next ``job.json``; None if none came within ``within_s``. The last
        job's document (``served``) stays in the slot until poold clears it."""
        loop = asyncio.get_running_loop()
        deadline = None if within_s is None else loop.time() + within_s
        while True:
            document = read_json(self.slot.job_json)
            if document is not None and document.get("job_id") != served:
                return dict(document)
            if deadline is not None and loop.time() > deadline:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval_s):
                    await self._nudge.wait()
            self._nudge.clear()

    async def _serve(self) -> None:
        """Serve jobs until none comes within ``linger_s`` of the last one. poold
        deletes the worker after a job unless it reuses it for the same tenant
        (``pool.reuse``); then it clears the slot and sends the next job, which
        gets a fresh event log, output producer state and runtime store."""
        served: str | None = None
        while True:
            raw = await self._wait_for_job(
                served=served, within_s=None if served is None else self.settings.linger_s)
            if raw is None:
                return
            served = raw.get("job_id")
            self._holding = served if isinstance(served, str) else None
            agent_crash_point("job")
            try:
                doc = JobDocument.from_json(raw)
            except Unsupported as e:
                # a document of a newer poold that needs what this agent lacks: the job
                # ends saying so, rather than run the wrong way or leave poold waiting
                self._refuse(e)
            else:
                await self._serve_one(doc)
            # ready for another: whoever follows the job holds its log; a line
            # poold opens for the next job follows a fresh one
            self._begin_next()

    def _begin_next(self) -> None:
        self.state = "idle"
        self.events = EventLog()
        began, self._next_log = self._next_log, asyncio.Event()
        began.set()
        self._cancelled = False
        self._output_end = self._output_reported = None
        self.data.begin_job()
        reset = getattr(self.runner, "reset", None)
        if reset is not None:
            reset()

    def _driver(self, doc: JobDocument) -> Runner:
        """A runtime's interpreter runs on wasmtime whatever the worker's engine: it
        needs read-only mounts and a compiled interpreter, which the WasmEdge CLI
        (no read-only ``--dir``, ``--force-interpreter``) cannot give."""
        if doc.runtime is None or isinstance(self._engine_runner, WasmtimeRunner):
            return self._engine_runner
        if self._interpreter_runner is None:
            self._interpreter_runner = wasmtime_runner(self.settings)
        return self._interpreter_runner

    def _locate(self, doc: JobDocument) -> tuple[Path, tuple[tuple[Path, str], ...]]:
        """The module to run and the folders it sees read-only: the runtime's mounts
        and, for a script, the slot's script folder. A runtime on the shared volume
        (``runtime_dir``) is found under this worker's runtimes folder, and nothing
        it names may lead out of it. Raises :class:`Refused`."""
        if doc.runtime_dir is None:
            module = self.slot.module
            folders = [(Path(host), guest) for host, guest in doc.mounts]
        else:
            base = self._runtime_folder(doc.runtime_dir)
            module = base / "module.wasm"
            folders = []
            for relative, guest in doc.mounts:
                folder = (base / relative).resolve()
                if base not in folder.parents:
                    raise Refused(f"the job mounts {relative!r} at {guest}, which is not "
                                  f"inside its runtime's folder {doc.runtime_dir}; refused")
                folders.append((folder, guest))
        if doc.script is not None:
            folders.append((self.slot.scripts, "/script"))
        return module, tuple(folders)

    def _runtime_folder(self, name: str) -> Path:
        shared = self.settings.runtimes
        if shared is None:
            raise Refused(
                "the job's runtime is on the shared volume, but this worker has no runtimes "
                "folder (POOLD_AGENT_RUNTIMES): its pod lacks the read-only runtimes mount "
                "that poold adds to the runner pod template (kubernetes.runtimes_mount_path)")
        root = shared.resolve()
        base = (root / name).resolve()
        if root not in base.parents:
            raise Refused(f"the job names a runtime folder {name!r} outside this worker's "
                          f"runtimes folder {shared}; refused")
        if not base.is_dir():
            raise Refused(f"the runtime's files are not at {shared / name} in this worker: "
                          "poold publishes them to <slots.root>/runtimes on the shared volume "
                          "at start-up; check that the runner pods mount that folder")
        return base

    async def _serve_one(self, doc: JobDocument) -> None:
        self._accept(doc.job_id)
        try:
            result = await self._execute(doc)
        except Exception as e:
            log.exception("the agent failed the job")
            result = _error(doc.job_id, f"the worker's agent failed: {e!r}")
        self._report(result)

    def _refuse(self, refused: Unsupported) -> None:
        job_id = refused.job_id or ""
        self._accept(job_id)
        log.warning("job document refused", error=str(refused))
        self._report(_error(job_id, f"{refused}; the job was not started. Submit it again: "
                                    "workers of an older image are replaced by poold's own "
                                    "as they are used (this one is)"))

    def _accept(self, job_id: str) -> None:
        self.state = "busy"
        structlog.contextvars.bind_contextvars(job_id=job_id, pod=self.settings.pod)
        self.events.publish({"type": "accepted", "ts": time.time()})

    def _report(self, result: ResultDocument) -> None:
        agent_crash_point("report")
        write_json_atomic(self.slot.result_json, result.to_json(), fsync=self.settings.fsync)
        self._holding = None
        self.state = "done"
        self.events.publish({"type": "finished", "result": result.to_json()})
        log.info("job finished in agent", state=result.state, exit_code=result.exit_code)

    async def _execute(self, doc: JobDocument) -> ResultDocument:
        started: list[float] = []
        meter = Meter(rss_source=self.settings.rss_source)

        def result(state: str, error: str | None, *, code: int | None = None,
                   end: int | None = None, cached: bool = False) -> ResultDocument:
            return ResultDocument(
                job_id=doc.job_id, state=state, exit_code=code, error=error,
                started_at=started[0] if started else None, finished_at=time.time(),
                output_end=end, output_records=self.data.records, cached=cached,
                usage=meter.usage(runner=self.runner, stdout_records=self.data.records,
                                  out_dir=self.slot.artifacts),
            )

        loop = asyncio.get_running_loop()
        self.runner = self._driver(doc)
        try:
            module, read_only = self._locate(doc)
        except Refused as e:
            return result("error", str(e))
        # a runtime's interpreter starts from its compiled form or not at all, on every
        # backend (may_compile below): no worker compiles one, so its bytes are never
        # read and hashing them (100 MB) would buy nothing
        interpreter = doc.runtime is not None
        compiled = getattr(self.runner, "compiled", None)
        # nor is a large module hashed when the runner starts from the compile cache:
        # if it reads the bytes after all, it checks them itself
        verified = not interpreter and not (
            doc.size > INLINE_HASH_BYTES and compiled is not None
            and compiled(doc.sha256, fuel=doc.fuel is not None))
        if verified:
            if doc.size <= INLINE_HASH_BYTES:
                digest, size = file_sha256(module)
            else:
                digest, size = await loop.run_in_executor(None, file_sha256, module)
            if digest != doc.sha256 or size != doc.size:
                return result("error", "the module delivered to the worker does not match "
                              "its sha256; the delivery was damaged, submit the job again")
        if self._cancelled:
            return result("cancelled", CANCELLED_BEFORE_START)
        stdin = None
        if doc.input is not None and doc.input.end > doc.input.start:
            try:
                records = await self.data.fetch(
                    doc.input.topic, doc.input.partition, doc.input.start, doc.input.end,
                    key=doc.job_id.encode(),
                )
            except DataUnavailable as e:
                return result("error", f"the input records could not be read: {e}")
            write_atomic(self.slot.stdin, b"".join(r + b"\n" for r in records), fsync=False)
            meter.feeds(records)
            stdin = self.slot.stdin

        out = doc.output

        key = doc.job_id.encode()
        s = self.settings
        quotas = Quotas(out_bytes=s.max_out_bytes, out_files=s.max_out_files,
                        output_bytes=s.max_output_bytes, output_records=s.max_output_records)
        over = Overrun(lambda: self.runner.interrupt("limit"))
        sent = [0, 0]  # records, bytes

        async def emit(line: bytes) -> None:
            if over.reason is not None:
                return
            if sent[0] + 1 > quotas.output_records:
                over(f"the job wrote more than {quotas.output_records} output records, its "
                     "quota (runtime.max_output_records); it was stopped")
                return
            if sent[1] + len(line) > quotas.output_bytes:
                over(f"the job wrote more than {quotas.output_bytes / 2**20:g} MiB of output "
                     "records, its quota (runtime.max_output_mb); it was stopped")
                return
            sent[0] += 1
            sent[1] += len(line)
            # keyed by the job: a reader skips strays a killed predecessor on
            # this partition may still have had in flight
            await self.data.append(out.topic, out.partition, line, key=key)

        def too_long(limit: int) -> None:
            over(f"the module wrote a line of more than {limit} bytes to stdout; an output "
                 f"record is at most {limit} bytes (a Kafka message), so the job was stopped "
                 "rather than split the line")

        pump = LinePump(loop, emit, max_line=MAX_RECORD_BYTES, too_long=too_long)
        watch = OutDirWatch(self.slot.artifacts, quotas, over=over)
        logs = LogSink(
            self.slot.stderr_log, limit=self.settings.max_log_bytes, loop=loop,
            publish=lambda chunk: self.events.publish(
                {"type": "stderr", "data": chunk.decode("utf-8", "replace")}),
        )

        in_process = isinstance(self.runner, WasmtimeRunner)

        def on_start() -> None:
            if in_process:
                cap_data(doc.memory_mb)
            else:
                # WasmEdge (a child process, which inherits the limit) may reserve its
                # memory writable up front; the runner pod's memory limit is its guard
                resource.setrlimit(resource.RLIMIT_DATA, self._data_limit)
            watch.start()
            meter.begin()
            now = time.time()
            started.append(now)
            loop.call_soon_threadsafe(self.events.publish, {"type": "started", "ts": now})

        request = RunRequest(
            wasm_path=module, sha256=doc.sha256, args=tuple(doc.args),
            env=tuple((k, v) for k, v in doc.env), timeout_s=doc.timeout_s,
            memory_mb=doc.memory_mb, fuel=doc.fuel, out_dir=self.slot.artifacts,
            stdin_path=stdin,
            read_only=read_only, interpreter=interpreter,
            verified=verified, may_compile=not interpreter,
        )

        def work() -> RunResult:
            try:
                return self.runner.run(
                    request, stdout=meter.counting(pump.write, stream="stdout"),
                    stderr=meter.counting(logs.write, stream="stderr"), on_start=on_start)
            finally:
                meter.end()
                watch.stop()
                pump.close()
                self._work_done.set()

        pump_task = asyncio.create_task(pump.run(), name="agent-stdout")
        self._work_done.clear()
        try:
            outcome = await loop.run_in_executor(None, work)
        finally:
            logs.close()
        try:
            await pump_task
            end = await self.data.flush()
        except DataUnavailable as e:
            return result("error", f"the output could not be written to Kafka: {e}",
                          cached=outcome.cached)
        if over.reason is not None and outcome.state != "cancelled":
            return result("failed", over.reason, end=end, cached=outcome.cached)
        return result(outcome.state, outcome.error, code=outcome.exit_code, end=end,
                      cached=outcome.cached)


def _error(job_id: str, error: str) -> ResultDocument:
    """The result of a job that ended before its module started."""
    return ResultDocument(job_id=job_id, state="error", exit_code=None, error=error,
                          started_at=None, finished_at=time.time(), output_end=None,
                          output_records=0)


async def run_agent(settings: AgentSettings) -> None:
    await Agent(settings).run()
