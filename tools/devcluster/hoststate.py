"""What a real node changes on the host outside its own directory, and how teardown puts it back.

kubelet and containerd cannot be confined to one directory: kubelet writes a few fixed paths under
/var, creates the `kubepods` cgroups, sets kernel sysctls at start; the CNI bridge plugin turns on
IPv4 forwarding. Hence one real node per host (a lock), a record of the host as it was before the
node started, and a teardown that restores it. `snapshot()` is what the node tier compares.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .binaries import ClusterError

LOCK_PATH = Path("/run/agenttoken-realnode.lock")
# containerd's sockets and the shims' (short paths: see configs.containerd_config).
RUN_DIR = Path("/run/agenttoken-realnode")

# Sysctls kubelet sets at start (its "kernel tunables", protectKernelDefaults=false), the bridge
# plugin's forwarding switch, and the conntrack knobs kube-proxy would tune if we let it.
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)

# Paths kubelet/containerd/CNI create whatever their configured directories are. Teardown removes
# those that did not exist before the node started (and only our entries in those that did).
HOST_PATHS = (
    str(RUN_DIR),
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/run/containerd",
    "/etc/cni",
    "/opt/cni",
    "/etc/cdi",
    "/run/cdi",
    "/var/run/cdi",
    "/etc/containerd",
    "/etc/kubernetes",
    "/usr/libexec/kubernetes",
    "/run/nri",
    "/var/run/nri",
)


# --- the host lock -----------------------------------------------------------------------------


def acquire_lock(
    owner: Path, wait: float | None = None, cancelled: Callable[[], bool] = lambda: False
) -> int:
    """flock the host-wide lock and return its fd; the caller hands the fd to a long-lived
    process so the lock lives exactly as long as the node. If it is held, wait up to `wait`
    seconds (None: env AGENTTOKEN_NODE_LOCK_WAIT, else not at all) unless `cancelled()`, then
    fail naming the holder."""
    if wait is None:
        wait = float(os.environ.get("AGENTTOKEN_NODE_LOCK_WAIT", "0"))
    deadline = time.monotonic() + wait
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline and not cancelled():
                time.sleep(1)
                continue
        holder = Path(LOCK_PATH).read_text().strip() or "unknown"
        os.close(fd)
        raise ClusterError(
            f"a real node already runs on this host (only one can: kubelet uses fixed host paths); "
            f"lock {LOCK_PATH} is held by {holder}. Stop it with "
            f"`python -m devcluster down --dir <its dir>` or run a kwok-only cluster."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{owner} (pid {os.getpid()})\n".encode(), 0)
    return fd


def lock_holder_argv(python: str, owner: Path) -> list[str]:
    """A tiny process that only keeps the inherited lock fd open; its argv names our dir."""
    return [python, "-c", "import time\nwhile True: time.sleep(3600)", f"agenttoken-realnode-lock:{owner}"]


# --- sysctls -----------------------------------------------------------------------------------


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctls(keys: tuple[str, ...] = SYSCTLS) -> dict[str, str]:
    values = {}
    for key in keys:
        with contextlib.suppress(OSError):
            values[key] = " ".join(_sysctl_path(key).read_text().split())
    return values


def restore_sysctls(saved: dict[str, str]) -> list[str]:
    """Write back every saved value that differs now; returns the keys it changed."""
    changed = []
    for key, value in saved.items():
        path = _sysctl_path(key)
        with contextlib.suppress(OSError):
            if " ".join(path.read_text().split()) != value:
                path.write_text(value)
                changed.append(key)
    return changed


# --- the record of the host before the node -----------------------------------------------------


def save_before(state_file: Path) -> dict[str, Any]:
    """Record sysctls and which host paths exist, once per node directory (a restart after a
    crash must not take the node's own changes for the host's original state)."""
    if state_file.exists():
        saved: dict[str, Any] = json.loads(state_file.read_text())
        return saved
    saved = {"sysctls": read_sysctls(), "paths": [p for p in HOST_PATHS if os.path.lexists(p)]}
    state_file.write_text(json.dumps(saved, indent=2))
    return saved


# --- cleanup -----------------------------------------------------------------------------------


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first (mountinfo escapes spaces as octal)."""
    prefix = str(root)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: (p.count("/"), p), reverse=True)


def unmount_under(root: Path) -> None:
    # Repeat: kubelet bind-mounts its root dir onto itself (rshared), so some mounts appear twice.
    for _ in range(5):
        points = mounts_under(root)
        if not points:
            return
        for point in points:
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def clear_run_dir() -> None:
    if RUN_DIR.exists():
        unmount_under(RUN_DIR)
        shutil.rmtree(RUN_DIR, ignore_errors=True)


def cgroup_dirs(name: str = "kubepods") -> list[Path]:
    """`kubepods` in every cgroup v1 hierarchy, or in the unified v2 tree."""
    root = Path("/sys/fs/cgroup")
    return [p for p in [root / name, *root.glob(f"*/{name}")] if p.is_dir()]


def remove_cgroups(name: str = "kubepods") -> list[Path]:
    """rmdir the tree bottom-up (cgroup dirs cannot be removed recursively); returns what is left."""
    for top in cgroup_dirs(name):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: w[0].count("/"), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
    return cgroup_dirs(name)


def remove_host_paths(before: list[str], ours: Path, cni_network: str) -> None:
    """Remove what kubelet/containerd/CNI created outside our dir; leave what existed before."""
    existed = set(before)
    # Entries of ours inside host directories that may have existed before.
    logs = Path("/var/log/containers")
    if logs.is_dir():
        for link in logs.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(ours)):
                    link.unlink()
    results = Path("/var/lib/cni/results")
    if results.is_dir():
        for entry in results.iterdir():
            if entry.name.startswith((f"{cni_network}-", "cni-loopback-")):
                entry.unlink(missing_ok=True)
    sock = Path("/var/lib/kubelet/device-plugins/kubelet.sock")
    sock.unlink(missing_ok=True)
    for path in HOST_PATHS:
        if path not in existed and os.path.lexists(path):
            if os.path.islink(path):
                os.unlink(path)
            else:
                shutil.rmtree(path, ignore_errors=True)


def snapshot() -> dict[str, Any]:
    """The host-visible state a node run may change; equal before a start and after a teardown."""
    from . import network  # a cycle at import time otherwise (network uses ClusterError only)

    return {
        "sysctls": read_sysctls(),
        "paths": sorted(p for p in HOST_PATHS if os.path.lexists(p)),
        "links": network.links(),
        "nft_tables": network.nft_tables(),
        "cgroups": [str(p) for p in cgroup_dirs()],
    }
