"""Identity integrity end to end: subjects bounded by policy (at `kubectl apply` and at reconcile,
for built-in and webhook tokens), a Secret conflict that resolves itself, the longest name
Kubernetes admits, and an issuer stored with an absurd duration that the admission policy must
survive. Never a Secret holding a token with a forbidden `sub`."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import render_chart
from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_issuers import Minter, admission_denies, claims_of, issuer, issuer_ready, minter  # noqa: F401 (fixture)
from .test_lifecycle import agenttoken, secret_data, status, wait_ready

REPO = Path(__file__).resolve().parents[2]


def condition(kube: Kube, namespace: str, name: str, kind: str) -> dict[str, Any]:
    conditions = status(kube, namespace, name).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


def wait_stalled(kube: Kube, namespace: str, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        f"{name} to stall with {reason}",
        lambda: (
            (c := condition(kube, namespace, name, "Stalled")).get("status") == "True"
            and c.get("reason") == reason
            and c
        ),
        timeout=timeout,
    )


def subjects_in_secrets(kube: Kube, namespace: str) -> set[str]:
    """The `sub` of every JWT in every Secret of the namespace (what an API would be shown)."""
    secrets = kube.get_json("secrets", "-n", namespace) or {"items": []}
    subs = set()
    for secret in secrets["items"]:
        for value in (secret.get("data") or {}).values():
            text = base64.b64decode(value).decode(errors="replace")
            for token in re.findall(r"[\w-]+\.[\w-]+\.[\w-]*", text):
                try:
                    claims = claims_of(token)
                except ValueError:
                    continue
                if isinstance(claims, dict) and "sub" in claims:
                    subs.add(str(claims["sub"]))
    return subs


@pytest.fixture
def subject_issuer(kube: Kube, operator: OperatorProcess) -> Iterator[str]:
    """A ClusterTokenIssuer that grants one subject glob with a placeholder."""
    name = f"subjects-{uuid.uuid4().hex[:6]}"
    policy = {"allowedSubjects": ["spiffe://corp/ns/{namespace}/agent/*"], "allowedEnvironments": ["dev"]}
    kube.apply(issuer("ClusterTokenIssuer", name, {"builtin": {}, "policy": policy}))
    issuer_ready(kube, "ClusterTokenIssuer", name)
    yield name
    kube.kubectl("delete", "clustertokenissuer", name, "--wait=false", check=False)


def test_subject_matrix(kube: Kube, subject_issuer: str, namespace: str) -> None:
    ref = {"kind": "ClusterTokenIssuer", "name": subject_issuer}
    allowed: set[str] = set()

    # Canonical: the default issuer (no allowedSubjects) mints it.
    canonical = f"agenttoken:{namespace}:canon"
    kube.apply(agenttoken("canon", "canon-token", subject=canonical), "-n", namespace)
    wait_ready(kube, namespace, "canon")
    data = secret_data(kube, namespace, "canon-token")
    assert data is not None
    assert claims_of(data["token"])["sub"] == canonical
    allowed.add(canonical)

    # Another namespace's canonical subject: refused at apply, even by an issuer granting `*`.
    wide = f"{subject_issuer}-wide"
    kube.apply(issuer("ClusterTokenIssuer", wide, {"builtin": {}, "policy": {"allowedSubjects": ["*"]}}))
    try:
        wide_ref = {"kind": "ClusterTokenIssuer", "name": wide}
        issuer_ready(kube, "ClusterTokenIssuer", wide)
        # The default issuer allows only the canonical subject anyway...
        admission_denies(
            kube,
            agenttoken("borrow", "borrow-token", subject="agenttoken:payments:billing"),
            namespace,
            "subject 'agenttoken:payments:billing'",
        )
        # ... and an issuer that grants `*` cannot lift the rule, whatever the case.
        for subject in ("agenttoken:payments:billing", "AgentToken:Payments:billing"):
            admission_denies(
                kube,
                agenttoken("borrow", "borrow-token", issuerRef=wide_ref, subject=subject),
                namespace,
                f"subject '{subject}' names another namespace's AgentToken; no issuer may grant that",
            )
    finally:
        kube.kubectl("delete", "clustertokenissuer", wide, "--wait=false", check=False)

    # A glob the issuer allows, with {namespace} replaced by the token's own.
    glob_ok = f"spiffe://corp/ns/{namespace}/agent/ticket-bot"
    kube.apply(
        agenttoken("globbed", "globbed-token", issuerRef=ref, subject=glob_ok, environment="dev"),
        "-n",
        namespace,
    )
    wait_ready(kube, namespace, "globbed")
    data = secret_data(kube, namespace, "globbed-token")
    assert data is not None
    assert claims_of(data["token"])["sub"] == glob_ok
    allowed.add(glob_ok)

    # Outside the glob (another namespace in the placeholder's place): refused at apply...
    glob_bad = "spiffe://corp/ns/payments/agent/ticket-bot"
    admission_denies(
        kube,
        agenttoken("outside", "outside-token", issuerRef=ref, subject=glob_bad),
        namespace,
        f"subject '{glob_bad}' is not allowed by the issuer (allowed: agenttoken:{namespace}:outside, "
        f"spiffe://corp/ns/{namespace}/agent/*)",
    )
    # The same goes for the env claim an API may trust.
    admission_denies(
        kube,
        agenttoken("prod", "prod-token", issuerRef=ref, subject=glob_ok, environment="prod"),
        namespace,
        "environment 'prod' is not allowed by the issuer (allowed: dev)",
    )
    # ... and a plain name without any policy for it.
    admission_denies(
        kube, agenttoken("admin", "admin-token", subject="admin"), namespace, "subject 'admin' is not allowed"
    )

    # At reconcile: the same request to an issuer that appears after the token (admission had
    # no param to check it against) stalls with PolicyViolation and writes nothing.
    late = f"{subject_issuer}-late"
    late_ref = {"kind": "ClusterTokenIssuer", "name": late}
    kube.apply(agenttoken("outside", "outside-token", issuerRef=late_ref, subject=glob_bad), "-n", namespace)
    kube.apply(
        issuer(
            "ClusterTokenIssuer",
            late,
            {"builtin": {}, "policy": {"allowedSubjects": ["spiffe://corp/ns/{namespace}/agent/*"]}},
        )
    )
    try:
        stalled = wait_stalled(kube, namespace, "outside", "PolicyViolation")
        assert f"subject '{glob_bad}' is not allowed by the issuer" in stalled["message"]
        assert secret_data(kube, namespace, "outside-token") is None
    finally:
        kube.kubectl("delete", "clustertokenissuer", late, "--wait=false", check=False)

    assert subjects_in_secrets(kube, namespace) == allowed


def test_a_webhook_returning_a_forbidden_subject_is_refused(
    kube: Kube,
    operator: OperatorProcess,
    namespace: str,
    minter: str,  # noqa: F811 (test_issuers' fixture, imported above)
) -> None:
    kube.kubectl(
        "create", "secret", "generic", "minter-credentials", "-n", namespace,
        f"--from-literal=token={Minter.expected_bearer}",
    )  # fmt: skip
    Minter.mode = "jwt"
    webhook = {"url": minter, "timeoutSeconds": 5, "authSecretRef": {"name": "minter-credentials"}}
    kube.apply(issuer("TokenIssuer", "jwt-minter", {"webhook": webhook}), "-n", namespace)
    ref = {"kind": "TokenIssuer", "name": "jwt-minter"}
    # Honest: the webhook keeps the requested (canonical) subject.
    kube.apply(agenttoken("honest", "honest-token", issuerRef=ref, ttl="10m"), "-n", namespace)
    wait_ready(kube, namespace, "honest")
    data = secret_data(kube, namespace, "honest-token")
    assert data is not None
    assert claims_of(data["token"])["sub"] == f"agenttoken:{namespace}:honest"
    # Another subject than the issuer allows: refused, nothing written.
    Minter.subject = "agenttoken:payments:billing"
    kube.apply(agenttoken("mapped", "mapped-token", issuerRef=ref, ttl="10m"), "-n", namespace)
    stalled = wait_stalled(kube, namespace, "mapped", "PolicyViolation")
    assert "returned a token outside the issuer's policy" in stalled["message"]
    assert "agenttoken:payments:billing" in stalled["message"]
    assert secret_data(kube, namespace, "mapped-token") is None
    # A renewal that comes back with a forbidden subject leaves the good token in place.
    kube.kubectl(
        "annotate", "agenttoken", "honest", "-n", namespace, "agenttoken.dev/rotate=1", "--overwrite"
    )
    wait_stalled(kube, namespace, "honest", "PolicyViolation")
    assert secret_data(kube, namespace, "honest-token") == data
    assert subjects_in_secrets(kube, namespace) == {f"agenttoken:{namespace}:honest"}


def test_a_secret_conflict_resolves_itself(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    """The conflicting Secret deleted: Ready within 10 s, with no edit of the AgentToken. Handed
    over by the label the message names: the same."""
    for name, remedy in (("deleted", "delete"), ("handed", "label")):
        secret = f"{name}-token"
        kube.kubectl("create", "secret", "generic", secret, "-n", namespace, "--from-literal=token=theirs")
        kube.apply(agenttoken(name, secret), "-n", namespace)
        stalled = wait_stalled(kube, namespace, name, "SecretConflict")
        assert "Delete that Secret" in stalled["message"]
        assert "choose another" not in stalled["message"]
        assert secret_data(kube, namespace, secret) == {"token": "theirs"}
        generation = (kube.get_json("agenttoken", name, "-n", namespace) or {})["metadata"]["generation"]
        if remedy == "delete":
            kube.kubectl("delete", "secret", secret, "-n", namespace)
        else:
            label = re.search(r"kubectl label secret \S+ (\S+=\S+)`", stalled["message"])
            assert label is not None, stalled["message"]
            kube.kubectl("label", "secret", secret, "-n", namespace, label.group(1))
        started = time.monotonic()
        wait_ready(kube, namespace, name, timeout=10)
        took = time.monotonic() - started
        print(f"\n{remedy}: Ready {took:.1f}s after the remedy")
        data = secret_data(kube, namespace, secret)
        assert data is not None
        assert claims_of(data["token"])["sub"] == f"agenttoken:{namespace}:{name}"
        after = kube.get_json("agenttoken", name, "-n", namespace) or {}
        assert after["metadata"]["generation"] == generation, "no edit of the AgentToken"
        assert condition(kube, namespace, name, "Stalled").get("status") != "True"


def test_the_longest_name_kubernetes_admits_gets_a_token(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    name = ("agent-" + "x" * 60 + ".") * 3 + "y" * 50  # 253 characters, a valid DNS subdomain
    name = name[:253].rstrip(".-")
    assert len(name) >= 250
    kube.apply(agenttoken(name, "long-token"), "-n", namespace)
    wait_ready(kube, namespace, name)
    secret = kube.get_json("secret", "long-token", "-n", namespace)
    assert secret is not None
    assert all(len(v) <= 63 for v in secret["metadata"]["labels"].values())
    assert secret["metadata"]["ownerReferences"][0]["name"] == name
    data = secret_data(kube, namespace, "long-token")
    assert data is not None
    assert claims_of(data["token"])["sub"] == f"agenttoken:{namespace}:{name}"
    # Its Events were posted (an Event name derived from it fits too).
    events = wait_for(
        "the TokenIssued Event",
        lambda: [
            e
            for e in (kube.get_json("events", "-n", namespace) or {"items": []})["items"]
            if e["involvedObject"]["name"] == name and e["reason"] == "TokenIssued"
        ],
        timeout=20,
    )
    assert len(events[0]["metadata"]["name"]) <= 253
    # A Secret event finds its long-named owner again: deleting the Secret restores it.
    before = status(kube, namespace, name)["revision"]
    kube.kubectl("delete", "secret", "long-token", "-n", namespace)
    wait_for(
        "the Secret restored", lambda: status(kube, namespace, name).get("revision", 0) > before, timeout=15
    )


def strict_copy(kube: Kube, namespace: str) -> str:
    """A copy of the chart's ClusterTokenIssuer policy with failurePolicy Fail, bound to
    `namespace` only: where the original (Ignore) would silently skip a rule that fails to
    evaluate, the copy refuses with the CEL error, so an error becomes visible. Returns its name."""
    docs = [
        d for d in yaml.safe_load_all(render_chart("--show-only", "templates/admission-policy.yaml")) if d
    ]
    original = "agent-token-operator-clustertokenissuer-policy"
    name = f"{original}-strict-{namespace}"
    policy = next(
        d for d in docs if d["kind"] == "ValidatingAdmissionPolicy" and d["metadata"]["name"] == original
    )
    binding = next(
        d
        for d in docs
        if d["kind"] == "ValidatingAdmissionPolicyBinding" and d["metadata"]["name"] == original
    )
    policy["metadata"]["name"] = name
    policy["spec"]["failurePolicy"] = "Fail"
    # One more rule, so a probe can tell when the copy is in force.
    policy["spec"]["validations"].append(
        {
            "expression": "!has(object.metadata.labels) || !('probe' in object.metadata.labels)",
            "message": "the strict copy is in force",
        }
    )
    binding["metadata"]["name"] = name
    binding["spec"]["policyName"] = name
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    kube.apply(yaml.safe_dump_all([policy, binding]))
    return name


def test_an_issuer_stored_with_an_absurd_duration_does_not_break_the_admission_policy(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """An issuer stored before the CRD bounded maxTTL may hold `99999999h`. Store one (through a
    copy of the CRD without the bound), then apply AgentTokens naming it, under a copy of the
    chart's policy that fails closed: its TTL rules skip the value instead of failing with a CEL
    type-conversion error, and its other rules still refuse."""
    crd_path = REPO / "crds" / "agenttoken.dev_clustertokenissuers.yaml"
    crd = yaml.safe_load(crd_path.read_text())
    loose = json.loads(json.dumps(crd))
    policy = loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "policy"
    ]
    policy.pop("x-kubernetes-validations", None)
    for field in ("minTTL", "maxTTL"):
        policy["properties"][field].pop("x-kubernetes-validations", None)
        policy["properties"][field].pop("maxLength", None)
    name = f"absurd-{uuid.uuid4().hex[:6]}"
    absurd = {
        "builtin": {},
        "policy": {"minTTL": "99999999h", "maxTTL": "99999999h", "allowedScopes": ["read"]},
    }
    kube.apply(json.dumps(loose), "--server-side", "--force-conflicts")
    try:
        wait_for(
            "the unbounded issuer to be stored",
            lambda: kube.apply(issuer("ClusterTokenIssuer", name, absurd), check=False).returncode == 0,
            timeout=30,
        )
    finally:
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_path))
    copy = strict_copy(kube, namespace)
    try:
        ref = {"kind": "ClusterTokenIssuer", "name": name}
        probe = json.loads(agenttoken("probe", "probe-token", issuerRef=ref))
        probe["metadata"]["labels"] = {"probe": "yes"}
        wait_for(
            "the strict copy to be in force",
            lambda: (
                "the strict copy is in force"
                in kube.apply(json.dumps(probe), "-n", namespace, "--dry-run=server", check=False).stderr
            ),
            timeout=60,
        )
        # The TTL rules skip what Go cannot parse: admitted, no CEL error, even failing closed.
        result = kube.apply(agenttoken("absurd", "absurd-token", issuerRef=ref), "-n", namespace, check=False)
        assert result.returncode == 0, result.stderr
        # The scope rule of the same policy still refuses, with its own message.
        denied = kube.apply(
            agenttoken("absurd-write", "absurd-write-token", issuerRef=ref, scopes=["write"]),
            "-n",
            namespace,
            check=False,
        )
        assert denied.returncode != 0
        assert "scope 'write' is not allowed by the issuer" in denied.stderr, denied.stderr
        # The operator judges the stored value itself (reconcile-time check).
        wait_for(
            "a verdict on the token",
            lambda: condition(kube, namespace, "absurd", "Ready").get("reason") not in (None, "Progressing"),
            timeout=30,
        )
    finally:
        kube.kubectl(
            "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", copy, check=False
        )
        kube.kubectl("delete", "clustertokenissuer", name, "--wait=false", check=False)
