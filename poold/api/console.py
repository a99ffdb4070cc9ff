"""The web console's pages and the module listing it needs.

The console is static files shipped inside the package (``poold/console/static``):
no build step, nothing loaded from another origin. Each page goes out with
headers that keep it from being framed, sniffed or leaking its address, and a
Content-Security-Policy that allows scripts from this server only (the pages
hold no inline script), so text a module prints can never run as code even if
it reached the page as markup.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from importlib import resources
from pathlib import Path

from aiohttp import web

from poold.jobs.store import JobStore
from poold.modules.store import ModuleStore
from poold.timestamps import rfc3339
from poold.types import TenantName

STATIC = Path(str(resources.files("poold.console") / "static"))

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
        "object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def add_console_routes(router: web.UrlDispatcher) -> None:
    """``/`` and ``/console`` redirect to ``/console/``, which serves the files."""
    files = {p.name: p for p in STATIC.iterdir() if p.suffix in _TYPES}

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/console/", headers=SECURITY_HEADERS)

    async def page(request: web.Request) -> web.Response:
        name = request.match_info.get("name") or "index.html"
        path = files.get(name)
        if path is None:
            return web.json_response({"error": f"the console has no file named {name!r}"},
                                     status=404, headers=SECURITY_HEADERS)
        return web.Response(body=path.read_bytes(),
                            headers={"Content-Type": _TYPES[path.suffix], **SECURITY_HEADERS})

    router.add_get("/", redirect)
    router.add_get("/console", redirect)
    router.add_get("/console/", page)
    router.add_get("/console/{name}", page)


class ModuleListing:
    """``GET /v1/modules``: the modules this tenant uploaded, newest first.

    ``last_used_at`` is the submission time of the tenant's newest job of the
    module among the jobs this server still keeps (``retention.*``).
    """

    def __init__(self, *, modules: ModuleStore, jobs: JobStore,
                 tenant: Callable[[web.Request], TenantName]) -> None:
        self.modules = modules
        self.jobs = jobs
        self.tenant = tenant

    async def get(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        used: dict[str, datetime] = {}
        for job in self.jobs.all():
            if job.tenant == tenant:
                seen = used.get(job.module)
                if seen is None or job.submitted_at > seen:
                    used[job.module] = job.submitted_at
        return web.json_response({"modules": [
            {
                "sha256": m.sha256,
                "size": m.size,
                "uploaded_at": rfc3339(m.uploaded_at),
                "last_used_at": rfc3339(used.get(m.sha256)),
            }
            for m in self.modules.owned(tenant)
        ]})
