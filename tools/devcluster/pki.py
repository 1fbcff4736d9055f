"""The cluster's PKI: one CA signs the apiserver's serving certificate and every client identity
(admin, the kubelet as a Node-authorizer node, kube-proxy, the apiserver's client to kubelets)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The `kubernetes` Service's ClusterIP: the first address of the service range.
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
API_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


def _pem_key(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _cert(
    subject: x509.Name,
    key: Any,
    issuer: x509.Name,
    issuer_key: Any,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    usages: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, orgs: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(pki: Path, name: str, cert: x509.Certificate, key: Any) -> None:
    for path, data in (
        (pki / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)),
        (pki / f"{name}.key", _pem_key(key)),
    ):
        path.write_bytes(data)
        path.chmod(0o600)


def _load_ca(pki: Path) -> tuple[x509.Certificate, Any]:
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    return ca, serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)


def _ip_sans(ips: Iterable[str]) -> list[x509.GeneralName]:
    return [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]


def issue(
    pki: Path,
    name: str,
    cn: str,
    orgs: Iterable[str] = (),
    *,
    server: bool = False,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
) -> None:
    """`pki/<name>.crt|key` signed by the cluster CA: a client identity (CN user, O groups), or a
    serving certificate for the given names."""
    ca, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns] + _ip_sans(ips)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = _cert(_name(cn, orgs), key, ca.subject, ca_key, sans=sans or None, usages=[usage])
    _write(pki, name, cert, key)


def generate_pki(pki: Path, extra_ips: Iterable[str] = ()) -> None:
    """CA, apiserver serving cert (loopback, the `kubernetes` Service names and IP, `extra_ips`),
    admin client cert (system:masters), service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("agenttoken-devcluster-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    _write(pki, "ca", ca, ca_key)
    ips = ["127.0.0.1", KUBERNETES_SERVICE_IP, *extra_ips]
    issue(pki, "apiserver", "kube-apiserver", server=True, dns=API_DNS_NAMES, ips=ips)
    issue(pki, "admin", "agenttoken-admin", ["system:masters"])
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(_pem_key(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for name in ("sa.key", "sa.pub"):
        (pki / name).chmod(0o600)


def write_kubeconfig(path: Path, server: str, pki: Path, user: str = "admin") -> None:
    """A kubeconfig with the CA and the `pki/<user>.crt|key` client identity embedded."""

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    user_name = "agenttoken-admin" if user == "admin" else user
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "agenttoken-dev",
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": user_name,
                "user": {
                    "client-certificate-data": b64(f"{user}.crt"),
                    "client-key-data": b64(f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "agenttoken-dev", "context": {"cluster": "agenttoken-dev", "user": user_name}}],
        "current-context": "agenttoken-dev",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
