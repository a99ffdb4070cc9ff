"""`make cluster-up` / `make cluster-down`: python -m tests.cluster up|down."""

from __future__ import annotations

import sys

from .controlplane import CACHE, ControlPlane, ControlPlaneError, build, stop_recorded

WORKDIR = CACHE / "run"


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "help"
    if command == "up":
        if (WORKDIR / "pids").exists():
            print(f"a control plane is already up ({WORKDIR / 'pids'}); `make cluster-down` first")
            return 1
        try:
            build()
            plane = ControlPlane(WORKDIR)
            plane.start()
        except ControlPlaneError as e:
            print(f"cluster-up: {e}", file=sys.stderr)
            return 1
        kubeconfig = plane.kubeconfig("admin")
        for who in ("node", "scheduler"):  # for tests/cluster/kubelet.py run by hand
            plane.kubeconfig(who)
        print(f"kube-apiserver {plane.server}, etcd {plane.etcd}, logs in {WORKDIR}")
        print(f"export KUBECONFIG={kubeconfig}")
        return 0
    if command == "down":
        stopped = stop_recorded(WORKDIR)
        print("stopped " + (", ".join(stopped) if stopped else "nothing (no control plane was up)"))
        return 0
    print("usage: python -m tests.cluster up|down")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
