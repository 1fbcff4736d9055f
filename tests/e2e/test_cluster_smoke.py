"""The local control plane is a real Kubernetes: rollouts, RBAC, CEL validation, garbage collection."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import pytest

from devcluster import ClusterError, LocalCluster

from .kube import Kube, wait_for


def test_deployment_rolls_out_with_ready_pods(kube: Kube, namespace: str) -> None:
    kube.kubectl(
        "create", "deployment", "web", "--image=example.invalid/web:1", "--replicas=2", "-n", namespace
    )
    kube.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=120s")
    pods = kube.get_json("pods", "-n", namespace, "-l", "app=web")
    assert pods is not None
    ready = [
        p
        for p in pods["items"]
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]
    assert len(ready) == 2


def test_rbac_is_enforced(kube: Kube, namespace: str) -> None:
    kube.kubectl("create", "serviceaccount", "unbound", "-n", namespace)
    who = f"--as=system:serviceaccount:{namespace}:unbound"
    denied = kube.kubectl("auth", "can-i", who, "get", "secrets", "-n", namespace, check=False)
    assert denied.stdout.strip() == "no"
    assert denied.returncode != 0
    # Positive control: the same question answers yes once a Role grants it.
    kube.kubectl("create", "role", "read-secrets", "--verb=get", "--resource=secrets", "-n", namespace)
    kube.kubectl(
        "create", "rolebinding", "read-secrets", "--role=read-secrets",
        f"--serviceaccount={namespace}:unbound", "-n", namespace,
    )  # fmt: skip
    allowed = kube.kubectl("auth", "can-i", who, "get", "secrets", "-n", namespace, check=False)
    assert allowed.stdout.strip() == "yes"


def test_crd_cel_rule_rejects_bad_object(kube: Kube, namespace: str) -> None:
    group = f"smoke{uuid.uuid4().hex[:6]}.agenttoken.dev"
    crd = textwrap.dedent(
        f"""\
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata:
          name: widgets.{group}
        spec:
          group: {group}
          scope: Namespaced
          names: {{plural: widgets, singular: widget, kind: Widget}}
          versions:
          - name: v1
            served: true
            storage: true
            schema:
              openAPIV3Schema:
                type: object
                properties:
                  spec:
                    type: object
                    x-kubernetes-validations:
                    - rule: "self.min <= self.max"
                      message: "min must not exceed max"
                    properties:
                      min: {{type: integer}}
                      max: {{type: integer}}
        """
    )
    kube.apply(crd)
    try:
        kube.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s")

        def widget(lo: int, hi: int) -> str:
            body = {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": f"w{lo}{hi}", "namespace": namespace},
                "spec": {"min": lo, "max": hi},
            }
            return json.dumps(body)

        bad = kube.apply(widget(5, 1), check=False)
        assert bad.returncode != 0
        assert "min must not exceed max" in bad.stderr
        kube.apply(widget(1, 5))
    finally:
        kube.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_garbage_collector_deletes_dependents(kube: Kube, namespace: str) -> None:
    kube.kubectl("create", "configmap", "owner", "-n", namespace)
    owner = kube.get_json("configmap", "owner", "-n", namespace)
    assert owner is not None
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
            ],
        },
    }
    kube.apply(json.dumps(dependent))
    kube.kubectl("delete", "configmap", "owner", "-n", namespace, "--cascade=background")
    wait_for(
        "the dependent ConfigMap to be garbage-collected",
        lambda: kube.get_json("configmap", "dependent", "-n", namespace) is None,
        timeout=60,
    )


@pytest.mark.skipif("config.getoption('--cluster') != 'local'", reason="exercises the local runner")
def test_second_cluster_runs_beside_the_first(kube: Kube, tmp_path: Path) -> None:
    second = LocalCluster(tmp_path / "second")
    second.start()
    try:
        assert second.kubeconfig != kube.kubeconfig
        assert second.server not in kube.kubeconfig.read_text()
        other = Kube(second.kubeconfig, name="second")
        other.kubectl("create", "namespace", "only-in-second")
        assert kube.get_json("namespace", "only-in-second") is None
        # The same directory cannot host a second cluster: a clear error, nothing killed.
        with pytest.raises(ClusterError, match="already running"):
            LocalCluster(tmp_path / "second").start()
        assert other.get_json("namespace", "only-in-second") is not None
    finally:
        second.stop(remove=True)
    assert not second.running_pids()
