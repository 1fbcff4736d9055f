"""Real containers on the real node: Secret volumes and their updates, the `kubernetes` Service
with a ServiceAccount token, Services between pods, logs and exec, and a network that ends at
the machine."""

from __future__ import annotations

import http.client
import json
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devcluster import ClusterError, LocalCluster, network
from devcluster.network import POD_CIDR
from tests.e2e.kube import Kube, wait_for

from .conftest import NodeCluster


def _secret(name: str, namespace: str, value: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {"value": value},
        }
    )


def _sync_seconds(node_cluster: NodeCluster) -> float:
    text = node_cluster.cluster.sync_frequency
    minutes = re.search(r"(\d+)m", text)
    seconds = re.search(r"(\d+(?:\.\d+)?)s", text)
    return (int(minutes.group(1)) * 60 if minutes else 0) + (float(seconds.group(1)) if seconds else 0)


def test_node_is_ready_beside_the_fake_node(kube: Kube, node_cluster: NodeCluster) -> None:
    nodes = kube.get_json("nodes")
    assert nodes is not None
    by_name = {n["metadata"]["name"]: n for n in nodes["items"]}
    real = by_name[node_cluster.node_name]
    ready = {c["type"]: c["status"] for c in real["status"]["conditions"]}["Ready"]
    assert ready == "True"
    # kubelet's own identity, not anonymous: the node reports a real runtime.
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    fake = [
        n for n in nodes["items"] if n["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake"
    ]
    assert fake, "kwok's fake node is gone"
    assert all(t["key"] == "kwok.x-k8s.io/node" for n in fake for t in n["spec"].get("taints", []))


def test_secret_volume_and_its_update_reach_the_container(
    kube: Kube, node_cluster: NodeCluster, namespace: str, run_pod: Callable[..., dict[str, Any]]
) -> None:
    kube.apply(_secret("app-secret", namespace, "first"))
    run_pod(
        "reader",
        namespace,
        'while true; do echo "seen $(cat /etc/app/value)"; sleep 1; done',
        restart="Always",
        volumes=[{"name": "s", "secret": {"secretName": "app-secret"}}],
        mounts=[{"name": "s", "mountPath": "/etc/app", "readOnly": True}],
    )
    # exec: the apiserver reaches kubelet with its client certificate, kubelet asks the apiserver.
    assert kube.kubectl("exec", "-n", namespace, "reader", "--", "cat", "/etc/app/value").stdout == "first"
    kube.apply(_secret("app-secret", namespace, "second"))
    # kubelet rewrites the volume at the pod's next periodic sync (jittered up to 1.5x syncFrequency).
    wait_for(
        "the updated Secret inside the container",
        lambda: (
            kube.kubectl("exec", "-n", namespace, "reader", "--", "cat", "/etc/app/value").stdout == "second"
        ),
        timeout=_sync_seconds(node_cluster) * 1.5 + 60,
        interval=1,
    )
    wait_for(
        "the container's own output to show the new value",
        lambda: "seen second" in kube.kubectl("logs", "-n", namespace, "reader", "--tail=5").stdout,
        timeout=30,
    )


WHOAMI = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
print("service", f"{host}:{port}")
# In-cluster config as client libraries do it: the Service IP, the mounted CA, the mounted token.
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
request = urllib.request.Request(
    f"https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=json.dumps(review).encode(),
    headers={"Authorization": "Bearer " + open(f"{sa}/token").read(), "Content-Type": "application/json"},
)
print(json.dumps(json.load(urllib.request.urlopen(request, context=context, timeout=10))["status"]["userInfo"]))
"""


def test_pod_reaches_the_apiserver_through_the_kubernetes_service(
    kube: Kube, node_cluster: NodeCluster, namespace: str, run_pod: Callable[..., dict[str, Any]]
) -> None:
    # A Python image built here (busybox's wget speaks no TLS the apiserver accepts); the serving
    # certificate is verified against the ServiceAccount's CA for the Service IP.
    image = node_cluster.python_image()
    pod = run_pod(
        "whoami",
        namespace,
        WHOAMI,
        until="done",
        service_account_token=True,
        image=image,
        interpreter=["python", "-c"],
    )
    logs = kube.kubectl("logs", "-n", namespace, "whoami").stdout
    assert pod["status"]["phase"] == "Succeeded", logs
    assert "service 10.0.0.1:443" in logs
    user = json.loads(logs.strip().splitlines()[-1])
    assert user["username"] == f"system:serviceaccount:{namespace}:default"


def test_pods_reach_each_other_through_a_service(
    kube: Kube, namespace: str, run_pod: Callable[..., dict[str, Any]]
) -> None:
    run_pod(
        "web",
        namespace,
        "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www",
        restart="Always",
    )
    kube.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": namespace},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
            }
        )
    )
    service = kube.get_json("service", "web", "-n", namespace)
    assert service is not None
    ip = service["spec"]["clusterIP"]
    # The Service's endpoints reach kube-proxy a moment after it exists: try for a while.
    # (nc, not wget: Debian's static busybox wget segfaults on plain http here)
    get = f"printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80"
    script = f"for i in $(seq 30); do {get} | grep hello-from-web && exit 0; sleep 1; done; exit 1"
    pod = run_pod("client", namespace, script, until="done", timeout=90)
    logs = kube.kubectl("logs", "-n", namespace, "client").stdout
    assert pod["status"]["phase"] == "Succeeded", logs
    assert "hello-from-web" in logs


def test_pods_cannot_reach_outside_the_machine(
    kube: Kube, node_cluster: NodeCluster, namespace: str, run_pod: Callable[..., dict[str, Any]]
) -> None:
    # Routes: the pod subnet, the Service range and the node's address; nothing else.
    script = (
        "ip route; start=$(date +%s); nc -w 5 1.1.1.1 443 </dev/null; echo rc=$?; "
        'echo "took $(( $(date +%s) - start ))s"'
    )
    run_pod("isolated", namespace, script, until="done")
    logs = kube.kubectl("logs", "-n", namespace, "isolated").stdout
    assert "default" not in logs, f"the pod has a default route:\n{logs}"
    assert POD_CIDR.split("/")[0] in logs, logs
    assert f"{node_cluster.cluster.host} via" in logs, logs
    assert "unreachable" in logs.lower(), logs
    assert "rc=1" in logs
    took = int(re.search(r"took (\d+)s", logs).group(1))  # type: ignore[union-attr]
    assert took <= 1, f"the connection attempt waited instead of failing at once:\n{logs}"


def _kubelet_get(node_cluster: NodeCluster, path: str, *, client_cert: bool) -> int:
    node = node_cluster.cluster.node
    assert node is not None
    pki = node_cluster.cluster.workdir / "pki"
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client_cert:
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    conn = http.client.HTTPSConnection(node.address, node.ports["kubelet"], context=context, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_kubelet_api_refuses_anonymous_callers(node_cluster: NodeCluster) -> None:
    # kubelet's serving certificate is signed by the cluster CA for the node's address.
    assert _kubelet_get(node_cluster, "/pods", client_cert=False) == 401
    assert _kubelet_get(node_cluster, "/pods", client_cert=True) == 200


def test_a_second_real_node_is_refused_and_harms_nothing(
    kube: Kube, node_cluster: NodeCluster, tmp_path: Path
) -> None:
    tables = network.nft_tables()
    second = LocalCluster(tmp_path / "second", real_node=True, node_lock_wait=0)
    try:
        with pytest.raises(ClusterError, match="a real node already runs on this host") as refused:
            second.start()
    finally:
        second.stop()  # a no-op after the refusal; stops it all if it started after all
    assert str(node_cluster.cluster.workdir) in str(refused.value)  # it names the holder
    # The refused start stopped its own control plane and left the running node alone.
    assert second.running_pids() == {}
    assert network.BRIDGE in network.links()
    assert set(tables) <= set(network.nft_tables())
    node = kube.get_json("node", node_cluster.node_name)
    assert node is not None
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
