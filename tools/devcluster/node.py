"""A real node beside the local control plane: containerd, kubelet and kube-proxy as processes.

Everything the node owns lives under `<cluster dir>/node/` (containerd root and state, kubelet's
root dir, CNI IPAM, logs, certificates, `node.json` with the PIDs), except what kubelet and the
kernel keep in fixed host places (see hoststate.py); so one real node per host, behind a lock.

Start: lock -> containerd -> images (`<cache>/images/*.tar`) -> our nftables table -> kubelet
(x509 + webhook authentication, Webhook authorization; its client identity is
system:node:<name> in system:nodes, so the Node authorizer and NodeRestriction apply) ->
kube-proxy (nftables mode, as system:kube-proxy, conntrack sysctls left alone) -> node Ready.
Stop: cordon, let kubelet remove every pod (CNI DEL, volume unmounts), stop our PIDs, then sweep
what is left and restore the host (hoststate.py).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from images.build import cache_root, images_dir

from . import hoststate, network, pki, procs
from .binaries import ClusterError, NodeBinaries
from .configs import containerd_config, kube_proxy_config, kubelet_config

NODE_NAME = "agenttoken-node"
NODE_LABEL = "agenttoken.dev/real-node"
DEFAULT_SYNC_FREQUENCY = "1m0s"  # kubelet's upstream default
PAUSE_IMAGE = "localhost/agenttoken/pause:1"
IMAGE_PREFIX = "localhost/agenttoken/"
# Start order; stop goes the other way.
COMPONENTS = ("lock", "containerd", "kubelet", "kube-proxy")

Api = Callable[..., tuple[int, bytes]]


def archive_reference(archive: Path) -> tuple[str, str] | None:
    """(image name, digest) an OCI archive's index.json names, or None if it names none."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            index = json.load(member) if member else {}
    except (OSError, KeyError, tarfile.TarError, ValueError):
        return None
    for manifest in index.get("manifests", []):
        annotations = manifest.get("annotations", {})
        name = annotations.get("io.containerd.image.name")
        if name:
            return str(name), str(manifest["digest"])
    return None


def containerd_root() -> Path:
    """containerd's root (images, snapshots, metadata), shared by the runs of this host's one node."""
    return cache_root() / "realnode" / "containerd-root"


@dataclass
class RealNode:
    workdir: Path  # <cluster dir>/node
    cluster_pki: Path
    server: str
    address: str
    sync_frequency: str = DEFAULT_SYNC_FREQUENCY
    name: str = NODE_NAME
    # Seconds to wait for another run's node to go (the host lock); 0 fails at once; None: env
    # AGENTTOKEN_NODE_LOCK_WAIT, else 0.
    lock_wait: float | None = None
    bins: NodeBinaries = field(default_factory=NodeBinaries.from_cache)
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # hoststate.snapshot() once the lock is ours, before the node changed anything.
    host_before: dict[str, Any] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    # Set when the cluster's start failed or was interrupted while this half ran in its thread.
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    # -- paths --

    @property
    def state_file(self) -> Path:
        return self.workdir / "node.json"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def socket(self) -> Path:
        return hoststate.RUN_DIR / "containerd.sock"

    @property
    def marker(self) -> str:
        return str(self.workdir)

    # -- lifecycle --

    @classmethod
    def load(cls, workdir: Path) -> RealNode | None:
        """The node recorded in `workdir/node.json` (running or not), for `down` and fixtures."""
        path = workdir / "node.json"
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        node = cls(
            workdir=workdir,
            cluster_pki=Path(state["cluster_pki"]),
            server=state["server"],
            address=state["address"],
            sync_frequency=state.get("sync_frequency", DEFAULT_SYNC_FREQUENCY),
            name=state.get("name", NODE_NAME),
        )
        node.ports, node.pids = state.get("ports", {}), state.get("pids", {})
        return node

    def running_pids(self) -> dict[str, int]:
        return {
            c: p for c, p in self.pids.items() if procs.pid_alive(p) and procs.pid_is_ours(p, self.marker)
        }

    def start_runtime(self) -> None:
        """The half that needs no apiserver: lock, containerd, images. Runs while the control
        plane starts (the slowest part of a warm start is the apiserver)."""
        missing = self.bins.missing()
        if missing:
            raise ClusterError(f"real-node binaries missing (run hack/build-cluster-bins.sh): {missing}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        t0 = time.monotonic()
        fd = hoststate.acquire_lock(self.workdir, wait=self.lock_wait, cancelled=self._cancel.is_set)
        try:
            holder = procs.spawn(
                hoststate.lock_holder_argv(sys.executable, self.workdir),
                self.logs / "lock.log",
                pass_fds=(fd,),
            )
        finally:
            os.close(fd)
        self._record("lock", holder)
        # Name the process that holds the lock, for whoever finds it held.
        hoststate.LOCK_PATH.write_text(f"{self.workdir} (lock holder pid {holder.pid})\n")
        self._check_cancelled()
        # A crashed earlier run may have left our sockets, bridge and tables behind (the lock was
        # free, so nothing uses them): clear them before recording the host's state.
        hoststate.clear_run_dir()
        network.delete_bridge()
        network.delete_nft_tables(self.bins.nft)
        hoststate.save_before(self.workdir / "host-before.json")
        self.host_before = hoststate.snapshot()
        hoststate.RUN_DIR.mkdir(mode=0o700)
        network.check_pod_cidr_free()
        names = ("kubelet", "kubelet-healthz", "kube-proxy-healthz", "kube-proxy-metrics")
        self.ports = dict(zip(names, procs.free_ports(len(names)), strict=True))
        self._write_configs()
        self._save()
        self._check_cancelled()
        self._record("containerd", self._spawn_containerd())
        self._wait("containerd", lambda: self.ctr("version").returncode == 0, time.monotonic() + 30)
        self.timings["containerd"] = time.monotonic() - t0
        t1 = time.monotonic()
        self._forget_old_containers()
        self.import_images()
        self.timings["images"] = time.monotonic() - t1

    def cancel(self) -> None:
        """Stop a start_runtime() running in another thread at its next step (it raises)."""
        self._cancel.set()

    def _check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise ClusterError("real node start cancelled")

    def start_kubelet(self, api: Api, timeout: float = 90) -> None:
        """The half that needs the apiserver: our nftables table, kubelet, kube-proxy, Ready."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        api_port = int(self.server.rsplit(":", 1)[1])
        network.install_nft_table(self.bins.nft, [api_port, self.ports["kubelet"]])
        self._record("kubelet", self._spawn("kubelet", self._kubelet_argv()))
        self._record(
            "kube-proxy",
            self._spawn(
                "kube-proxy",
                [str(self.bins.kube_proxy), f"--config={self.workdir / 'kube-proxy.yaml'}", "--v=1"],
            ),
        )
        self._wait("kubelet", lambda: self._node_ready(api), deadline)
        self.timings["node_ready"] = time.monotonic() - t0
        self._wait("kube-proxy", lambda: self._healthz(self.ports["kube-proxy-healthz"]), deadline)
        self.timings["kube_proxy"] = time.monotonic() - t0

    def import_images(self) -> list[str]:
        """Import every OCI archive of `<cache>/images` into the CRI namespace (again after a
        rebuild: content already in the store is not written or unpacked twice), and drop our
        images that no archive holds any more (old `dev-<hash>` tags), so the store does not grow."""
        archives = sorted(images_dir().glob("*.tar"))
        if not any(a.name.startswith("pause") for a in archives):
            raise ClusterError(
                f"no pause image in {images_dir()} (pods need {PAUSE_IMAGE}): run hack/build-images"
            )
        present = self._images()
        wanted = {archive: archive_reference(archive) for archive in archives}
        todo = [a for a, ref in wanted.items() if ref is None or present.get(ref[0]) != ref[1]]
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda a: self.ctr("images", "import", str(a), timeout=300), todo))
        for archive, result in zip(todo, results, strict=True):
            if result.returncode:
                raise ClusterError(f"importing {archive} failed: {result.stderr.strip()}")
        names = {ref[0] for ref in wanted.values() if ref is not None}
        stale = [n for n in self._images() if n.startswith(IMAGE_PREFIX) and n not in names]
        if stale and None not in wanted.values():
            self.ctr("images", "remove", *stale)
        return sorted(set(self._images()))

    def _images(self) -> dict[str, str]:
        """Image name -> manifest (or index) digest, as containerd lists them."""
        images = {}
        for line in self.ctr("images", "list").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and not fields[0].startswith("sha256:"):
                images[fields[0]] = fields[2]
        return images

    def _forget_old_containers(self) -> None:
        """The shared root may still list containers of a run that crashed: start from none."""
        leftovers = self.ctr("containers", "list", "--quiet").stdout.split()
        if leftovers:
            self.ctr("containers", "delete", *leftovers)

    def ctr(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bins.ctr), "--address", str(self.socket), "--namespace", "k8s.io", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    # -- configuration --

    def _write_configs(self) -> None:
        certs = self.workdir / "pki"
        certs.mkdir(exist_ok=True)
        for name in ("ca.crt", "ca.key"):
            (certs / name).write_bytes((self.cluster_pki / name).read_bytes())
            (certs / name).chmod(0o600)
        pki.issue(certs, "kubelet-client", f"system:node:{self.name}", ["system:nodes"])
        pki.issue(certs, "kubelet-serving", self.name, server=True, dns=[self.name], ips=[self.address])
        pki.issue(certs, "kube-proxy", "system:kube-proxy")
        (certs / "ca.key").unlink()  # the node never signs anything
        pki.write_kubeconfig(self.workdir / "kubelet.kubeconfig", self.server, certs, user="kubelet-client")
        pki.write_kubeconfig(self.workdir / "kube-proxy.kubeconfig", self.server, certs, user="kube-proxy")
        cni = self.workdir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        conflist = network.cni_conflist(cni / "ipam", self.address)
        (cni / "net.d" / "10-agenttoken.conflist").write_text(json.dumps(conflist, indent=2))
        (self.workdir / "containerd.toml").write_text(
            containerd_config(self.workdir, containerd_root(), hoststate.RUN_DIR, self.bins, PAUSE_IMAGE)
        )
        kubelet = kubelet_config(self.workdir, self.socket, self.address, self.ports, self.sync_frequency)
        (self.workdir / "kubelet.yaml").write_text(yaml.safe_dump(kubelet))
        proxy = kube_proxy_config(self.workdir, self.name, self.address, self.ports)
        (self.workdir / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy))

    def _kubelet_argv(self) -> list[str]:
        return [
            str(self.bins.kubelet),
            f"--config={self.workdir / 'kubelet.yaml'}",
            f"--kubeconfig={self.workdir / 'kubelet.kubeconfig'}",
            f"--root-dir={self.workdir / 'kubelet'}",
            f"--cert-dir={self.workdir / 'kubelet-certs'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.address}",
            f"--node-labels={NODE_LABEL}=true",
            "--v=1",
        ]

    # -- processes --

    def _env(self) -> dict[str, str]:
        # containerd finds the shim on PATH; runc and nft are Debian's.
        path = f"{self.bins.containerd.parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return {"PATH": path, "HOME": "/root", "LANG": "C.UTF-8"}

    def _spawn_containerd(self) -> subprocess.Popen[bytes]:
        return self._spawn(
            "containerd", [str(self.bins.containerd), f"--config={self.workdir / 'containerd.toml'}"]
        )

    def _spawn(self, component: str, argv: list[str]) -> subprocess.Popen[bytes]:
        return procs.spawn(argv, self.logs / f"{component}.log", env=self._env())

    def _record(self, component: str, proc: subprocess.Popen[bytes]) -> None:
        self._procs[component] = proc
        self.pids[component] = proc.pid
        self._save()

    def _save(self) -> None:
        state = {
            "cluster_pki": str(self.cluster_pki),
            "server": self.server,
            "address": self.address,
            "name": self.name,
            "sync_frequency": self.sync_frequency,
            "ports": self.ports,
            "pids": self.pids,
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    def _wait(self, component: str, check: Callable[[], bool], deadline: float) -> None:
        while True:
            pid = self.pids.get(component)
            if pid is not None and not procs.pid_alive(pid):
                log = self.logs / f"{component}.log"
                raise ClusterError(f"{component} exited during start; log {log}:\n{procs.tail(log)}")
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                if check():
                    return
            if time.monotonic() > deadline:
                log = self.logs / f"{component}.log"
                raise ClusterError(
                    f"{component} not ready before the deadline; log {log}:\n{procs.tail(log)}"
                )
            time.sleep(0.1)

    def _node_ready(self, api: Api) -> bool:
        status, body = api("GET", f"/api/v1/nodes/{self.name}", timeout=3)
        if status != 200:
            return False
        conditions = json.loads(body).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    @staticmethod
    def _healthz(port: int) -> bool:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    # -- teardown --

    def stop(self, api: Api | None, grace: float = 10.0, pod_timeout: float = 90.0) -> list[str]:
        """Remove the pods through kubelet, stop our processes, restore the host. Returns what
        could not be cleaned (empty when the host is as it was)."""
        from .teardown import teardown

        return teardown(self, api, grace=grace, pod_timeout=pod_timeout)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "pids": self.running_pids(),
            "timings": self.timings,
        }
