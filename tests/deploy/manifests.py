"""Paths, versions and small helpers shared by the deploy/ tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "prod")
RUNNER_TEMPLATE = DEPLOY / "runner" / "pod-template.yaml"
K8S_VERSION = "1.32"
"""The Kubernetes version every object is validated against (kubernetes-validate's schemas)."""
MIN_KUSTOMIZE = (4, 0)
"""Components, `labels` and `patches` need kustomize v4+ (kubectl 1.21 and later)."""

Object = dict[str, Any]


def find(objects: list[Object], kind: str, name: str | None = None) -> list[Object]:
    return [o for o in objects if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name
                 or o["metadata"]["name"].startswith(name + "-"))]


def one(objects: list[Object], kind: str, name: str) -> Object:
    matches = find(objects, kind, name)
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_specs(objects: list[Object]) -> Iterator[tuple[str, Object]]:
    """(where, pod spec) for every workload in a render."""
    for o in objects:
        where = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "Pod":
            yield where, o["spec"]
        elif o["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            yield where, o["spec"]["template"]["spec"]
        elif o["kind"] == "CronJob":
            yield where, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(spec: Object) -> list[Object]:
    return [*spec.get("initContainers", []), *spec.get("containers", []),
            *spec.get("ephemeralContainers", [])]


def env_of(container: Object) -> dict[str, str]:
    """The container's literal env values (valueFrom entries are left out)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def poold_container(objects: list[Object]) -> Object:
    """The one container of the poold Deployment."""
    spec = one(objects, "Deployment", "poold")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return container
