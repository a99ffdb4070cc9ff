"""Turning a pod's first container into a local process launch.

A real kubelet resolves env (values, ``$(VAR)`` references, downward-API
``fieldRef``), mounts volumes, and then execs ``command + args``.  The fake
cannot mount, so it maps each mount to a local folder and rewrites any env
value or argument that points into a mount path; it cannot pull images, so a
command map turns the image's command into a local argv.  Failures use the
reasons a real kubelet reports (``CreateContainerConfigError``, an
unschedulable pod for a missing PVC) so backends see realistic states.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
CommandMapFn = Callable[[str, list[str]], Sequence[str]]
CommandMap = CommandMapFn | Mapping[str, Sequence[str]]

DEFAULT_COMMAND_MAP: dict[str, list[str]] = {"poold": [sys.executable, "-m", "poold"]}


class ConfigError(Exception):
    """The container cannot be configured (kubelet: CreateContainerConfigError)."""


class Unschedulable(Exception):
    """The pod cannot be placed at all, e.g. its PVC is unknown."""


@dataclass
class Mount:
    """One container mount mapped to a local folder."""

    mount_path: str
    local: Path
    read_only: bool = False


@dataclass
class LaunchPlan:
    """Everything needed to start the process."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path | None
    mounts: list[Mount] = field(default_factory=list)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion.

    ``$(VAR)`` becomes the value when VAR is defined and stays literal when it
    is not; ``$$`` is an escaped ``$`` (so ``$$(VAR)`` yields ``$(VAR)``).
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 >= len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


_KEYED = re.compile(r"^metadata\.(labels|annotations)\[['\"](.+)['\"]\]$")


def field_ref(pod: Mapping[str, Any], path: str) -> str:
    """The downward-API value of ``fieldRef.fieldPath``."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(p.get("ip", "") for p in status.get("podIPs") or []),
        "status.hostIPs": ",".join(p.get("ip", "") for p in status.get("hostIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    m = _KEYED.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in items)
    raise ConfigError(f"unsupported fieldRef.fieldPath {path!r}")


def container_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], service_env: Mapping[str, str]
) -> dict[str, str]:
    """The container's own env, in order, with ``$(VAR)`` references expanded."""
    if container.get("envFrom"):
        raise ConfigError("envFrom (configMaps/secrets) is not supported by fakekube")
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        name = entry.get("name")
        if not name:
            raise ConfigError("env entry without a name")
        if "valueFrom" in entry:
            source = entry["valueFrom"] or {}
            if "fieldRef" in source:
                env[name] = field_ref(pod, source["fieldRef"].get("fieldPath", ""))
            else:
                kinds = ", ".join(sorted(source)) or "nothing"
                raise ConfigError(f"env {name}: valueFrom {kinds} is not supported by fakekube")
        else:
            env[name] = expand(str(entry.get("value", "")), {**service_env, **env})
    return env


def resolve_mounts(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    env: Mapping[str, str],
    pvc_paths: Mapping[str, Path],
    scratch: Path,
) -> list[Mount]:
    """Map each volumeMount to a local folder (created if missing)."""
    volumes = {v.get("name"): v for v in (pod.get("spec") or {}).get("volumes") or []}
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        volume = volumes.get(vm.get("name")) or {}
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"].get("claimName", "")
            if claim not in pvc_paths:
                raise Unschedulable(f'persistentvolumeclaim "{claim}" not found')
            base = Path(pvc_paths[claim])
        elif "emptyDir" in volume:
            base = scratch / "volumes" / str(volume.get("name"))
        elif "hostPath" in volume:
            base = Path(volume["hostPath"].get("path", "/"))
        else:
            kinds = ", ".join(k for k in volume if k != "name") or "unknown"
            raise ConfigError(f"volume {vm.get('name')!r}: {kinds} volumes are not supported")
        if vm.get("subPathExpr"):
            sub = expand(str(vm["subPathExpr"]), env)
        else:
            sub = str(vm.get("subPath") or "")
        if sub.startswith("/") or ".." in Path(sub).parts:
            raise ConfigError(f"subPath {sub!r} must be a relative path without '..'")
        local = base / sub if sub else base
        local.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(str(vm.get("mountPath", "")), local, bool(vm.get("readOnly"))))
    return mounts


def rewrite_path(value: str, mounts: Sequence[Mount]) -> str:
    """Point a container path at the local folder backing its mount."""
    for m in sorted(mounts, key=lambda m: len(m.mount_path), reverse=True):
        root = m.mount_path.rstrip("/") or "/"
        if value == root or value == m.mount_path:
            return str(m.local)
        if value.startswith(root + "/"):
            return str(m.local / value[len(root) + 1 :])
    return value


def map_command(
    command_map: CommandMap | None, image: str, command: list[str], args: list[str]
) -> list[str]:
    """The local argv for a container (see ``FakeKubelet`` for the rules)."""
    argv = command + args
    if callable(command_map):
        return list(command_map(image, argv))
    table: dict[str, list[str]] = {**DEFAULT_COMMAND_MAP}
    for key, value in (command_map or {}).items():
        table[key] = list(value)
    if command:
        first = command[0]
        if first in table:
            return table[first] + argv[1:]
        base = os.path.basename(first)
        if base in table and not os.path.exists(first):
            return table[base] + argv[1:]
        return argv
    bare = image.split("@", 1)[0]
    untagged = bare.rsplit(":", 1)[0] if ":" in bare.rsplit("/", 1)[-1] else bare
    for key in (image, bare, untagged, untagged.rsplit("/", 1)[-1]):
        if key in table:
            return table[key] + args
    return argv


def plan_launch(
    pod: Mapping[str, Any],
    *,
    pod_ip: str,
    service_env: Mapping[str, str],
    base_env: Mapping[str, str],
    pvc_paths: Mapping[str, Path],
    scratch: Path,
    command_map: CommandMap | None,
) -> LaunchPlan:
    """Resolve env, mounts and argv for the pod's first container."""
    view = dict(pod)
    view["status"] = {**(pod.get("status") or {}), "podIP": pod_ip, "podIPs": [{"ip": pod_ip}]}
    container = (pod.get("spec") or {}).get("containers", [{}])[0]
    env = container_env(view, container, service_env)
    mounts = resolve_mounts(view, container, env, pvc_paths, scratch)
    env = {k: rewrite_path(v, mounts) for k, v in env.items()}
    lookup = {**service_env, **env}
    command = [rewrite_path(expand(str(a), lookup), mounts) for a in container.get("command") or []]
    args = [rewrite_path(expand(str(a), lookup), mounts) for a in container.get("args") or []]
    argv = map_command(command_map, str(container.get("image", "")), command, args)
    if not argv:
        raise ConfigError("no command: fakekube cannot run an image's entrypoint; map it")
    cwd = None
    if container.get("workingDir"):
        cwd = Path(rewrite_path(str(container["workingDir"]), mounts))
        if not cwd.is_dir():
            cwd = None
    full_env = {**base_env, **service_env, **env}
    return LaunchPlan(argv, full_env, cwd, mounts)


def default_base_env() -> dict[str, str]:
    """The host env, so ``python -m poold`` finds the venv and the repo."""
    return dict(os.environ)
