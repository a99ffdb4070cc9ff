"""Builders for the pod status a kubelet reports.

Kept apart from the process handling so that the exact shapes (conditions
with ``lastTransitionTime`` that only moves on a change, container states
``waiting`` / ``running`` / ``terminated``) are in one readable place: these
are what a backend's readiness and failure handling will read.
"""

from __future__ import annotations

from typing import Any

from .store import rfc3339

Obj = dict[str, Any]


def set_condition(
    status: Obj, type_: str, ok: bool, reason: str | None = None, message: str | None = None
) -> None:
    """Set a pod condition; ``lastTransitionTime`` only changes with the value."""
    conditions: list[Obj] = status.setdefault("conditions", [])
    value = "True" if ok else "False"
    for cond in conditions:
        if cond.get("type") == type_:
            if cond.get("status") != value:
                cond["status"] = value
                cond["lastTransitionTime"] = rfc3339()
            _set_opt(cond, "reason", reason)
            _set_opt(cond, "message", message)
            return
    cond = {"type": type_, "status": value, "lastProbeTime": None, "lastTransitionTime": rfc3339()}
    _set_opt(cond, "reason", reason)
    _set_opt(cond, "message", message)
    conditions.append(cond)


def _set_opt(obj: Obj, key: str, value: str | None) -> None:
    if value is None:
        obj.pop(key, None)
    else:
        obj[key] = value


def condition(pod: Obj, type_: str) -> bool | None:
    """The value of a pod condition, or None when absent."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return bool(cond.get("status") == "True")
    return None


def container_status(pod: Obj, state: Obj, *, ready: bool = False, pid: int | None = None) -> Obj:
    """The status entry for the pod's first container."""
    container = pod["spec"]["containers"][0]
    out: Obj = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": f"fakekube://{container.get('image', '')}",
        "ready": ready,
        "started": "running" in state,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    }
    if pid is not None:
        out["containerID"] = f"fakekube://{pid}"
    return out


def waiting(reason: str, message: str | None = None) -> Obj:
    """A ``waiting`` container state."""
    state: Obj = {"reason": reason}
    if message:
        state["message"] = message
    return {"waiting": state}


def running(started_at: str) -> Obj:
    """A ``running`` container state."""
    return {"running": {"startedAt": started_at}}


def terminated(exit_code: int, reason: str, started_at: str | None, pid: int | None) -> Obj:
    """A ``terminated`` container state."""
    state: Obj = {"exitCode": exit_code, "reason": reason, "finishedAt": rfc3339()}
    if started_at:
        state["startedAt"] = started_at
    if pid is not None:
        state["containerID"] = f"fakekube://{pid}"
    return {"terminated": state}


def set_ready(pod: Obj, ready: bool, reason: str | None = None) -> None:
    """Flip Ready/ContainersReady and the container's ``ready`` flag together."""
    status = pod.setdefault("status", {})
    why = None if ready else (reason or "ContainersNotReady")
    msg = None
    if not ready and why == "ContainersNotReady":
        name = pod["spec"]["containers"][0]["name"]
        msg = f"containers with unready status: [{name}]"
    set_condition(status, "ContainersReady", ready, why, msg)
    set_condition(status, "Ready", ready, why, msg)
    for cs in status.get("containerStatuses") or []:
        cs["ready"] = ready
