"""The scale scenario, shrunk: poold's Kubernetes backend and pool in their own
process against the fake API server and the bench's instant kubelet."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import kubescale, scenario, stats
from tests.fakekube import FakeApiServer
from tests.fakekube.resources import PODS


async def test_instant_kubelet_makes_pods_ready_without_processes() -> None:
    async with FakeApiServer() as api, kubescale.InstantKubelet(api) as kubelet:
        for i in range(3):
            api.store.create(
                PODS, "poold",
                {"metadata": {"name": f"p{i}"},
                 "spec": {"containers": [{"name": "agent", "image": "x"}]}},
            )
        await api.wait_until(lambda: kubelet.readied == 3, 5)
        pods = api.pods("poold")
        ips = {p["status"]["podIP"] for p in pods}
        assert len(ips) == 3 and "127.0.0.1" not in ips
        for pod in pods:
            assert pod["status"]["phase"] == "Running"
            assert pod["spec"]["nodeName"] == kubelet.node
            ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
            assert ready["Ready"] == "True"
        # a delete is finished at once (no process to stop)
        api.store.delete(PODS, "poold", "p0", grace_period=5)
        await api.wait_until(lambda: api.get_pod("poold", "p0") is None, 5)
        assert kubelet.removed == 1


@pytest.mark.timeout(90)
async def test_scale_scenario_shrunk(tmp_path: Path) -> None:
    scale = scenario.KubeScale(name="kube-tiny", pods=30, claims=10, max_starting=10,
                               idle_s=0.5, timeout_s=60)
    run = await kubescale.run_kube_scale(scale, tmp_path)
    log = tmp_path / "kube-tiny.daemon.log"
    assert run.failure is None, log.read_text(errors="replace")[-3000:]
    r = run.result
    assert r["figures_full"]["idle"] == 30
    assert r["figures_end"]["busy"] == 10 and r["claims_lost"] == 0
    assert len(r["claim_ms"]) == 10 and r["claim_p50_ms"] > 0
    assert r["fill_s"] > 0 and r["rss_peak_mib"] > 10 and r["fill_cpu_s"] > 0
    assert run.api_requests["create"] == 30 and run.api_requests["patch"] == 10
    assert run.pods_readied == 30
    # the percentiles are the bench's nearest rank over the times the daemon wrote
    for name in ("claim", "take_idle"):
        for p in (50, 90, 99):
            assert r[f"{name}_p{p}_ms"] == stats.percentile(r[f"{name}_ms"], p), (name, p)


def test_claim_percentiles_are_the_benchs_nearest_rank() -> None:
    """One percentile function for the whole bench: the scale scenario's p50/p90/p99
    come from ``bench.stats.percentile`` over the claim times as written (once rounded)."""
    result = {"claim_ms": [float(v) for v in range(100, 0, -1)],
              "take_idle_ms": [0.1234, 0.0001, 0.5]}
    kubescale._percentiles(result)
    assert (result["claim_p50_ms"], result["claim_p90_ms"], result["claim_p99_ms"]) == (
        50.0, 90.0, 99.0)
    assert result["take_idle_p50_ms"] == 0.1234 and result["take_idle_p99_ms"] == 0.5
    failed: dict[str, object] = {"error": "no idle worker"}
    kubescale._percentiles(failed)
    assert failed == {"error": "no idle worker"}
