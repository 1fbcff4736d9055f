"""The real-node tier: a local control plane with a real node (containerd, kubelet, kube-proxy) for
the session, so pods run real containers. Skips, with the reason, only on a machine that cannot
run containers at all (not root, no cgroups, no overlayfs, no network namespaces, no IPv4 address).

Fixtures for every test here (and for other node tests):
  node_cluster   the session's cluster (NodeCluster: .cluster, .kube, .node_name, .host_before)
  kube           a Kube on it, so the e2e fixtures (`crds`, `namespace`, ...) work unchanged
  namespace      a fresh namespace per test (from tests/e2e)
  run_pod        create a pod pinned to the real node from a few arguments and wait for it
The kubelet syncFrequency comes from `--kubelet-sync-frequency` or AGENTTOKEN_KUBELET_SYNC
(default upstream's 1m0s). Tests marked `node_teardown` run last: they stop the node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devcluster import DEFAULT_SYNC_FREQUENCY, ClusterError, LocalCluster, network
from devcluster.node import NODE_LABEL
from tests.e2e.conftest import namespace  # noqa: F401 (fixture)
from tests.e2e.kube import Kube, wait_for

BUSYBOX = "localhost/agenttoken/busybox:1"


def cannot_run_containers() -> str | None:
    """Why this machine cannot run containers at all, or None. Anything else missing (binaries,
    images, runc, nft) is built or installed by `make test-node`, and its absence is a failure."""
    if os.geteuid() != 0:
        return "the real node needs root (kubelet, containerd, cgroups, network namespaces)"
    cgroups = Path("/sys/fs/cgroup")
    v2 = (cgroups / "cgroup.controllers").exists()
    memory = "memory" in (cgroups / "cgroup.controllers").read_text() if v2 else (cgroups / "memory").is_dir()
    if not memory:
        return "no cgroup memory controller under /sys/fs/cgroup: containers cannot be confined"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs (containerd's snapshotter)"
    if not shutil.which("unshare") or subprocess.run(["unshare", "--net", "true"], check=False).returncode:
        return "cannot create a network namespace here (unshare --net failed)"
    try:
        network.node_ip()
    except ClusterError as exc:
        return str(exc)
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is a node test; those that stop the node run after all others."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.node)
    items.sort(key=lambda item: item.get_closest_marker("node_teardown") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "node_teardown: stops the real node; runs last")


@dataclass
class NodeCluster:
    cluster: LocalCluster
    kube: Kube
    node_name: str
    # The host as it was before the node started (hoststate.snapshot()), for the teardown test.
    host_before: dict[str, Any]

    def python_image(self) -> str:
        """An image of ours with Python (agent, demo API or operator), as imported into the node."""
        assert self.cluster.node is not None
        names = self.cluster.node.import_images()
        for wanted in ("agent", "demo-api", "operator"):
            found = [n for n in names if n.startswith(f"localhost/agenttoken/{wanted}:")]
            if found:
                return found[0]
        raise AssertionError(f"no Python image among {names}: run hack/build-images")

    def container_pid(self, ns: str, pod: str, container: str | None = None) -> int:
        """The host PID of a container's first process (its view of files: /proc/<pid>/root)."""
        status = self.kube.get_json("pod", pod, "-n", ns)
        assert status is not None, f"pod {ns}/{pod} not found"
        statuses = status["status"]["containerStatuses"]
        chosen = next(s for s in statuses if container in (None, s["name"]))
        cid = chosen["containerID"].split("://", 1)[1]
        assert self.cluster.node is not None
        for line in self.cluster.node.ctr("tasks", "list").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return int(fields[1])
        raise AssertionError(f"no running task for container {cid[:12]}")


def sync_frequency(config: pytest.Config) -> str:
    chosen = config.getoption("--kubelet-sync-frequency") or os.environ.get("AGENTTOKEN_KUBELET_SYNC")
    return str(chosen or DEFAULT_SYNC_FREQUENCY)


@pytest.fixture(scope="session")
def node_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeCluster]:
    reason = cannot_run_containers()
    if reason:
        pytest.skip(f"no real node on this machine: {reason}")
    cluster = LocalCluster(
        tmp_path_factory.mktemp("nodecluster"), real_node=True, sync_frequency=sync_frequency(request.config)
    )
    cluster.start()
    timings = {k: round(v, 2) for k, v in cluster.timings.items()}
    print(f"\ncluster with a real node ready in {cluster.started_in:.1f}s ({cluster.server}): {timings}")
    assert cluster.node is not None
    try:
        yield NodeCluster(
            cluster, Kube(cluster.kubeconfig, name="realnode"), cluster.node.name, cluster.node.host_before
        )
    finally:
        cluster.stop(remove=False)


@pytest.fixture(scope="session")
def kube(node_cluster: NodeCluster) -> Kube:
    return node_cluster.kube


def pod_manifest(
    name: str,
    ns: str,
    command: str,
    *,
    image: str = BUSYBOX,
    restart: str = "Never",
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    service_account_token: bool = False,
    grace: int = 2,
    interpreter: list[str] | None = None,
) -> dict[str, Any]:
    """A pod (busybox unless `image`) running `command` under `interpreter` (default `sh -c`), pinned to
    the real node; never pulled: images are imported."""
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "command": [*(interpreter or ["sh", "-c"]), command],
        "volumeMounts": mounts or [],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
        "spec": {
            "nodeSelector": {NODE_LABEL: "true"},
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": grace,
            "automountServiceAccountToken": service_account_token,
            "containers": [container],
            "volumes": volumes or [],
        },
    }


def pod_phase(kube: Kube, ns: str, name: str) -> str:
    pod = kube.get_json("pod", name, "-n", ns)
    return str(pod["status"].get("phase", "")) if pod else ""


@pytest.fixture
def run_pod(kube: Kube) -> Callable[..., dict[str, Any]]:
    """Create a pod (pod_manifest's arguments) and wait until it is Ready (`until="Ready"`) or has
    finished (`until="Succeeded"`/"Failed"/"done"); returns the pod as JSON."""

    def run(
        name: str, ns: str, command: str, until: str = "Ready", timeout: float = 120, **kw: Any
    ) -> dict[str, Any]:
        kube.apply(json.dumps(pod_manifest(name, ns, command, **kw)))
        if until == "Ready":
            kube.kubectl(
                "wait",
                "--for=condition=Ready",
                f"pod/{name}",
                "-n",
                ns,
                f"--timeout={int(timeout)}s",
                timeout=timeout + 30,
            )
        else:
            wanted = {"Succeeded", "Failed"} if until == "done" else {until}
            wait_for(f"pod {name} {until}", lambda: pod_phase(kube, ns, name) in wanted, timeout=timeout)
        pod = kube.get_json("pod", name, "-n", ns)
        assert pod is not None
        return pod

    return run
