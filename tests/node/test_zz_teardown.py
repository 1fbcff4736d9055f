"""Teardown of the real node leaves the host as it found it: no process, mount, bridge, nftables
table, cgroup or host path of ours, and every sysctl kubelet, the bridge plugin or kube-proxy may
touch back at its value from before the node started. Runs last: it stops the session's node."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devcluster import hoststate
from devcluster.procs import pid_alive
from tests.e2e.kube import Kube

from .conftest import NodeCluster


def _processes_running(binaries: list[Path]) -> list[str]:
    found = []
    targets = {str(b) for b in binaries}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                exe = os.readlink(entry / "exe")
            except OSError:
                continue
            if exe in targets:
                found.append(f"{entry.name} {exe}")
    return found


@pytest.mark.node_teardown
def test_teardown_restores_the_host(
    kube: Kube, node_cluster: NodeCluster, namespace: str, run_pod: Callable[..., dict[str, Any]]
) -> None:
    cluster, node = node_cluster.cluster, node_cluster.cluster.node
    assert node is not None
    # Something for the teardown to clean: a running pod with a Secret (tmpfs) and an emptyDir.
    kube.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s", "namespace": namespace},
                "stringData": {"k": "v"},
            }
        )
    )
    run_pod(
        "busy",
        namespace,
        "sleep 3600",
        restart="Always",
        volumes=[{"name": "s", "secret": {"secretName": "s"}}, {"name": "scratch", "emptyDir": {}}],
        mounts=[{"name": "s", "mountPath": "/s"}, {"name": "scratch", "mountPath": "/scratch"}],
    )
    assert hoststate.mounts_under(node.workdir), "a running pod should have mounts under the node dir"
    pids = node.running_pids()
    assert set(pids) == {"lock", "containerd", "kubelet", "kube-proxy"}
    bins = node.bins

    left = cluster.stop_node()

    assert left == []
    assert not [c for c, pid in pids.items() if pid_alive(pid)]
    assert _processes_running([bins.kubelet, bins.kube_proxy, bins.containerd, bins.shim]) == []
    assert hoststate.mounts_under(node.workdir) == []
    assert hoststate.mounts_under(hoststate.RUN_DIR) == []
    after = hoststate.snapshot()
    before = node_cluster.host_before
    for key in ("paths", "links", "nft_tables", "cgroups"):
        assert after[key] == before[key], key
    # Sysctls that existed before are back (a key can only appear when the kernel loads a module).
    assert {k: after["sysctls"].get(k) for k in before["sysctls"]} == before["sysctls"]
    # The host lock is free again; the control plane still answers without the node.
    fd = hoststate.acquire_lock(Path("(free: checked by tests/node/test_zz_teardown.py)"), wait=0)
    os.ftruncate(fd, 0)
    os.close(fd)
    assert kube.get_json("node", node_cluster.node_name) is None
