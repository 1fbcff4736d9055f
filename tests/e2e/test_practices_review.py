"""Practices from issue 9, points 3-5: unused tokens are flagged, suspended and revoked; verifiers
leave audit records; `agenttoken audit` reports findings and gates on a severity."""

from __future__ import annotations

import itertools
import json
import logging
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agenttoken.core import revocation
from agenttoken.core.times import parse_time
from agenttoken_sdk.verify import VerificationError, Verifier
from agenttoken_sdk.verifylog import VerificationAudit

from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_lifecycle import ISSUER, agenttoken, secret_data, status, wait_ready
from .test_rollouts import workload
from .test_sdk import cli

PERIOD = 5  # seconds between the policy's steps in these tests


def events(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    listing = kube.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
    items = (listing or {}).get("items", [])
    return sorted(items, key=lambda e: (e.get("lastTimestamp") or "", e["metadata"]["creationTimestamp"]))


def reasons(kube: Kube, namespace: str, name: str) -> list[str]:
    return [e["reason"] for e in events(kube, namespace, name)]


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def usage_state(kube: Kube, namespace: str, name: str, state: str) -> dict[str, Any] | None:
    st = status(kube, namespace, name)
    return st if (st.get("usage") or {}).get("state") == state else None


def revoked_ids(operator: OperatorProcess) -> set[str]:
    """The ids on the signed list the operator serves (parts read back, signatures not checked
    here: the verifier tests do that)."""
    with urllib.request.urlopen(f"{operator.base_url}/revocations.json", timeout=5) as r:
        parts = [revocation.read_part(signed) for signed in json.loads(r.read())["lists"]]
    return {jti for part in parts if part is not None for jti in part.revoked}


def audit_verifier(operator: OperatorProcess) -> tuple[Verifier, CollectorRegistry, list[logging.LogRecord]]:
    registry = CollectorRegistry()
    logger = logging.getLogger(f"e2e.audit.{id(registry)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.addHandler(Keep())
    verifier = Verifier(
        issuer=ISSUER,
        audience="https://api.example.com",
        jwks_url=f"{operator.base_url}/jwks.json",
        revocations_url=f"{operator.base_url}/revocations.json",
        audit=VerificationAudit(logger=logger, registry=registry),
    )
    return verifier, registry, records


def test_unused_token_is_flagged_then_suspended_then_revoked(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(workload("Deployment", "agent", "idle-token", replicas=1), "-n", namespace)
    policy = {"markAfter": f"{PERIOD}s", "suspendAfter": f"{PERIOD}s", "revokeAfter": f"{PERIOD}s"}
    kube.apply(agenttoken("idle", "idle-token", unused=policy), "-n", namespace)
    wait_ready(kube, namespace, "idle")
    used = wait_for("usage InUse", lambda: usage_state(kube, namespace, "idle", "InUse"), timeout=60)
    assert not condition(used, "Unused")
    data = secret_data(kube, namespace, "idle-token")
    assert data is not None
    verifier, registry, _ = audit_verifier(operator)
    assert verifier.verify(data["token"]).token_id == used["tokenId"]

    kube.kubectl("delete", "deployment", "agent", "-n", namespace)
    idle = wait_for("usage Idle", lambda: usage_state(kube, namespace, "idle", "Idle"), timeout=60)
    assert idle["usage"]["lastConsumedAt"]
    assert idle["usage"]["unusedSince"]

    marked = wait_for("usage Unused", lambda: usage_state(kube, namespace, "idle", "Unused"), timeout=60)
    assert condition(marked, "Unused")["status"] == "True"
    assert condition(marked, "Unused")["reason"] == "TokenUnused"
    assert condition(marked, "Ready")["status"] == "True"  # flagged only: still renewed
    assert marked["renewalTime"]
    metric = f'agenttoken_token_unused{{name="idle",namespace="{namespace}",state="Unused"}} 1.0'
    wait_for("the Unused metric", lambda: metric in operator.metrics(), timeout=30)

    suspended = wait_for(
        "usage Suspended", lambda: usage_state(kube, namespace, "idle", "Suspended"), timeout=60
    )
    assert condition(suspended, "Unused")["reason"] == "UnusedSuspended"
    assert condition(suspended, "Ready")["reason"] == "Suspended"
    assert not suspended.get("renewalTime")  # renewal stopped
    assert suspended["tokenId"] == used["tokenId"]  # the token stays until it expires

    revoked = wait_for("usage Revoked", lambda: usage_state(kube, namespace, "idle", "Revoked"), timeout=60)
    assert condition(revoked, "Unused")["reason"] == "UnusedRevoked"
    assert condition(revoked, "Ready")["status"] == "False"
    assert condition(revoked, "Ready")["reason"] == "TokenRevoked"
    assert revoked["usage"]["revokedTokenId"] == used["tokenId"]
    assert used["tokenId"] in revoked_ids(operator)

    # Each step came one period after the previous one, and each left an Event.
    u = revoked["usage"]
    times = [parse_time(u[k]) for k in ("unusedSince", "markedAt", "suspendedAt", "revokedAt")]
    assert all(t is not None for t in times)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]  # type: ignore[operator]
    assert all(g >= PERIOD for g in gaps), gaps
    seen = reasons(kube, namespace, "idle")
    steps = [r for r in seen if r in ("TokenUnused", "UnusedSuspended", "UnusedRevoked")]
    assert steps == ["TokenUnused", "UnusedSuspended", "UnusedRevoked"], seen
    shown = cli(kube, "status", "idle", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    assert "Usage:         Revoked" in shown.stdout
    assert f"revoked token {used['tokenId']}" in shown.stdout

    # The revoked token is rejected, and the verifier's counter shows it.
    def rejected() -> str | None:
        try:
            verifier.verify(data["token"])
        except VerificationError as exc:
            return exc.check
        return None

    assert wait_for("the verifier to reject the revoked token", rejected, timeout=10) == "revoked"

    # A consumer coming back undoes it all: a new token, renewal resumes.
    kube.apply(workload("Deployment", "agent", "idle-token", replicas=1), "-n", namespace)
    back = wait_for(
        "a new token for the returning consumer",
        lambda: (
            (s := usage_state(kube, namespace, "idle", "InUse"))
            and s.get("tokenId") != used["tokenId"]
            and condition(s, "Ready").get("status") == "True"
            and s
        ),
        timeout=60,
    )
    assert not condition(back, "Unused")
    assert back["revision"] == used["revision"] + 1
    assert back["renewalTime"]
    assert "TokenInUse" in reasons(kube, namespace, "idle")
    assert registry.get_sample_value(
        "agenttoken_verifications_total",
        {"subject": f"agenttoken:{namespace}:idle", "namespace": namespace, "name": "idle",
         "result": "rejected", "check": "revoked"},
    )  # fmt: skip


def test_a_consumer_seen_only_by_a_fresh_read_vetoes_the_steps(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """A bare Pod is not in the workload cache, but the read before each step finds it."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare"},
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "image": "example.invalid/a:1",
                    "envFrom": [{"secretRef": {"name": "bare-token"}}],
                }
            ]
        },
    }
    kube.apply(json.dumps(pod), "-n", namespace)
    policy = {"markAfter": "2s", "suspendAfter": "2s", "revokeAfter": "2s"}
    kube.apply(agenttoken("bare", "bare-token", unused=policy), "-n", namespace)
    wait_ready(kube, namespace, "bare")
    # Idle (cache) -> due for marking -> the fresh read finds the Pod -> InUse, never flagged.
    wait_for(
        "usage InUse from the fresh read", lambda: usage_state(kube, namespace, "bare", "InUse"), timeout=60
    )
    assert not {"TokenUnused", "UnusedSuspended", "UnusedRevoked"} & set(reasons(kube, namespace, "bare"))


def test_verifier_audit_records_accepted_rejected_and_revoked(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(agenttoken("audited", "audited-token"), "-n", namespace)
    wait_ready(kube, namespace, "audited")
    data = secret_data(kube, namespace, "audited-token")
    assert data is not None
    token, jti = data["token"], status(kube, namespace, "audited")["tokenId"]
    verifier, registry, records = audit_verifier(operator)
    who = {"subject": f"agenttoken:{namespace}:audited", "namespace": namespace, "name": "audited"}

    def count(result: str, check: str = "") -> float:
        labels = {**who, "result": result, "check": check}
        return registry.get_sample_value("agenttoken_verifications_total", labels) or 0.0

    verifier.verify(token)
    with pytest.raises(VerificationError, match="scope"):
        verifier.verify(token, required_scopes=["write"])
    assert (count("accepted"), count("rejected", "scope")) == (1.0, 1.0)

    revoke = cli(kube, "revoke", "audited", "-n", namespace, "--no-rotate")
    assert revoke.returncode == 0, revoke.stderr

    def rejected() -> bool:
        try:
            verifier.verify(token)
        except VerificationError as exc:
            return exc.check == "revoked"
        return False

    wait_for("the revoked token to be rejected", rejected, timeout=10, interval=0.1)
    before = count("rejected", "revoked")
    assert before >= 1
    assert rejected()  # presented once more after the revocation: counted once more
    assert count("rejected", "revoked") == before + 1

    fields = [json.loads(r.getMessage()) for r in records]
    assert {"accepted", "rejected"} <= {f["result"] for f in fields}
    last = fields[-1]
    assert (last["result"], last["check"], last["token_id"], last["subject"]) == (
        "rejected", "revoked", jti, who["subject"])  # fmt: skip
    assert (last["namespace"], last["name"]) == (namespace, "audited")
    exposition = generate_latest(registry).decode()
    for text in [exposition, *(r.getMessage() for r in records)]:
        assert token not in text
        assert token.split(".")[2] not in text
    assert jti not in exposition  # the token id is in the log only


def _audit(kube: Kube, namespace: str, *args: str) -> tuple[int, dict[str, Any]]:
    out = cli(kube, "audit", "-n", namespace, "-o", "json", "--rotation-age", "1s", *args)
    assert out.returncode in (0, 2), out.stderr
    return out.returncode, json.loads(out.stdout)


def test_audit_flags_each_planted_finding_and_gates_on_severity(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    # Planted first: it needs a minute to expire (the shortest TTL), renewal suspended.
    kube.apply(agenttoken("expiring", "expiring-token", ttl="60s"), "-n", namespace)
    wait_ready(kube, namespace, "expiring")
    kube.kubectl("patch", "agenttoken", "expiring", "-n", namespace, "--type=merge", "-p",
                 '{"spec": {"suspend": true}}')  # fmt: skip
    planted = {
        "wildcard": {"scopes": ["tickets:*"]},
        "admin": {"scopes": ["tickets:read", "tickets:admin"]},
        "longttl": {"ttl": "72h"},
    }
    for name, spec in planted.items():
        kube.apply(agenttoken(name, f"{name}-token", **spec), "-n", namespace)
    for name in ("clean", "orphan"):
        kube.apply(agenttoken(name, f"{name}-token"), "-n", namespace)
        kube.kubectl("label", "agenttoken", name, "-n", namespace, "group=low")
    for name in ("wildcard", "admin", "longttl"):
        kube.apply(workload("Deployment", f"{name}-agent", f"{name}-token", replicas=1), "-n", namespace)
    kube.apply(workload("Deployment", "clean-agent", "clean-token", replicas=1), "-n", namespace)
    for name in ("expiring", "wildcard", "admin", "longttl", "clean", "orphan"):
        wait_ready(kube, namespace, name)
    # Rotate the clean one (and the planted ones, so NeverRotated shows only where planted).
    for name in ("clean", "wildcard", "admin", "longttl"):
        assert cli(kube, "rotate", name, "-n", namespace).returncode == 0
    for name in ("clean", "wildcard", "admin", "longttl"):
        wait_for(
            f"{name} rotated", lambda n=name: status(kube, namespace, n).get("revision", 0) >= 2, timeout=60
        )  # type: ignore[misc]
        wait_for(f"{name} consumed", lambda n=name: status(kube, namespace, n).get("consumers"), timeout=60)  # type: ignore[misc]
    wait_for(
        "the suspended token to expire",
        lambda: condition(status(kube, namespace, "expiring"), "Ready").get("status") == "False",
        timeout=120,
    )

    code, report = _audit(kube, namespace)
    assert code == 0  # no --fail-on: report only
    found = {r["name"]: sorted((f["id"], f["severity"]) for f in r["findings"]) for r in report["items"]}
    assert found["clean"] == []
    assert found["wildcard"] == [("BroadScope", "high")]
    assert found["admin"] == [("BroadScope", "high")]
    assert found["longttl"] == [("LongTTL", "medium")]
    assert found["orphan"] == [("NeverRotated", "low"), ("NoConsumers", "low")]
    assert ("Expired", "high") in found["expiring"]
    assert ("NoConsumers", "low") in found["expiring"]
    clean = next(r for r in report["items"] if r["name"] == "clean")
    assert clean["consumers"] == ["Deployment/clean-agent"]
    assert clean["daysSinceLastUse"] == 0
    assert clean["lastRotation"] == status(kube, namespace, "clean")["issuedAt"]
    assert (clean["issuer"], clean["ttl"], clean["scopes"]) == ("ClusterTokenIssuer/builtin", "1h", ["read"])

    assert _audit(kube, namespace, "--fail-on", "high")[0] == 2
    assert _audit(kube, namespace, "-l", "group=low", "--fail-on", "medium")[0] == 0
    assert _audit(kube, namespace, "-l", "group=low", "--fail-on", "low")[0] == 2
    # Admin-like words are configurable: without "admin" in the list only the wildcard is broad.
    _, custom = _audit(kube, namespace, "--admin-scope", "superuser")
    assert not [f for r in custom["items"] if r["name"] == "admin" for f in r["findings"]]
    table = cli(kube, "audit", "-n", namespace, "--rotation-age", "1s", "--fail-on", "high")
    assert table.returncode == 2
    assert "BroadScope" in table.stdout
    assert "FAIL" in table.stdout
