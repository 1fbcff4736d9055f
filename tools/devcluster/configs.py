"""Configuration files of the real node's daemons; each setting that differs from upstream says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .binaries import NodeBinaries
from .network import POD_CIDR


def containerd_config(node_dir: Path, root: Path, run_dir: Path, bins: NodeBinaries, pause_image: str) -> str:
    """containerd v2 (config version 4). `root` (content store, image snapshots, metadata) is kept
    across runs, so images are unpacked once, not at every start; state is per run under the node
    dir; the sockets live in a short `run_dir` (a unix socket path has at most 107 bytes, and shim
    sockets are named by a 64-character hash). Never pulls the sandbox image."""
    d = node_dir / "containerd"
    return f"""version = 4
root = '{root}'
state = '{d / "state"}'

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = '{run_dir / "containerd.sock"}'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '{run_dir / "containerd.sock.ttrpc"}'
  [plugins.'io.containerd.shim.v1.manager']
    # shim sockets (default /run/containerd/s)
    socket_dir = '{run_dir / "s"}'
  [plugins.'io.containerd.internal.v1.opt']
    path = '{d / "opt"}'
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      # Built by hack/build-images and imported with ctr; there is no registry to pull from.
      sandbox = '{pause_image}'
  [plugins.'io.containerd.cri.v1.runtime']
    # Network namespaces under our state dir, not /run/netns.
    netns_mounts_under_state_dir = true
    # No CAP_SYS_RESOURCE on our VMs: a negative oom_score_adj (pause -998, Guaranteed pods -997)
    # makes runc fail ("can't get final child's PID from pipe"). Clamp to containerd's own (0).
    restrict_oom_score_adj = true
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{bins.runc}'
          # runc's state (default /run/containerd/runc) under our dir too.
          Root = '{d / "runc"}'
          # cgroupfs driver (no systemd here); kubelet learns it from containerd's RuntimeConfig.
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{bins.cni_dir}']
      conf_dir = '{node_dir / "cni" / "net.d"}'
      max_conf_num = 1
  [plugins.'io.containerd.grpc.v1.cri']
    # kubelet proxies exec/attach/port-forward to this server: loopback only, any free port.
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
"""


def kubelet_config(
    node_dir: Path, socket: Path, address: str, ports: dict[str, int], sync_frequency: str
) -> dict[str, Any]:
    pki = node_dir / "pki"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # cgroup v1 hosts: kubelet >= 1.35 refuses v1 unless told otherwise (it then warns).
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{socket}",
        "failSwapOn": False,
        # No CAP_SYS_RESOURCE: kubelet cannot lower its own score to -999.
        "oomScoreAdj": 0,
        "address": address,
        "port": ports["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports["kubelet-healthz"],
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        # No anonymous access: the apiserver presents its kubelet client certificate (x509), and
        # every request is authorized by the apiserver (SubjectAccessReview).
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True, "cacheTTL": "2m0s"},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {
            "mode": "Webhook",
            "webhook": {"cacheAuthorizedTTL": "5m0s", "cacheUnauthorizedTTL": "30s"},
        },
        "podLogsDir": str(node_dir / "pod-logs"),
        "volumePluginDir": str(node_dir / "volume-plugins"),
        # No iptables on the host, and kube-proxy (nftables) owns Service rules.
        "makeIPTablesUtilChains": False,
        # Secret/ConfigMap volumes change at the pod's periodic sync (jittered up to x1.5):
        # upstream's 1m unless a test asks for a short one.
        "syncFrequency": sync_frequency,
        "configMapAndSecretChangeDetectionStrategy": "Watch",
        "clusterDomain": "cluster.local",
        # A dev VM's disk is often mostly full: do not evict everything, never GC our imported images.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
    }


def kube_proxy_config(node_dir: Path, name: str, address: str, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(node_dir / "kube-proxy.kubeconfig")},
        "hostnameOverride": name,
        "bindAddress": address,
        "healthzBindAddress": f"127.0.0.1:{ports['kube-proxy-healthz']}",
        "metricsBindAddress": f"127.0.0.1:{ports['kube-proxy-metrics']}",
        "mode": "nftables",
        # Pod -> Service -> pod on the same bridge: SNAT to the bridge address so replies come back
        # through the host (without it they need br_netfilter, which a host may not have).
        "nftables": {"masqueradeAll": True},
        "clusterCIDR": POD_CIDR,
        "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": [f"{address}/32"],
        "oomScoreAdj": 0,
        # 0 = leave the host's conntrack sysctls as they are.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
