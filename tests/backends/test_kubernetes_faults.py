"""The Kubernetes backend where a real API server differs from a polite one: calls that
hang, answers lost after the write was committed, 409s that are not lost races, clocks
that disagree, readiness that comes and goes, IPv6 pod IPs, and where credentials and
settings come from. Each test here failed before the fix it guards."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api, CoreV1Api

from poold.backends.base import WorkerEvent
from poold.backends.kubernetes import KubernetesBackend, load_configuration
from poold.backends.leader import LeadershipLost, LeaseElector
from poold.config import ConfigError, KubernetesSettings, load_settings
from poold.sched.pool import WorkerState
from poold.types import JobId, PodName
from tests.fakekube import FakeApiServer, FakeKubelet
from tests.support.daemon import Client, DaemonFactory, wait_done
from tests.support.wasm_fixtures import module

SELECTOR = "app.kubernetes.io/name=poold-runner"


def pod_names(api: FakeApiServer) -> list[str]:
    return sorted(p["metadata"]["name"] for p in api.pods("poold", label_selector=SELECTOR))


def holder(api: FakeApiServer, pod: str) -> str | None:
    found = api.get_pod("poold", pod)
    assert found is not None
    job: str | None = found["metadata"].get("annotations", {}).get("poold.dev/job")
    return job


# -- defect 1: every call has a timeout; a leader that cannot renew steps down ---------


async def test_a_claim_whose_call_hangs_times_out_and_is_retried(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon(kubernetes__api_timeout_s="1")
    backend = daemon.backend
    assert isinstance(backend, KubernetesBackend)
    pod = PodName(pod_names(fake_api)[0])
    fake_api.hang_next(1, method="PATCH")
    won = await asyncio.wait_for(backend.claim(pod, JobId("j-after-a-hang")), 30)
    assert won
    assert holder(fake_api, pod) == "j-after-a-hang"


async def test_a_leader_whose_lease_calls_hang_stops_leading_within_the_renew_deadline(
    fake_api: FakeApiServer,
) -> None:
    elector = LeaseElector(configuration=fake_api.client_configuration(), namespace="poold",
                           name="poold-leader", duration_s=3, identity="a", call_timeout_s=30)
    task = asyncio.create_task(elector.run())
    try:
        await asyncio.wait_for(elector.leading.wait(), 10)
        fake_api.hang_next(1000, path="/leases")
        with pytest.raises(LeadershipLost):
            # the renew deadline is 2 s; a standby takes the Lease after 3 s unchanged
            await asyncio.wait_for(asyncio.shield(task), 15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- defect 2: a 409 on a claim is answered by reading the pod -------------------------


async def test_a_claim_committed_but_unanswered_is_won(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon()
    backend = daemon.backend
    assert isinstance(backend, KubernetesBackend)
    pod = PodName(pod_names(fake_api)[0])
    fake_api.lose_responses(1, method="PATCH")
    assert await backend.claim(pod, JobId("j-lost-answer"))
    assert holder(fake_api, pod) == "j-lost-answer"


async def test_a_claim_that_met_a_status_write_is_retried_and_won(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon()
    backend = daemon.backend
    assert isinstance(backend, KubernetesBackend)
    pod = PodName(pod_names(fake_api)[0])
    stale = copy.deepcopy(backend.pods[pod])
    async with ApiClient(configuration=fake_api.client_configuration()) as client:
        core: Any = CoreV1Api(client)
        await core.patch_namespaced_pod_status(  # what a kubelet does at any moment
            pod, "poold", {"status": {"message": "kubelet was here"}},
            _content_type="application/merge-patch+json")
    backend.pods[pod] = stale  # the claim races the watch and carries the old version
    assert await backend.claim(pod, JobId("j-after-status"))
    assert holder(fake_api, pod) == "j-after-status"
    patches = [r for r in fake_api.requests if r.method == "PATCH" and r.path.endswith(pod)]
    assert len(patches) == 2, "one 409, then one claim with the fresh resourceVersion"


async def test_a_claim_lost_to_another_job_stays_lost(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    daemon = await start_kube_daemon()
    backend = daemon.backend
    assert isinstance(backend, KubernetesBackend)
    pod = PodName(pod_names(fake_api)[0])
    stale = copy.deepcopy(backend.pods[pod])
    assert await backend.claim(pod, JobId("j-first"))
    backend.pods[pod] = stale
    assert not await backend.claim(pod, JobId("j-second"))
    assert holder(fake_api, pod) == "j-first"


@pytest.mark.timeout(300)
async def test_restarted_daemon_follows_a_job_only_on_the_pod_its_journal_names(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer, tmp_path: Path
) -> None:
    first = await start_kube_daemon()
    backend = first.backend
    assert isinstance(backend, KubernetesBackend) and first.pool is not None
    # a pod that lists before any other, holding the job too: what a claim whose answer
    # was lost leaves behind when the job then went to another pod
    decoy = PodName("poold-w-0000000000")
    (first.settings.slots.root / decoy / "in").mkdir(parents=True)
    (first.settings.slots.root / decoy / "out").mkdir(parents=True)
    await backend.create(decoy)
    await first.pool.wait_until(
        lambda: first.pool.workers.get(decoy) is not None  # type: ignore[union-attr]
        and first.pool.workers[decoy].state is WorkerState.IDLE, 60)  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        client = Client(first, session, "alpha")
        sha = await client.upload(module("ticker"))
        first.pool.workers[decoy].state = WorkerState.BUSY  # keep the job off the decoy
        job = await client.submit(sha, args=["20"], limits={"timeout_s": 300})
        async with client.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
            assert await r.content.readline() == b"tick 1\n"
        pod = (await client.json("GET", f"/v1/jobs/{job['id']}", 200))["pod"]
        assert pod != decoy
        first.pool.workers[decoy].state = WorkerState.IDLE
        assert await backend.claim(decoy, JobId(job["id"]))
        await first.stop()

        second = await start_kube_daemon(
            wait_idle=False, state__dir=str(first.settings.state.dir),
            kafka__topic_prefix=first.settings.kafka.topic_prefix,
        )
        final = await wait_done(second, job["id"], timeout=240)
        assert final.state.value == "succeeded", final
        assert final.pod == pod
    await fake_api.wait_until(lambda: decoy not in pod_names(fake_api), 30)


# -- defect 3: credentials in kubectl's order; paths relative to their file ------------


@pytest.fixture
def kubeconfigs(fake_api: FakeApiServer, tmp_path: Path) -> dict[str, Path]:
    made = {}
    for name, folder in (("key", "key"), ("env", "env"), ("home", "home/.kube")):
        path = tmp_path / folder / "config"
        path.parent.mkdir(parents=True)
        made[name] = fake_api.write_kubeconfig(path, namespace=f"ns-{name}")
    return made


async def test_credentials_follow_kubectls_order(
    kubeconfigs: dict[str, Path], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    key = KubernetesSettings(kubeconfig=kubeconfigs["key"])
    unset = KubernetesSettings()
    env = {"KUBECONFIG": f"{tmp_path}/missing:{kubeconfigs['env']}"}
    found = await load_configuration(key, environ=env, home=home)
    assert (found.source, found.namespace) == ("kubernetes.kubeconfig", "ns-key")
    found = await load_configuration(unset, environ=env, home=home)
    assert (found.source, found.namespace) == ("$KUBECONFIG", "ns-env")
    found = await load_configuration(unset, environ={}, home=home)
    assert found.namespace == "ns-home"
    with pytest.raises(ConfigError, match="no Kubernetes credentials"):
        await load_configuration(unset, environ={}, home=tmp_path / "nobody")


async def test_namespace_defaults_to_the_pods_own(
    kubeconfigs: dict[str, Path], tmp_path: Path
) -> None:
    env = {"KUBECONFIG": str(kubeconfigs["env"]), "POD_NAMESPACE": "from-the-pod"}
    found = await load_configuration(KubernetesSettings(), environ=env, home=tmp_path)
    assert found.namespace == "from-the-pod"
    found = await load_configuration(KubernetesSettings(namespace="set"), environ=env,
                                     home=tmp_path)
    assert found.namespace == "set"


def test_relative_paths_in_the_config_file_resolve_against_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "poold.toml").write_text(
        '[kubernetes]\nkubeconfig = "kube/config"\npod_template = "runner.yaml"\n')
    settings = load_settings(folder / "poold.toml", environ={})
    assert settings.kubernetes.kubeconfig == folder / "kube" / "config"
    assert settings.kubernetes.pod_template == folder / "runner.yaml"


async def test_relative_files_in_a_kubeconfig_resolve_against_its_folder(
    fake_api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "kube"
    folder.mkdir()
    (folder / "token").write_text("a-token-from-a-file\n")
    path = fake_api.write_kubeconfig(folder / "config")
    path.write_text(path.read_text().replace('"token": "fake-token"', '"tokenFile": "token"'))
    monkeypatch.chdir(tmp_path)
    found = await load_configuration(KubernetesSettings(kubeconfig=path), environ={})
    assert found.configuration.api_key["BearerToken"] == "Bearer a-token-from-a-file"


# -- defect 5: lease expiry is timed by our own observation ---------------------------


async def _lease(fake_api: FakeApiServer, holder_id: str, renew: datetime) -> None:
    stamp = renew.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    async with ApiClient(configuration=fake_api.client_configuration()) as client:
        api: Any = CoordinationV1Api(client)
        await api.create_namespaced_lease("poold", {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "poold-leader"},
            "spec": {"holderIdentity": holder_id, "leaseDurationSeconds": 2,
                     "renewTime": stamp, "acquireTime": stamp, "leaseTransitions": 0},
        })


async def test_a_live_leader_whose_clock_is_behind_keeps_its_lease(
    fake_api: FakeApiServer,
) -> None:
    await _lease(fake_api, "skewed", datetime.now(UTC) - timedelta(hours=1))
    elector = LeaseElector(configuration=fake_api.client_configuration(), namespace="poold",
                           name="poold-leader", duration_s=2, identity="b")
    async with ApiClient(configuration=fake_api.client_configuration()) as client:
        elector._api = CoordinationV1Api(client)
        assert not await elector.try_acquire(), "just written: not expired, whatever it says"


async def test_a_dead_leader_whose_clock_was_ahead_is_replaced_within_the_lease(
    fake_api: FakeApiServer,
) -> None:
    await _lease(fake_api, "gone", datetime.now(UTC) + timedelta(hours=1))
    elector = LeaseElector(configuration=fake_api.client_configuration(), namespace="poold",
                           name="poold-leader", duration_s=2, identity="c")
    task = asyncio.create_task(elector.run())
    try:
        await asyncio.wait_for(elector.leading.wait(), 15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lease = fake_api.get_lease("poold", "poold-leader")
    assert lease is not None and lease["spec"]["holderIdentity"] == "c"


# -- defect 6: readiness is tracked both ways ------------------------------------------


async def test_an_idle_pod_that_stops_being_ready_gets_no_job_until_it_is_again(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer, kubelet: FakeKubelet
) -> None:
    daemon = await start_kube_daemon()
    pool = daemon.pool
    assert pool is not None
    victim = pod_names(fake_api)[0]
    kubelet.set_never_ready(lambda pod: pod["metadata"]["name"] == victim)
    await pool.wait_until(lambda: pool.workers[PodName(victim)].state is WorkerState.STARTING, 30)
    assert pool.figures()["idle"] == 1
    async with aiohttp.ClientSession() as session:
        job = await Client(daemon, session, "alpha").run(module("noop"))
    assert job["state"] == "succeeded" and job["pod"] != victim
    kubelet.set_never_ready(None)
    await pool.wait_until(lambda: pool.workers[PodName(victim)].state is WorkerState.IDLE, 30)


# -- defect 7: IPv6 pod IPs ------------------------------------------------------------


async def test_an_ipv6_pod_ip_makes_a_bracketed_agent_url(fake_api: FakeApiServer) -> None:
    ready: list[WorkerEvent] = []
    got_ready = asyncio.Event()

    def sink(event: WorkerEvent) -> None:
        if event.kind == "ready":
            ready.append(event)
            got_ready.set()

    backend = KubernetesBackend(
        settings=KubernetesSettings(namespace="poold"), template={}, kafka="unused",
        configuration=fake_api.client_configuration())
    await backend.start(sink)
    try:
        async with ApiClient(configuration=fake_api.client_configuration()) as client:
            core: Any = CoreV1Api(client)
            await core.create_namespaced_pod("poold", {
                "metadata": {"name": "poold-w-00000000v6", "labels": {
                    "app.kubernetes.io/name": "poold-runner", "poold.dev/pool": "default"}},
                "spec": {"containers": [{"name": "agent", "image": "x"}]}})
            await core.patch_namespaced_pod_status("poold-w-00000000v6", "poold", {"status": {
                "phase": "Running", "podIP": "fd00::7", "podIPs": [{"ip": "fd00::7"}],
                "conditions": [{"type": "Ready", "status": "True"}]}},
                _content_type="application/merge-patch+json")
        await asyncio.wait_for(got_ready.wait(), 10)
    finally:
        await backend.stop()
    assert ready[0].endpoint == "http://[fd00::7]:8081"


# -- defect 8: the agent settings of poold's config reach the runner pods -------------


async def test_runtime_settings_reach_the_runner_pods(
    start_kube_daemon: DaemonFactory, fake_api: FakeApiServer
) -> None:
    await start_kube_daemon(runtime__max_log_kb="123", runtime__poll_interval_s="0.07",
                            slots__fsync="true")
    for name in pod_names(fake_api):
        pod = fake_api.get_pod("poold", name)
        assert pod is not None
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["POOLD_AGENT_MAX_LOG_KB"] == "123"
        assert env["POOLD_AGENT_POLL_S"] == "0.07"
        assert env["POOLD_AGENT_FSYNC"] == "1"
        assert env["POOLD_AGENT_ENGINE"] == "wasmtime"
        assert [e["name"] for e in pod["spec"]["containers"][0]["env"]].count(
            "POOLD_AGENT_ENGINE") == 1
