"""config/cluster.toml, as the Deployment runs it, loads through poold's own config code and
agrees with the manifests around it (mounts, ports, Kafka, the runner pod's limits)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from poold.config import Settings, load_settings

from .manifests import OVERLAYS, REPO, Object, env_of, find, one, poold_container

CLUSTER_TOML = REPO / "config" / "cluster.toml"
FAKE_HASH = "0" * 63 + "1"

UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity(value: str) -> int:
    for suffix, factor in UNITS.items():
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(value)


def settings_for(objects: list[Object]) -> Settings:
    """The settings poold would run with: the file, the Deployment's env, the tenant Secret."""
    poold = poold_container(objects)
    environ = {k: v for k, v in env_of(poold).items() if k.startswith("POOLD_")}
    secrets = find(objects, "Secret", "poold-tenants")
    if secrets:
        environ.update(secrets[0].get("stringData", {}))
        for key in secrets[0].get("data", {}):
            environ[key] = FAKE_HASH  # base64 in data; any valid hash does for loading
    else:
        environ["POOLD_TENANTS__ACME__TOKEN_SHA256"] = FAKE_HASH  # prod: created out of band
    return load_settings(CLUSTER_TOML, environ=environ)


def mounts(objects: list[Object]) -> dict[str, str]:
    poold = poold_container(objects)
    return {m["name"]: m["mountPath"] for m in poold["volumeMounts"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_loads_with_the_deployments_environment(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    s = settings_for(rendered[overlay])
    assert s.pool.backend == "kubernetes"
    assert s.runtime.engine == "wasmedge"
    assert s.slots.fsync is True
    assert s.tenants, "the tenant from the Secret did not reach the settings"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_paths_are_the_mounted_ones(rendered: dict[str, list[Object]], overlay: str) -> None:
    objects = rendered[overlay]
    s = settings_for(objects)
    paths = mounts(objects)
    assert str(s.slots.root) == paths["slots"]
    assert str(s.state.dir) == paths["state"]
    assert s.kubernetes.namespace == one(objects, "Namespace", "poold")["metadata"]["name"]
    template = PurePosixPath(s.kubernetes.pod_template)
    assert str(template.parent) == paths["config"]
    spec = one(objects, "Deployment", "poold")["spec"]["template"]["spec"]
    projected = {item["path"]: (source["configMap"]["name"], item["key"])
                 for v in spec["volumes"] if v["name"] == "config"
                 for source in v["projected"]["sources"] for item in source["configMap"]["items"]}
    name, key = projected[template.name]
    assert name.startswith("poold-runner-template") and key == "runner-pod.yaml"
    name, key = projected["poold.toml"]
    assert name.startswith("poold-config") and key == "poold.toml"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_listens_where_the_service_points(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    objects = rendered[overlay]
    s = settings_for(objects)
    assert s.server.host == "0.0.0.0"
    poold = poold_container(objects)
    assert {"name": "http", "containerPort": s.server.port, "protocol": "TCP"} in poold["ports"]
    service_ports = one(objects, "Service", "poold")["spec"]["ports"]
    assert [p["targetPort"] for p in service_ports] == ["http"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_is_what_runner_pods_may_reach(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    objects = rendered[overlay]
    s = settings_for(objects)
    policy = one(objects, "NetworkPolicy", "poold-runner")
    kafka_peers = {(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                    port["port"])
                   for rule in policy["spec"]["egress"] for peer in rule["to"]
                   for port in rule["ports"] if port["port"] != 53}
    for address in s.kafka.bootstrap.split(","):
        host, _, port = address.rpartition(":")
        namespace = host.split(".")[1]
        assert (namespace, int(port)) in kafka_peers, (
            f"kafka.bootstrap {address} is not reachable under the runner's NetworkPolicy"
        )


def test_runner_pod_fits_the_job_limits(rendered: dict[str, list[Object]],
                                        runner_template: Object) -> None:
    s = settings_for(rendered["dev"])
    spec = runner_template["spec"]
    (agent,) = spec["containers"]
    memory = quantity(agent["resources"]["limits"]["memory"])
    assert memory >= (s.limits.max_memory_mb + 128) * 2**20, (
        "the runner pod's memory limit must hold limits.max_memory_mb plus the agent"
    )
    assert spec["activeDeadlineSeconds"] > s.limits.max_timeout_s, (
        "activeDeadlineSeconds is a backstop: it must not cut a job inside limits.max_timeout_s"
    )
    port = int(env_of(agent)["POOLD_AGENT_PORT"])
    assert getattr(s.kubernetes, "agent_port", port) == port
    assert env_of(agent)["POOLD_AGENT_ENGINE"] == s.runtime.engine


def test_prod_quota_leaves_room_for_the_pool(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["prod"]
    s = settings_for(objects)
    replicas = one(objects, "Deployment", "poold")["spec"]["replicas"]
    quota = int(one(objects, "ResourceQuota", "poold-pods")["spec"]["hard"]["pods"])
    assert quota >= s.pool.max_pods + 2 * replicas, "pool.max_pods would hit the ResourceQuota"


def test_cluster_toml_documents_every_key() -> None:
    """Like config/local.toml: every key set in the file carries a comment."""
    for number, line in enumerate(Path(CLUSTER_TOML).read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "[")):
            assert "#" in line, f"config/cluster.toml:{number}: {stripped!r} has no comment"


def uncommented(text: str, header: str) -> str:
    """``text`` with the commented-out TOML table that starts at the line ``# <header>``
    uncommented, down to its first line that is not a ``# `` comment."""
    lines = text.splitlines()
    start = lines.index(f"# {header}")
    end = start
    while end < len(lines) and lines[end].startswith("# "):
        end += 1
    return "\n".join([*lines[:start], *(line[2:] for line in lines[start:end]), *lines[end:]])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_commented_python_runtime_works_once_uncommented(
    rendered: dict[str, list[Object]], overlay: str, tmp_path: Path
) -> None:
    """docs/deploy.md says to uncomment [runtimes.python]: it then loads with the
    Deployment's environment, its files are on poold's state volume (where the docs copy
    them), and a script sees what it sees on `make run` (config/local.toml)."""
    edited = tmp_path / "cluster.toml"
    edited.write_text(uncommented(CLUSTER_TOML.read_text(), "[runtimes.python]"))
    environ = {k: v for k, v in env_of(poold_container(rendered[overlay])).items()
               if k.startswith("POOLD_")}
    environ["POOLD_TENANTS__ACME__TOKEN_SHA256"] = FAKE_HASH
    s = load_settings(edited, environ=environ)
    python = s.runtimes["python"]
    assert python.module.is_relative_to(s.state.dir)
    assert all(folder.is_relative_to(s.state.dir) for folder in python.mounts.values())
    assert str(s.state.dir) == mounts(rendered[overlay])["state"]
    local = load_settings(REPO / "config" / "local.toml", environ={}).runtimes["python"]
    assert python.module.name == local.module.name
    assert (sorted(python.mounts), python.args, python.env, python.script_name) == (
        sorted(local.mounts), local.args, local.env, local.script_name)
    assert python.compile_memory_mb == local.compile_memory_mb
