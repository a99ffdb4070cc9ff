"""Leader election through a coordination.k8s.io Lease.

With two replicas, only the one holding the Lease creates, claims and deletes
pods; the other waits, unready, until the Lease expires. Every write to the
Lease carries the resourceVersion read just before, so two candidates can
never both believe they took it. Leader election alone does not fence (a
paused leader may act after its lease ran out), which is why claims on pods
are conditional updates too.

Timing follows client-go. A candidate never compares the holder's
``renewTime`` with its own clock (clocks of two nodes differ): it notes when
it last saw the Lease record change, on its own monotonic clock, and takes
the Lease only once it has seen no change for ``duration_s``. The leader
gives up (raises :class:`LeadershipLost`) when it could not renew within the
renew deadline, two thirds of that, whatever its calls do: each call has a
timeout and the whole attempt is bounded by the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
from datetime import timedelta
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio.client import ApiClient, Configuration, CoordinationV1Api

from poold.backends.kubernetes import reading
from poold.errors import BackendError
from poold.timestamps import rfc3339, utcnow

log = structlog.get_logger(__name__)


class LeadershipLost(BackendError):
    """This replica could not renew its Lease in time and must stop managing pods."""


class LeaseElector:
    def __init__(
        self,
        *,
        configuration: Configuration,
        namespace: str,
        name: str,
        duration_s: float,
        identity: str | None = None,
        call_timeout_s: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.duration_s = duration_s
        self.renew_deadline_s = duration_s * 2 / 3
        self.call_timeout_s = call_timeout_s
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        """When (event loop clock) the Lease record last changed, as far as we saw."""
        host = os.environ.get("POD_NAME") or socket.gethostname()
        self.identity = identity or f"{host}-{secrets.token_hex(3)}"
        self._configuration = configuration
        self._client: ApiClient | None = None
        self._api: Any = None
        self.leading = asyncio.Event()

    async def _call(self, method: str, *args: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
        async with asyncio.timeout(self.call_timeout_s):
            response = await getattr(self._api, method)(*args, _preload_content=False, **kw)
            async with reading(response):
                text = await response.text()
                return response.status, (json.loads(text) if text else {})

    def _observe(self, spec: dict[str, Any]) -> float:
        """Seconds since the record last changed, on our own clock."""
        now = asyncio.get_running_loop().time()
        record = tuple(spec.get(k) for k in (
            "holderIdentity", "renewTime", "acquireTime", "leaseTransitions",
            "leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        return now - self._observed_at

    def _body(self, lease: dict[str, Any] | None, *, transitions: int) -> dict[str, Any]:
        now = rfc3339(utcnow())
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, int(self.duration_s)),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        if lease is None or lease.get("spec", {}).get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        if lease is not None:
            body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
            body["spec"] = {**lease.get("spec", {}), **spec}
        return body

    async def try_acquire(self) -> bool:
        """One round: take or renew the Lease if it is ours or has expired."""
        status, lease = await self._call("read_namespaced_lease", self.name, self.namespace)
        if status == 404:
            status, _ = await self._call(
                "create_namespaced_lease", self.namespace, self._body(None, transitions=0)
            )
            return status < 300
        if status >= 300:
            raise aiohttp.ClientError(f"reading lease {self.name}: HTTP {status}")
        spec = lease.get("spec", {})
        holder = spec.get("holderIdentity")
        unchanged_for = self._observe(spec)
        duration = float(spec.get("leaseDurationSeconds") or self.duration_s)
        if holder not in (None, "", self.identity) and unchanged_for < duration:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != self.identity:
            transitions += 1
        status, written = await self._call(
            "replace_namespaced_lease", self.name, self.namespace,
            self._body(lease, transitions=transitions),
        )
        if status < 300:
            self._observe(written.get("spec", {}))
        return status < 300  # 409: another candidate wrote first

    async def run(self) -> None:
        """Campaign until elected, then renew; raises :class:`LeadershipLost`."""
        self._client = ApiClient(configuration=self._configuration)
        self._api = CoordinationV1Api(self._client)
        retry = max(0.2, self.duration_s / 5)
        last_renewal = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                deadline = last_renewal + self.renew_deadline_s
                try:
                    # while leading, the attempt may not outlive the renew deadline
                    async with asyncio.timeout_at(deadline if self.leading.is_set() else None):
                        won = await self.try_acquire()
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    log.warning("lease call failed", error=str(e) or repr(e))
                    won = False
                now = loop.time()
                if won:
                    last_renewal = now
                    if not self.leading.is_set():
                        log.info("became the leader", identity=self.identity, lease=self.name)
                        self.leading.set()
                elif self.leading.is_set() and now >= deadline:
                    raise LeadershipLost(
                        f"could not renew the lease {self.name} within "
                        f"{self.renew_deadline_s:.1f} s; stopping so a fresh start can follow"
                    )
                await asyncio.sleep(retry)
        finally:
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    async def release(self) -> None:
        """Give the Lease up at shutdown, so the other replica need not wait it out."""
        if not self.leading.is_set():
            return
        client = ApiClient(configuration=self._configuration)
        self._api = CoordinationV1Api(client)
        try:
            status, lease = await self._call("read_namespaced_lease", self.name, self.namespace)
            if status < 300 and lease.get("spec", {}).get("holderIdentity") == self.identity:
                body = self._body(lease, transitions=int(lease["spec"].get("leaseTransitions", 0)))
                body["spec"]["holderIdentity"] = ""
                body["spec"]["renewTime"] = rfc3339(utcnow() - timedelta(days=1))
                await self._call("replace_namespaced_lease", self.name, self.namespace, body)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("could not release the lease", error=str(e))
        finally:
            await client.close()
