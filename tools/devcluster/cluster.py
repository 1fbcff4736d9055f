"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
as processes, optionally with a real node (containerd + kubelet + kube-proxy, node.py) beside them.

Every cluster lives in its own directory (PKI, kubeconfig, data, one log file per component, and
`cluster.json` with the PIDs and ports), so clusters can run side by side and `down` stops only
our own processes. Without a real node everything listens on 127.0.0.1; with one, the apiserver
listens on the node's address instead (pods reach it there through the `kubernetes` Service).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import pki as pkimod
from .binaries import Binaries, ClusterError, ensure_binaries
from .components import ControlPlaneComponents
from .network import node_ip
from .node import DEFAULT_SYNC_FREQUENCY, RealNode
from .procs import free_ports, pid_alive, pid_is_ours, spawn, stop_pid, tail

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / ".devcluster"


@dataclass
class LocalCluster(ControlPlaneComponents):
    """One control plane in one directory. `start()` then `stop()`; or `with LocalCluster(...)`."""

    workdir: Path
    binaries: Binaries | None = None
    # A real node (containerd, kubelet, kube-proxy) beside kwok's fake one; one per host.
    real_node: bool = False
    # kubelet's syncFrequency (how late Secret volume updates reach containers); upstream default.
    sync_frequency: str = DEFAULT_SYNC_FREQUENCY
    # With a real node: how long to wait for another run's node to go (0: fail at once; None:
    # env AGENTTOKEN_NODE_LOCK_WAIT, else 0).
    node_lock_wait: float | None = None
    # Audit AgentToken status writes at Request level (their bodies), for diagnosing which
    # status field a write changed; off by default: it costs disk and apiserver time.
    audit_status_bodies: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    started_in: float = 0.0
    # Where the apiserver listens: loopback, or the node's address when there is a real node.
    host: str = "127.0.0.1"
    node: RealNode | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # Popen objects of processes this instance started, kept so they are reaped, not leaked.
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.workdir / "cluster.json"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.ports['apiserver']}"

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle --

    def running_pids(self) -> dict[str, int]:
        """PIDs recorded in cluster.json that are still alive and still ours."""
        if not self.state_file.exists():
            return {}
        state = json.loads(self.state_file.read_text())
        marker = str(self.workdir.resolve())
        return {c: p for c, p in state.get("pids", {}).items() if pid_alive(p) and pid_is_ours(p, marker)}

    def load(self) -> bool:
        """Attach to a cluster already running in this directory; False if there is none."""
        pids = self.running_pids()
        if set(pids) != set(COMPONENTS):
            return False
        state = json.loads(self.state_file.read_text())
        self.ports, self.pids = state["ports"], pids
        self.host = state.get("host", "127.0.0.1")
        self.real_node = state.get("real_node", False)
        self.sync_frequency = state.get("sync_frequency", DEFAULT_SYNC_FREQUENCY)
        if self.real_node:
            self.node = RealNode.load(self.workdir / "node")
            if self.node is None or set(self.node.running_pids()) != {
                "lock",
                "containerd",
                "kubelet",
                "kube-proxy",
            }:
                return False
        return True

    def start(self, timeout: float = 120.0) -> None:
        t0 = time.monotonic()
        self.workdir = self.workdir.resolve()
        if self.running_pids():
            raise ClusterError(
                f"a cluster is already running in {self.workdir} (pids {self.running_pids()}); "
                f"stop it with `python -m devcluster down --dir {self.workdir}` or use another --dir"
            )
        bins = self.binaries or ensure_binaries(node=self.real_node)
        self.binaries = bins
        if RealNode.load(self.workdir / "node") is not None:
            # A node of an earlier run in this dir that was never stopped: restore the host first.
            self._stop_node(api_up=False)
        for sub in ("etcd-data", "logs", "pki", "certs", "node"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        pki = self.workdir / "pki"
        if self.real_node:
            self.host = node_ip()
        pkimod.generate_pki(pki, extra_ips=[self.host] if self.real_node else [])
        names = ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        pkimod.write_kubeconfig(self.kubeconfig, self.server, pki)
        deadline = t0 + timeout
        runtime: threading.Thread | None = None
        runtime_error: list[BaseException] = []
        try:
            if self.real_node:
                self.node = self._new_node(pki)
                runtime = threading.Thread(
                    target=_capture(self.node.start_runtime, runtime_error),
                    name="real-node-runtime",
                    daemon=True,
                )
                runtime.start()
            self._start_etcd(bins)
            self._wait(
                "etcd", lambda: self._http_ok(f"http://127.0.0.1:{self.ports['etcd']}/health"), deadline
            )
            self._start_apiserver(bins, pki)
            self._wait("kube-apiserver", lambda: self._api_ok("/readyz"), deadline)
            self._start_controller_manager(bins, pki)
            self._start_scheduler(bins)
            self._start_kwok(bins)
            self._wait(
                "kube-controller-manager",
                lambda: (
                    self._https_unverified_ok(self.ports["controller-manager"], "/healthz")
                    and self._api_ok("/api/v1/namespaces/default/serviceaccounts/default")
                ),
                deadline,
            )
            self._wait(
                "kube-scheduler",
                lambda: self._https_unverified_ok(self.ports["scheduler"], "/healthz"),
                deadline,
            )
            self._create_node()
            self._wait("kwok", self._node_ready, deadline)
            self.timings["control_plane"] = time.monotonic() - t0
            if runtime is not None and self.node is not None:
                runtime.join()
                runtime = None
                if runtime_error:
                    raise runtime_error[0]
                self._authorize_kubelet_client()
                self.node.start_kubelet(self.api, timeout=max(30.0, deadline - time.monotonic()))
                self.timings.update({f"node_{k}": v for k, v in self.node.timings.items()})
        except BaseException:
            if runtime is not None and self.node is not None:
                # Stop the runtime half at its next step (it may be waiting for the host lock),
                # and only then stop everything, so nothing it starts is left behind.
                self.node.cancel()
                runtime.join()
            self.stop(remove=False)
            raise
        self._save()
        self.started_in = time.monotonic() - t0
        self.timings["total"] = self.started_in

    def _new_node(self, pki: Path) -> RealNode:
        pkimod.issue(pki, "apiserver-kubelet-client", KUBELET_CLIENT_USER)
        return RealNode(
            workdir=self.workdir / "node",
            cluster_pki=pki,
            server=self.server,
            address=self.host,
            sync_frequency=self.sync_frequency,
            lock_wait=self.node_lock_wait,
        )

    def _authorize_kubelet_client(self) -> None:
        """kubelet authorizes every request by asking the apiserver (SubjectAccessReview): let the
        apiserver's own client identity use the kubelet API (logs, exec, port-forward)."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "agenttoken:kube-apiserver-kubelet-client"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBELET_CLIENT_USER}
            ],
        }
        status, body = self.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
        if status not in (201, 409):
            raise ClusterError(f"binding the kubelet client role failed: HTTP {status}: {body[:300]!r}")

    def import_images(self) -> list[str]:
        """Import `<cache>/images/*.tar` into the real node's containerd again (after a rebuild)."""
        if self.node is None:
            raise ClusterError("this cluster has no real node")
        return self.node.import_images()

    def stop_node(self, grace: float = 10.0) -> list[str]:
        """Stop only the real node (the control plane keeps running); returns what it left behind."""
        return self._stop_node(api_up=True, grace=grace)

    def _stop_node(self, *, api_up: bool, grace: float = 10.0) -> list[str]:
        node = self.node or RealNode.load(self.workdir / "node")
        if node is None:
            return []
        left = node.stop(self.api if api_up else None, grace=grace)
        self.node = None
        if left:
            print(f"warning: the real node left behind: {left}")
        return left

    def stop(self, remove: bool = False, grace: float = 10.0) -> None:
        """Stop the real node first (kubelet removes its pods while the apiserver still answers),
        then SIGTERM our own processes in reverse start order, SIGKILL after `grace` seconds."""
        if not self.ports and self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            self.ports, self.host = state.get("ports", {}), state.get("host", "127.0.0.1")
        pids = dict(self.pids)
        for component, found in self.running_pids().items():
            pids.setdefault(component, found)
        api = pids.get("kube-apiserver")
        self._stop_node(api_up=bool(api and pid_alive(api)), grace=grace)
        for component in reversed(COMPONENTS):
            pid = pids.get(component)
            if pid:
                self._stop_component(component, pid, grace)
        self.pids = {}
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_component(self, component: str, pid: int, grace: float) -> None:
        stop_pid(pid, str(self.workdir.resolve()), grace, self._procs.pop(component, None))

    def stop_apiserver(self, grace: float = 10.0) -> None:
        """Stop only kube-apiserver (etcd and the rest keep running): an outage for reliability tests."""
        pid = self.pids.pop("kube-apiserver", None)
        if pid:
            self._stop_component("kube-apiserver", pid, grace)
        self._save()

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start kube-apiserver again with the same flags, port and PKI; returns once /readyz answers."""
        if self.binaries is None:
            raise ClusterError("start() the cluster before restarting its apiserver")
        self._start_apiserver(self.binaries, self.workdir / "pki")
        self._wait("kube-apiserver", lambda: self._api_ok("/readyz"), time.monotonic() + timeout)

    # -- components --

    def _spawn(self, component: str, argv: list[str]) -> None:
        proc = spawn(argv, self.logs / f"{component}.log")
        self._procs[component] = proc
        self.pids[component] = proc.pid
        self._save()

    def _save(self) -> None:
        state = {
            "ports": self.ports,
            "pids": self.pids,
            "kubeconfig": str(self.kubeconfig),
            "host": self.host,
            "real_node": self.real_node,
            "sync_frequency": self.sync_frequency,
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    # -- HTTP helpers --

    def _api_ok(self, path: str) -> bool:
        return self.api("GET", path, timeout=3)[0] == 200

    @staticmethod
    def _http_ok(url: str) -> bool:
        host, _, rest = url.removeprefix("http://").partition("/")
        h, _, p = host.partition(":")
        conn = http.client.HTTPConnection(h, int(p), timeout=3)
        try:
            conn.request("GET", "/" + rest)
            return conn.getresponse().status == 200
        finally:
            conn.close()

    @staticmethod
    def _https_unverified_ok(port: int, path: str) -> bool:
        # Components serve self-signed certificates on loopback; we only ask whether they are up.
        ctx = ssl._create_unverified_context()  # noqa: S323
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=3)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def _wait(self, component: str, check: Callable[[], bool], deadline: float) -> None:
        while True:
            pid = self.pids.get(component)
            if pid is not None and not pid_alive(pid):
                log = self.logs / f"{component}.log"
                raise ClusterError(f"{component} exited during start; log {log}:\n{tail(log)}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if check():
                    return
            if time.monotonic() > deadline:
                log = self.logs / f"{component}.log"
                raise ClusterError(f"{component} not ready before the deadline; log {log}:\n{tail(log)}")
            time.sleep(0.2)

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}


def _capture(target: Callable[[], None], errors: list[BaseException]) -> Callable[[], None]:
    """A thread body that keeps the exception for the starting thread to raise."""

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    return run


@contextlib.contextmanager
def running_cluster(workdir: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(workdir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(remove=True)
