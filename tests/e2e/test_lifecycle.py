"""AgentToken lifecycle with the built-in issuer, end to end on a real control plane."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from .kube import Kube, wait_for
from .operator import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
ISSUER = "https://agent-token-operator.agenttoken-system.svc/issuers/builtin"

# Every token a test sees; the leak test at the end greps logs, Events and objects for them.
SEEN_TOKENS: set[str] = set()


def secret_data(kube: Kube, namespace: str, name: str) -> dict[str, str] | None:
    secret = kube.get_json("secret", name, "-n", namespace)
    if secret is None:
        return None
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    if data.get("token"):
        SEEN_TOKENS.add(data["token"])
    return data


def status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    obj = kube.get_json("agenttoken", name, "-n", namespace)
    assert obj is not None
    result: dict[str, Any] = obj.get("status") or {}
    return result


def published_jwks(kube: Kube) -> dict[str, Any]:
    cm = kube.get_json("configmap", "agenttoken-jwks", "-n", "agenttoken-system")
    assert cm is not None, "JWKS ConfigMap not published"
    result: dict[str, Any] = json.loads(cm["data"]["jwks.json"])
    return result


def agenttoken(name: str, secret: str, ttl: str = "1h", **spec: Any) -> str:
    body = {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "metadata": {"name": name},
        "spec": {
            "audience": ["https://api.example.com"],
            "scopes": ["read"],
            "ttl": ttl,
            "secret": {"name": secret},
        }
        | spec,
    }
    return json.dumps(body)


def wait_ready(kube: Kube, namespace: str, name: str, timeout: int = 60) -> None:
    kube.kubectl(
        "wait", "--for=condition=Ready", f"agenttoken/{name}", "-n", namespace, f"--timeout={timeout}s"
    )


def wait_revision(
    kube: Kube, namespace: str, name: str, revision: int, timeout: float = 30
) -> dict[str, Any]:
    return wait_for(
        f"{name} at revision >= {revision}",
        lambda: (s := status(kube, namespace, name)).get("revision", 0) >= revision and s,
        timeout=timeout,
    )


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


def test_example_yields_a_token_that_verifies_independently(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "agenttoken-basic.yaml"))
    wait_ready(kube, namespace, "research-agent")
    data = secret_data(kube, namespace, "research-agent-token")
    assert data is not None
    token = data["token"]
    obj = kube.get_json("agenttoken", "research-agent", "-n", namespace)
    assert obj is not None
    jwks = published_jwks(kube)

    # PyJWT: an independent library (the operator signs with joserfc).
    header = pyjwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = pyjwt.decode(
        token,
        key=pyjwt.PyJWK(key).key,
        algorithms=[key["alg"]],
        audience="https://tickets.example.com",
        issuer=ISSUER,
    )
    # joserfc against the whole published key set.
    decoded = jose_jwt.decode(token, KeySet.import_key_set(jwks))
    assert decoded.claims == claims

    assert claims["aud"] == ["https://tickets.example.com"]
    assert claims["scope"] == "tickets:read tickets:comment"
    assert claims["sub"] == f"agenttoken:{namespace}:research-agent"
    assert claims["client_id"] == f"agenttoken:{namespace}:research-agent"
    assert claims["agenttoken.dev"] == {
        "namespace": namespace,
        "name": "research-agent",
        "uid": obj["metadata"]["uid"],
    }
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["nbf"] <= claims["iat"]

    st = obj["status"]
    assert st["tokenId"] == claims["jti"]
    assert st["keyId"] == header["kid"]
    assert st["revision"] == 1
    bundle = json.loads(data["token.json"])
    assert bundle["token"] == token
    assert bundle["tokenId"] == claims["jti"]
    assert bundle["scopes"] == ["tickets:read", "tickets:comment"]
    assert data["expires-at"] == st["expiresAt"]

    secret = kube.get_json("secret", "research-agent-token", "-n", namespace)
    assert secret is not None
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "agent-token-operator"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]

    table = kube.kubectl("get", "agenttokens", "-n", namespace).stdout
    assert "<invalid>" not in table
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert re.search(rf"research-agent\s+True\s+research-agent-token\s+{stamp}\s+{stamp}\s+1\s", table), table


def test_short_ttl_renews_on_time_and_never_serves_an_expired_token(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(agenttoken("fast", "fast-token", ttl="60s"), "-n", namespace)
    wait_ready(kube, namespace, "fast")
    first = status(kube, namespace, "fast")
    seen: list[tuple[float, str, int, int]] = []  # (read time, jti, exp, revision)
    problems: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            data = secret_data(kube, namespace, "fast-token")
            now = time.time()
            if data is None:
                problems.append("secret missing")
            else:
                claims = claims_of(data["token"])
                if claims["exp"] <= now:
                    problems.append(f"expired token served at {now}: exp {claims['exp']}")
                seen.append((now, claims["jti"], claims["exp"], json.loads(data["token.json"])["revision"]))
            stop.wait(0.5)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        final = wait_revision(kube, namespace, "fast", first["revision"] + 2, timeout=100)
    finally:
        stop.set()
        poller.join(timeout=10)
    assert not problems, problems[:5]
    by_revision: dict[int, tuple[str, int]] = {}
    for _, jti, exp, revision in seen:
        by_revision.setdefault(revision, (jti, exp))
    revisions = sorted(by_revision)
    assert revisions == list(range(revisions[0], revisions[-1] + 1)), "revision must grow by exactly one"
    jtis = [by_revision[r][0] for r in revisions]
    exps = [by_revision[r][1] for r in revisions]
    assert len(set(jtis)) == len(jtis)
    assert exps == sorted(exps)
    assert len(set(exps)) == len(exps)
    assert final["revision"] >= first["revision"] + 2


def test_kill9_between_renewals_keeps_the_token_and_the_schedule(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(agenttoken("steady", "steady-token", ttl="90s"), "-n", namespace)
    wait_ready(kube, namespace, "steady")
    before = status(kube, namespace, "steady")
    operator.kill9()
    operator.start()
    operator.wait_reconciled(kube)
    after = status(kube, namespace, "steady")
    assert after["tokenId"] == before["tokenId"]
    assert after["revision"] == before["revision"]
    # The renewal still happens on time (renewalTime recorded before the kill).
    renews = time.mktime(time.strptime(before["renewalTime"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    renewed = wait_revision(kube, namespace, "steady", before["revision"] + 1, timeout=120)
    issued = time.mktime(time.strptime(renewed["issuedAt"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert renewed["tokenId"] != before["tokenId"]
    assert abs(issued - renews) <= 3, (renewed["issuedAt"], before["renewalTime"])


def test_renewal_overdue_during_downtime_happens_right_after_start(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(agenttoken("overdue", "overdue-token", ttl="60s"), "-n", namespace)
    wait_ready(kube, namespace, "overdue")
    before = status(kube, namespace, "overdue")
    renews = time.mktime(time.strptime(before["renewalTime"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    operator.stop()
    try:
        wait_for(
            "the renewal time to pass while the operator is down",
            lambda: time.time() > renews + 2,
            timeout=60,
        )
        assert status(kube, namespace, "overdue")["revision"] == before["revision"]
    finally:
        operator.start()
    started = time.time()
    renewed = wait_revision(kube, namespace, "overdue", before["revision"] + 1, timeout=30)
    assert renewed["tokenId"] != before["tokenId"]
    assert time.time() - started < 15


def test_spec_change_reissues_with_new_scopes(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(agenttoken("scoped", "scoped-token"), "-n", namespace)
    wait_ready(kube, namespace, "scoped")
    before = status(kube, namespace, "scoped")
    kube.kubectl(
        "patch", "agenttoken", "scoped", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"scopes": ["read", "write"]}}),
    )  # fmt: skip
    after = wait_revision(kube, namespace, "scoped", before["revision"] + 1, timeout=15)
    data = secret_data(kube, namespace, "scoped-token")
    assert data is not None
    assert claims_of(data["token"])["scope"] == "read write"
    assert after["tokenId"] == claims_of(data["token"])["jti"]


def test_deleted_secret_is_recreated(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(agenttoken("phoenix", "phoenix-token"), "-n", namespace)
    wait_ready(kube, namespace, "phoenix")
    before = status(kube, namespace, "phoenix")
    kube.kubectl("delete", "secret", "phoenix-token", "-n", namespace)
    after = wait_revision(kube, namespace, "phoenix", before["revision"] + 1, timeout=15)
    data = wait_for("the Secret to be recreated", lambda: secret_data(kube, namespace, "phoenix-token"))
    assert claims_of(data["token"])["jti"] == after["tokenId"]
    events = kube.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=phoenix")
    assert events is not None
    assert "SecretRestored" in {e["reason"] for e in events["items"]}


def test_someone_elses_secret_is_never_overwritten(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """A new AgentToken creates its Secret without reading it first; when that create finds a
    Secret of someone else's, the operator decides again with it: Stalled, nothing written."""
    kube.kubectl("create", "secret", "generic", "taken-token", "-n", namespace, "--from-literal=token=theirs")
    kube.apply(agenttoken("taken", "taken-token"), "-n", namespace)
    stalled = wait_for(
        "the SecretConflict condition",
        lambda: next(
            (
                c
                for c in status(kube, namespace, "taken").get("conditions") or []
                if c.get("type") == "Stalled" and c.get("status") == "True"
            ),
            None,
        ),
    )
    assert stalled["reason"] == "SecretConflict"
    data = secret_data(kube, namespace, "taken-token")
    assert data == {"token": "theirs"}
    assert status(kube, namespace, "taken").get("tokenId") is None


def test_edited_keys_are_restored(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(agenttoken("guarded", "guarded-token"), "-n", namespace)
    wait_ready(kube, namespace, "guarded")
    before = status(kube, namespace, "guarded")
    original = secret_data(kube, namespace, "guarded-token")
    assert original is not None

    # A derived key edited: rewritten from the intact token, no new token needed.
    patch = {"stringData": {"expires-at": "2000-01-01T00:00:00Z"}}
    kube.kubectl("patch", "secret", "guarded-token", "-n", namespace, "-p", json.dumps(patch))
    restored = wait_for(
        "expires-at to be restored",
        lambda: (
            (d := secret_data(kube, namespace, "guarded-token"))
            and d["expires-at"] == original["expires-at"]
            and d
        ),
        timeout=15,
    )
    assert restored["token"] == original["token"]

    # The token itself edited: it cannot be trusted, so a new one replaces it.
    patch = {"stringData": {"token": "not-a-token"}}
    kube.kubectl("patch", "secret", "guarded-token", "-n", namespace, "-p", json.dumps(patch))
    after = wait_revision(kube, namespace, "guarded", before["revision"] + 1, timeout=15)
    data = secret_data(kube, namespace, "guarded-token")
    assert data is not None
    assert claims_of(data["token"])["jti"] == after["tokenId"] != before["tokenId"]


def test_rotate_annotation_yields_exactly_one_new_token(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(agenttoken("rotor", "rotor-token"), "-n", namespace)
    wait_ready(kube, namespace, "rotor")
    before = status(kube, namespace, "rotor")
    kube.kubectl("annotate", "agenttoken", "rotor", "-n", namespace, "agenttoken.dev/rotate=r1")
    after = wait_for(
        "the rotate request to be handled",
        lambda: (s := status(kube, namespace, "rotor")).get("lastHandledRotateRequest") == "r1" and s,
        timeout=15,
    )
    assert after["revision"] == before["revision"] + 1
    # A restart must not handle the same request again.
    operator.kill9()
    operator.start()
    operator.wait_reconciled(kube)
    assert status(kube, namespace, "rotor")["revision"] == before["revision"] + 1
    kube.kubectl(
        "annotate", "agenttoken", "rotor", "-n", namespace, "agenttoken.dev/rotate=r2", "--overwrite"
    )
    final = wait_for(
        "the second rotate request to be handled",
        lambda: (s := status(kube, namespace, "rotor")).get("lastHandledRotateRequest") == "r2" and s,
        timeout=30,
    )
    assert final["revision"] == before["revision"] + 2


def test_suspend_stops_renewal_and_says_so(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(agenttoken("sleepy", "sleepy-token", ttl="60s"), "-n", namespace)
    wait_ready(kube, namespace, "sleepy")
    before = status(kube, namespace, "sleepy")
    kube.kubectl(
        "patch", "agenttoken", "sleepy", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    suspended = wait_for(
        "Ready to say Suspended",
        lambda: (
            (s := status(kube, namespace, "sleepy"))
            and any(c["type"] == "Ready" and c["reason"] == "Suspended" for c in s.get("conditions", []))
            and s
        ),
        timeout=15,
    )
    assert "renewalTime" not in suspended
    assert suspended["tokenId"] == before["tokenId"]
    # Resuming renews as usual.
    kube.kubectl(
        "patch", "agenttoken", "sleepy", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    resumed = wait_for(
        "a renewal time again", lambda: status(kube, namespace, "sleepy").get("renewalTime"), timeout=15
    )
    assert resumed


@contextlib.contextmanager
def frozen_secrets(kube: Kube, namespace: str) -> Iterator[None]:
    """Real failure injection: a ValidatingAdmissionPolicy makes the apiserver refuse Secret
    updates in `namespace` (so no renewal can land) until the block ends."""
    policy = f"freeze-secrets-{namespace}"
    rule = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["secrets"]}
    kube.apply(
        json.dumps(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": policy},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {"resourceRules": [rule]},
                    "validations": [{"expression": "false", "message": "secrets are frozen by the test"}],
                },
            }
        )
    )
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy},
        "spec": {
            "policyName": policy,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    kube.apply(json.dumps(binding))
    try:
        yield
    finally:
        kube.kubectl("delete", "validatingadmissionpolicybinding", policy, check=False)
        kube.kubectl("delete", "validatingadmissionpolicy", policy, check=False)


def test_failing_renewal_keeps_the_old_token_and_recovers(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """Real failure injection: a ValidatingAdmissionPolicy makes the apiserver refuse Secret updates."""
    kube.apply(agenttoken("brittle", "brittle-token", ttl="60s"), "-n", namespace)
    wait_ready(kube, namespace, "brittle")
    before = status(kube, namespace, "brittle")
    with frozen_secrets(kube, namespace):
        failing = wait_for(
            "a failed renewal",
            lambda: (s := status(kube, namespace, "brittle")).get("failedAttempts", 0) >= 1 and s,
            timeout=60,
        )
        assert failing["tokenId"] == before["tokenId"]
        data = secret_data(kube, namespace, "brittle-token")
        assert data is not None
        assert claims_of(data["token"])["jti"] == before["tokenId"]
        assert claims_of(data["token"])["exp"] > time.time()
        conditions = {c["type"]: c for c in failing["conditions"]}
        assert conditions["Ready"]["status"] == "True"
        assert conditions["Reconciling"]["reason"] == "RenewalFailed"
        assert "secrets are frozen by the test" in conditions["Reconciling"]["message"]
        events = kube.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=brittle")
        assert events is not None
        assert any(e["reason"] == "RenewalFailed" and e["type"] == "Warning" for e in events["items"])
    recovered = wait_revision(kube, namespace, "brittle", before["revision"] + 1, timeout=60)
    assert recovered["failedAttempts"] == 0
    assert "Reconciling" not in {c["type"] for c in recovered["conditions"]}


def test_metrics_series_follow_the_objects(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(agenttoken("counted", "counted-token"), "-n", namespace)
    wait_ready(kube, namespace, "counted")
    series = f'agenttoken_token_expiration_timestamp_seconds{{name="counted",namespace="{namespace}"}}'
    wait_for("the expiry series", lambda: series in operator.metrics(), timeout=15)
    kube.kubectl("delete", "agenttoken", "counted", "-n", namespace)
    wait_for("the series to disappear", lambda: series not in operator.metrics(), timeout=15)


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no audience", {"audience": None}, "audience"),
    ("empty audience", {"audience": []}, "audience"),
    ("ttl too short", {"ttl": "30s"}, "ttl must be between 60s and 168h"),
    ("ttl too long", {"ttl": "200h"}, "ttl must be between 60s and 168h"),
    ("ttl not a duration", {"ttl": "one hour"}, "spec.ttl"),
    (
        "renewBefore not shorter than ttl",
        {"ttl": "1h", "renewBefore": "2h"},
        "renewBefore must be shorter than ttl",
    ),
    (
        "both renewal settings",
        {"renewBefore": "10m", "renewBeforePercentage": 30},
        "renewBefore and renewBeforePercentage are mutually exclusive",
    ),
    ("percentage out of range", {"renewBeforePercentage": 99}, "renewBeforePercentage"),
    ("duplicate scopes", {"scopes": ["a", "a"]}, "Duplicate value"),
    ("scope with a space", {"scopes": ["read write"]}, "spec.scopes[0]"),
    ("bad CIDR", {"allowedCIDRs": ["10.0.0.0/33"]}, "allowedCIDRs entries must be CIDRs"),
    ("no secret", {"secret": None}, "secret"),
    ("bad secret name", {"secret": {"name": "Not_Valid"}}, "spec.secret.name"),
    (
        "reserved annotation",
        {"secret": {"name": "s", "template": {"annotations": {"agenttoken.dev/x": "1"}}}},
        "reserved for the operator",
    ),
    (
        "duplicate key names",
        {"secret": {"name": "s", "keys": {"token": "t", "bundle": "t"}}},
        "three different keys",
    ),
    ("unknown issuer kind", {"issuerRef": {"kind": "Issuer", "name": "x"}}, "spec.issuerRef.kind"),
    (
        "revocation without suspension",
        {"unused": {"revokeAfter": "1h"}},
        "revokeAfter needs spec.unused.suspendAfter",
    ),
    ("unused period not a duration", {"unused": {"markAfter": "a week"}}, "spec.unused.markAfter"),
    # Absurd input: beyond int64 nanoseconds, or beyond each field's own limit.
    ("absurd ttl", {"ttl": "99999999h"}, "ttl must be between 60s and 168h"),
    ("ttl in days", {"ttl": "7d"}, "ttl must be between 60s and 168h"),
    ("absurd renewBefore", {"renewBefore": "99999999h"}, "renewBefore must be at most 168h"),
    (
        "renewBefore beyond its limit",
        {"ttl": "168h", "renewBefore": "169h"},
        "renewBefore must be at most 168h",
    ),
    (
        "absurd rollout grace",
        {"rollout": {"revokeAfter": "99999999h"}},
        "rollout.revokeAfter must be at most 168h",
    ),
    (
        "absurd verify timeout",
        {"verify": {"url": "https://api.example.com", "timeout": "99999999999s"}},
        "verify.timeout must be at most 30s",
    ),
    ("absurd markAfter", {"unused": {"markAfter": "99999999h"}}, "unused.markAfter must be at most 8760h"),
    (
        "absurd suspendAfter",
        {"unused": {"suspendAfter": "9999999999m"}},
        "unused.suspendAfter must be at most 8760h",
    ),
    (
        "absurd unused revokeAfter",
        {"unused": {"suspendAfter": "1h", "revokeAfter": "99999999h"}},
        "unused.revokeAfter must be at most 8760h",
    ),
    ("huge percentage", {"renewBeforePercentage": 99999999999}, "spec.renewBeforePercentage"),
    (
        "huge status code",
        {"verify": {"url": "https://api.example.com", "expectedStatus": [99999999999]}},
        "spec.verify.expectedStatus[0]",
    ),
]


@pytest.mark.parametrize(("case", "change", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifests_are_rejected(
    kube: Kube, crds: Path, namespace: str, case: str, change: dict[str, Any], message: str
) -> None:
    body = json.loads(agenttoken("bad", "bad-token"))
    for field, value in change.items():
        if value is None:
            body["spec"].pop(field)
        else:
            body["spec"][field] = value
    result = kube.apply(json.dumps(body), "-n", namespace, "--dry-run=server", check=False)
    assert result.returncode != 0, f"{case}: accepted"
    assert message in result.stderr, result.stderr
    assert_no_cel_failure(result.stderr)


def assert_no_cel_failure(stderr: str) -> None:
    """A rule that errs instead of answering shows CEL internals, not the rule's message."""
    for internal in ("type conversion", "no such overload"):
        assert internal not in stderr, stderr


ISSUER_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("absurd minTTL", {"minTTL": "99999999h"}, "policy.minTTL must be at most 168h"),
    ("absurd maxTTL", {"maxTTL": "99999999999s"}, "policy.maxTTL must be at most 168h"),
    ("maxTTL beyond the longest ttl", {"maxTTL": "169h"}, "policy.maxTTL must be at most 168h"),
    ("minTTL not a duration", {"minTTL": "five minutes"}, "policy.minTTL must be at most 168h"),
    ("absurd bounds together", {"minTTL": "99999999h", "maxTTL": "1h"}, "policy.minTTL must be at most 168h"),
]


@pytest.mark.parametrize("kind", ["TokenIssuer", "ClusterTokenIssuer"])
@pytest.mark.parametrize(("case", "policy", "message"), ISSUER_INVALID, ids=[c[0] for c in ISSUER_INVALID])
def test_absurd_issuer_policies_are_rejected_with_the_rule_message(
    kube: Kube, crds: Path, namespace: str, kind: str, case: str, policy: dict[str, Any], message: str
) -> None:
    body = {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "absurd"},
        "spec": {"builtin": {}, "policy": policy},
    }
    result = kube.apply(json.dumps(body), "-n", namespace, "--dry-run=server", check=False)
    assert result.returncode != 0, f"{case}: accepted"
    assert message in result.stderr, result.stderr
    assert_no_cel_failure(result.stderr)


def test_secret_name_is_immutable(kube: Kube, crds: Path, namespace: str) -> None:
    kube.apply(agenttoken("fixed", "fixed-token"), "-n", namespace)
    result = kube.kubectl(
        "patch", "agenttoken", "fixed", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"secret": {"name": "other"}}}), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "secret.name is immutable" in result.stderr


def test_explain_describes_fields(kube: Kube, crds: Path) -> None:
    out = kube.kubectl("explain", "agenttoken.spec.renewBefore").stdout
    assert "Renew when this much lifetime is left" in out
    for field, text in [
        ("agenttoken.spec.rollout.targets.selector.matchLabels", "a workload must all carry"),
        ("agenttoken.spec.verify.caBundleRef.kind", "ConfigMap or Secret"),
        ("agenttoken.spec.verify.caBundleRef.name", "Name of the ConfigMap or Secret"),
        ("clustertokenissuer.spec.oauth2.clientID", "client_id"),
    ]:
        assert text in kube.kubectl("explain", field).stdout, field


def test_metrics_report_tokens(kube: Kube, operator: OperatorProcess) -> None:
    text = operator.metrics()
    assert "agenttoken_token_expiration_timestamp_seconds{" in text
    assert re.search(r'agenttoken_renewals_total\{result="success"\} [1-9]', text), textwrap.shorten(
        text, 300
    )
