"""Per-pod tokens (AgentToken `delivery: PerPod`) against a real control plane.

The pods are API objects without a kubelet (the e2e tier has none), so their projected
ServiceAccount tokens are minted exactly as a kubelet would: TokenRequest bound to the pod
(`kubectl create token --bound-object-kind Pod`). The apiserver's TokenReview then reports the
pod's name and uid, as it does for a kubelet-projected token.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from agenttoken_sdk.podtoken import PodTokenError, PodTokenSource, fetch_pod_token
from agenttoken_sdk.verify import VerificationError

from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_lifecycle import ISSUER, SEEN_TOKENS, status, wait_ready
from .test_revocation_list import AUDIENCE, http_verifier

ENDPOINT = f"{ISSUER}/token"  # the audience of the pods' projected tokens (token_endpoint)
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def perpod_agenttoken(name: str, service_account: str, **spec: Any) -> str:
    body = {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "metadata": {"name": name},
        "spec": {
            "audience": [AUDIENCE],
            "scopes": ["read", "write"],
            "ttl": "10m",
            "delivery": "PerPod",
            "serviceAccountName": service_account,
        }
        | spec,
    }
    return json.dumps(body)


def make_pod(kube: Kube, namespace: str, name: str, service_account: str) -> str:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": "agent:none"}],
        },
    }
    kube.apply(json.dumps(pod), "-n", namespace)
    obj = kube.get_json("pod", name, "-n", namespace)
    assert obj is not None
    return str(obj["metadata"]["uid"])


def projected(kube: Kube, namespace: str, sa: str, pod: str, uid: str, audience: str = ENDPOINT) -> str:
    """What the kubelet projects for a `serviceAccountToken` volume with this audience."""
    return kube.kubectl(
        "create", "token", sa, "-n", namespace, f"--audience={audience}", "--duration=10m",
        "--bound-object-kind=Pod", f"--bound-object-name={pod}", f"--bound-object-uid={uid}",
    ).stdout.strip()  # fmt: skip


def grant(operator: OperatorProcess, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    if form.get("assertion"):
        SEEN_TOKENS.add(form["assertion"])  # a credential too: the leak checks look for it
    request = urllib.request.Request(
        f"{operator.base_url}/token",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            body: dict[str, Any] = json.loads(r.read())
            SEEN_TOKENS.add(body["access_token"])
            return r.status, body
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def setup(kube: Kube, namespace: str, name: str = "agents") -> None:
    kube.kubectl("create", "serviceaccount", "agent", "-n", namespace)
    kube.apply(perpod_agenttoken(name, "agent"), "-n", namespace)
    wait_ready(kube, namespace, name)


def test_discovery_names_the_token_endpoint(operator: OperatorProcess) -> None:
    with urllib.request.urlopen(f"{operator.base_url}/.well-known/openid-configuration", timeout=5) as r:
        doc = json.loads(r.read())
    assert doc["token_endpoint"] == ENDPOINT
    assert JWT_BEARER in doc["grant_types_supported"]


def test_admission_refuses_perpod_nonsense(kube: Kube, namespace: str) -> None:
    no_sa = perpod_agenttoken("x", "agent")
    doc = json.loads(no_sa)
    del doc["spec"]["serviceAccountName"]
    out = kube.apply(json.dumps(doc), "-n", namespace, check=False)
    assert out.returncode != 0
    assert "needs serviceAccountName" in out.stderr
    with_secret = perpod_agenttoken("y", "agent", secret={"name": "s"})
    out = kube.apply(with_secret, "-n", namespace, check=False)
    assert out.returncode != 0
    assert "writes no Secret" in out.stderr


def test_pod_gets_its_own_token_without_a_secret(
    kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    setup(kube, namespace)
    uids = [make_pod(kube, namespace, f"agent-{i}", "agent") for i in range(2)]
    ids = set()
    for i, uid in enumerate(uids):
        code, body = grant(
            operator,
            {"grant_type": JWT_BEARER, "assertion": projected(kube, namespace, "agent", f"agent-{i}", uid)},
        )
        assert code == 200, body
        assert body["token_type"] == "Bearer"
        assert body["scope"] == "read write"
        assert body["expires_in"] == 600
        claims = http_verifier(operator).verify(body["access_token"]).raw
        assert claims["kubernetes.io"]["pod"] == {"name": f"agent-{i}", "uid": uid}
        assert claims["kubernetes.io"]["serviceaccount"]["name"] == "agent"
        ids.add(claims["jti"])
    assert len(ids) == 2
    secrets = kube.get_json("secrets", "-n", namespace)
    assert secrets is not None
    assert not [s for s in secrets["items"] if s["type"] != "kubernetes.io/service-account-token"]
    # The SDK: reads the projected file, asks the endpoint, keeps the token in memory.
    path = tmp_path / "token"
    path.write_text(projected(kube, namespace, "agent", "agent-0", uids[0]))
    source = PodTokenSource(f"{operator.base_url}/token", assertion_path=path, scope="read")
    token = source.token()
    SEEN_TOKENS.add(token)
    assert http_verifier(operator).verify(token).scopes == ("read",)
    assert source.token() == token
    assert source.refreshes == 1
    issued = wait_for(
        "status.podTokens",
        lambda: (status(kube, namespace, "agents").get("podTokens") or {}).get("issued"),
        40,
    )
    assert issued >= 3


def _foreign_jwt(audience: str, exp: int) -> str:
    """A JWT shaped like a ServiceAccount token, signed by a key no cluster trusts."""
    key = ECKey.generate_key("P-256")
    now = int(time.time())
    claims = {"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:x:agent",
              "aud": [audience], "iat": now - 60, "nbf": now - 60, "exp": exp}  # fmt: skip
    return jwt.encode({"alg": "ES256", "kid": "other"}, claims, key)


def test_bad_grants_get_rfc_errors(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    setup(kube, namespace)
    uid = make_pod(kube, namespace, "agent-0", "agent")
    good = projected(kube, namespace, "agent", "agent-0", uid)
    now = int(time.time())
    cases = [
        ({"grant_type": "client_credentials", "assertion": good}, "unsupported_grant_type"),
        ({"grant_type": JWT_BEARER}, "invalid_request"),
        (
            {"grant_type": JWT_BEARER, "assertion": _foreign_jwt(ENDPOINT, now - 5)},
            "invalid_grant",
        ),  # expired
        (
            {"grant_type": JWT_BEARER, "assertion": _foreign_jwt(ENDPOINT, now + 600)},
            "invalid_grant",
        ),  # signer
        (
            {
                "grant_type": JWT_BEARER,
                "assertion": projected(kube, namespace, "agent", "agent-0", uid, AUDIENCE),
            },
            "invalid_grant",
        ),  # wrong audience
        ({"grant_type": JWT_BEARER, "assertion": good, "scope": "admin"}, "invalid_scope"),
    ]
    for form, error in cases:
        code, body = grant(operator, form)
        assert (code, body.get("error")) == (400, error), (form.get("grant_type"), body)
    # A ServiceAccount no AgentToken grants.
    kube.kubectl("create", "serviceaccount", "other", "-n", namespace)
    other_uid = make_pod(kube, namespace, "other-0", "other")
    code, body = grant(
        operator,
        {"grant_type": JWT_BEARER, "assertion": projected(kube, namespace, "other", "other-0", other_uid)},
    )
    assert (code, body["error"]) == (400, "invalid_grant")
    assert "no AgentToken" in body["error_description"]
    assert "eyJ" not in operator.log_text()


def test_deleted_pod_token_is_revoked_and_its_assertion_refused(
    kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    setup(kube, namespace)
    uid = make_pod(kube, namespace, "agent-0", "agent")
    path = tmp_path / "token"
    path.write_text(projected(kube, namespace, "agent", "agent-0", uid))
    info = fetch_pod_token(f"{operator.base_url}/token", assertion_path=path)
    SEEN_TOKENS.add(info.token)
    v = http_verifier(operator)
    v.verify(info.token)
    kube.kubectl("delete", "pod", "agent-0", "-n", namespace, "--wait=true")
    deleted = time.monotonic()

    def rejected() -> str | None:
        try:
            v.verify(info.token)
        except VerificationError as exc:
            return exc.check
        return None

    assert wait_for("the deleted pod's token rejected", rejected, timeout=30) == "revoked"
    print(f"\ndeleted pod's token rejected after {time.monotonic() - deleted:.2f}s")
    with pytest.raises(PodTokenError) as refused:
        fetch_pod_token(f"{operator.base_url}/token", assertion_path=path)
    assert refused.value.error == "invalid_grant"
