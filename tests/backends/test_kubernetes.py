"""The Kubernetes backend end to end: HTTP in, runner pods (fake API server and
kubelet running real agent processes), Kafka out."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from poold.backends.kubernetes import KubernetesBackend
from poold.types import JobId, PodName
from tests.fakekube import FakeApiServer, FakeKubelet
from tests.support.daemon import Client, DaemonFactory, wait_done
from tests.support.procs import wait_gone
from tests.support.wasm_fixtures import module

SELECTOR = "app.kubernetes.io/name=poold-runner"


def pod_names(api: FakeApiServer) -> set[str]:
    return {p["metadata"]["name"] for p in api.pods("poold", label_selector=SELECTOR)}


async def test_job_runs_on_a_runner_pod_which_is_then_replaced(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer, kubelet: FakeKubelet
) -> None:
    daemon = await start_kube_daemon()
    assert daemon.pool is not None
    before = pod_names(fake_api)
    assert len(before) == 2
    for name in before:
        pod = fake_api.get_pod("poold", name)
        assert pod is not None
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["metadata"]["labels"]["poold.dev/state"] == "idle"
        assert (daemon.settings.slots.root / name / "in").is_dir()
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        job = await client.run(module("upper"), input=["kube", "pods"])
        assert job["state"] == "succeeded", job
        assert job["warm"] is True
        assert job["pod"] in before
        assert (await client.text(f"/v1/jobs/{job['id']}/output")).splitlines() == ["KUBE", "PODS"]
        assert "processed 2 lines" in await client.text(f"/v1/jobs/{job['id']}/logs")
    used = job["pod"]
    await fake_api.wait_until(lambda: used not in pod_names(fake_api), 30)
    assert used not in kubelet.processes
    pool = daemon.pool
    await pool.wait_until(lambda: pool.figures()["idle"] == 2, 60)
    assert len(pod_names(fake_api)) == 2
    await pool.wait_until(lambda: not (daemon.settings.slots.root / used).exists(), 10)


async def test_claim_is_fenced_by_resource_version(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon()
    backend = daemon.backend
    assert isinstance(backend, KubernetesBackend)
    pod = PodName(sorted(pod_names(fake_api))[0])
    results = await asyncio.gather(
        backend.claim(pod, JobId("j-one")), backend.claim(pod, JobId("j-two"))
    )
    assert sorted(results) == [False, True]
    stored = fake_api.get_pod("poold", pod)
    assert stored is not None
    holder = stored["metadata"]["annotations"]["poold.dev/job"]
    assert holder == ("j-one" if results[0] else "j-two")
    assert stored["metadata"]["labels"]["poold.dev/state"] == "busy"


async def test_pod_deleted_under_a_running_job(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer, kubelet: FakeKubelet
) -> None:
    daemon = await start_kube_daemon()
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        sha = await client.upload(module("ticker"))
        job = await client.submit(sha, limits={"timeout_s": 60})
        async with client.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
            assert await r.content.readline() == b"tick 1\n"
            record = await client.json("GET", f"/v1/jobs/{job['id']}", 200)
            kubelet.evict(record["pod"], message="The node was low on resource: memory.")
            await r.read()
        final = await wait_done(daemon, job["id"])
    assert final.state.value == "error"
    assert final.error is not None and "Evicted" in final.error
    pool = daemon.pool
    assert pool is not None
    await pool.wait_until(lambda: pool.figures()["idle"] == 2, 60)


@pytest.mark.parametrize("trouble", ["never_ready", "image_pull_backoff"])
async def test_pod_that_never_becomes_ready_is_replaced(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer, kubelet: FakeKubelet,
    trouble: str,
) -> None:
    if trouble == "never_ready":
        kubelet.set_never_ready(lambda pod: True)
    else:
        kubelet.set_pending_forever(lambda pod: True, reason="ImagePullBackOff")
    daemon = await start_kube_daemon(
        wait_idle=False, pool__min_idle=1, pool__start_timeout_s=5,
        pool__failure_backoff_s=0.1,
    )
    await fake_api.wait_until(lambda: len(pod_names(fake_api)) >= 1, 30)
    first = pod_names(fake_api)
    await fake_api.wait_until(lambda: not (first & pod_names(fake_api)), 30)
    kubelet.set_never_ready(None)
    kubelet.set_pending_forever(None)
    pool = daemon.pool
    assert pool is not None
    await pool.wait_until(lambda: pool.figures()["idle"] == 1, 60)
    metrics = daemon.metrics.render().decode()
    assert 'poold_worker_failures_total{reason="start_timeout"}' in metrics


async def test_api_errors_and_expired_watch_are_survived(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon()
    pool = daemon.pool
    assert pool is not None
    fake_api.fail_next(3, status=500)
    fake_api.expire_history()
    fake_api.close_watches()
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        job = await client.run(module("upper"), input=["after faults"])
    assert job["state"] == "succeeded", job
    await pool.wait_until(lambda: pool.figures()["idle"] == 2, 60)
    assert len(pod_names(fake_api)) == 2


async def test_restarted_daemon_adopts_idle_pods(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    first = await start_kube_daemon()
    pods = pod_names(fake_api)
    await first.stop()
    assert pod_names(fake_api) == pods, "a stopping daemon leaves its pods for the next"
    created = fake_api.verb_counts["create"]
    second = await start_kube_daemon()
    assert second.pool is not None
    assert set(second.pool.workers) == pods
    assert fake_api.verb_counts["create"] == created, "adopted, not recreated"
    async with aiohttp.ClientSession() as session:
        job = await Client(second, session, "alpha").run(module("noop"))
    assert job["state"] == "succeeded"
    assert job["pod"] in pods


async def test_orphan_pod_holding_a_job_is_deleted(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    first = await start_kube_daemon()
    backend = first.backend
    assert isinstance(backend, KubernetesBackend)
    victim = PodName(sorted(pod_names(fake_api))[0])
    assert await backend.claim(victim, JobId("j-lost-with-the-daemon"))
    await first.stop()
    second = await start_kube_daemon()
    await fake_api.wait_until(lambda: victim not in pod_names(fake_api), 30)
    assert second.pool is not None
    await second.pool.wait_until(lambda: second.pool.figures()["idle"] == 2, 60)  # type: ignore[union-attr]


async def test_two_backends_race_for_one_pod(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon()
    assert daemon.backend is not None
    other = KubernetesBackend(
        settings=daemon.settings.kubernetes, template={}, kafka="unused",
        configuration=fake_api.client_configuration(),
    )
    seen: list[object] = []
    await other.start(seen.append)
    try:
        wins = 0
        for pod in sorted(pod_names(fake_api)):
            results = await asyncio.gather(
                daemon.backend.claim(PodName(pod), JobId(f"j-a-{pod}")),
                other.claim(PodName(pod), JobId(f"j-b-{pod}")),
            )
            assert results.count(True) == 1, results
            wins += 1
        assert wins == 2
        claims = [r for r in fake_api.requests if r.method == "PATCH"]
        assert len(claims) == 4
    finally:
        await other.stop()


async def test_only_the_leader_manages_pods_and_the_other_takes_over(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    election = {"kubernetes__leader_election": "true", "kubernetes__lease_duration_s": "2"}
    leader = await start_kube_daemon(**election)
    assert leader.active.is_set()
    follower = await start_kube_daemon(wait_idle=False, **election)
    async with aiohttp.ClientSession() as session:
        async with session.get(follower.url + "/readyz") as r:
            assert r.status == 503
        async with session.get(leader.url + "/readyz") as r:
            assert r.status == 200
        pods = pod_names(fake_api)
        assert len(pods) == 2
        await leader.stop()
        await asyncio.wait_for(follower.active.wait(), 30)
        assert follower.pool is not None
        await follower.pool.wait_until(lambda: follower.pool.figures()["idle"] == 2, 30)  # type: ignore[union-attr]
        assert set(follower.pool.workers) == pods, "the new leader adopted the warm pods"
        lease = fake_api.get_lease("poold", "poold-leader")
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == follower.elector.identity  # type: ignore[union-attr]
        job = await Client(follower, session, "alpha").run(module("noop"))
        assert job["state"] == "succeeded"
        async with session.get(follower.url + "/readyz") as r:
            assert r.status == 200


async def test_restarted_daemon_follows_a_running_job_to_completion(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer, tmp_path: Any
) -> None:
    first = await start_kube_daemon()
    async with aiohttp.ClientSession() as session:
        client = Client(first, session, "alpha")
        sha = await client.upload(module("ticker"))
        job = await client.submit(sha, args=["30"])
        async with client.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
            assert await r.content.readline() == b"tick 1\n"
        pod = (await client.json("GET", f"/v1/jobs/{job['id']}", 200))["pod"]
        await first.stop()  # a rolling update: the pod keeps running its job
        assert pod in pod_names(fake_api)

        second = await start_kube_daemon(
            wait_idle=False, state__dir=str(first.settings.state.dir),
            kafka__topic_prefix=first.settings.kafka.topic_prefix,
        )
        final = await wait_done(second, job["id"])
        assert final.state.value == "succeeded", final
        assert final.pod == pod, "followed on the same pod, not run again"
        client = Client(second, session, "alpha")
        out = await client.text(f"/v1/jobs/{job['id']}/output")
        assert out.splitlines() == [f"tick {i}" for i in range(1, 31)]
    await fake_api.wait_until(lambda: pod not in pod_names(fake_api), 30)


async def test_oom_killed_idle_pod_is_replaced(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer, kubelet: FakeKubelet
) -> None:
    daemon = await start_kube_daemon()
    pool = daemon.pool
    assert pool is not None
    victim = sorted(pod_names(fake_api))[0]
    kubelet.oom_kill(victim)
    await pool.wait_until(lambda: victim not in pool.workers, 30)
    await pool.wait_until(lambda: pool.figures()["idle"] == 2, 60)
    metrics = daemon.metrics.render().decode()
    assert 'poold_worker_failures_total{reason="idle_lost"} 1.0' in metrics


async def test_a_runner_pods_crashed_agent_ends_its_job_error_at_once(
    start_kube_daemon: DaemonFactory, kubelet: FakeKubelet
) -> None:
    """The agent's job loop crashes (``POOLD_AGENT_CRASH_AT``, poold/faults.py) after
    it read job.json: the job ends ``error`` saying so, well within its hour's time
    limit, once, and the pod's agent exits (tests/agent/test_agent_crash.py has the
    local backend's and the agent's own side)."""
    kubelet.base_env["POOLD_AGENT_CRASH_AT"] = "job"
    daemon = await start_kube_daemon()
    pids = dict(kubelet.processes)
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        job = await client.submit(await client.upload(module("upper")), input=["a"],
                                  limits={"timeout_s": 3600})
        done = await wait_done(daemon, job["id"], timeout=60)
    assert done.state.value == "error", done
    assert done.error is not None, done
    assert done.error.startswith("the worker's agent failed and exited: InjectedCrash("), done
    assert done.attempts == 1 and done.started_at is None, done
    assert done.pod in pids, (done.pod, pids)
    assert await wait_gone([pids[done.pod]], 30) == []
