"""Third-party charts: pinned versions, values files that say what poold needs, installed in
dependency order by deploy/Makefile; the Grafana dashboard shows poold's real metrics."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from .manifests import DEPLOY, REPO, Object, find, one

MAKEFILE = (DEPLOY / "Makefile").read_text()
CHARTS = DEPLOY / "charts"


def values(path: str) -> Any:
    return yaml.safe_load((CHARTS / path).read_text())


def make_variables() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)\s*[:?]?=\s*(\S+)\s*$", MAKEFILE, re.M))


def recipe(target: str) -> str:
    found = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", MAKEFILE, re.M)
    assert found, f"deploy/Makefile has no target {target}"
    return found.group(1)


def prerequisites(target: str) -> list[str]:
    found = re.search(rf"^{re.escape(target)}:([^\n=]*)$", MAKEFILE, re.M)
    assert found, f"deploy/Makefile has no target {target}"
    return found.group(1).split()


def test_chart_versions_are_pinned_exactly() -> None:
    versions = {k: v for k, v in make_variables().items() if k.endswith("_CHART_VERSION")}
    assert set(versions) == {
        "CERT_MANAGER_CHART_VERSION", "KUBE_PROMETHEUS_STACK_CHART_VERSION",
        "NFS_SERVER_PROVISIONER_CHART_VERSION", "REDPANDA_CHART_VERSION",
        "RUNTIME_CLASS_MANAGER_CHART_VERSION",
    }
    for name, version in versions.items():
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", version), f"{name} = {version} is not exact"
        assert f"--version $({name})" in MAKEFILE, f"{name} is pinned but not used"
    for line in MAKEFILE.splitlines():
        if "upgrade --install" in line or line.strip().startswith("$(HELM_INSTALL)"):
            assert "--devel" not in line


@pytest.mark.parametrize(("target", "values_file"), [
    ("cert-manager", "cert-manager/values.yaml"),
    ("monitoring", "kube-prometheus-stack/values.yaml"),
    ("nfs", "nfs-server-provisioner/values.yaml"),
    ("redpanda-dev", "redpanda/values-dev.yaml"),
    ("redpanda-prod", "redpanda/values-prod.yaml"),
    ("runtime-class-manager", "runtime-class-manager/values.yaml"),
])
def test_each_chart_installs_with_its_values(target: str, values_file: str) -> None:
    body = recipe(target)
    assert "--version $(" in body
    assert f"-f $(DEPLOY)/charts/{values_file}" in body
    assert isinstance(values(values_file), dict)


def test_parts_install_in_dependency_order() -> None:
    """cert-manager before Redpanda (its TLS), the Operator's CRDs before any ServiceMonitor."""
    for deps in ("deps-dev", "deps-prod"):
        order = prerequisites(deps)
        assert order[:3] == ["cert-manager", "monitoring", "nfs"]
        assert order[3].startswith("redpanda-")
    assert prerequisites("kind-up") == [
        "kind-cluster", "kind-nfs-client", "images", "kind-load", "deps-dev", "poold-dev", "wait"]
    assert ".NOTPARALLEL:" in MAKEFILE


def test_nfs_storage_class_has_the_mount_options_poold_needs(
    rendered: dict[str, list[Object]],
) -> None:
    nfs = values("nfs-server-provisioner/values.yaml")["storageClass"]
    assert nfs["create"] is True
    assert {"nfsvers=4.1", "hard", "lookupcache=positive"} <= set(nfs["mountOptions"])
    assert "soft" not in nfs["mountOptions"]
    for objects in rendered.values():
        for claim in find(objects, "PersistentVolumeClaim"):
            assert claim["spec"]["storageClassName"] == nfs["name"]
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_redpanda_dev_is_one_plain_broker_and_prod_is_locked() -> None:
    dev = values("redpanda/values-dev.yaml")
    assert dev["statefulset"]["replicas"] == 1
    assert dev["tls"]["enabled"] is False
    assert dev["auth"]["sasl"]["enabled"] is False
    prod = values("redpanda/values-prod.yaml")
    assert prod["statefulset"]["replicas"] >= 3
    assert prod["tls"]["enabled"] is True
    assert prod["auth"]["sasl"]["enabled"] is True
    assert prod["auth"]["sasl"]["users"] == [], "no passwords in git: use the secretRef"


def test_cert_manager_installs_its_crds() -> None:
    assert values("cert-manager/values.yaml")["crds"]["enabled"] is True


def test_monitoring_stack_is_light_and_finds_poold(rendered: dict[str, list[Object]]) -> None:
    kps = values("kube-prometheus-stack/values.yaml")
    for heavy in ("alertmanager", "nodeExporter", "kubeStateMetrics"):
        assert kps[heavy]["enabled"] is False, f"{heavy} should be off"
    spec = kps["prometheus"]["prometheusSpec"]
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False
    sidecar = kps["grafana"]["sidecar"]["dashboards"]
    dashboard = one(rendered["dev"], "ConfigMap", "poold-grafana-dashboard")
    assert dashboard["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]
    assert sidecar["searchNamespace"] == "ALL"


def test_optional_runtime_class_manager_pins_its_images() -> None:
    rcm = values("runtime-class-manager/values.yaml")
    tags = [rcm["image"]["tag"], rcm["rcm"]["shimDownloaderImage"]["tag"],
            rcm["rcm"]["nodeInstallerImage"]["tag"]]
    assert all(tag and tag != "latest" for tag in tags)
    shim = values("runtime-class-manager/shim-wasmedge.yaml")
    assert shim["kind"] == "Shim" and shim["spec"]["runtimeClass"]["name"] == "wasmedge"


def test_kind_nodes_are_pinned() -> None:
    cluster = yaml.safe_load((DEPLOY / "kind" / "cluster.yaml").read_text())
    for node in cluster["nodes"]:
        assert re.fullmatch(r"kindest/node:v\d+\.\d+\.\d+", node["image"])


# ---- the dashboard --------------------------------------------------------------------------


def readme_metrics() -> set[str]:
    """The metrics of the one table in docs/metrics.md (the README links it)."""
    table = (REPO / "docs" / "metrics.md").read_text().split("## Prometheus", 1)[1]
    return set(re.findall(r"^\| `(poold_[a-z_]+)`", table, re.MULTILINE))


def test_dashboard_charts_every_metric_and_no_other() -> None:
    text = (DEPLOY / "components" / "monitoring" / "poold-dashboard.json").read_text()
    dashboard = json.loads(text)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|sum|count)$", "", m)
            for e in exprs for m in re.findall(r"poold_[a-z_]+", e)}
    documented = readme_metrics()
    assert len(documented) >= 16
    assert used == documented, (
        f"missing from the dashboard: {sorted(documented - used)}; "
        f"not poold metrics: {sorted(used - documented)}"
    )
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for must in ("target", "submit to start", "outcome", "warm vs cold"):
        assert must in titles
