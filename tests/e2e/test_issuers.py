"""Issuers and least-privilege policy: TokenIssuer, ClusterTokenIssuer, kubernetes, webhook."""

from __future__ import annotations

import base64
import http.server
import json
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_lifecycle import agenttoken, secret_data, status, wait_ready


def issuer(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {"apiVersion": "agenttoken.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    )


def ready_condition(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return next((c for c in status(kube, namespace, name).get("conditions", []) if c["type"] == "Ready"), {})


def wait_reason(kube: Kube, namespace: str, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        f"{name} to report {reason}",
        lambda: (c := ready_condition(kube, namespace, name)).get("reason") == reason and c,
        timeout=timeout,
    )


STRICT_POLICY: dict[str, Any] = {
    "allowedScopes": ["tickets:*", "read"],
    "allowedAudiences": ["https://tickets.example.com", "https://*.internal.example.com"],
    "minTTL": "5m",
    "maxTTL": "2h",
    "namespaceSelector": {"matchLabels": {"agents": "allowed"}},
}


def issuer_ready(kube: Kube, kind: str, name: str, namespace: str | None = None) -> None:
    where = ["-n", namespace] if namespace else []
    wait_for(
        f"{kind} {name} to be Ready",
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in ((kube.get_json(kind.lower(), name, *where) or {}).get("status") or {}).get(
                "conditions", []
            )
        ),
        timeout=30,
    )


def admission_denies(kube: Kube, manifest: str, namespace: str, text: str, timeout: float = 15) -> str:
    """`kubectl apply` is refused by the admission policy with `text` (polled: a new policy or
    param takes the apiserver a moment to see)."""

    def denied() -> str | None:
        result = kube.apply(manifest, "-n", namespace, check=False)
        if result.returncode == 0:  # admitted before the policy saw the issuer: undo, try again
            kube.kubectl("delete", "-f", "-", "-n", namespace, "--wait=false", input=manifest, check=False)
            return None
        assert "ValidatingAdmissionPolicy" in result.stderr, result.stderr
        return result.stderr

    stderr = wait_for("the admission policy to deny", denied, timeout=timeout, interval=1)
    assert text in stderr, stderr
    return stderr


@pytest.fixture
def strict_issuer(kube: Kube, operator: OperatorProcess) -> Iterator[str]:
    """A ClusterTokenIssuer with a tight policy and a namespace selector."""
    name = f"strict-{uuid.uuid4().hex[:6]}"
    kube.apply(issuer("ClusterTokenIssuer", name, {"builtin": {}, "policy": STRICT_POLICY}))
    issuer_ready(kube, "ClusterTokenIssuer", name)
    yield name
    kube.kubectl("delete", "clustertokenissuer", name, "--wait=false", check=False)


POLICY_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, spec changes, expected reason, expected text in the message)
    (
        "scope outside glob",
        {"scopes": ["billing:read"]},
        "PolicyViolation",
        "scope 'billing:read' is not allowed",
    ),
    ("scope not exact", {"scopes": ["reader"]}, "PolicyViolation", "scope 'reader' is not allowed"),
    ("wildcard scope beyond the glob", {"scopes": ["*"]}, "PolicyViolation", "scope '*' is not allowed"),
    ("one bad scope among good", {"scopes": ["tickets:read", "admin"]}, "PolicyViolation", "scope 'admin'"),
    (
        "audience not allowed",
        {"audience": ["https://billing.example.com"]},
        "PolicyViolation",
        "audience 'https://billing.example.com'",
    ),
    (
        "audience outside glob",
        {"audience": ["https://a.external.example.com"]},
        "PolicyViolation",
        "audience 'https://a.external.example.com'",
    ),
    ("ttl above max", {"ttl": "3h"}, "PolicyViolation", "ttl 3h is above the issuer's maximum 2h"),
    ("ttl below min", {"ttl": "2m"}, "PolicyViolation", "ttl 2m is below the issuer's minimum 5m"),
]


@pytest.mark.parametrize(("case", "change", "reason", "text"), POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
def test_cluster_issuer_policy(
    kube: Kube, strict_issuer: str, namespace: str, case: str, change: dict[str, Any], reason: str, text: str
) -> None:
    kube.kubectl("label", "namespace", namespace, "agents=allowed")
    spec = {"audience": ["https://tickets.example.com"], "scopes": ["tickets:read"], "ttl": "1h"}
    spec |= change
    # At admission: the apiserver refuses it with the same words the operator would use.
    manifest = agenttoken(
        "asker", "asker-token", issuerRef={"kind": "ClusterTokenIssuer", "name": strict_issuer}, **spec
    )
    admission_denies(kube, manifest, namespace, f"ClusterTokenIssuer '{strict_issuer}': {text}")
    # At reconcile: an issuer that appears after the token (admission had nothing to check).
    late = f"{strict_issuer}-late"
    kube.apply(
        agenttoken("asker", "asker-token", issuerRef={"kind": "ClusterTokenIssuer", "name": late}, **spec),
        "-n",
        namespace,
    )
    wait_reason(kube, namespace, "asker", "IssuerNotFound")
    kube.apply(issuer("ClusterTokenIssuer", late, {"builtin": {}, "policy": STRICT_POLICY}))
    try:
        cond = wait_reason(kube, namespace, "asker", reason)
        assert cond["status"] == "False"
        assert text in cond["message"], cond["message"]
        assert secret_data(kube, namespace, "asker-token") is None, "a request outside policy mints nothing"
        kube.wait_event(namespace, "asker", reason, warning=True)
    finally:
        kube.kubectl("delete", "clustertokenissuer", late, "--wait=false", check=False)


def test_cluster_issuer_namespace_selector(kube: Kube, strict_issuer: str, namespace: str) -> None:
    spec = {"audience": ["https://tickets.example.com"], "scopes": ["tickets:read"], "ttl": "1h"}
    ref = {"kind": "ClusterTokenIssuer", "name": strict_issuer}
    manifest = agenttoken("outsider", "outsider-token", issuerRef=ref, **spec)
    admission_denies(
        kube,
        manifest,
        namespace,
        f"ClusterTokenIssuer '{strict_issuer}': namespace '{namespace}' is not selected by the issuer (agents=allowed)",
    )
    # Selecting the namespace lets the same request through.
    kube.kubectl("label", "namespace", namespace, "agents=allowed")
    kube.apply(manifest, "-n", namespace)
    wait_ready(kube, namespace, "outsider")
    assert secret_data(kube, namespace, "outsider-token") is not None
    # Unselecting it later is for the reconcile-time check to catch (admission saw a valid request):
    # the operator watches namespace labels, so the label change alone re-checks the token.
    kube.kubectl("label", "namespace", namespace, "agents-")
    cond = wait_reason(kube, namespace, "outsider", "PolicyViolation")
    assert f"namespace '{namespace}' is not selected by the issuer (agents=allowed)" in cond["message"]


def test_admission_policy_ignores_other_issuers_and_metadata_edits(
    kube: Kube, strict_issuer: str, namespace: str
) -> None:
    """Only the named issuer's policy applies; a token of another issuer with the same spec passes,
    and so do label edits on a token whose issuer was tightened afterwards."""
    # The apiserver type-checked every CEL expression against the CRD schemas without a warning.
    for kind in ("tokenissuer", "clustertokenissuer"):
        name = f"agent-token-operator-{kind}-policy"
        checked = wait_for(
            f"type checking of {name}",
            lambda name=name: (
                (vap := kube.get_json("validatingadmissionpolicy", name) or {})
                .get("status", {})
                .get("observedGeneration")
                == vap["metadata"]["generation"]
                and vap["status"]
            ),
            timeout=60,
        )
        assert not checked.get("typeChecking", {}).get("expressionWarnings"), checked
    spec = {"audience": ["https://billing.example.com"], "scopes": ["billing:write"], "ttl": "3h"}
    kube.apply(agenttoken("other", "other-token", **spec), "-n", namespace)  # the default builtin issuer
    wait_ready(kube, namespace, "other")
    loose = f"{strict_issuer}-loose"
    kube.apply(issuer("ClusterTokenIssuer", loose, {"builtin": {}}))
    try:
        issuer_ready(kube, "ClusterTokenIssuer", loose)
        ref = {"kind": "ClusterTokenIssuer", "name": loose}
        kube.apply(agenttoken("tight", "tight-token", issuerRef=ref, **spec), "-n", namespace)
        wait_ready(kube, namespace, "tight")
        kube.apply(issuer("ClusterTokenIssuer", loose, {"builtin": {}, "policy": {"maxTTL": "1h"}}))
        kube.kubectl("label", "agenttoken", "tight", "-n", namespace, "team=a")  # metadata only: admitted
        cond = wait_reason(kube, namespace, "tight", "PolicyViolation")
        assert "ttl 3h is above the issuer's maximum 1h" in cond["message"]
        # Changing the spec now meets the tightened policy at admission.
        changed = agenttoken("tight", "tight-token", issuerRef=ref, **(spec | {"ttl": "2h"}))
        admission_denies(kube, changed, namespace, "ttl 2h is above the issuer's maximum 1h")
    finally:
        kube.kubectl("delete", "clustertokenissuer", loose, "--wait=false", check=False)


def test_within_policy_mints(kube: Kube, strict_issuer: str, namespace: str) -> None:
    kube.kubectl("label", "namespace", namespace, "agents=allowed")
    spec = {"audience": ["https://x.internal.example.com"], "scopes": ["tickets:read", "read"], "ttl": "1h"}
    kube.apply(
        agenttoken(
            "fits", "fits-token", issuerRef={"kind": "ClusterTokenIssuer", "name": strict_issuer}, **spec
        ),
        "-n",
        namespace,
    )
    wait_ready(kube, namespace, "fits")


def test_namespaced_issuer_serves_only_its_namespace(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    other = f"{namespace}-b"
    kube.kubectl("create", "namespace", other)
    try:
        policy = {"allowedScopes": ["read"], "maxTTL": "1h"}
        kube.apply(issuer("TokenIssuer", "local", {"builtin": {}, "policy": policy}), "-n", other)
        ref = {"kind": "TokenIssuer", "name": "local"}
        kube.apply(agenttoken("borrower", "borrower-token", issuerRef=ref), "-n", namespace)
        cond = wait_reason(kube, namespace, "borrower", "IssuerNotFound")
        assert f"TokenIssuer 'local' not found in namespace {namespace}" in cond["message"]
        # In its own namespace it serves, within its policy.
        kube.apply(agenttoken("owner", "owner-token", issuerRef=ref), "-n", other)
        wait_ready(kube, other, "owner")
        admission_denies(
            kube,
            agenttoken("greedy", "greedy-token", issuerRef=ref, scopes=["write"]),
            other,
            "TokenIssuer 'local': scope 'write' is not allowed by the issuer (allowed: read)",
        )
        # The same issuer name in another namespace is not this namespace's param.
        kube.apply(agenttoken("greedy", "greedy-token", issuerRef=ref, scopes=["write"]), "-n", namespace)
        wait_reason(kube, namespace, "greedy", "IssuerNotFound")
        kube.apply(
            agenttoken("missing", "missing-token", issuerRef={"kind": "ClusterTokenIssuer", "name": "nope"}),
            "-n",
            other,
        )
        assert (
            "ClusterTokenIssuer 'nope' not found"
            in wait_reason(kube, other, "missing", "IssuerNotFound")["message"]
        )
    finally:
        kube.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_issuer_admission_rules(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    bad = [
        ({"builtin": {}, "webhook": {"url": "https://x"}}, "exactly one issuer type must be set"),
        ({"policy": {}}, "exactly one issuer type must be set"),
        ({"webhook": {"url": "http://example.com/mint"}}, "webhook.url must be https"),
        (
            {"builtin": {}, "policy": {"minTTL": "2h", "maxTTL": "1h"}},
            "policy.minTTL must not exceed policy.maxTTL",
        ),
        ({"kubernetes": {}}, "serviceAccountName"),
        (
            {"oauth2": {"clientID": "x", "clientSecretRef": {"name": "s"}}},
            "oauth2 needs tokenURL or issuerURL",
        ),
        (
            {
                "oauth2": {
                    "tokenURL": "http://idp.example.com/token",
                    "clientID": "x",
                    "clientSecretRef": {"name": "s"},
                }
            },
            "oauth2.tokenURL must be https",
        ),
    ]
    for spec, message in bad:
        result = kube.apply(
            issuer("TokenIssuer", "bad", spec), "-n", namespace, "--dry-run=server", check=False
        )
        assert result.returncode != 0, spec
        assert message in result.stderr, result.stderr


def test_kubernetes_issuer_tokens_pass_tokenreview_until_the_secret_goes(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.kubectl("create", "serviceaccount", "agent", "-n", namespace)
    kube.apply(
        issuer(
            "TokenIssuer",
            "sa",
            {"kubernetes": {"serviceAccountName": "agent", "audiences": ["https://tickets.example.com"]}},
        ),
        "-n",
        namespace,
    )
    kube.apply(
        agenttoken("satoken", "satoken-token", issuerRef={"kind": "TokenIssuer", "name": "sa"}, ttl="15m"),
        "-n",
        namespace,
    )
    wait_ready(kube, namespace, "satoken")
    data = secret_data(kube, namespace, "satoken-token")
    assert data is not None
    st = status(kube, namespace, "satoken")
    # The apiserver decides the lifetime; status trusts its expirationTimestamp.
    assert data["expires-at"] == st["expiresAt"]

    def review(audience: str) -> dict[str, Any]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": data["token"], "audiences": [audience]},
        }
        out = kube.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(body))
        result: dict[str, Any] = json.loads(out.stdout)["status"]
        return result

    ok = review("https://tickets.example.com")
    assert ok["authenticated"] is True
    assert ok["user"]["username"] == f"system:serviceaccount:{namespace}:agent"
    assert review("https://other.example.com").get("authenticated") is not True
    # Bound to the Secret: deleting it invalidates the token (and the operator issues a new one).
    kube.kubectl("delete", "secret", "satoken-token", "-n", namespace)
    wait_for(
        "the bound token to be rejected",
        lambda: review("https://tickets.example.com").get("authenticated") is not True,
        timeout=30,
    )
    wait_for(
        "a new token",
        lambda: status(kube, namespace, "satoken").get("revision", 0) >= st["revision"] + 1,
        timeout=30,
    )


class Minter(http.server.BaseHTTPRequestHandler):
    mode = "ok"  # ok: an opaque token; jwt: a JWT whose `sub` is `subject` (default the requested one)
    requests: list[dict[str, Any]] = []
    expected_bearer = "s3cret-bearer"
    subject: str | None = None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Minter.requests.append({"body": body, "auth": self.headers.get("Authorization")})
        if Minter.mode == "slow":
            time.sleep(3)
            return  # the client is long gone; answering would only hit a closed socket
        if Minter.mode == "error":
            self.send_response(503)
            self.end_headers()
            return
        if self.headers.get("Authorization") != f"Bearer {Minter.expected_bearer}":
            self.send_response(401)
            self.end_headers()
            return
        token = "wh." + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if Minter.mode == "jwt":  # unsigned for the test: the operator reads, never verifies, it
            claims = {
                "sub": Minter.subject or body["subject"],
                "aud": body["audience"],
                "jti": uuid.uuid4().hex,
            }
            token = ".".join(
                base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
                for part in ({"alg": "HS256", "typ": "JWT"}, claims, {"sig": uuid.uuid4().hex})
            )
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + body["ttlSeconds"]))
        payload = json.dumps(
            {"token": token, "expiresAt": expires, "tokenId": f"wh-{uuid.uuid4().hex[:8]}"}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def minter() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Minter)
    # Join request threads on close, so no socket outlives the test (warnings are errors).
    server.daemon_threads, server.block_on_close = False, True
    Minter.mode, Minter.requests, Minter.subject = "ok", [], None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/mint"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_webhook_issuer(kube: Kube, operator: OperatorProcess, namespace: str, minter: str) -> None:
    kube.kubectl(
        "create",
        "secret",
        "generic",
        "minter-credentials",
        "-n",
        namespace,
        f"--from-literal=token={Minter.expected_bearer}",
    )
    spec = {
        "webhook": {"url": minter, "timeoutSeconds": 1, "authSecretRef": {"name": "minter-credentials"}},
        "policy": {"allowedScopes": ["tickets:*"]},
    }
    kube.apply(issuer("TokenIssuer", "minter", spec), "-n", namespace)
    ref = {"kind": "TokenIssuer", "name": "minter"}
    kube.apply(
        agenttoken("hooked", "hooked-token", issuerRef=ref, scopes=["tickets:read"], ttl="10m"),
        "-n",
        namespace,
    )
    wait_ready(kube, namespace, "hooked")
    data = secret_data(kube, namespace, "hooked-token")
    assert data is not None
    assert data["token"].startswith("wh.")
    sent = Minter.requests[-1]["body"]
    assert sent == {
        "namespace": namespace,
        "name": "hooked",
        "uid": kube.get_json("agenttoken", "hooked", "-n", namespace)["metadata"]["uid"],  # type: ignore[index]
        "subject": f"agenttoken:{namespace}:hooked",
        "scopes": ["tickets:read"],
        "audience": ["https://api.example.com"],
        "ttlSeconds": 600,
    }
    assert status(kube, namespace, "hooked")["tokenId"].startswith("wh-")

    # 5xx and timeouts: the old token stays, the failure is reported with its cause.
    for mode, text in (("error", "answered HTTP 503"), ("slow", "did not answer within 1s")):
        Minter.mode = mode
        before = status(kube, namespace, "hooked")
        kube.kubectl(
            "annotate",
            "agenttoken",
            "hooked",
            "-n",
            namespace,
            f"agenttoken.dev/rotate={mode}",
            "--overwrite",
        )
        failing = wait_for(
            f"the {mode} failure",
            lambda before=before: (
                (s := status(kube, namespace, "hooked")).get("failedAttempts", 0)
                > before.get("failedAttempts", 0)
                and s
            ),
            timeout=30,
        )
        reconciling = next(c for c in failing["conditions"] if c["type"] == "Reconciling")
        assert text in reconciling["message"]
        assert failing["tokenId"] == before["tokenId"]
        assert secret_data(kube, namespace, "hooked-token") == data
    Minter.mode = "ok"
    kube.kubectl(
        "annotate", "agenttoken", "hooked", "-n", namespace, "agenttoken.dev/rotate=recovered", "--overwrite"
    )
    wait_for("recovery", lambda: status(kube, namespace, "hooked").get("failedAttempts") == 0, timeout=30)
    # The bearer credential appears nowhere but in its Secret.
    log = operator.log_text()
    events = kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    for text in (log, events, json.dumps(status(kube, namespace, "hooked"))):
        assert Minter.expected_bearer not in text
        assert data["token"] not in text


def test_issuer_status_reports_missing_credentials(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    spec = {"webhook": {"url": "https://minter.invalid/mint", "authSecretRef": {"name": "absent"}}}
    kube.apply(issuer("TokenIssuer", "unready", spec), "-n", namespace)
    cond = wait_for(
        "the issuer to report its missing Secret",
        lambda: next(
            (
                c
                for c in (
                    (kube.get_json("tokenissuer", "unready", "-n", namespace) or {}).get("status") or {}
                ).get("conditions", [])
                if c["type"] == "Ready" and c["status"] == "False"
            ),
            None,
        ),
        timeout=30,
    )
    assert cond["reason"] == "CredentialsNotFound"
    assert f"Secret {namespace}/absent" in cond["message"]


JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


def lifetime_of(st: dict[str, Any]) -> float:
    return time.mktime(time.strptime(st["expiresAt"], "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(
        time.strptime(st["issuedAt"], "%Y-%m-%dT%H:%M:%SZ")
    )


def refused(kube: Kube, namespace: str, name: str, issuer_name: str, code: str, **spec: Any) -> str:
    """An AgentToken of `issuer_name` that the provider refuses: the reason carries the OAuth
    error code (regex `code`), nothing is minted. Returns the message."""
    ref = {"kind": "TokenIssuer", "name": issuer_name}
    manifest = agenttoken(name, f"{name}-token", issuerRef=ref, scopes=["tickets:read"], **spec)
    kube.apply(manifest, "-n", namespace)
    message = str(wait_reason(kube, namespace, name, "IssueFailed")["message"])
    assert re.search(rf"refused: {code}$", message), message
    assert secret_data(kube, namespace, f"{name}-token") is None
    return message


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from . import keycloak as kc

    server = kc.start(tmp_path_factory.mktemp("keycloak"))
    yield server
    server.stop()


def test_oauth2_issuer_against_keycloak(
    kube: Kube, operator: OperatorProcess, namespace: str, keycloak: Any
) -> None:
    from .keycloak import CLIENT_ID, CLIENT_SECRET

    kube.kubectl(
        "create",
        "secret",
        "generic",
        "kc-client",
        "-n",
        namespace,
        f"--from-literal=clientSecret={CLIENT_SECRET}",
    )
    kube.kubectl(
        "create",
        "secret",
        "generic",
        "kc-wrong",
        "-n",
        namespace,
        "--from-literal=clientSecret=not-the-secret",
    )
    for name, secret in (("keycloak", "kc-client"), ("keycloak-wrong", "kc-wrong")):
        spec = {
            "oauth2": {
                "issuerURL": keycloak.issuer,
                "clientID": CLIENT_ID,
                "clientSecretRef": {"name": secret},
            },
            "policy": {"allowedScopes": ["tickets:*"]},
        }
        kube.apply(issuer("TokenIssuer", name, spec), "-n", namespace)
    kube.apply(
        agenttoken(
            "idp", "idp-token", issuerRef={"kind": "TokenIssuer", "name": "keycloak"}, scopes=["tickets:read"]
        ),
        "-n",
        namespace,
    )
    wait_ready(kube, namespace, "idp", timeout=60)
    data = secret_data(kube, namespace, "idp-token")
    assert data is not None
    claims = claims_of(data["token"])
    assert claims["iss"] == keycloak.issuer
    assert claims["azp"] == CLIENT_ID
    assert "tickets:read" in claims["scope"].split()
    st = status(kube, namespace, "idp")
    assert st["tokenId"] == claims["jti"]
    # The provider's expires_in (60 s in this realm) decides the lifetime, not spec.ttl (1h).
    assert 55 <= lifetime_of(st) <= 65
    renewed = wait_for(
        "a renewal before expires_in",
        lambda: (s := status(kube, namespace, "idp"))["revision"] >= 2 and s,
        timeout=60,
    )
    assert renewed["tokenId"] != st["tokenId"]

    # A wrong client secret: the OAuth error code is the reason, the secret appears nowhere.
    # RFC 6749 says invalid_client; Keycloak answers unauthorized_client. Either way: the OAuth code.
    refused(kube, namespace, "idp-bad", "keycloak-wrong", "(invalid_client|unauthorized_client)")
    for text in (operator.log_text(), kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout):
        assert CLIENT_SECRET not in text
        assert data["token"] not in text
    metrics = operator.metrics()
    assert re.search(
        rf'agenttoken_issuer_requests_total\{{kind="TokenIssuer",name="keycloak",namespace="{namespace}",result="success",type="oauth2"\}} [1-9]',
        metrics,
    )
    assert re.search(
        rf'agenttoken_issuer_requests_total\{{kind="TokenIssuer",name="keycloak-wrong",namespace="{namespace}",result="failure",type="oauth2"\}} [1-9]',
        metrics,
    )


def test_oauth2_private_key_jwt_token_exchange_and_jwt_bearer_against_keycloak(
    kube: Kube, operator: OperatorProcess, namespace: str, keycloak: Any
) -> None:
    """No client secret at all: Keycloak verifies the client assertion against the operator's
    client-assertion JWKS and the subject tokens against its access-token JWKS (client "Signed JWT"
    authenticator, an identity provider with the JWT Authorization Grant switched on, a legacy
    token-exchange permission). The two key sets never share a key."""
    from . import keycloak as kc

    with urllib.request.urlopen(f"{operator.base_url}/.well-known/openid-configuration", timeout=5) as resp:
        discovery = json.loads(resp.read())
    kc.trust_operator(
        keycloak,
        alias="operator",
        client_id="agent-signed",
        issuer=discovery["issuer"],
        jwks_url=f"{operator.base_url}/jwks.json",
        client_jwks_url=f"{operator.base_url}/client-jwks.json",
    )
    access_kids, assertion_kids = (
        {
            k["kid"]
            for k in json.loads(urllib.request.urlopen(f"{operator.base_url}/{doc}", timeout=5).read())[
                "keys"
            ]
        }
        for doc in ("jwks.json", "client-jwks.json")
    )
    assert access_kids
    assert assertion_kids
    assert not access_kids & assertion_kids, "an assertion key is also an access-token key"
    common = {
        "issuerURL": keycloak.issuer,
        "clientID": "agent-signed",
        "clientAuthMethod": "private_key_jwt",
    }
    grants = {
        "signed": {},
        "bearer": {"grant": "jwt_bearer"},
        "exchange": {
            "grant": "token_exchange",
            "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
        },
    }
    for name, extra in grants.items():
        spec = {"oauth2": common | extra, "policy": {"allowedScopes": ["tickets:*"]}}
        kube.apply(issuer("TokenIssuer", name, spec), "-n", namespace)
        if name != "signed":  # the subject token's `sub` is the AgentToken's subject: link it
            kc.link_user(keycloak, alias="operator", subject=f"agenttoken:{namespace}:{name}-agent")
    for name in grants:
        kube.apply(
            agenttoken(
                f"{name}-agent",
                f"{name}-token",
                issuerRef={"kind": "TokenIssuer", "name": name},
                scopes=["tickets:read"],
            ),
            "-n",
            namespace,
        )
    users = {
        "signed": "service-account-agent-signed",
        "bearer": f"linked-agenttoken-{namespace}-bearer-agent",
        "exchange": f"linked-agenttoken-{namespace}-exchange-agent",
    }
    tokens = []
    for name, user in users.items():
        wait_ready(kube, namespace, f"{name}-agent", timeout=60)
        data = secret_data(kube, namespace, f"{name}-token")
        assert data is not None
        tokens.append(data["token"])
        claims = claims_of(data["token"])
        assert claims["iss"] == keycloak.issuer
        assert claims["azp"] == "agent-signed"
        assert claims["preferred_username"] == user, name
        assert "tickets:read" in claims["scope"].split()
        st = status(kube, namespace, f"{name}-agent")
        assert st["tokenId"] == claims["jti"]
        assert 55 <= lifetime_of(st) <= 65, "Keycloak's expires_in decides"

    # A subject Keycloak does not know: refused with the OAuth error code, nothing minted.
    refused(kube, namespace, "stranger", "bearer", r"invalid_\w+")
    # spec.subject cannot borrow a linked identity: another AgentToken's subject is refused at
    # admission (the issuer allows no other subjects), and the subject token names the AgentToken
    # itself whatever spec.subject says.
    impostor = agenttoken(
        "impostor",
        "impostor-token",
        issuerRef={"kind": "TokenIssuer", "name": "bearer"},
        scopes=["tickets:read"],
        subject=f"agenttoken:{namespace}:bearer-agent",
    )
    admission_denies(
        kube, impostor, namespace, f"subject 'agenttoken:{namespace}:bearer-agent' is not allowed"
    )
    # No client assertion, subject token or access token in the log, Events or status.
    log = operator.log_text()
    assert not JWT_SHAPE.search(log), "a JWT appears in the operator log"
    events = kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    statuses = kube.kubectl("get", "agenttokens", "-n", namespace, "-o", "json").stdout
    for text in (events, statuses):
        assert not JWT_SHAPE.search(text)


def test_oauth2_serviceaccount_subject_tokens_against_keycloak(
    kube: Kube, operator: OperatorProcess, namespace: str, keycloak: Any
) -> None:
    """Subject tokens from TokenRequest: Keycloak trusts the apiserver's ServiceAccount issuer
    (its JWKS given inline: the apiserver's JWKS endpoint needs authentication)."""
    from . import keycloak as kc

    sa_discovery = json.loads(kube.kubectl("get", "--raw", "/.well-known/openid-configuration").stdout)
    sa_jwks = json.loads(kube.kubectl("get", "--raw", "/openid/v1/jwks").stdout)
    kc.trust_operator(
        keycloak, alias="kubernetes", client_id="agent-sa", issuer=sa_discovery["issuer"], jwks=sa_jwks
    )
    kube.kubectl("create", "serviceaccount", "agent", "-n", namespace)
    kc.link_user(keycloak, alias="kubernetes", subject=f"system:serviceaccount:{namespace}:agent")
    kube.kubectl(
        "create",
        "secret",
        "generic",
        "kc-sa-client",
        "-n",
        namespace,
        f"--from-literal=clientSecret={kc.CLIENT_SECRET}",
    )
    for name, grant in (("sa-bearer", {"grant": "jwt_bearer"}), ("sa-exchange", {"grant": "token_exchange"})):
        spec = {
            "oauth2": {
                "issuerURL": keycloak.issuer,
                "clientID": "agent-sa",
                "clientSecretRef": {"name": "kc-sa-client"},
                "subjectToken": {"source": "serviceAccount", "serviceAccountName": "agent"},
                **grant,
            }
        }
        kube.apply(issuer("TokenIssuer", name, spec), "-n", namespace)
        kube.apply(
            agenttoken(
                name,
                f"{name}-token",
                issuerRef={"kind": "TokenIssuer", "name": name},
                scopes=["tickets:read"],
            ),
            "-n",
            namespace,
        )
    for name in ("sa-bearer", "sa-exchange"):
        wait_ready(kube, namespace, name, timeout=60)
        data = secret_data(kube, namespace, f"{name}-token")
        assert data is not None
        claims = claims_of(data["token"])
        assert claims["iss"] == keycloak.issuer
        assert claims["azp"] == "agent-sa"
        assert claims["preferred_username"] == f"linked-system-serviceaccount-{namespace}-agent"
    # A ServiceAccount Keycloak has no user for: the OAuth error code, nothing minted.
    kube.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    spec = {
        "oauth2": {
            "issuerURL": keycloak.issuer,
            "clientID": "agent-sa",
            "clientSecretRef": {"name": "kc-sa-client"},
            "grant": "jwt_bearer",
            "subjectToken": {"source": "serviceAccount", "serviceAccountName": "nobody"},
        }
    }
    kube.apply(issuer("TokenIssuer", "sa-nobody", spec), "-n", namespace)
    refused(kube, namespace, "nobody", "sa-nobody", r"invalid_\w+")
    assert not JWT_SHAPE.search(operator.log_text())
