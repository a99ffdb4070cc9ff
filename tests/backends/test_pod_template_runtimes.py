"""The runner pod template with runtimes: a read-only mount of the published runtimes,
from the volume the slot comes from, and the agent told where it is."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from poold.backends.podtemplate import TemplateError, load_template, render
from poold.config import ConfigError
from poold.daemon import Daemon
from poold.types import PodName
from tests.support.daemon import make_settings

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "runner" / "pod-template.yaml"


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = pod["spec"]["containers"][0]
    return container


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in _container(pod)["env"]}


def test_without_runtimes_the_pod_is_as_before() -> None:
    template = load_template(SHIPPED)
    pod = render(template, name=PodName("poold-w-1"), pool="default", env={})
    assert _container(pod)["volumeMounts"] == _container(template)["volumeMounts"]
    assert "POOLD_AGENT_RUNTIMES" not in _env(pod)


def test_with_runtimes_the_slot_volume_is_mounted_read_only_again() -> None:
    template = load_template(SHIPPED)
    pod = render(template, name=PodName("poold-w-1"), pool="default", env={},
                 runtimes="/opt/runtimes")
    mounts = _container(pod)["volumeMounts"]
    slot = next(m for m in mounts if m.get("subPathExpr") == "$(POD_NAME)")
    assert mounts[-1] == {"name": slot["name"], "mountPath": "/opt/runtimes",
                          "subPath": "runtimes", "readOnly": True}
    assert mounts[:-1] == _container(template)["volumeMounts"]
    assert _env(pod)["POOLD_AGENT_RUNTIMES"] == "/opt/runtimes"
    again = render(pod, name=PodName("poold-w-2"), pool="default", env={},
                   runtimes="/opt/runtimes")
    assert len(_container(again)["volumeMounts"]) == len(mounts)  # never mounted twice


def test_a_template_without_a_slot_mount_cannot_take_runtimes() -> None:
    template = load_template(SHIPPED)
    broken = copy.deepcopy(template)
    for mount in _container(broken)["volumeMounts"]:
        mount.pop("subPathExpr", None)
    render(broken, name=PodName("poold-w-1"), pool="default", env={})  # fine without runtimes
    with pytest.raises(TemplateError, match=r"kubernetes\.pod_template.*subPathExpr"):
        render(broken, name=PodName("poold-w-1"), pool="default", env={}, runtimes="/runtimes")


async def test_poold_refuses_to_start_with_runtimes_and_such_a_template(
        tmp_path: Path, broker: str) -> None:
    template = SHIPPED.read_text().replace("subPathExpr: $(POD_NAME)", "subPath: shared")
    (tmp_path / "pod.yaml").write_text(template)
    (tmp_path / "tiny.wasm").write_bytes(b"\0asm\1\0\0\0")
    settings = make_settings(
        tmp_path, broker, pool__backend="kubernetes",
        kubernetes__pod_template=str(tmp_path / "pod.yaml"),
        kubernetes__leader_election="false",
        runtimes__tiny__module=str(tmp_path / "tiny.wasm"))
    daemon = Daemon(settings)
    try:
        with pytest.raises(ConfigError, match=r"kubernetes\.pod_template.*runtimes"):
            await daemon.start()
    finally:
        await daemon.stop()
