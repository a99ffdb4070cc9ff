"""Hot reuse on Kubernetes (``pool.reuse = "tenant"``): a runner pod whose job
succeeded is handed back by a fenced write and takes the next job of the same
tenant without being recycled; it keeps that tenant for life (on the pod, so a
restarted daemon keeps it too), and everything but a success recycles it.

Fake API server and kubelet running real agent processes, real WASI modules.
"""

from __future__ import annotations

import copy
from typing import Any

import aiohttp

from poold.backends.kubernetes import KubernetesBackend
from poold.daemon import Daemon
from poold.types import JobId, PodName, TenantName
from tests.fakekube import FakeApiServer
from tests.support.daemon import Client, DaemonFactory, wait_done
from tests.support.wasm_fixtures import module

from .test_kubernetes import pod_names

REUSE = {"pool__reuse": "tenant", "pool__hot_idle_ttl_s": "0"}
"""Hot pods never idle out unless a test says so: only the condition under test
recycles one."""


def annotations(api: FakeApiServer, pod: str) -> dict[str, str]:
    found = api.get_pod("poold", pod)
    assert found is not None, f"pod {pod} is gone"
    return dict(found["metadata"].get("annotations") or {})


async def hot(daemon: Daemon, count: int = 1) -> None:
    """Wait until ``count`` pods wait hot (handed back after their job's record)."""
    pool = daemon.pool
    assert pool is not None
    await pool.wait_until(lambda: pool.figures()["hot"] == count, 30)


async def test_a_pod_takes_its_tenants_next_job_hot_and_sees_nothing_of_the_last(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon(**REUSE)
    async with aiohttp.ClientSession() as session:
        alpha, beta = Client(daemon, session, "alpha"), Client(daemon, session, "beta")
        first = await alpha.run(module("upper"), input=["secret input"])
        assert first["state"] == "succeeded" and first["start"] == "warm", first
        pod = first["pod"]
        await hot(daemon)
        found = fake_api.get_pod("poold", pod)
        assert found is not None, "the pod was recycled instead of kept"
        assert found["metadata"]["labels"]["poold.dev/state"] == "hot"
        assert annotations(fake_api, pod) == {"poold.dev/tenant": "alpha", "poold.dev/jobs": "1"}
        created = fake_api.verb_counts["create"]

        leaving = await alpha.run(module("residue"), env={"FOO": "bar"})
        assert leaving["pod"] == pod and leaving["start"] == "hot", leaving
        assert (await alpha.text(f"/v1/jobs/{leaving['id']}/output")).splitlines() == [
            "memory: clean", "file: absent", "env: 1"]
        assert await alpha.text(f"/v1/jobs/{leaving['id']}/logs") == "", "the last job's log"
        await hot(daemon)
        sha = await alpha.upload(module("residue"))
        job = await alpha.submit(sha)
        after = await wait_done(daemon, job["id"])
        assert after.pod == pod and after.start == "hot"
        out = (await alpha.text(f"/v1/jobs/{after.id}/output")).splitlines()
        assert out == ["memory: clean", "file: absent", "env: 0"], out
        assert [name for name, _ in after.artifacts] == ["mark.txt"]
        assert not (daemon.settings.slots.root / pod / "in" / "stdin").exists()
        await hot(daemon)
        assert annotations(fake_api, pod)["poold.dev/jobs"] == "3"

        theirs = await beta.run(module("noop"))
        assert theirs["pod"] != pod and theirs["start"] == "warm", theirs
    # the hot jobs needed no pod of their own (the pool tops up to min_idle only
    # after beta's job took a generic one)
    assert fake_api.verb_counts["create"] <= created + 1


async def test_a_hot_pod_is_recycled_after_max_jobs_per_worker(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon(**REUSE, pool__max_jobs_per_worker="2")
    async with aiohttp.ClientSession() as session:
        alpha = Client(daemon, session, "alpha")
        one = await alpha.run(module("noop"))
        await hot(daemon)
        two = await alpha.run(module("noop"))
        assert two["pod"] == one["pod"] and two["start"] == "hot"
        await fake_api.wait_until(lambda: one["pod"] not in pod_names(fake_api), 30)
        three = await alpha.run(module("noop"))
        assert three["pod"] != one["pod"] and three["start"] == "warm"


async def test_a_hot_pod_whose_job_failed_is_recycled(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon(**REUSE)
    async with aiohttp.ClientSession() as session:
        alpha = Client(daemon, session, "alpha")
        one = await alpha.run(module("noop"))
        await hot(daemon)
        failed = await alpha.run(module("exitcode"), args=["3"])
        assert failed["state"] == "failed" and failed["pod"] == one["pod"], failed
        assert failed["start"] == "hot"
        await fake_api.wait_until(lambda: one["pod"] not in pod_names(fake_api), 30)
        after = await alpha.run(module("noop"))
        assert after["pod"] != one["pod"] and after["start"] == "warm"


async def test_a_hot_pod_idle_past_hot_idle_ttl_is_recycled(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon(pool__reuse="tenant", pool__hot_idle_ttl_s="0.3")
    async with aiohttp.ClientSession() as session:
        one = await Client(daemon, session, "alpha").run(module("noop"))
    await fake_api.wait_until(lambda: one["pod"] not in pod_names(fake_api), 30)
    metrics = daemon.metrics.render().decode()
    assert 'poold_pool_worker_retirements_total{reason="hot_idle_ttl"} 1.0' in metrics


async def test_a_restarted_daemon_keeps_a_hot_pod_for_its_tenant(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    first = await start_kube_daemon(**REUSE)
    async with aiohttp.ClientSession() as session:
        mine = await Client(first, session, "alpha").run(module("noop"))
        await hot(first)
        await first.stop()
        assert mine["pod"] in pod_names(fake_api), "a stopping daemon leaves its pods"

        second = await start_kube_daemon(**REUSE)
        assert second.pool is not None
        adopted = second.pool.workers[PodName(mine["pod"])]
        assert adopted.tenant == TenantName("alpha") and adopted.jobs == 1
        theirs = await Client(second, session, "beta").run(module("noop"))
        assert theirs["pod"] != mine["pod"], "another tenant got a pod kept for alpha"
        again = await Client(second, session, "alpha").run(module("noop"))
        assert again["pod"] == mine["pod"] and again["start"] == "hot", again
        await hot(second, 2)  # beta's pod is hot for beta by now, alpha's again for alpha
        assert annotations(fake_api, mine["pod"])["poold.dev/jobs"] == "2"


async def test_release_is_fenced_to_the_job_the_pod_holds(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon()  # no job comes: the pool claims nothing
    backend = daemon.backend
    assert isinstance(backend, KubernetesBackend)
    pod = PodName(sorted(pod_names(fake_api))[0])
    alpha = TenantName("alpha")
    assert await backend.claim(pod, JobId("j-1"))
    held: dict[str, Any] = copy.deepcopy(fake_api.get_pod("poold", pod))  # type: ignore[arg-type]

    assert not await backend.release_claim(pod, job=JobId("j-other"), tenant=alpha, jobs=1)
    assert annotations(fake_api, pod) == {"poold.dev/job": "j-1"}, "released another's job"

    # the write is committed, its answer lost: the pod itself says it is released
    fake_api.lose_responses(1, method="PATCH")
    assert await backend.release_claim(pod, job=JobId("j-1"), tenant=alpha, jobs=1)
    assert annotations(fake_api, pod) == {"poold.dev/tenant": "alpha", "poold.dev/jobs": "1"}

    # a late watch event still shows the last job: the next claim asks the server
    backend.pods[pod] = held
    assert await backend.claim(pod, JobId("j-2"))
    assert annotations(fake_api, pod)["poold.dev/job"] == "j-2"
    assert annotations(fake_api, pod)["poold.dev/tenant"] == "alpha", "a pod keeps its tenant"
    assert not await backend.claim(pod, JobId("j-3"))
