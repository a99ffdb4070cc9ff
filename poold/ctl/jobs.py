"""``poold jobs list|get|cancel|wait``, ``run`` (alias ``submit``), ``logs``, ``output``,
``artifacts``."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import click
from click.shell_completion import CompletionItem

from poold.client import AsyncClient, Job, RetryPolicy
from poold.client.errors import PooldError
from poold.ctl import render
from poold.ctl.common import (
    EXIT_OK,
    Connection,
    client_command,
    exit_code_for_error,
    exit_code_of,
    quiet_option,
)
from poold.ctl.render import Column, age, emit, millis, output_option, text

STATES = ("queued", "assigned", "running", "succeeded", "failed", "timed_out", "cancelled",
          "error")

def _state(record: dict[str, Any]) -> str:
    """``queued:compiling`` while a queued job waits for its runtime (the reason after the
    state, as kubectl's ``Init:0/1``: one word, so ``awk`` still sees one column)."""
    waiting = record.get("waiting")
    reason = waiting.get("reason") if isinstance(waiting, dict) else None
    return text(record.get("state")) + (f":{reason}" if reason else "")


def _waiting(record: dict[str, Any]) -> str:
    waiting = record.get("waiting")
    return text(waiting.get("message")) if isinstance(waiting, dict) else ""


JOB_COLUMNS = [
    Column("ID", lambda r: text(r.get("id"))),
    Column("STATE", _state),
    Column("MODULE", lambda r: text(r.get("module"))[:12]),
    Column("EXIT", lambda r: text(r.get("exit_code"))),
    Column("WAIT", lambda r: millis(r.get("wait_ms"))),
    Column("RUN", lambda r: millis(r.get("run_ms"))),
    Column("AGE", lambda r: age(r.get("submitted_at"))),
    Column("POD", lambda r: text(r.get("pod")), wide=True, shrink=True),
    Column("START", lambda r: text(r.get("start") or (
        None if r.get("warm") is None else "warm" if r["warm"] else "cold")), wide=True),
    Column("SUBMITTED", lambda r: text(r.get("submitted_at")), wide=True),
    Column("ERROR", lambda r: text(r.get("error")), wide=True, shrink=True),
    Column("WAITING", _waiting, wide=True, shrink=True),
]

ARTIFACT_COLUMNS = [
    Column("NAME", lambda r: text(r.get("name")), shrink=True),
    Column("SIZE", lambda r: text(r.get("size"))),
    Column("URL", lambda r: text(r.get("url")), wide=True, shrink=True),
]


def complete_jobs(ctx: click.Context, _: click.Parameter, incomplete: str
                  ) -> list[CompletionItem]:
    """Shell completion of job ids: the tenant's newest 100, each with its state."""
    try:
        target = Connection(url=ctx.params.get("url"), token=ctx.params.get("token"),
                            context=ctx.params.get("context")).target

        async def newest() -> list[Job]:
            async with AsyncClient(target.url, target.token, timeout=3,
                                   retry=RetryPolicy(attempts=1)) as c:
                return await c.list_jobs(limit=100)

        found = asyncio.run(newest())
    except Exception:  # completion must never break the shell; offer nothing instead
        return []
    return [CompletionItem(j.id, help=j.state) for j in found if j.id.startswith(incomplete)]


def job_argument(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("job_id", metavar="JOB", shell_complete=complete_jobs)(f)


def job_arguments(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("job_ids", metavar="JOB...", nargs=-1, required=True,
                          shell_complete=complete_jobs)(f)


@click.group()
def jobs() -> None:
    """List, inspect, cancel and wait for jobs."""


@jobs.command("list")
@client_command
@click.option("--state", "states", multiple=True, type=click.Choice(STATES),
              help="Only jobs in this state (repeatable).")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="At most this many of the newest jobs (0: all of them).")
@click.option("-w", "--watch", is_flag=True, help="Print the list again whenever it changes.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between looks with --watch.")
@quiet_option
@output_option
def list_jobs(conn: Connection, states: tuple[str, ...], limit: int, watch: bool,
              interval: float, quiet: bool, fmt: str) -> None:
    """This tenant's jobs, newest first."""

    def fetch() -> list[Job]:
        return conn.call(lambda c: c.list_jobs(limit=limit or None, state=states or None))

    def show(found: list[Job]) -> None:
        if quiet:
            for job in found:
                click.echo(job.id)
        else:
            emit([j.record for j in found], fmt=fmt, columns=JOB_COLUMNS)

    if not watch:
        show(fetch())
        return
    _watch(fetch, show, interval=interval, key=lambda found: [j.record for j in found])


def _watch(fetch: Callable[[], Any], show: Callable[[Any], None], *, interval: float,
           key: Callable[[Any], Any], until: Callable[[Any], bool] = lambda _: False) -> None:
    """Show what ``fetch`` returns whenever it changes; on a terminal, redraw in place."""
    last: Any = object()
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            found = fetch()
            if key(found) != last:
                last = key(found)
                if render.on_terminal():
                    click.clear()
                else:
                    click.echo()
                show(found)
            if until(found):
                return
            time.sleep(interval)


@jobs.command("export")
@client_command
@click.option("--format", "export_format", type=click.Choice(["csv", "ndjson"]),
              default="csv", show_default=True,
              help="One flat row per job: CSV with a header, or NDJSON.")
@click.option("--since", default=None, metavar="TIME",
              help="Jobs submitted at or after this RFC 3339 time.")
@click.option("--until", default=None, metavar="TIME",
              help="Jobs submitted before this RFC 3339 time.")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES),
              help="Only jobs in this state (repeatable).")
@click.option("-o", "--output-file", "output_file", default="-", show_default=True,
              metavar="FILE", help="Where to write ('-' for stdout).")
def export_jobs(conn: Connection, export_format: str, since: str | None, until: str | None,
                states: tuple[str, ...], output_file: str) -> None:
    """Every job record of this tenant, usage included, oldest first (raw, for analysis).

    Streamed chunk by chunk; a file is written under a temporary name and renamed
    when complete, so a failed export leaves nothing behind."""

    async def copy(client: AsyncClient, out: Any) -> int:
        written = 0
        async for chunk in client.stream_export(format=export_format, since=since,
                                                until=until, state=states or None):
            out.write(chunk)
            written += len(chunk)
        return written

    if output_file == "-":
        conn.call(lambda c: copy(c, sys.stdout.buffer))
        sys.stdout.flush()
        return
    target = Path(output_file)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("wb") as f:
            size = conn.call(lambda c: copy(c, f))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    click.echo(f"wrote {size} bytes to {target}", err=True)


@jobs.command("get")
@client_command
@job_arguments
@click.option("-w", "--watch", is_flag=True,
              help="Print a new row whenever the job's state changes, until it ends.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True)
@output_option
def get_jobs(conn: Connection, job_ids: tuple[str, ...], watch: bool, interval: float,
             fmt: str) -> None:
    """Job records (JSON/YAML: the whole record as the server keeps it)."""

    async def fetch(c: AsyncClient) -> list[Job]:
        return list(await asyncio.gather(*(c.get_job(i) for i in job_ids)))

    if not watch:
        found, code = _each(conn, job_ids, lambda c, i: c.get_job(i))
        _emit_jobs(found, asked=len(job_ids), fmt=fmt, quiet=False)
        sys.exit(code)
    seen: set[tuple[str, str]] = set()
    header = True
    while True:
        found = conn.call(fetch)
        # a new row when the state changes, or what a queued job waits for
        fresh = [j for j in found if (j.id, _state(j.record)) not in seen]
        seen.update((j.id, _state(j.record)) for j in found)
        if fresh:
            if fmt in ("table", "wide"):
                emit([j.record for j in fresh], fmt=fmt, columns=JOB_COLUMNS, header=header)
                header = False
            else:
                for job in fresh:
                    emit(job.record, fmt=fmt, columns=JOB_COLUMNS)
        if all(j.terminal for j in found):
            return
        time.sleep(interval)


@jobs.command("describe")
@client_command
@job_arguments
def describe_jobs(conn: Connection, job_ids: tuple[str, ...]) -> None:
    """Job records for people, one field a line (as kubectl describe): what a queued job
    waits for, why one failed, what it consumed."""
    found, code = _each(conn, job_ids, lambda c, i: c.get_job(i))
    for n, job in enumerate(found):
        if n:
            click.echo()
        for line in describe(job.record):
            click.echo(line)
    sys.exit(code)


def describe(record: dict[str, Any]) -> list[str]:
    """``Label:  value`` lines of a job record; ``Waiting`` and ``Error`` only when set."""
    limits = record.get("limits") or {}
    fields: list[tuple[str, Any]] = [
        ("ID", record.get("id")),
        ("State", record.get("state")),
        ("Waiting", _waiting(record) or None),
        ("Error", record.get("error")),
        ("Runtime", record.get("runtime")),
        ("Module", record.get("module")),
        ("Args", " ".join(record.get("args") or []) or None),
        ("Env", ", ".join(f"{k}={v}" for k, v in (record.get("env") or {}).items()) or None),
        ("Limits", ", ".join(f"{k}={v}" for k, v in limits.items() if v is not None) or None),
        ("Exit Code", record.get("exit_code")),
        ("Pod", record.get("pod")),
        ("Start", record.get("start")),
        ("Submitted", record.get("submitted_at")),
        ("Assigned", record.get("assigned_at")),
        ("Started", record.get("started_at")),
        ("Finished", record.get("finished_at")),
        ("Wait", millis(record.get("wait_ms")) or None),
        ("Run", millis(record.get("run_ms")) or None),
        ("Artifacts", len(record.get("artifacts") or []) if "artifacts" in record else None),
    ]
    shown = [(k, v) for k, v in fields if not (k in ("Waiting", "Error") and v is None)]
    width = max(len(k) for k, _ in shown) + 2
    lines = [f"{k + ':':<{width}}{'<none>' if v is None else v}" for k, v in shown]
    usage = record.get("usage")
    if isinstance(usage, dict):
        lines.append("Usage:")
        lines += [f"  {k + ':':<{width}}{'<not measured>' if v is None else v}"
                  for k, v in usage.items()]
    return [render._clean(line) for line in lines]


@jobs.command("cancel")
@client_command
@job_arguments
@quiet_option
@output_option
def cancel_jobs(conn: Connection, job_ids: tuple[str, ...], quiet: bool, fmt: str) -> None:
    """Cancel queued or running jobs (an ended job is refused with exit code 65)."""
    done, code = _each(conn, job_ids, lambda c, i: c.cancel(i))
    _emit_jobs(done, asked=len(job_ids), fmt=fmt, quiet=quiet)
    sys.exit(code)


def _each(conn: Connection, job_ids: tuple[str, ...],
          call: Callable[[AsyncClient, str], Awaitable[Job]]) -> tuple[list[Job], int]:
    """``call`` for every job at once; a job that fails is reported on stderr and the
    others still shown (as kubectl does). The jobs it worked for, and the exit code of
    the first that failed (0 if none did)."""

    async def every(c: AsyncClient) -> list[Job | BaseException]:
        return list(await asyncio.gather(*(call(c, i) for i in job_ids),
                                         return_exceptions=True))

    done: list[Job] = []
    code = EXIT_OK
    for job_id, result in zip(job_ids, conn.call(every), strict=True):
        if isinstance(result, PooldError):
            where = f"{job_id}: " if len(job_ids) > 1 else ""
            click.echo(f"poold: {where}{conn.explain(result)}", err=True)
            code = code or exit_code_for_error(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            done.append(result)
    return done, code


def _emit_jobs(found: list[Job], *, asked: int, fmt: str, quiet: bool) -> None:
    """One job asked for: its record; several: a list (of those found)."""
    if quiet:
        for job in found:
            click.echo(job.id)
    elif asked == 1 and found:
        emit(found[0].record, fmt=fmt, columns=JOB_COLUMNS)
    elif asked > 1:
        emit([j.record for j in found], fmt=fmt, columns=JOB_COLUMNS)


@jobs.command("wait")
@client_command
@job_arguments
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Give up after this many seconds (exit code 75); the jobs go on.")
@quiet_option
@output_option
def wait_jobs(conn: Connection, job_ids: tuple[str, ...], timeout: float | None, quiet: bool,
              fmt: str) -> None:
    """Wait until the jobs end; exit with the first unsuccessful one's code (see --help of
    `poold`), 0 if all succeeded."""

    async def wait_all(c: AsyncClient) -> list[Job]:
        return list(await asyncio.gather(*(c.wait(i, timeout=timeout) for i in job_ids)))

    ended = conn.call(wait_all)
    if quiet:
        for job in ended:
            click.echo(job.id)
    else:
        emit([j.record for j in ended] if len(ended) > 1 else ended[0].record, fmt=fmt,
             columns=JOB_COLUMNS)
    sys.exit(next((code for j in ended if (code := exit_code_of(j)) != EXIT_OK), EXIT_OK))


# -- run ------------------------------------------------------------------------------


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
        pairs[key] = value
    return pairs


@click.command(context_settings={"ignore_unknown_options": True})
@client_command
@click.argument("module", metavar="MODULE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--runtime", default=None, metavar="NAME",
              help="Run MODULE as a script on this interpreter (poold runtimes list).")
@click.option("--input", "input_file", type=click.File("r"), default=None,
              help="File whose lines become the job's input records ('-' for stdin).")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE",
              help="Environment variable for the module (repeatable).")
@click.option("--timeout", "timeout_s", type=float, default=None, help="limits.timeout_s")
@click.option("--memory", "memory_mb", type=int, default=None, help="limits.memory_mb")
@click.option("--fuel", type=int, default=None, help="limits.fuel")
@click.option("-d", "--detach", is_flag=True,
              help="Print the job's id and return; do not wait for it.")
@click.option("--idempotency-key", default=None, metavar="KEY",
              help="Submitting again with the same KEY gets the same job, not a second one "
              "(for scripts that retry). Default: a fresh key per command.")
def run(conn: Connection, module: str, args: tuple[str, ...], runtime: str | None,
        input_file: TextIO | None, env: tuple[str, ...], timeout_s: float | None,
        memory_mb: int | None, fuel: int | None, detach: bool,
        idempotency_key: str | None) -> None:
    """Run MODULE (a .wasm file, or the sha256 of an uploaded one) with ARGS (after --);
    with --runtime NAME, MODULE is a script that interpreter runs.

    Prints its output records on stdout and its log on stderr as they come, and
    exits with the module's exit code (124 timed out, 130 cancelled, 70 error).
    """
    records = [line.rstrip("\n") for line in input_file] if input_file is not None else []
    fields: dict[str, Any] = {"args": list(args), "env": _pairs(env), "input": records,
                              "timeout_s": timeout_s, "memory_mb": memory_mb, "fuel": fuel,
                              "idempotency_key": idempotency_key}
    path = Path(module)
    upload = path.is_file()
    if runtime is not None:
        if not upload:
            raise click.BadParameter(f"{module!r} is not a file; with --runtime, give the "
                                     "script's file", param_hint="MODULE")
        try:
            fields.update(runtime=runtime, script=path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise click.BadParameter(f"{module!r} cannot be read as UTF-8 text: {e}",
                                     param_hint="MODULE") from e
    elif not upload and not _is_sha256(module):
        raise click.BadParameter(f"{module!r} is neither a file nor a module's sha256",
                                 param_hint="MODULE")

    async def go(c: AsyncClient) -> Job:
        if runtime is not None:
            job = await c.submit(**fields)
        else:
            sha = (await c.upload_module(path)).sha256 if upload else module
            job = await c.submit(sha, **fields)
        if detach:
            return job
        waiting = _waiting(job.record)
        if waiting:
            click.echo(f"poold: job {job.id} is {waiting}", err=True)
        printed = [0]
        logs = asyncio.create_task(_copy_logs(c, job.id, printed))
        try:
            async for record in c.stream_output_bytes(job.id, follow=True):
                sys.stdout.buffer.write(record + b"\n")
                sys.stdout.buffer.flush()
        except BaseException:
            logs.cancel()
            raise
        # the log stream ends when the job does; on a loaded host that can come well
        # after the last output record
        try:
            await asyncio.wait_for(logs, 60)
            whole = True
        except (TimeoutError, PooldError):
            whole = False
        ended = await c.wait(job.id, timeout=30)
        if not whole:
            # the follow broke or lagged: the job has ended, so all of its log is
            # there to read; print what the follow did not
            sys.stderr.write((await c.logs(job.id))[printed[0]:])
            sys.stderr.flush()
        return ended

    job = conn.call(go)
    if detach:
        click.echo(job.id)
        return
    if job.state != "succeeded":
        click.echo(f"poold: job {job.id} ended {job.state}: {job.error}", err=True)
    sys.exit(exit_code_of(job))


async def _copy_logs(c: AsyncClient, job_id: str, printed: list[int]) -> None:
    """Follow the job's stderr to ours, counting the characters printed."""
    async for chunk in c.stream_logs(job_id, follow=True):
        sys.stderr.write(chunk)
        sys.stderr.flush()
        printed[0] += len(chunk)


def _is_sha256(text_: str) -> bool:
    return len(text_) == 64 and all(ch in "0123456789abcdef" for ch in text_)


# -- logs, output ---------------------------------------------------------------------


@click.command()
@client_command
@job_argument
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
def logs(conn: Connection, job_id: str, follow: bool) -> None:
    """The module's stderr."""

    async def go(c: AsyncClient) -> None:
        async for chunk in c.stream_logs(job_id, follow=follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    conn.call(go)


@click.command()
@client_command
@job_argument
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing records as the module writes them, until the job ends.")
def output(conn: Connection, job_id: str, follow: bool) -> None:
    """The job's output records, one per line."""

    async def go(c: AsyncClient) -> None:
        async for record in c.stream_output_bytes(job_id, follow=follow):
            sys.stdout.buffer.write(record + b"\n")
            sys.stdout.buffer.flush()

    conn.call(go)


# -- artifacts ------------------------------------------------------------------------


@click.command()
@client_command
@job_argument
@click.option("--get", "names", multiple=True, metavar="NAME",
              help="Download this artifact (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Download every artifact.")
@click.option("-d", "--dir", "directory", default=".", show_default=True, metavar="DIR",
              help="Where downloads go (sub-folders kept); '-' writes one --get to stdout.")
@quiet_option
@output_option
def artifacts(conn: Connection, job_id: str, names: tuple[str, ...], everything: bool,
              directory: str, quiet: bool, fmt: str) -> None:
    """List a job's artifacts (the files it wrote under /out), or download them."""
    if directory == "-" and (everything or len(names) != 1):
        raise click.BadParameter("'-' (stdout) takes exactly one --get NAME", param_hint="--dir")

    async def go(c: AsyncClient) -> list[dict[str, Any]]:
        listing = await c.list_artifacts(job_id)
        wanted = [a.name for a in listing] if everything else list(names)
        if not wanted:
            return [{"name": a.name, "size": a.size, "url": a.url} for a in listing]
        if directory == "-":
            async for chunk in c.stream_artifact(job_id, wanted[0]):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return []
        saved = [await c.download_artifact(job_id, n, directory) for n in wanted]
        return [{"name": n, "path": str(p)} for n, p in zip(wanted, saved, strict=True)]

    found = conn.call(go)
    if directory == "-":
        return
    downloaded = bool(names or everything)
    if quiet:
        for item in found:
            click.echo(item["path"] if downloaded else item["name"])
        return
    columns = ([Column("NAME", lambda r: text(r["name"]), shrink=True),
                Column("SAVED AS", lambda r: text(r["path"]), shrink=True)]
               if downloaded else ARTIFACT_COLUMNS)
    emit(found, fmt=fmt, columns=columns)
