"""[measure] reliability 6: tenancy matrix. An AgentToken in namespace A never writes a Secret,
restarts a workload or uses an issuer that belongs to or is restricted to namespace B. The
proof is the apiserver's audit log: the operator makes no write at all in B while A's tokens
try, and B's objects are unchanged."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from devcluster import LocalCluster
from tests.e2e.kube import Kube, wait_for
from tests.e2e.operator import OperatorProcess
from tests.e2e.test_rollouts import workload

from .conftest import now, operator_writes
from .support import GROUP_PATH, condition, get, is_ready, new_namespace, secret_data

PRE_ISSUE_STALLS = {"IssuerNotFound", "PolicyViolation", "IssuerNotReady"}


def token(name: str, secret: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "metadata": {"name": name},
        "spec": {"audience": ["https://api.example.com"], "ttl": "1h", "secret": {"name": secret}} | spec,
    }


def settled(obj: dict[str, Any]) -> bool:
    return is_ready(obj) or condition(obj, "Stalled").get("status") == "True"


@pytest.fixture
def tenants(kube: Kube) -> tuple[str, str, str]:
    """Namespaces A and B, B's own issuer, and a cluster issuer restricted to B."""
    a = new_namespace(kube, "tenant-a", {"tenant": "a"})
    b = new_namespace(kube, "tenant-b", {"tenant": "b"})
    only_b = f"only-b-{uuid.uuid4().hex[:6]}"
    kube.apply(json.dumps({"apiVersion": "agenttoken.dev/v1alpha1", "kind": "TokenIssuer",
                           "metadata": {"name": "b-issuer", "namespace": b}, "spec": {"builtin": {}}}))  # fmt: skip
    kube.apply(
        json.dumps(
            {
                "apiVersion": "agenttoken.dev/v1alpha1",
                "kind": "ClusterTokenIssuer",
                "metadata": {"name": only_b},
                "spec": {"builtin": {}, "policy": {"namespaceSelector": {"matchLabels": {"tenant": "b"}}}},
            }
        )
    )
    # B's objects that A's tokens will aim at.
    kube.apply(json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b-secret"},
                           "stringData": {"token": "b's own"}}), "-n", b)  # fmt: skip
    kube.apply(workload("Deployment", "b-app", "shared-name", replicas=1, labels={"agents": "yes"}), "-n", b)
    kube.apply(workload("Deployment", "b-env", "shared-name", replicas=1, env=True), "-n", b)
    yield a, b, only_b
    kube.kubectl("delete", "clustertokenissuer", only_b, "--wait=false", check=False)


def test_a_token_in_one_namespace_never_touches_another(
    kube: Kube, cluster: LocalCluster, operator: OperatorProcess, tenants: tuple[str, str, str]
) -> None:
    a, b, only_b = tenants
    before = {
        "secret": get(cluster, f"/api/v1/namespaces/{b}/secrets/b-secret")["metadata"]["resourceVersion"],
        **{
            d: get(cluster, f"/apis/apps/v1/namespaces/{b}/deployments/{d}")["metadata"]["generation"]
            for d in ("b-app", "b-env")
        },
    }
    start = now()
    # name -> (spec extras, secret name, what must happen in A)
    matrix: dict[str, tuple[dict[str, Any], str, str]] = {
        "b-namespaced-issuer": ({"issuerRef": {"kind": "TokenIssuer", "name": "b-issuer"}}, "s1", "IssuerNotFound"),
        "b-only-cluster-issuer": ({"issuerRef": {"kind": "ClusterTokenIssuer", "name": only_b}}, "s2", "PolicyViolation"),
        "b-secret-name": ({}, "b-secret", "Ready"),
        "b-workload-by-name": ({"rollout": {"targets": [{"kind": "Deployment", "name": "b-app"}]}}, "s4", "Ready"),
        "b-workload-by-selector": ({"rollout": {"targets": [{"selector": {"matchLabels": {"agents": "yes"}}}],
                                               "autoDiscover": True}}, "shared-name", "Ready"),
    }  # fmt: skip
    for name, (extra, secret, _) in matrix.items():
        code, body = cluster.api(
            "POST", f"{GROUP_PATH}/namespaces/{a}/agenttokens", token(name, secret, **extra)
        )
        if name == "b-only-cluster-issuer":
            # The chart's admission policy refuses it before the operator sees it (reconcile-time
            # PolicyViolation for an unselected namespace is covered in tests/e2e/test_issuers.py).
            assert code == 403, body[:300]
            assert f"namespace '{a}' is not selected" in json.loads(body)["message"]
            continue
        assert code == 201, body[:300]
    del matrix["b-only-cluster-issuer"]

    # The spec has no cross-namespace fields: naming B anywhere is refused (strict validation)
    # or, by default, pruned, so it cannot point anywhere but A.
    sneaky = token("sneaky", "s6", issuerRef={"kind": "TokenIssuer", "name": "b-issuer", "namespace": b})
    sneaky["spec"]["secret"]["namespace"] = b
    sneaky["spec"]["rollout"] = {"targets": [{"kind": "Deployment", "name": "b-app", "namespace": b}]}
    code, body = cluster.api(
        "POST", f"{GROUP_PATH}/namespaces/{a}/agenttokens?fieldValidation=Strict", sneaky
    )
    assert code in (400, 422), body[:300]
    message = json.loads(body)["message"]
    assert 'unknown field "spec.secret.namespace"' in message
    assert 'unknown field "spec.issuerRef.namespace"' in message
    code, body = cluster.api("POST", f"{GROUP_PATH}/namespaces/{a}/agenttokens", sneaky)
    assert code == 201, body[:300]
    stored = json.loads(body)["spec"]
    assert "namespace" not in stored["secret"]
    assert "namespace" not in stored["issuerRef"]
    assert "namespace" not in stored["rollout"]["targets"][0]
    matrix["sneaky"] = ({}, "s6", "IssuerNotFound")
    # metadata.namespace B posted into A is refused by the apiserver itself.
    wrong = token("wrong-ns", "s7") | {"metadata": {"name": "wrong-ns", "namespace": b}}
    code, body = cluster.api("POST", f"{GROUP_PATH}/namespaces/{a}/agenttokens", wrong)
    assert code == 400, body[:300]

    items = wait_for(
        "every A token to settle",
        lambda: (
            (objs := get(cluster, f"{GROUP_PATH}/namespaces/{a}/agenttokens")["items"])
            and len(objs) == len(matrix)
            and all(settled(o) for o in objs)
            and objs
        ),
        timeout=120,
    )
    for obj in items:
        name = obj["metadata"]["name"]
        want = matrix[name][2]
        if want == "Ready":
            assert is_ready(obj), f"{name}: {condition(obj, 'Ready')}"
            secret = get(cluster, f"/api/v1/namespaces/{a}/secrets/{matrix[name][1]}")
            assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [obj["metadata"]["uid"]]
        else:
            assert condition(obj, "Stalled").get("reason") == want, f"{name}: {condition(obj, 'Stalled')}"
            assert want in PRE_ISSUE_STALLS
            assert not (obj.get("status") or {}).get("tokenId"), name
    # Rollouts of A's targets are done (or found nothing in A) before we look at B.
    wait_for(
        "A's rollouts to finish",
        lambda: all(
            (o.get("status") or {}).get("rollout", {}).get("state") in (None, "Complete")
            for o in get(cluster, f"{GROUP_PATH}/namespaces/{a}/agenttokens")["items"]
        ),
        timeout=60,
    )

    in_b = operator_writes(cluster, start, b)
    assert in_b == [], f"the operator wrote in {b}: {[(e['verb'], e['objectRef']) for e in in_b]}"
    b_secret = get(cluster, f"/api/v1/namespaces/{b}/secrets/b-secret")
    assert b_secret["metadata"]["resourceVersion"] == before["secret"]
    assert secret_data(b_secret) == {"token": "b's own"}
    for d in ("b-app", "b-env"):
        dep = get(cluster, f"/apis/apps/v1/namespaces/{b}/deployments/{d}")
        assert dep["metadata"]["generation"] == before[d], f"{b}/{d} was changed"
        annotations = dep["spec"]["template"]["metadata"].get("annotations") or {}
        assert not [k for k in annotations if k.startswith("agenttoken.dev/")], f"{b}/{d} was patched"

    # Control: the same issuers do work for B, so A's refusals are tenancy, not broken issuers.
    for name, ref in (("own", {"kind": "TokenIssuer", "name": "b-issuer"}),
                      ("cluster", {"kind": "ClusterTokenIssuer", "name": only_b})):  # fmt: skip
        code, body = cluster.api(
            "POST", f"{GROUP_PATH}/namespaces/{b}/agenttokens", token(name, f"{name}-tok", issuerRef=ref)
        )
        assert code == 201, body[:300]
    for name in ("own", "cluster"):
        kube.kubectl("wait", "--for=condition=Ready", f"agenttoken/{name}", "-n", b, "--timeout=60s")
    assert operator.alive()
