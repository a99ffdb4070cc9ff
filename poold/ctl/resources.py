"""``poold modules list|upload``, ``poold pool show`` and ``poold runtimes list``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import click

from poold.client import AsyncClient, Module
from poold.ctl import render
from poold.ctl.common import Connection, client_command, quiet_option
from poold.ctl.render import Column, age, emit, output_option, size, text

MODULE_COLUMNS = [
    Column("SHA256", lambda r: text(r.get("sha256"))),
    Column("SIZE", lambda r: size(r.get("size"))),
    Column("UPLOADED", lambda r: age(r.get("uploaded_at"))),
    Column("LAST USED", lambda r: age(r.get("last_used_at") or r.get("last_used"))),
]

UPLOAD_COLUMNS = [
    Column("SHA256", lambda r: text(r.get("sha256"))),
    Column("SIZE", lambda r: size(r.get("size"))),
    Column("STORED", lambda r: "new" if r.get("created") else "existing"),
    Column("FILE", lambda r: text(r.get("file")), shrink=True),
]

RUNTIME_COLUMNS = [
    Column("NAME", lambda r: text(r.get("name"))),
    Column("STATE", lambda r: text(r.get("state"))),
    Column("FLAVOURS", lambda r: ",".join(
        f"{k}={v}" for k, v in (r.get("flavours") or {}).items()) or "-", wide=True),
    Column("SIZE", lambda r: size(r.get("size"))),
    Column("SCRIPT", lambda r: text(r.get("script_path"))),
    Column("MOUNTS", lambda r: ",".join(r.get("mounts") or []) or "-", shrink=True),
    Column("ERROR", lambda r: text(r.get("error")), wide=True),
]

POOL_COLUMNS = [
    Column(name.upper().replace("_", "-"), lambda r, n=name: text(r.get(n)))  # type: ignore[misc]
    for name in ("idle", "busy", "starting", "deleting", "target", "min_idle", "max")
]


@click.group()
def modules() -> None:
    """Upload and list WebAssembly modules."""


@modules.command("upload")
@client_command
@click.argument("files", metavar="FILE...", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@quiet_option
@output_option
def upload(conn: Connection, files: tuple[Path, ...], quiet: bool, fmt: str) -> None:
    """Upload .wasm files; each is validated and stored by its sha256."""

    async def go(c: AsyncClient) -> list[tuple[Path, Module]]:
        return [(f, await c.upload_module(f)) for f in files]

    stored = conn.call(go)
    if quiet:
        for _, module in stored:
            click.echo(module.sha256)
        return
    records: list[dict[str, Any]] = [
        {**m.record, "created": m.created, "file": str(f)} for f, m in stored]
    emit(records if len(records) > 1 else records[0], fmt=fmt, columns=UPLOAD_COLUMNS)


@modules.command("list")
@client_command
@quiet_option
@output_option
def list_modules(conn: Connection, quiet: bool, fmt: str) -> None:
    """The modules this tenant uploaded."""
    found = conn.call(lambda c: c.list_modules())
    if quiet:
        for module in found:
            click.echo(module.sha256)
        return
    emit([m.record for m in found], fmt=fmt, columns=MODULE_COLUMNS)


@click.group()
def runtimes() -> None:
    """Interpreters a job may name instead of a module."""


@runtimes.command("list")
@client_command
@quiet_option
@output_option
def list_runtimes(conn: Connection, quiet: bool, fmt: str) -> None:
    """The interpreters this server offers (GET /v1/runtimes)."""
    found = conn.call(lambda c: c.list_runtimes())
    if quiet:
        for runtime in found:
            click.echo(runtime["name"])
        return
    emit(found, fmt=fmt, columns=RUNTIME_COLUMNS)


@click.group()
def pool() -> None:
    """The pool of workers."""


@pool.command("show")
@client_command
@click.option("-w", "--watch", is_flag=True, help="Print a new row whenever a figure changes.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True)
@output_option
def show(conn: Connection, watch: bool, interval: float, fmt: str) -> None:
    """Idle, busy, starting and deleting workers, the target and the cap."""
    if not watch:
        emit(conn.call(lambda c: c.pool()).record, fmt=fmt, columns=POOL_COLUMNS)
        return
    last: dict[str, Any] | None = None
    try:
        while True:
            figures = conn.call(lambda c: c.pool()).record
            if figures != last:
                if fmt in ("table", "wide"):
                    for line in render.table([figures], columns=POOL_COLUMNS,
                                             header=last is None):
                        click.echo(line)
                else:
                    emit(figures, fmt=fmt, columns=POOL_COLUMNS)
                last = figures
            time.sleep(interval)
    except KeyboardInterrupt:
        return


def _min_idle(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f'a number of workers or "auto", not {value!r}') from None


@pool.command("set")
@client_command
@click.option("--min-idle", help='Idle workers kept: a number, or "auto" (follows demand).')
@click.option("--min-idle-floor", type=click.IntRange(min=0),
              help='With --min-idle auto: idle workers kept even with no arrivals.')
@click.option("--max-pods", type=click.IntRange(min=1), help="Cap on workers in any state.")
@click.option("--idle-ttl-s", type=click.FloatRange(min=0),
              help="Idle workers beyond the target retire after this long idle, seconds.")
@output_option
def set_(conn: Connection, min_idle: str | None, min_idle_floor: int | None,
         max_pods: int | None, idle_ttl_s: float | None, fmt: str) -> None:
    """Re-tune the pool without a restart (PUT /v1/pool; the administrator's token).
    The change is kept across restarts in poold's state folder."""
    changes = {key: value for key, value in (
        ("min_idle", _min_idle(min_idle)), ("min_idle_floor", min_idle_floor),
        ("max_pods", max_pods), ("idle_ttl_s", idle_ttl_s)) if value is not None}
    if not changes:
        raise click.UsageError("give at least one of --min-idle, --min-idle-floor, "
                               "--max-pods, --idle-ttl-s")
    emit(conn.call(lambda c: c.tune_pool(changes)).record, fmt=fmt, columns=POOL_COLUMNS)


@click.command("api")
@client_command
@click.argument("path")
@click.option("-X", "--method", default="GET", show_default=True,
              type=click.Choice(["GET", "PUT", "POST", "DELETE"], case_sensitive=False))
@click.option("--input", "input_file", type=click.File("rb"), default=None,
              help="The request body ('-' for stdin).")
@click.option("--content-type", default=None,
              help="Of the body (default: application/json, or application/wasm for PUT).")
def api(conn: Connection, path: str, method: str, input_file: BinaryIO | None,
        content_type: str | None) -> None:
    """Any route of the API, with the context's URL and token (like `gh api`): prints the
    answer's body as it is, e.g. `poold api /metrics`, `poold api /v1/jobs?limit=5`."""
    data = input_file.read() if input_file is not None else None
    if data is not None and content_type is None:
        content_type = "application/wasm" if method.upper() == "PUT" else "application/json"
    need_token = path.lstrip("/").startswith("v1/")
    body = conn.call(lambda c: c.request(method, path, data=data, content_type=content_type),
                     need_token=need_token)
    sys.stdout.buffer.write(body)
    if body and not body.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()
