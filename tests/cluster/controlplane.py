"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, and (for garbage
collection and service-account tokens) kube-controller-manager, built by build.sh.

The API server runs as a production one would for poold: ``--authorization-mode=Node,RBAC``,
the ``PodSecurity`` and ``NodeRestriction`` admission plugins, a service-account signing key,
an audit log (so tests can see which calls an identity made). Identities are static tokens:
an admin (``system:masters``), a node (``system:node:<name>``, for the kubelet stand-in) and
the scheduler (``system:kube-scheduler``, which may bind pods). Everything listens on
127.0.0.1 only, on ports chosen free at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poold.data.embedded import free_port
from tests.support.procs import stop

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("POOLD_CLUSTER_CACHE", REPO / ".cache" / "cluster"))
BIN = Path(os.environ.get("POOLD_CLUSTER_BIN", CACHE / "bin"))
NODE = "poold-standin"
HOW_TO_ENABLE = (
    "the real-control-plane tests need kube-apiserver and etcd built from source: install Go "
    "(https://go.dev/doc/install), then run `make cluster-build` once (tests/cluster/build.sh; "
    "10 to 40 minutes cold on 2 cores, instant after)"
)

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    users: ["system:serviceaccount:poold:poold"]
  - level: None
"""


class ControlPlaneError(Exception):
    pass


def built() -> bool:
    """Whether the binaries exist and match the sources (build.sh --check)."""
    check = subprocess.run(["bash", str(HERE / "build.sh"), "--check"],
                           capture_output=True, check=False)
    return check.returncode == 0


def build(*, quiet: bool = False) -> None:
    """Build (or find up to date) the binaries; raises if Go is missing or the build fails."""
    if shutil.which("go") is None:
        raise ControlPlaneError(HOW_TO_ENABLE)
    result = subprocess.run(
        ["bash", str(HERE / "build.sh")], capture_output=quiet, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or "")[-2000:] if quiet else ""
        raise ControlPlaneError(f"tests/cluster/build.sh failed ({result.returncode}) {detail}")


@dataclass
class ControlPlane:
    """Start with :meth:`start`, stop with :meth:`stop` (both idempotent)."""

    workdir: Path
    controller_manager: bool = True
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    etcd_port: int = 0
    port: int = 0
    tokens: dict[str, str] = field(default_factory=dict)

    # -- addresses and credentials -------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def etcd(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "apiserver.crt"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def kubeconfig(self, who: str = "admin", *, namespace: str | None = None,
                   token: str | None = None, path: Path | None = None) -> Path:
        """A kubeconfig for one of the static identities (or any bearer ``token``)."""
        path = path or self.workdir / f"{who}.kubeconfig"
        context: dict[str, Any] = {"cluster": "poold-test", "user": who}
        if namespace:
            context["namespace"] = namespace
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": who,
            "clusters": [{"name": "poold-test", "cluster": {
                "server": self.server, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": who, "user": {"token": token or self.tokens[who]}}],
            "contexts": [{"name": who, "context": context}],
        }
        path.write_text(json.dumps(doc, indent=2))
        path.chmod(0o600)
        return path

    # -- lifecycle --------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        if self.processes:
            return
        for name in ("kube-apiserver", "etcd"):
            if not (BIN / name).is_file():
                raise ControlPlaneError(f"{BIN / name} is missing: run `make cluster-build`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._credentials()
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            if self.controller_manager and (BIN / "kube-controller-manager").is_file():
                self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        (self.workdir / "pids").write_text(
            "".join(f"{name} {p.pid}\n" for name, p in self.processes.items()))

    def stop(self) -> None:
        """Stop what this object started, newest first; SIGKILL what ignores SIGTERM."""
        for name in reversed(list(self.processes)):
            stop(self.processes.pop(name), 15, 15)
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / "pids").unlink()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        self.processes[name] = proc
        return proc

    def _wait(self, name: str, ready: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        proc = self.processes[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise ControlPlaneError(f"{name} exited with {proc.returncode}:\n{tail}")
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} not ready within {timeout:.0f} s "
                                f"(see {self.workdir / (name + '.log')})")

    def _credentials(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        key = pki / "sa.key"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"],
                           check=True, capture_output=True)
            subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout",
                            "-out", str(pki / "sa.pub")], check=True, capture_output=True)
        self.tokens = {name: secrets.token_hex(16)
                       for name in ("admin", "node", "scheduler", "controller-manager")}
        rows = [
            f'{self.tokens["admin"]},admin,admin,"system:masters"',
            f'{self.tokens["node"]},system:node:{NODE},node,"system:nodes"',
            f'{self.tokens["scheduler"]},system:kube-scheduler,scheduler',
            f'{self.tokens["controller-manager"]},system:kube-controller-manager,kcm',
        ]
        (pki / "tokens.csv").write_text("\n".join(rows) + "\n")
        (self.workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)

    def _start_etcd(self, timeout: float) -> None:
        self.etcd_port, peer = free_port(), free_port()
        data = self.workdir / "etcd"
        shutil.rmtree(data, ignore_errors=True)  # every start is a new, empty cluster
        self._spawn("etcd", [
            str(BIN / "etcd"), "--name", "poold-test", "--data-dir", str(data),
            "--listen-client-urls", self.etcd, "--advertise-client-urls", self.etcd,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"poold-test=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ])

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(self.etcd + "/health", timeout=2) as r:
                    return bool(json.loads(r.read()).get("health") == "true")
            except (OSError, ValueError):
                return False

        self._wait("etcd", healthy, timeout)

    def _start_apiserver(self, timeout: float) -> None:
        self.port = self.port or free_port()
        pki = self.workdir / "pki"
        self._spawn("kube-apiserver", [
            str(BIN / "kube-apiserver"),
            "--etcd-servers", self.etcd,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.port), "--cert-dir", str(pki),
            "--token-auth-file", str(pki / "tokens.csv"),
            "--authorization-mode", "Node,RBAC",
            "--enable-admission-plugins", "NodeRestriction,PodSecurity",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-cluster-ip-range", "10.0.0.0/24",
            "--allow-privileged=false", "--profiling=false",
            "--endpoint-reconciler-type=none",  # a loopback address may not be an endpoint
            "--audit-policy-file", str(self.workdir / "audit-policy.yaml"),
            "--audit-log-path", str(self.audit_log), "--audit-log-mode", "blocking",
            "--audit-log-format", "json",
            "--v", "1",
        ])
        self._wait("kube-apiserver", self._readyz, timeout)

    def _readyz(self) -> bool:
        if not self.ca_file.exists():
            return False
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(
            self.server + "/readyz", headers={"Authorization": f"Bearer {self.tokens['admin']}"})
        try:
            with urllib.request.urlopen(request, timeout=3, context=context) as r:
                return bool(r.status == 200)
        except (OSError, ssl.SSLError, urllib.error.URLError):
            return False

    def _start_controller_manager(self) -> None:
        kubeconfig = self.kubeconfig("controller-manager")
        pki = self.workdir / "pki"
        self._spawn("kube-controller-manager", [
            str(BIN / "kube-controller-manager"),
            "--kubeconfig", str(kubeconfig),
            "--authentication-kubeconfig", str(kubeconfig),
            "--authorization-kubeconfig", str(kubeconfig),
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
            "--leader-elect=false",
            # what poold's tests need: garbage collection of ownerReferences, every
            # namespace's "default" ServiceAccount, namespace deletion (which waits for
            # the PVC protection finalizer)
            "--controllers",
            "garbagecollector,serviceaccount,serviceaccount-token,namespace,pvc-protection",
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(self.ca_file),
            "--use-service-account-credentials=true",  # each controller its own identity
            "--v", "1",
        ])

    # -- etcd, for tests that need what only etcd can do ------------------------

    def etcd_revision(self) -> int:
        body = json.dumps({"key": "AA=="}).encode()  # any key: the header carries the revision
        with urllib.request.urlopen(
                urllib.request.Request(self.etcd + "/v3/kv/range", data=body), timeout=5) as r:
            return int(json.loads(r.read())["header"]["revision"])

    def compact(self) -> int:
        """``etcdctl compact`` at the current revision; returns it."""
        revision = self.etcd_revision()
        body = json.dumps({"revision": revision, "physical": True}).encode()
        with urllib.request.urlopen(
                urllib.request.Request(self.etcd + "/v3/kv/compaction", data=body), timeout=30):
            pass
        return revision

    def restart_apiserver(self, timeout: float = 120.0) -> None:
        """Stop and start kube-apiserver on the same port: its watch cache starts afresh."""
        proc = self.processes.pop("kube-apiserver")
        stop(proc, 20)  # SIGKILL if still draining its watches after 20 s
        self._start_apiserver(timeout)


def stop_recorded(workdir: Path) -> list[str]:
    """``make cluster-down``: stop exactly the processes ``cluster-up`` recorded."""
    pids = workdir / "pids"
    stopped: list[str] = []
    if not pids.exists():
        return stopped
    for line in reversed(pids.read_text().splitlines()):
        name, pid = line.split()
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # gone already
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            if Path(cmdline).name != name:
                continue  # the pid was reused by something else: leave it alone
            os.kill(int(pid), signal.SIGTERM)
            for _ in range(150):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            else:
                os.kill(int(pid), signal.SIGKILL)
            stopped.append(name)
    pids.unlink()
    return stopped
