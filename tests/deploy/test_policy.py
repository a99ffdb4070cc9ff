"""Policy over the rendered YAML: least-privilege RBAC, the restricted Pod Security profile,
no secrets in ConfigMaps, pinned images, resource limits, a locked-down runner network,
and a shutdown that fits in the grace period."""

from __future__ import annotations

import re

import pytest

from poold.backends.podtemplate import render
from poold.types import PodName

from .manifests import (
    OVERLAYS,
    REPO,
    Object,
    containers,
    find,
    one,
    pod_specs,
    poold_container,
)

ALLOWED_RULES = {
    # (apiGroup, resource) -> verbs poold may have; nothing else at all. That poold uses
    # every one of them, and needs no other, tests/cluster checks against a real API server.
    ("", "pods"): {"create", "delete", "get", "list", "watch", "patch"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
    ("apps", "deployments"): {"get"},
}


def all_pod_specs(rendered: dict[str, list[Object]], runner: Object) -> list[tuple[str, Object]]:
    specs = [(f"{overlay}: {where}", spec)
             for overlay in OVERLAYS for where, spec in pod_specs(rendered[overlay])]
    specs.append(("deploy/runner/pod-template.yaml", runner["spec"]))
    return specs


# ---- RBAC ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_only_what_poold_needs(rendered: dict[str, list[Object]], overlay: str) -> None:
    objects = rendered[overlay]
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding"), (
        "poold needs no cluster-wide rights"
    )
    for role in find(objects, "Role"):
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            if rule["resources"] == ["deployments"]:
                assert rule.get("resourceNames") == ["poold"], "only its own Deployment"
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (
                    f"wildcard in {field} of Role {role['metadata']['name']}")
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    allowed = ALLOWED_RULES.get((group, resource))
                    assert allowed is not None, f"poold may not touch {group or 'core'}/{resource}"
                    extra = set(rule["verbs"]) - allowed
                    assert not extra, f"verbs {sorted(extra)} on {group or 'core'}/{resource}"
    granted = {(g, res): set(r["verbs"]) for role in find(objects, "Role") for r in role["rules"]
               for g in r["apiGroups"] for res in r["resources"]}
    assert granted == ALLOWED_RULES, "poold needs every one of these verbs"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_poold_gets_a_service_account_token(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    objects = rendered[overlay]
    binding = one(objects, "RoleBinding", "poold")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "poold"}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "poold", "namespace": "poold"}]
    assert one(objects, "ServiceAccount", "poold")["automountServiceAccountToken"] is False
    spec = one(objects, "Deployment", "poold")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "poold"


# ---- Pod Security: restricted ---------------------------------------------------------------

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}


def restricted_violations(spec: Object) -> list[str]:
    """The checks of the Pod Security Standards' "restricted" profile (baseline included)."""
    pod_sc = spec.get("securityContext", {})
    bad = [f"{field} is set" for field in ("hostNetwork", "hostPID", "hostIPC") if spec.get(field)]
    bad += [f"volume {v['name']} is of a forbidden type {sorted(set(v) - {'name'})}"
            for v in spec.get("volumes", []) if not set(v) - {"name"} <= ALLOWED_VOLUMES]
    bad += [f"sysctl {s['name']}" for s in pod_sc.get("sysctls", [])
            if s["name"] not in SAFE_SYSCTLS]
    if pod_sc.get("runAsUser") == 0:
        bad.append("pod runAsUser is 0")
    pod_seccomp = pod_sc.get("seccompProfile", {}).get("type")
    if pod_seccomp not in {None, "RuntimeDefault", "Localhost"}:
        bad.append(f"pod seccompProfile {pod_seccomp}")
    for c in containers(spec):
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps['add']}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            bad.append(f"{name}: runs as uid 0")
        seccomp = sc.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            bad.append(f"{name}: seccompProfile is {seccomp}, not RuntimeDefault or Localhost")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{name}: procMount")
        se = sc.get("seLinuxOptions", {})
        if se.get("user") or se.get("role") or se.get("type", "container_t") not in {
            "container_t", "container_init_t", "container_kvm_t", "container_engine_t"
        }:
            bad.append(f"{name}: seLinuxOptions")
        apparmor = sc.get("appArmorProfile", {}).get("type", "RuntimeDefault")
        if apparmor not in {"RuntimeDefault", "Localhost"}:
            bad.append(f"{name}: appArmorProfile {apparmor}")
        bad += [f"{name}: hostPort {p['hostPort']}" for p in c.get("ports", [])
                if p.get("hostPort")]
    return bad


def test_every_pod_spec_meets_the_restricted_profile(
    rendered: dict[str, list[Object]], runner_template: Object
) -> None:
    specs = all_pod_specs(rendered, runner_template)
    assert len(specs) == 3  # poold in dev and prod, and the runner template
    problems = [f"{where}: {v}" for where, spec in specs for v in restricted_violations(spec)]
    assert not problems, "\n".join(problems)


def test_a_runner_pod_with_the_runtimes_mount_meets_the_restricted_profile(
    runner_template: Object,
) -> None:
    """With [runtimes.*] poold adds a read-only mount of the slot volume's runtimes
    folder to each runner pod: still the restricted profile, and still only PVCs."""
    pod = render(runner_template, name=PodName("poold-runner-abc"), pool="default", env={},
                 runtimes="/runtimes")
    assert restricted_violations(pod["spec"]) == []
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "slot", "mountPath": "/runtimes", "subPath": "runtimes",
            "readOnly": True} in mounts


def test_the_restricted_check_catches_a_bad_pod(runner_template: Object) -> None:
    spec = {**runner_template["spec"], "hostNetwork": True,
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    spec["containers"] = [{**spec["containers"][0], "securityContext": {"privileged": True}}]
    found = restricted_violations(spec)
    assert any("hostNetwork" in v for v in found)
    assert any("forbidden type" in v for v in found)
    assert any("privileged" in v for v in found)


def test_namespace_enforces_the_restricted_profile(rendered: dict[str, list[Object]]) -> None:
    for overlay in OVERLAYS:
        labels = one(rendered[overlay], "Namespace", "poold")["metadata"]["labels"]
        for mode in ("enforce", "audit", "warn"):
            assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_runner_pod_is_sealed(runner_template: Object) -> None:
    spec = runner_template["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["activeDeadlineSeconds"] > 0
    (agent,) = spec["containers"]
    assert agent["name"] == "agent"
    assert agent["command"] == ["poold", "agent"]
    assert agent["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["slot"]["mountPath"] == "/slot"
    assert mounts["slot"]["subPathExpr"] == "$(POD_NAME)"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["slot"]["persistentVolumeClaim"]["claimName"] == "poold-slots"
    env = {e["name"]: e for e in agent["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POOLD_AGENT_POD"]["value"] == "$(POD_NAME)"
    assert env["POOLD_AGENT_SLOT"]["value"] == mounts["slot"]["mountPath"]
    assert env["POOLD_AGENT_CACHE"]["value"] == mounts["cache"]["mountPath"]
    assert env["POOLD_AGENT_ENGINE"]["value"] == "wasmedge"
    assert env["POOLD_AGENT_FSYNC"]["value"] == "1"
    assert "POOLD_AGENT_KAFKA" in env
    port = int(env["POOLD_AGENT_PORT"]["value"])
    assert agent["ports"] == [{"name": "agent", "containerPort": port, "protocol": "TCP"}]
    assert agent["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "agent"}
    labels = runner_template["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "poold-runner"
    assert labels["app.kubernetes.io/part-of"] == "poold"


# ---- secrets, images, resources -----------------------------------------------------------

SECRET_PATTERNS = [
    (re.compile(r"token_sha256\s*=", re.I), "a tenant token hash"),
    (re.compile(r"POOLD_TENANTS__\w+__TOKEN"), "a tenant token variable"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "a 64-hex-digit value (a sha256: token hash?)"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"(password|passwd|secret_key|sasl_password)\s*[=:]\s*\S", re.I), "a password"),
]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_configmaps(rendered: dict[str, list[Object]], overlay: str) -> None:
    for cm in find(rendered[overlay], "ConfigMap"):
        for key, value in {**cm.get("data", {}), **cm.get("binaryData", {})}.items():
            for pattern, what in SECRET_PATTERNS:
                assert not pattern.search(value), (
                    f"ConfigMap {cm['metadata']['name']} key {key} holds {what}: "
                    "put it in a Secret"
                )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tokens_come_from_the_secret(rendered: dict[str, list[Object]], overlay: str) -> None:
    poold = poold_container(rendered[overlay])
    assert {"secretRef": {"name": "poold-tenants"}} in poold["envFrom"]
    for e in poold.get("env", []):
        assert "TOKEN" not in e["name"], f"{e['name']} is set in the Deployment, not the Secret"
    for secret in find(rendered[overlay], "Secret"):
        for key in {**secret.get("data", {}), **secret.get("stringData", {})}:
            assert re.fullmatch(r"POOLD_TENANTS__[A-Z0-9_]+__TOKEN_SHA256", key), key


IMAGE = re.compile(r"^(?P<repo>[a-z0-9.\-/:_]+?)(?::(?P<tag>[\w][\w.\-]{0,127}))?"
                   r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def pinned(image: str) -> bool:
    found = IMAGE.match(image)
    if not found:
        return False
    if found["digest"]:
        return True
    return bool(found["tag"]) and found["tag"] != "latest"


def test_image_pin_check() -> None:
    assert pinned("ghcr.io/poold/runner:0.1.0")
    assert pinned("python@sha256:" + "a" * 64)
    assert pinned("localhost:5000/poold:1.2")
    assert not pinned("ghcr.io/poold/runner")
    assert not pinned("ghcr.io/poold/runner:latest")
    assert not pinned("localhost:5000/poold")


def test_images_are_pinned(rendered: dict[str, list[Object]], runner_template: Object) -> None:
    for where, spec in all_pod_specs(rendered, runner_template):
        for c in containers(spec):
            assert pinned(c["image"]), f"{where}: {c['name']} image {c['image']} is not pinned"


def test_every_container_has_requests_and_limits(
    rendered: dict[str, list[Object]], runner_template: Object
) -> None:
    for where, spec in all_pod_specs(rendered, runner_template):
        for c in containers(spec):
            resources = c.get("resources", {})
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(bound, {}), (
                        f"{where}: {c['name']} has no {bound}.{resource}"
                    )
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{where}: emptyDir {volume['name']}"


# ---- shutdown -----------------------------------------------------------------------------


def documented_drain_deadline() -> int:
    text = (REPO / "docs" / "deploy.md").read_text()
    found = re.search(r"drain deadline[^.\n]*?\b(\d+)\s*s\b", text, re.I)
    assert found, "docs/deploy.md must state poold's drain deadline (\"drain deadline: 30 s\")"
    return int(found.group(1))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_outlasts_the_drain(rendered: dict[str, list[Object]], overlay: str) -> None:
    spec = one(rendered[overlay], "Deployment", "poold")["spec"]["template"]["spec"]
    (poold,) = spec["containers"]
    pre_stop = poold.get("lifecycle", {}).get("preStop", {})
    sleep = int(pre_stop["exec"]["command"][-1]) if "exec" in pre_stop else 0
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > sleep + documented_drain_deadline(), (
        f"terminationGracePeriodSeconds {grace} must exceed the preStop sleep ({sleep} s) plus "
        f"poold's documented drain deadline ({documented_drain_deadline()} s)"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_poolds_endpoints(rendered: dict[str, list[Object]], overlay: str) -> None:
    poold = poold_container(rendered[overlay])
    assert poold["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert poold["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert poold["command"] + poold["args"] == [
        "poold", "serve", "--config", "/etc/poold/poold.toml"]


# ---- network ------------------------------------------------------------------------------


def policies_for(objects: list[Object], labels: dict[str, str]) -> list[Object]:
    return [p for p in find(objects, "NetworkPolicy")
            if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runner_network_is_locked_down(
    rendered: dict[str, list[Object]], runner_template: Object, overlay: str
) -> None:
    objects = rendered[overlay]
    runner_labels = runner_template["metadata"]["labels"]
    policies = policies_for(objects, runner_labels)
    assert any(p["spec"]["podSelector"] == {} and p["spec"].get("ingress") is None
               for p in policies), "no default-deny ingress in the namespace"
    egress_policies = [p for p in policies if "Egress" in p["spec"]["policyTypes"]]
    assert egress_policies, "runner pods have no egress policy: they could reach anything"
    poold_labels = one(objects, "Deployment", "poold")["spec"]["template"]["metadata"]["labels"]
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{policy['metadata']['name']} admits any source"
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}
                assert peer["podSelector"]["matchLabels"].items() <= poold_labels.items()
            assert rule["ports"] == [{"port": 8081, "protocol": "TCP"}]
    allowed = set()
    for policy in egress_policies:
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to"), f"{policy['metadata']['name']} allows egress anywhere"
            for peer in rule["to"]:
                assert "ipBlock" not in peer
                namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for port in rule["ports"]:
                    allowed.add((namespace, port["port"], port["protocol"]))
    assert allowed == {("redpanda", 9093, "TCP"), ("kube-system", 53, "UDP"),
                       ("kube-system", 53, "TCP")}
