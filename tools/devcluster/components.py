"""How each control-plane process starts (its flags), and the fake node kwok keeps.

Mixed into LocalCluster (cluster.py), which owns the lifecycle: it spawns, waits and stops.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any

import yaml

from . import pki as pkimod
from .binaries import Binaries, ClusterError

NODE_NAME = "kwok-node-0"
# In a cluster with a real node the fake node is tainted, so only pods that ask for it land there.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}


class ControlPlaneComponents:
    """The flags of etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, and the
    admin client the cluster talks to its apiserver with."""

    workdir: Path
    ports: dict[str, int]
    host: str
    real_node: bool
    audit_status_bodies: bool

    def _spawn(self, component: str, argv: list[str]) -> None:
        raise NotImplementedError

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.workdir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 10.0,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        """One request to the apiserver as the cluster admin. For fixtures, not the operator."""
        conn = http.client.HTTPSConnection(
            self.host, self.ports["apiserver"], context=self._ssl_context(), timeout=timeout
        )
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": content_type} if payload else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _start_etcd(self, bins: Binaries) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._spawn(
            "etcd",
            [
                str(bins.etcd),
                "--name=agenttoken-dev",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=agenttoken-dev={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
                # etcd's default 2 GiB quota is far beyond what a test cluster needs.
                "--quota-backend-bytes=4294967296",
            ],
        )

    def _apiserver_network_flags(self, pki: Path) -> list[str]:
        if not self.real_node:
            return [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # A loopback advertise address only works without the endpoint reconciler.
                "--endpoint-reconciler-type=none",
            ]
        return [
            # Pods reach the apiserver at the node's address, through the `kubernetes` Service
            # (kube-proxy); the endpoint reconciler publishes that address. Our nftables table
            # keeps the port closed to other machines.
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            # kubelet API (logs, exec): a client certificate kubelet accepts and authorizes, the
            # node's InternalIP (its name does not resolve), and kubelet's serving cert verified.
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            # A node may change only itself and its own pods.
            "--enable-admission-plugins=NodeRestriction",
        ]

    def _start_apiserver(self, bins: Binaries, pki: Path) -> None:
        self._spawn(
            "kube-apiserver",
            [
                str(bins.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                *self._apiserver_network_flags(pki),
                f"--secure-port={self.ports['apiserver']}",
                f"--cert-dir={self.workdir / 'certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={pkimod.SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                # Audit log of write requests: lets benchmarks count API calls at the apiserver.
                f"--audit-log-path={(self.workdir / 'logs') / 'audit.log'}",
                f"--audit-policy-file={self._audit_policy()}",
                "--audit-log-maxsize=200",
                "--audit-log-maxbackup=1",
                "--v=1",
            ],
        )

    def _audit_policy(self) -> Path:
        path = self.workdir / "audit-policy.yaml"
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [
                {"level": "None", "users": ["system:kube-scheduler", "system:kube-controller-manager"]},
                {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
                *self._audit_body_rules(),
                {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
                {"level": "None"},
            ],
        }
        path.write_text(yaml.safe_dump(policy))
        return path

    def _audit_body_rules(self) -> list[dict[str, Any]]:
        if not self.audit_status_bodies:
            return []
        return [
            {
                "level": "Request",
                "verbs": ["patch", "update"],
                "resources": [{"group": "agenttoken.dev", "resources": ["agenttokens/status"]}],
            }
        ]

    def _kube_common(self, component: str) -> list[str]:
        kc = str(self.workdir / "kubeconfig")
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            f"--cert-dir={self.workdir / 'certs' / component}",
            "--v=1",
        ]

    def _start_controller_manager(self, bins: Binaries, pki: Path) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                str(bins.kube_controller_manager),
                *self._kube_common("kube-controller-manager"),
                f"--secure-port={self.ports['controller-manager']}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                "--service-cluster-ip-range=10.0.0.0/24",
                # Faster garbage collection and rollouts for tests; production defaults are slower.
                "--concurrent-gc-syncs=10",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
            ],
        )

    def _start_scheduler(self, bins: Binaries) -> None:
        self._spawn(
            "kube-scheduler",
            [
                str(bins.kube_scheduler),
                *self._kube_common("kube-scheduler"),
                f"--secure-port={self.ports['scheduler']}",
            ],
        )

    def _start_kwok(self, bins: Binaries) -> None:
        port = self.ports["kwok"]
        self._spawn(
            "kwok",
            [
                str(bins.kwok),
                f"--kubeconfig={(self.workdir / 'kubeconfig')}",
                f"--config={bins.kwok_config}",
                # With a real node kwok must leave it alone: it manages only annotated nodes.
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake"
                if self.real_node
                else "--manage-all-nodes=true",
                f"--node-name={NODE_NAME}",
                "--node-ip=127.0.0.1",
                f"--node-port={port}",
                # Never empty: kwok would bind 0.0.0.0.
                f"--server-address=127.0.0.1:{port}",
                "--cidr=10.244.0.0/16",
                # The heartbeat-with-lease stage renews a node Lease; without one the
                # controller-manager marks the node NotReady every ~50 s and flips pods unready.
                "--node-lease-duration-seconds=40",
            ],
        )

    def _create_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "spec": {
                "providerID": f"kwok://{NODE_NAME}",
                **({"taints": [KWOK_TAINT]} if self.real_node else {}),
            },
            "status": {
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            },
        }
        status, body = self.api("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise ClusterError(f"creating the kwok node failed: HTTP {status}: {body[:300]!r}")

    def _node_ready(self) -> bool:
        status, body = self.api("GET", f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return False
        node = json.loads(body)
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
        tainted = any(
            t.get("key") == "node.kubernetes.io/not-ready"
            for t in node.get("spec", {}).get("taints", []) or []
        )
        return ready and not tainted
