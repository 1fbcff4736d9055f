"""Stopping a real node and putting the host back as it was before the node started."""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from . import hoststate, network, procs
from .binaries import ClusterError
from .node import containerd_root

if TYPE_CHECKING:
    from .node import Api, RealNode


def _pods_on(node: RealNode, api: Api) -> list[dict[str, str]]:
    selector = urllib.parse.quote(f"spec.nodeName={node.name}")
    status, body = api("GET", f"/api/v1/pods?fieldSelector={selector}", timeout=5)
    if status != 200:
        return []
    return [item["metadata"] for item in json.loads(body).get("items", [])]


def drain(node: RealNode, api: Api, timeout: float) -> None:
    """Cordon, then delete every pod bound to the node and wait until kubelet has removed them:
    it stops the containers, calls CNI DEL and unmounts the volumes before the pod object goes."""
    with contextlib.suppress(OSError):
        api(
            "PATCH",
            f"/api/v1/nodes/{node.name}",
            {"spec": {"unschedulable": True}},
            content_type="application/merge-patch+json",
        )
        end = time.monotonic() + timeout
        deleted: set[str] = set()
        while time.monotonic() < end:
            pods = _pods_on(node, api)
            if not pods:
                return
            for meta in pods:
                key = f"{meta['namespace']}/{meta['name']}"
                if key not in deleted:
                    api("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}")
                    deleted.add(key)
            time.sleep(0.5)


def _stop_shims(node: RealNode, grace: float) -> None:
    """Shims outlive containerd by design; ours run our binary and name our socket dir."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "exe") == str(node.bins.shim):
                procs.stop_pid(int(entry.name), str(hoststate.RUN_DIR), grace)


def _remove_containers(node: RealNode) -> None:
    """What kubelet did not remove (it was dead, or the deadline passed): kill tasks, delete containers."""
    if node.ctr("version", timeout=5).returncode:
        return
    for task in node.ctr("tasks", "list", "--quiet").stdout.split():
        node.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task)
    for task in node.ctr("tasks", "list", "--quiet").stdout.split():
        node.ctr("tasks", "delete", "--force", task)
    for container in node.ctr("containers", "list", "--quiet").stdout.split():
        node.ctr("containers", "delete", container)


def teardown(node: RealNode, api: Api | None, *, grace: float, pod_timeout: float) -> list[str]:
    if "lock" not in node.pids:
        # It never held the host lock (e.g. a second node refused at start): nothing of it is on
        # the host, and what is there belongs to the node that holds the lock.
        return []
    lock_fd = None
    if "lock" not in node.running_pids():
        # Our lock holder is gone (a crash): clean the host only if the lock is free, i.e. no
        # other node has started since.
        try:
            lock_fd = hoststate.acquire_lock(node.workdir, wait=0)
        except ClusterError as exc:
            _stop_processes(node, api=None, grace=grace, pod_timeout=pod_timeout)
            return [f"host state of {node.workdir} not restored: {exc}"]
    try:
        return _teardown_holding_lock(node, api, grace=grace, pod_timeout=pod_timeout)
    finally:
        if lock_fd is not None:
            os.ftruncate(lock_fd, 0)
            os.close(lock_fd)


def _stop_processes(node: RealNode, api: Api | None, *, grace: float, pod_timeout: float) -> None:
    alive = node.running_pids()
    if api is not None and "kubelet" in alive:
        drain(node, api, pod_timeout)
    for component in ("kube-proxy", "kubelet"):
        if component in alive:
            procs.stop_pid(alive[component], node.marker, grace, node._procs.pop(component, None))
    if "containerd" in alive:
        _remove_containers(node)
        procs.stop_pid(alive["containerd"], node.marker, grace, node._procs.pop("containerd", None))


def _teardown_holding_lock(node: RealNode, api: Api | None, *, grace: float, pod_timeout: float) -> list[str]:
    holder = node.running_pids().get("lock")
    _stop_processes(node, api, grace=grace, pod_timeout=pod_timeout)
    _stop_shims(node, grace)
    if api is not None:
        with contextlib.suppress(OSError):
            api("DELETE", f"/api/v1/nodes/{node.name}")
    hoststate.unmount_under(node.workdir)
    hoststate.unmount_under(hoststate.RUN_DIR)
    hoststate.unmount_under(containerd_root())
    network.delete_bridge()
    network.delete_nft_tables(node.bins.nft)
    left = [f"cgroup {p}" for p in hoststate.remove_cgroups()]
    before_file = node.workdir / "host-before.json"
    if before_file.exists():
        before = json.loads(before_file.read_text())
        hoststate.remove_host_paths(before["paths"], node.workdir, network.CNI_NETWORK)
        hoststate.restore_sysctls(before["sysctls"])
        changed = {k: v for k, v in hoststate.read_sysctls().items() if before["sysctls"].get(k, v) != v}
        left += [f"sysctl {k}={v}" for k, v in changed.items()]
    left += [f"mount {m}" for m in hoststate.mounts_under(node.workdir)]
    if network.BRIDGE in network.links():
        left.append(f"link {network.BRIDGE}")
    if holder is not None:
        procs.stop_pid(holder, str(node.workdir), grace, node._procs.pop("lock", None))
    node.pids = {}
    with contextlib.suppress(FileNotFoundError):
        node.state_file.unlink()
    if not left:
        # The host is as recorded: the next start in this dir records it afresh.
        before_file.unlink(missing_ok=True)
    return left
