"""A verification plane that outlives the operator: every operator pod gone for five minutes, and an
API verifying with the SDK (its defaults: the signed revocation list is trusted until its
next-update plus the grace, docs/sdk.md) keeps accepting valid tokens and keeps refusing a token
revoked before the outage.

One test (the outage is one stretch of wall time), its own release (the chart's defaults):
  - `valid`: an AgentToken whose token outlives the outage; a caller pod uses it every second;
  - `revoked`: an AgentToken deleted before the outage (its finalizer revokes its token); a caller
    keeps presenting that token from a copy of its Secret;
  - the demo API verifies every call through the operator's Service (JWKS and revocation list);
  - `kubectl scale --replicas=0` of the operator, held 5 minutes, then back to the chart's 2.
Claims: in the outage window, every call of the valid caller accepted and calls kept coming
throughout; every call of the revoked caller rejected by the "revoked" check.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.kube import Kube, wait_for

from .conftest import NodeCluster
from .operator_setup import (
    AUDIENCE,
    FULLNAME,
    OPERATOR_NS,
    SCOPE,
    Release,
    agent_deployment,
    app_pods,
    demo_api,
    installed_release,
    is_ready,
    json_lines,
    operator_pods,
    secret_bundle,
    write_results,
)

pytestmark = pytest.mark.node

OUTAGE_SECONDS = 300
NS = "outage"
REPLICAS = 2  # the chart's default, restored after the outage


@pytest.fixture(scope="module")
def release(kube: Kube, node_cluster: NodeCluster) -> Iterator[Release]:
    with installed_release(kube, node_cluster) as installed:
        yield installed


def _agent_token(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "metadata": {"name": name, "namespace": NS},
        # 20 minutes: issued before the outage, still valid (and not yet due for renewal) after it.
        "spec": {"audience": [AUDIENCE], "scopes": [SCOPE], "ttl": "20m", "secret": {"name": name}},
    }


def _copy_of_secret(kube: Kube, name: str, copy: str) -> None:
    """The token Secret's data under another name, without the operator's labels or owner (so it
    outlives the AgentToken and the operator never touches it). The data is never printed."""
    secret = kube.get_json("secret", name, "-n", NS)
    assert secret is not None
    assert secret.get("data"), f"secret {name} has no data"
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": copy, "namespace": NS},
        "data": secret["data"],
    }
    kube.apply(json.dumps(manifest))


def _compact_jws_header(text: str) -> dict[str, Any] | None:
    """The protected header of a compact JWS, or None when `text` is not one."""
    parts = text.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return header if isinstance(header, dict) and "alg" in header else None


def _revocation_list_is_signed(kube: Kube) -> bool:
    """Whether the operator publishes a signed revocation list (a JWS, or JSON carrying one), which
    is what lets verifiers trust a stale list until its next-update (branch ha-verify)."""
    for configmap in (kube.get_json("configmaps", "-n", OPERATOR_NS) or {}).get("items", []):
        if not configmap["metadata"]["name"].startswith("agenttoken-revocations"):
            continue
        for value in (configmap.get("data") or {}).values():
            if _compact_jws_header(value):
                return True
            try:
                doc = json.loads(value)
            except ValueError:
                continue
            if isinstance(doc, dict) and ("signature" in doc or "signatures" in doc or "jws" in doc):
                return True
    return False


def _requests(kube: Kube) -> list[dict[str, Any]]:
    (pod,) = app_pods(kube, NS, "demo-api")
    lines = json_lines(kube.kubectl("logs", "-n", NS, pod["metadata"]["name"]).stdout)
    return [line for line in lines if line.get("event") == "request"]


def _caller(line: dict[str, Any]) -> str:
    """caller-valid / caller-revoked from the agent's pod name (the X-Agent-Pod header)."""
    return "caller-valid" if str(line.get("pod", "")).startswith("caller-valid") else "caller-revoked"


def _no_operator_pod(kube: Kube) -> bool:
    pods = kube.get_json("pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=agent-token-operator")
    return not (pods or {}).get("items")


def _service_has_no_endpoints(kube: Kube) -> bool:
    endpoints = kube.get_json("endpoints", FULLNAME, "-n", OPERATOR_NS) or {}
    return not any(subset.get("addresses") for subset in endpoints.get("subsets") or [])


def test_verifiers_outlive_a_five_minute_outage_of_every_operator_pod(kube: Kube, release: Release) -> None:
    kube.kubectl("create", "namespace", NS)
    kube.wait_default_sa(NS)
    try:
        _outage(kube, release)
    finally:
        kube.kubectl(
            "scale", "deployment", FULLNAME, "-n", OPERATOR_NS, f"--replicas={REPLICAS}", check=False
        )
        kube.kubectl("delete", "agenttoken", "--all", "-n", NS, "--timeout=90s", check=False, timeout=120)
        kube.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def _outage(kube: Kube, release: Release) -> None:
    for name in ("valid", "revoked"):
        kube.apply(json.dumps(_agent_token(name)))
    for name in ("valid", "revoked"):
        wait_for(f"the {name} token", lambda name=name: secret_bundle(kube, NS, name), timeout=120)  # type: ignore[misc]
    _copy_of_secret(kube, "revoked", "revoked-copy")
    # The operator revokes the current token when its AgentToken is deleted (its finalizer).
    kube.kubectl("delete", "agenttoken", "revoked", "-n", NS, "--timeout=90s", timeout=120)

    # The SDK's defaults: no stale grace configured here (the signed list brings its own validity).
    for obj in demo_api(NS, release.service_ip):
        kube.apply(json.dumps(obj))
    kube.kubectl("rollout", "status", "deployment/demo-api", "-n", NS, "--timeout=180s", timeout=200)
    demo_ip = (kube.get_json("service", "demo-api", "-n", NS) or {})["spec"]["clusterIP"]
    env = {"DEMO_API_URL": f"http://{demo_ip}:8080/call", "CALL_INTERVAL": "1", "AGENT_MODES": "volume"}
    for name, secret in (("caller-valid", "valid"), ("caller-revoked", "revoked-copy")):
        kube.apply(json.dumps(agent_deployment(name, NS, 1, env, three_ways=False, secret=secret)))
    for name in ("caller-valid", "caller-revoked"):
        kube.kubectl("rollout", "status", f"deployment/{name}", "-n", NS, "--timeout=180s", timeout=200)

    def both_answered() -> bool:
        seen = {(_caller(line), line["result"], line.get("check")) for line in _requests(kube)}
        return {("caller-valid", "accepted", None), ("caller-revoked", "rejected", "revoked")} <= seen

    wait_for("the valid token accepted and the revoked one refused as revoked", both_answered, timeout=120)
    if not _revocation_list_is_signed(kube):
        pytest.xfail(
            "needs branch ha-verify: the revocation list is not signed, so this SDK cannot trust it "
            "past its fetch and fails closed once the operator's Service is empty"
        )

    kube.kubectl("scale", "deployment", FULLNAME, "-n", OPERATOR_NS, "--replicas=0")
    wait_for("every operator pod gone", lambda: _no_operator_pod(kube), timeout=180, interval=0.5)
    wait_for("the operator Service without endpoints", lambda: _service_has_no_endpoints(kube), timeout=60)
    started = time.time()
    # Hold the outage, checking that it lasts (nothing brings an operator pod back).
    while time.time() < started + OUTAGE_SECONDS:
        assert _no_operator_pod(kube), "an operator pod came back during the outage"
        time.sleep(5)
    ended = time.time()
    kube.kubectl("scale", "deployment", FULLNAME, "-n", OPERATOR_NS, f"--replicas={REPLICAS}")
    wait_for(
        "the operator back",
        lambda: len([p for p in operator_pods(kube) if is_ready(p)]) == REPLICAS,
        timeout=180,
    )

    requests = _requests(kube)
    window = [line for line in requests if started <= line["ts"] <= ended]
    valid = [line for line in window if _caller(line) == "caller-valid"]
    revoked = [line for line in window if _caller(line) == "caller-revoked"]
    refused_valid = [line for line in valid if line["result"] != "accepted"]
    assert not refused_valid, f"{len(refused_valid)} of {len(valid)} valid calls refused: {refused_valid[:3]}"
    let_through = [line for line in revoked if line["result"] != "rejected" or line.get("check") != "revoked"]
    assert not let_through, f"{len(let_through)} of {len(revoked)} revoked calls not refused as revoked"
    # Calls kept coming through the whole window (about one a second per caller).
    for name, calls in (("valid", valid), ("revoked", revoked)):
        times = [started, *sorted(line["ts"] for line in calls), ended]
        gap = max(b - a for a, b in itertools.pairwise(times))
        assert len(calls) >= OUTAGE_SECONDS / 4, f"only {len(calls)} {name} calls in {OUTAGE_SECONDS}s"
        assert gap < 30, f"the {name} caller went {gap:.0f}s without an answer during the outage"
    # Outside the window too: the valid token was never refused.
    assert not [line for line in requests if _caller(line) == "caller-valid" and line["result"] != "accepted"]
    write_results(
        "verifier_outage",
        {
            "what": "every operator pod scaled to 0; the demo API verifies with the SDK's defaults",
            "outage_seconds": round(ended - started, 1),
            "valid_calls_accepted": len(valid),
            "revoked_calls_refused": len(revoked),
        },
    )
