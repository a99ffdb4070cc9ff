"""Every overlay renders, holds what a working poold needs, and ships the repo's own files."""

from __future__ import annotations

import pytest

from .manifests import DEPLOY, OVERLAYS, REPO, RUNNER_TEMPLATE, Object, find, one

EXPECTED = {
    ("Namespace", "poold"), ("ServiceAccount", "poold"), ("Role", "poold"),
    ("RoleBinding", "poold"), ("Deployment", "poold"), ("Service", "poold"),
    ("ConfigMap", "poold-config"), ("ConfigMap", "poold-runner-template"),
    ("ConfigMap", "poold-grafana-dashboard"), ("ServiceMonitor", "poold"),
    ("PersistentVolumeClaim", "poold-slots"), ("PersistentVolumeClaim", "poold-state"),
    ("NetworkPolicy", "default-deny-ingress"), ("NetworkPolicy", "poold-api"),
    ("NetworkPolicy", "poold-runner"),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_everything_poold_needs(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    objects = rendered[overlay]
    for kind, name in EXPECTED:
        assert find(objects, kind, name), f"overlays/{overlay} renders no {kind} {name}"
    for o in objects:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "poold", (
                f"overlays/{overlay}: {o['kind']}/{o['metadata']['name']} is not in namespace poold"
            )


def test_prod_runs_two_replicas_and_dev_one(rendered: dict[str, list[Object]]) -> None:
    assert one(rendered["dev"], "Deployment", "poold")["spec"]["replicas"] == 1
    assert one(rendered["prod"], "Deployment", "poold")["spec"]["replicas"] == 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollouts_do_not_wait_on_an_unready_standby(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    """Only the Lease holder answers /readyz, so a surge pod would never become ready under
    a RollingUpdate, and a budget on ready pods would block drains for good."""
    deployment = one(rendered[overlay], "Deployment", "poold")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not find(rendered[overlay], "PodDisruptionBudget")


def test_tenant_secret_only_in_dev(rendered: dict[str, list[Object]]) -> None:
    """prod must not ship a token hash from git: its operators create poold-tenants."""
    assert one(rendered["dev"], "Secret", "poold-tenants")
    assert not find(rendered["prod"], "Secret")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmaps_carry_the_repo_files_verbatim(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    """poold runs with config/cluster.toml and loads deploy/runner/pod-template.yaml as shipped."""
    objects = rendered[overlay]
    config = one(objects, "ConfigMap", "poold-config")
    assert config["data"] == {"poold.toml": (REPO / "config" / "cluster.toml").read_text()}
    template = one(objects, "ConfigMap", "poold-runner-template")
    assert template["data"] == {"runner-pod.yaml": RUNNER_TEMPLATE.read_text()}
    dashboard = one(objects, "ConfigMap", "poold-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["poold.json"] == (
        DEPLOY / "components" / "monitoring" / "poold-dashboard.json"
    ).read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_generated_names_are_the_ones_the_deployment_mounts(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    objects = rendered[overlay]
    deployment = one(objects, "Deployment", "poold")
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for source in volumes["config"]["projected"]["sources"]:
        assert source["configMap"]["name"] in names
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for volume in volumes.values():
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_and_servicemonitor_reach_poold(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    """The ServiceMonitor has no offline schema (test_schemas), so check its wiring here."""
    objects = rendered[overlay]
    deployment = one(objects, "Deployment", "poold")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service", "poold")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    monitor = one(objects, "ServiceMonitor", "poold")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"


def test_config_cluster_toml_is_the_file_the_overlays_apply() -> None:
    """kustomize reads only files inside deploy/ (so that `kubectl apply -k` works): the
    config lives in deploy/base and config/cluster.toml links to it, so the two never drift."""
    assert (REPO / "config" / "cluster.toml").resolve() == (
        REPO / "deploy" / "base" / "cluster.toml").resolve()
