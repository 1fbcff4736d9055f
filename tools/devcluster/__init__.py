"""The local Kubernetes cluster for development and tests (not shipped with the operator).

No Docker engine is available where we develop and test, so the control plane (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, and kwok for fake nodes) is built from
upstream Go modules by `hack/build-cluster-bins.sh` and run as processes; optionally with a real
node (containerd, kubelet, kube-proxy) beside it. Used by the pytest fixtures, the benchmarks and
`make run` / `make cluster-up` / `make cluster-down` (`python -m devcluster --help`).

Modules: binaries (versions, cache, build), pki, procs, cluster (the control plane), node,
configs, network, hoststate and teardown (the real node), devrun (`make run`).
"""

from images.build import cache_root, images_dir

from .binaries import (
    REPO_ROOT,
    Binaries,
    ClusterError,
    NodeBinaries,
    cache_bins_dir,
    ensure_binaries,
    kubectl_path,
    read_versions,
)
from .cluster import DEFAULT_DIR, LocalCluster, running_cluster
from .components import KWOK_TAINT, NODE_NAME
from .devrun import (
    OPERATOR_NAMESPACE,
    dev_run,
    install,
    install_finalizer_policy,
    kubeconfig_reachable,
    render_chart,
)
from .node import DEFAULT_SYNC_FREQUENCY, RealNode
from .pki import generate_pki, write_kubeconfig
from .procs import free_ports

__all__ = [
    "DEFAULT_DIR",
    "DEFAULT_SYNC_FREQUENCY",
    "KWOK_TAINT",
    "NODE_NAME",
    "OPERATOR_NAMESPACE",
    "REPO_ROOT",
    "Binaries",
    "ClusterError",
    "LocalCluster",
    "NodeBinaries",
    "RealNode",
    "cache_bins_dir",
    "cache_root",
    "dev_run",
    "ensure_binaries",
    "free_ports",
    "generate_pki",
    "images_dir",
    "install",
    "install_finalizer_policy",
    "kubeconfig_reachable",
    "kubectl_path",
    "read_versions",
    "render_chart",
    "running_cluster",
    "write_kubeconfig",
]
