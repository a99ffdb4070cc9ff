"""URL parsing and small HTTP helpers for the fake API server.

Kept out of ``server`` so the request flow there reads as API semantics; this
module only knows how Kubernetes lays out its REST paths and how verbs map to
methods (what ``verb_counts`` reports).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import resources as res
from .errors import StatusError, bad_request
from .resources import ResourceType


@dataclass
class Target:
    """What a URL names: a collection or one object (and maybe a subresource)."""

    rt: ResourceType
    namespace: str | None
    name: str | None = None
    subresource: str | None = None


def truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(obj, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def error_response(err: StatusError) -> web.Response:
    resp = json_response(err.to_status(), err.code)
    if err.retry_after is not None:
        resp.headers["Retry-After"] = str(err.retry_after)
    return resp


async def read_json(request: web.Request, allow_empty: bool = False) -> Any:
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return None
        raise bad_request("the request body is empty")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if allow_empty and body is None:
        return None
    return body


def verb(method: str, path: str, query: Mapping[str, str]) -> str:
    """The Kubernetes verb of a request (what audit logs and RBAC call it)."""
    parts = [p for p in path.strip("/").split("/") if p]
    base = 2 if parts[:1] == ["api"] else 3
    rest = parts[base:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    is_collection = len(rest) <= 1
    if method == "GET":
        if is_collection:
            return "watch" if truthy(query.get("watch")) else "list"
        return "get"
    return {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "deletecollection" if is_collection else "delete",
    }.get(method, method.lower())


def simple_endpoint(path: str) -> web.Response | None:
    if path in ("/healthz", "/readyz", "/livez"):
        return web.Response(text="ok")
    if path == "/version":
        return json_response(
            {
                "major": "1",
                "minor": "30",
                "gitVersion": "v1.30.0-fakekube",
                "platform": "linux/amd64",
            }
        )
    if path == "/api":
        return json_response(
            {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        )
    if path.startswith("/api/v1/namespaces/") and path.count("/") == 4:
        ns = path.rsplit("/", 1)[1]
        return json_response(
            {
                "kind": "Namespace",
                "apiVersion": "v1",
                "metadata": {"name": ns},
                "status": {"phase": "Active"},
            }
        )
    return None


def parse_target(path: str) -> Target | web.Response:
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return error_response(
            StatusError(404, "the server could not find the requested resource", "NotFound")
        )
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    rt = res.lookup(group, version, rest[0]) if rest else None
    if rt is None or len(rest) > 3:
        return error_response(
            StatusError(404, "the server could not find the requested resource", "NotFound")
        )
    if namespace is None and len(rest) > 1:
        return error_response(
            StatusError(404, "the server could not find the requested resource", "NotFound")
        )
    return Target(
        rt, namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
    )
