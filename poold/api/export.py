"""``GET /v1/jobs/export``: every record of the caller's tenant, streamed."""

from __future__ import annotations

import asyncio

from aiohttp import web

from poold.jobs.export import FORMATS, BadFilter, Record, encode, parse_states, parse_time, select
from poold.jobs.model import Job
from poold.jobs.store import JobStore
from poold.types import TenantName


async def export_jobs(
    request: web.Request, *, store: JobStore, tenant: TenantName, record: Record = Job.public,
) -> web.StreamResponse:
    """``?format=csv|ndjson`` (csv by default), ``since``/``until`` on
    ``submitted_at`` (RFC 3339; since inclusive, until exclusive), ``state``
    (repeatable or comma-separated). Oldest first."""
    query = request.query
    fmt = query.get("format", "csv")
    if fmt not in FORMATS:
        return _bad(f"format must be csv or ndjson, not {fmt!r}")
    try:
        since = parse_time("since", query.get("since"))
        until = parse_time("until", query.get("until"))
        states = parse_states(query.getall("state", []))
    except BadFilter as e:
        return _bad(str(e))
    if since is not None and until is not None and until <= since:
        return _bad("until must be later than since")
    response = web.StreamResponse(headers={
        "Content-Type": FORMATS[fmt],
        "Content-Disposition": f'attachment; filename="poold-jobs-{tenant}.{fmt}"',
        "Cache-Control": "no-store",
    })
    await response.prepare(request)
    jobs = select(store.of_tenant(tenant), since=since, until=until, states=states)
    for chunk in encode(jobs, fmt, record):
        await response.write(chunk)
        await asyncio.sleep(0)  # one chunk at a time: other requests go on meanwhile
    await response.write_eof()
    return response


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)
