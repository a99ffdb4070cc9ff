"""The runner pod template: the YAML in ``deploy/runner/`` made into one pod.

poold names each pod itself (its slot ``<slots.root>/<pod>`` must exist before
the pod does, because the pod mounts it with ``subPathExpr: $(POD_NAME)``),
labels it as part of this pool and idle, and sets the agent settings that
poold's own config decides (Kafka, engine, log cap, poll interval, fsync), so
one config file governs local workers and runner pods alike. Everything else
(image, resources, security context, probes) is the operator's, in the template.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from poold.errors import BackendError
from poold.types import JobId, PodName, TenantName

LABEL_APP = "app.kubernetes.io/name"
LABEL_POOL = "poold.dev/pool"
LABEL_STATE = "poold.dev/state"
ANNOTATION_JOB = "poold.dev/job"
ANNOTATION_TENANT = "poold.dev/tenant"
"""On a hot pod (``pool.reuse``): the one tenant whose jobs it may take, for life."""
ANNOTATION_JOBS = "poold.dev/jobs"
"""On a hot pod: how many jobs it has taken (``pool.max_jobs_per_worker``)."""
UNKNOWN_JOBS = 2**31
TOKEN_ENV = "POOLD_AGENT_TOKEN"  # noqa: S105 - the variable's name, not a secret
RUNTIMES_ENV = "POOLD_AGENT_RUNTIMES"
RUNTIMES_SUBPATH = "runtimes"
"""The folder of the slot volume where poold publishes the runtimes (poold/modules/shared.py)."""
SLOT_SUBPATH_EXPR = "$(POD_NAME)"
APP = "poold-runner"


class TemplateError(BackendError):
    """The runner pod template cannot be used; ``str()`` names the key and the fix."""


def selector(pool: str) -> str:
    return f"{LABEL_APP}={APP},{LABEL_POOL}={pool}"


def load_template(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise TemplateError(
            f"kubernetes.pod_template: {path} does not exist (deploy/runner/pod-template.yaml "
            "ships with poold)"
        ) from e
    except yaml.YAMLError as e:
        raise TemplateError(f"kubernetes.pod_template: {path} is not valid YAML: {e}") from e
    if not isinstance(document, dict) or document.get("kind") != "Pod":
        raise TemplateError(f"kubernetes.pod_template: {path} must hold one v1 Pod")
    containers = document.get("spec", {}).get("containers") or []
    if not containers:
        raise TemplateError(f"kubernetes.pod_template: {path} has no containers")
    if document["spec"].get("restartPolicy", "Never") != "Never":
        raise TemplateError(
            f"kubernetes.pod_template: {path} must use restartPolicy Never: a worker runs "
            "one job and is then deleted"
        )
    return document


def render(
    template: dict[str, Any],
    *,
    name: PodName,
    pool: str,
    env: Mapping[str, str],
    owner: dict[str, Any] | None = None,
    token: str = "",
    runtimes: str | None = None,
) -> dict[str, Any]:
    """``env`` (the agent settings poold's config decides) replaces same-named entries
    of the first container's env, or is added to it. ``runtimes``: where the pod
    mounts the published runtimes (``kubernetes.runtimes_mount_path``; None when no
    runtime is configured), see :func:`runtimes_mount`."""
    pod = copy.deepcopy(template)
    meta = pod.setdefault("metadata", {})
    meta.pop("generateName", None)
    meta["name"] = name
    labels = meta.setdefault("labels", {})
    labels.update({LABEL_APP: APP, LABEL_POOL: pool, LABEL_STATE: "idle"})
    if owner is not None:
        meta["ownerReferences"] = [owner]
    spec = pod["spec"]
    spec["restartPolicy"] = "Never"
    container = spec["containers"][0]
    env = {**env, TOKEN_ENV: token}
    if runtimes is not None:
        mount = runtimes_mount(template, runtimes)
        mounts = [m for m in container.get("volumeMounts", [])
                  if m.get("mountPath") != mount["mountPath"]]
        container["volumeMounts"] = [*mounts, mount]
        env[RUNTIMES_ENV] = runtimes
    entries = [e for e in container.get("env", []) if e.get("name") not in env]
    entries += [{"name": name, "value": value} for name, value in env.items()]
    container["env"] = entries
    # the agent refuses requests without this pod's own token, the kubelet's
    # readiness probe included
    probe = container.get("readinessProbe", {}).get("httpGet")
    if probe is not None:
        headers = [h for h in probe.get("httpHeaders", []) if h.get("name") != "Authorization"]
        headers.append({"name": "Authorization", "value": f"Bearer {token}"})
        probe["httpHeaders"] = headers
    return pod


def runtimes_mount(template: dict[str, Any], path: str) -> dict[str, Any]:
    """The first container's read-only mount of the published runtimes at ``path``:
    the folder ``runtimes`` of the volume its slot comes from (the mount with
    ``subPathExpr: $(POD_NAME)``), which poold fills at start-up. A read-only
    ``subPath`` of a PVC is allowed by the restricted Pod Security profile."""
    container = template["spec"]["containers"][0]
    for mount in container.get("volumeMounts", []):
        if str(mount.get("subPathExpr", "")).strip() == SLOT_SUBPATH_EXPR:
            return {"name": mount["name"], "mountPath": path, "subPath": RUNTIMES_SUBPATH,
                    "readOnly": True}
    raise TemplateError(
        "kubernetes.pod_template: its first container has no volumeMount with subPathExpr "
        f"{SLOT_SUBPATH_EXPR} (the pod's slot), which the runtimes ([runtimes.*]) need: "
        "runner pods mount the same volume's folder runtimes read-only at "
        "kubernetes.runtimes_mount_path. Mount the slot that way (deploy/runner/"
        "pod-template.yaml does) or remove the runtimes")


def has_runtimes_mount(pod: dict[str, Any], path: str) -> bool:
    """Whether a pod's first container has the read-only runtimes mount at ``path`` that
    :func:`render` gives it (a pod made by a poold without runtimes, or with another
    ``kubernetes.runtimes_mount_path``, has not)."""
    for container in pod.get("spec", {}).get("containers", [])[:1]:
        for mount in container.get("volumeMounts") or []:
            if (mount.get("mountPath") == path and mount.get("subPath") == RUNTIMES_SUBPATH
                    and mount.get("readOnly") is True):
                return True
    return False


def token_of(pod: dict[str, Any]) -> str | None:
    """The agent token poold put in a pod's spec (see :func:`render`)."""
    for container in pod.get("spec", {}).get("containers", [])[:1]:
        for e in container.get("env", []):
            if e.get("name") == TOKEN_ENV:
                return str(e.get("value", "")) or None
    return None


def claim_patch(*, resource_version: str, job: JobId) -> dict[str, Any]:
    """A merge patch that only applies to the version of the pod we saw idle."""
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "labels": {LABEL_STATE: "busy"},
            "annotations": {ANNOTATION_JOB: job},
        }
    }


def release_patch(
    *, resource_version: str, tenant: TenantName, jobs: int
) -> dict[str, Any]:
    """A merge patch, for the version of the pod we saw holding our job, that hands the
    pod back for the next job of ``tenant`` (``pool.reuse``): no job, the tenant and the
    job count recorded on it, labelled ``hot``."""
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "labels": {LABEL_STATE: "hot"},
            "annotations": {ANNOTATION_JOB: None, ANNOTATION_TENANT: tenant,
                            ANNOTATION_JOBS: str(jobs)},
        }
    }


def hot_tenant(pod: dict[str, Any]) -> tuple[TenantName | None, int]:
    """The tenant a pod is kept for and the jobs it has taken (None, 0: a fresh pod)."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    tenant = annotations.get(ANNOTATION_TENANT)
    try:
        jobs = int(annotations.get(ANNOTATION_JOBS, "0"))
    except ValueError:
        jobs = UNKNOWN_JOBS  # recycled after its next job rather than trusted
    return (TenantName(tenant) if tenant else None), jobs
