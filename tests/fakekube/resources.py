"""The resource types the fake serves, with their per-type API rules.

The real API server applies a "strategy" per resource: defaults on create,
fields reset on update, validation, and for pods graceful deletion.  Only the
rules a pool backend can trip over are kept here: pod status is reset on
create and cannot be written through the main resource, most of a pod's spec
is immutable, names and labels must be valid (a too-long job id in a label is
a real 422), and pods bound to a node are deleted gracefully.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import StatusError, invalid

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_META_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class ResourceType:
    """One served collection, e.g. core/v1 ``pods``."""

    group: str
    version: str
    plural: str
    kind: str
    field_selectors: frozenset[str] = _META_FIELDS
    has_status: bool = False

    @property
    def api_version(self) -> str:
        """``apiVersion`` as written in objects of this type."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def is_pod(self) -> bool:
        """Pods get the extra pod strategy (defaults, immutability, graceful delete)."""
        return self.group == "" and self.plural == "pods"


PODS = ResourceType(
    "",
    "v1",
    "pods",
    "Pod",
    _META_FIELDS
    | {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    has_status=True,
)
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease")
DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment")
"""Stored as given (no controller acts on them): poold only reads its own, for the
uid of the ownerReference it puts on runner pods."""
EVENTS = ResourceType(
    "",
    "v1",
    "events",
    "Event",
    _META_FIELDS
    | {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
)
EVENTS_V1 = ResourceType(
    "events.k8s.io",
    "v1",
    "events",
    "Event",
    _META_FIELDS | {"reason", "type", "regarding.kind", "regarding.name", "regarding.namespace"},
)

RESOURCES: dict[tuple[str, str, str], ResourceType] = {
    (rt.group, rt.version, rt.plural): rt for rt in (PODS, LEASES, DEPLOYMENTS, EVENTS, EVENTS_V1)
}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    """The served type for a URL's group/version/plural, if any."""
    return RESOURCES.get((group, version, plural))


def validate_meta(rt: ResourceType, obj: Mapping[str, Any]) -> None:
    """Name and label validation shared by all types (422 like the real API)."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    if not name:
        raise invalid(
            rt.kind, "", "metadata.name: Required value: name or generateName is required"
        )
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise invalid(
            rt.kind,
            name,
            f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain must "
            "consist of "
            "lower case alphanumeric characters, '-' or '.', and must start and end with an "
            "alphanumeric character",
        )
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, lname = key.rpartition("/")
        if (
            not isinstance(value, str)
            or len(lname) > 63
            or not _LABEL_NAME.match(lname)
            or (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))
        ):
            raise invalid(
                rt.kind, name, f"metadata.labels: Invalid value: {key!r}: invalid label key"
            )
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise invalid(
                rt.kind,
                name,
                f"metadata.labels: Invalid value: {value!r}: a valid label must be an empty string "
                "or consist of alphanumeric characters, '-', '_' or '.', must start and end "
                "with an "
                "alphanumeric character, and be at most 63 characters",
            )
    for key, value in (meta.get("annotations") or {}).items():
        if not isinstance(value, str):
            raise invalid(
                rt.kind, name, f"metadata.annotations: Invalid value: {key!r}: must be a string"
            )


def _default_probe(probe: dict[str, Any] | None) -> None:
    if probe is None:
        return
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    http = probe.get("httpGet")
    if isinstance(http, dict):
        http.setdefault("path", "/")
        http.setdefault("scheme", "HTTP")


def default_pod(pod: dict[str, Any]) -> None:
    """Apply the API server's pod defaults and reset status (as on create)."""
    default_pod_spec(pod)
    pod["status"] = {"phase": "Pending", "qosClass": "BestEffort"}


def default_pod_spec(pod: dict[str, Any]) -> None:
    """Spec defaults; the real server applies them on every write it decodes."""
    spec = pod.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        if not isinstance(c, dict):
            continue
        image = str(c.get("image", ""))
        tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
        latest = image.endswith(":latest") or not tagged
        c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})
        for port in c.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
        for key in ("readinessProbe", "livenessProbe", "startupProbe"):
            _default_probe(c.get(key))


def validate_pod(pod: Mapping[str, Any]) -> None:
    """The pod validation a backend could plausibly fail."""
    name = (pod.get("metadata") or {}).get("name", "")
    spec = pod.get("spec") or {}
    containers = spec.get("containers")
    if not containers:
        raise invalid("Pod", name, "spec.containers: Required value")
    seen: set[str] = set()
    for i, c in enumerate(containers):
        if not isinstance(c, dict) or not c.get("name"):
            raise invalid("Pod", name, f"spec.containers[{i}].name: Required value")
        if not c.get("image"):
            raise invalid("Pod", name, f"spec.containers[{i}].image: Required value")
        if c["name"] in seen:
            raise invalid("Pod", name, f"spec.containers[{i}].name: Duplicate value: {c['name']!r}")
        seen.add(c["name"])
    if spec.get("restartPolicy") not in ("Always", "OnFailure", "Never"):
        raise invalid(
            "Pod", name, f"spec.restartPolicy: Unsupported value: {spec.get('restartPolicy')!r}"
        )
    volumes = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    for i, c in enumerate(containers):
        for j, m in enumerate(c.get("volumeMounts") or []):
            if m.get("name") not in volumes:
                raise invalid(
                    "Pod",
                    name,
                    f"spec.containers[{i}].volumeMounts[{j}].name: Not found: {m.get('name')!r}",
                )
            if m.get("subPath") and m.get("subPathExpr"):
                raise invalid(
                    "Pod",
                    name,
                    f"spec.containers[{i}].volumeMounts[{j}].subPathExpr: Invalid value: "
                    "subPathExpr and subPath are mutually exclusive",
                )


def _mutable_view(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with the fields a pod update may change blanked out."""
    view = copy.deepcopy(dict(spec))
    for key in ("containers", "initContainers"):
        for c in view.get(key) or []:
            if isinstance(c, dict):
                c.pop("image", None)
    view.pop("activeDeadlineSeconds", None)
    view.pop("tolerations", None)
    view.pop("terminationGracePeriodSeconds", None)
    return view


def check_pod_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Reject spec changes that a real API server forbids on a pod."""
    if _mutable_view(old.get("spec") or {}) != _mutable_view(new.get("spec") or {}):
        name = (new.get("metadata") or {}).get("name", "")
        raise invalid(
            "Pod",
            name,
            "spec: Forbidden: pod updates may not change fields other than "
            "`spec.containers[*].image`, "
            "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` "
            "(only additions to existing tolerations), `spec.terminationGracePeriodSeconds`",
        )


def check_namespace(body: Mapping[str, Any], namespace: str) -> None:
    """A body's namespace must match the URL's (400 like the real server)."""
    ns = (body.get("metadata") or {}).get("namespace")
    if ns and ns != namespace:
        raise StatusError(
            400,
            "the namespace of the provided object does not match the namespace sent on the request",
            "BadRequest",
        )
