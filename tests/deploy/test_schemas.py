"""Every rendered object validates against the Kubernetes OpenAPI schemas, offline.

The schemas come from the PyPI package kubernetes-validate (strict variant:
unknown fields are errors), pinned to Kubernetes ``K8S_VERSION``. Custom
resources have no schema there; they are listed in ``SKIPPED`` with the reason
and checked structurally elsewhere (test_render).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .manifests import K8S_VERSION, OVERLAYS, RUNNER_TEMPLATE, Object

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is in the dev extras: pip install -e '.[dev]'",
)

SKIPPED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"):
        "a Prometheus Operator CRD: no schema ships with kubernetes-validate, and the CRD is not "
        "vendored; test_render checks its selector, port and path instead",
}


def validate(obj: Object) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(rendered: dict[str, list[Object]], overlay: str) -> None:
    failures = []
    for obj in rendered[overlay]:
        if (obj["apiVersion"], obj["kind"]) in SKIPPED:
            continue
        try:
            validate(obj)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {e.message} "
                            "(add it to SKIPPED with a reason, or vendor its schema)")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_skipped_kinds_are_only_the_listed_custom_resources(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    skipped = {(o["apiVersion"], o["kind"]) for o in rendered[overlay]} & SKIPPED.keys()
    assert skipped == {("monitoring.coreos.com/v1", "ServiceMonitor")}


def test_validation_is_strict(runner_template: Object) -> None:
    """A misspelt field must fail, or the other tests prove nothing."""
    broken: dict[str, Any] = copy.deepcopy(runner_template)
    broken["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_runner_template_is_a_valid_v1_pod(runner_template: Object) -> None:
    assert runner_template["apiVersion"] == "v1"
    assert runner_template["kind"] == "Pod"
    validate(runner_template)


def test_runner_pod_as_poold_renders_it_is_valid(runner_template: Object) -> None:
    """Load the shipped template through poold's own code path, as the kubernetes backend does."""
    podtemplate = pytest.importorskip(
        "poold.backends.podtemplate",
        reason="poold's kubernetes backend (issue 3) has not landed: no template loader yet",
    )
    template = podtemplate.load_template(RUNNER_TEMPLATE)
    assert template == runner_template
    pod = podtemplate.render(template, name="poold-runner-abc123", pool="default",
                             env={"POOLD_AGENT_KAFKA": "redpanda.redpanda.svc.cluster.local:9093"})
    validate(pod)
    assert pod["metadata"]["name"] == "poold-runner-abc123"
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "poold-runner"
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["POOLD_AGENT_KAFKA"]["value"] == "redpanda.redpanda.svc.cluster.local:9093"
