"""Purpose-separated keys and emergency key revocation, against the real apiserver and operator.

- Client assertions (oauth2 `private_key_jwt`) are signed by a key published only in
  `client-jwks.json`; an access token forged with that key is refused by the SDK verifier and by
  an independent Go verifier (go-jose) that trust `jwks.json`.
- `agenttoken keys revoke KID` with 1,000 AgentTokens: the key leaves the JWKS at once; tokens of
  the old key are refused by the SDK verifier and the Go verifier once their JWKS caches expire;
  every Secret ends up holding a token of the new key; status, Events and the key ring say so; a
  GitOps revert of the ConfigMap does not bring the key back. (Timing: bench/key_revocation.py.)
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import KeySet

from agenttoken.core.keys import SigningKey
from agenttoken.core.tokens import TokenRequest, mint
from agenttoken_sdk.verify import VerificationError, Verifier

from .jwtcheck import GoVerifier
from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_lifecycle import ISSUER, SEEN_TOKENS, agenttoken, wait_ready

OPERATOR_NS = "agenttoken-system"
AUDIENCE = "https://api.example.com"
MANAGED = "app.kubernetes.io/managed-by=agent-token-operator"
COUNT = int(os.environ.get("AGENTTOKEN_E2E_KEY_REVOCATION_COUNT", "1000"))
# Short caches for the test; in production the operator says max-age=300 and the SDK defaults to it.
CACHE_SECONDS = 5.0
# Client assertions the operator sent, for the leak scan of test_zz_final.
SEEN_ASSERTIONS: set[str] = set()


def header_of(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return result


def fetch(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def kids(url: str) -> set[str]:
    return {k["kid"] for k in fetch(url)["keys"]}


def stored_rings(kube: Kube) -> dict[str, Any]:
    secret = kube.get_json("secret", "agenttoken-signing-keys", "-n", OPERATOR_NS)
    assert secret is not None
    return {k: json.loads(base64.b64decode(v)) for k, v in secret["data"].items()}


def sdk_verifier(operator: OperatorProcess) -> Verifier:
    return Verifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=f"{operator.base_url}/jwks.json",
        jwks_max_age=timedelta(seconds=CACHE_SECONDS),
        jwks_min_refresh=timedelta(seconds=1),
        audit=False,
    )


def rejected_by_sdk(verifier: Verifier, token: str) -> str | None:
    try:
        verifier.verify(token)
    except VerificationError as exc:
        return exc.check
    return None


@pytest.fixture
def go_verifier(operator: OperatorProcess) -> Iterator[GoVerifier]:
    verifier = GoVerifier(
        jwks_url=f"{operator.base_url}/jwks.json",
        issuer=ISSUER,
        audience=AUDIENCE,
        cache_seconds=CACHE_SECONDS,
    )
    yield verifier
    verifier.close()


class TokenEndpoint(http.server.BaseHTTPRequestHandler):
    """An OAuth token endpoint that records the client assertions it is sent."""

    assertions: list[str] = []

    def do_POST(self) -> None:
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.assertions.append(form["client_assertion"][0])
        body = json.dumps({"access_token": "opaque-from-idp", "expires_in": 3600, "token_type": "Bearer"})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def token_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


def test_client_assertions_use_a_key_no_access_token_verifier_trusts(
    kube: Kube, operator: OperatorProcess, namespace: str, token_endpoint: str, go_verifier: GoVerifier
) -> None:
    issuer_spec = {
        "oauth2": {"tokenURL": token_endpoint, "clientID": "agent", "clientAuthMethod": "private_key_jwt"},
        "policy": {"allowedScopes": ["read"]},
    }
    kube.apply(
        json.dumps(
            {
                "apiVersion": "agenttoken.dev/v1alpha1",
                "kind": "TokenIssuer",
                "metadata": {"name": "idp"},
                "spec": issuer_spec,
            }
        ),
        "-n",
        namespace,
    )
    kube.apply(
        agenttoken("signed", "signed-token", issuerRef={"kind": "TokenIssuer", "name": "idp"}),
        "-n",
        namespace,
    )
    wait_ready(kube, namespace, "signed")
    assertion = TokenEndpoint.assertions[-1]
    SEEN_ASSERTIONS.add(assertion)
    access, client = kids(f"{operator.base_url}/jwks.json"), kids(f"{operator.base_url}/client-jwks.json")
    assert access
    assert client
    assert not access & client
    kid = header_of(assertion)["kid"]
    assert kid in client
    assert kid not in access
    # The provider's view: the assertion verifies against client-jwks.json.
    client_jwks: Any = fetch(f"{operator.base_url}/client-jwks.json")
    jws.deserialize_compact(assertion, KeySet.import_key_set(client_jwks))

    # An access token forged with the assertion key (read from the key Secret, as a thief would):
    # refused by both verifiers, because access-token verifiers never see that key.
    ring = stored_rings(kube)["assertion-keyring.json"]
    assert ring["purpose"] == "client-assertion"
    item = next(k for k in ring["keys"] if k["kid"] == kid)
    now = datetime.now(UTC)
    key = SigningKey(kid, item["alg"], now, now, item["jwk"])
    request = TokenRequest(namespace, "signed", "uid", None, (AUDIENCE,), ("read",), timedelta(minutes=5))
    forged = mint(request, key, issuer=ISSUER, now=now).token
    SEEN_ASSERTIONS.add(forged)
    assert rejected_by_sdk(sdk_verifier(operator), forged) == "kid"
    assert go_verifier.check(forged).startswith("reject unknown kid")


def agenttoken_cli(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "agenttoken"), *args],
        env=kube.env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def create_many(kube: Kube, namespace: str, count: int, prefix: str = "kr") -> None:
    for start in range(0, count, 250):
        items = [
            json.loads(agenttoken(f"{prefix}-{i}", f"{prefix}-{i}-token"))
            for i in range(start, min(count, start + 250))
        ]
        kube.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}), "-n", namespace)


def secrets_by_kid(kube: Kube, namespace: str) -> dict[str, list[dict[str, Any]]]:
    listing = json.loads(kube.kubectl("get", "secrets", "-n", namespace, "-l", MANAGED, "-o", "json").stdout)
    found: dict[str, list[dict[str, Any]]] = {}
    for secret in listing["items"]:
        kid = (secret["metadata"].get("annotations") or {}).get("agenttoken.dev/key-id", "")
        found.setdefault(kid, []).append(secret)
    return found


def token_of(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"]["token"]).decode()


def test_emergency_key_revocation_reissues_every_token_and_verifiers_refuse_the_old_key(
    kube: Kube, operator: OperatorProcess, namespace: str, go_verifier: GoVerifier
) -> None:
    create_many(kube, namespace, COUNT)
    old_kid = wait_for(
        f"{COUNT} Secrets holding a token of one key",
        lambda: next(
            (kid for kid, found in secrets_by_kid(kube, namespace).items() if len(found) == COUNT), None
        ),
        timeout=600,
        interval=2,
    )
    old_token = token_of(secrets_by_kid(kube, namespace)[old_kid][0])
    SEEN_TOKENS.add(old_token)
    sdk = sdk_verifier(operator)
    assert rejected_by_sdk(sdk, old_token) is None
    assert go_verifier.check(old_token) == f"ok {old_kid}"

    typo = agenttoken_cli(kube, "keys", "revoke", "not-a-published-kid")
    assert typo.returncode == 1
    assert "is not published" in typo.stderr
    cli = agenttoken_cli(kube, "keys", "revoke", old_kid)
    assert cli.returncode == 0, cli.stderr
    # The key leaves the JWKS at once (served and published), and a new key signs.
    wait_for("the old key out of the JWKS", lambda: old_kid not in kids(f"{operator.base_url}/jwks.json"), 10)
    wait_for(
        "the old key out of the published JWKS ConfigMap",
        lambda: (
            old_kid
            not in (kube.get_json("configmap", "agenttoken-jwks", "-n", OPERATOR_NS) or {})["data"][
                "jwks.json"
            ]
        ),
        10,
    )
    # Verifiers refuse old-key tokens once their JWKS cache expired (bound: CACHE_SECONDS here).
    wait_for("the SDK verifier to refuse the old key", lambda: rejected_by_sdk(sdk, old_token) == "kid", 30)
    wait_for(
        "the Go verifier to refuse the old key",
        lambda: go_verifier.check(old_token).startswith("reject unknown kid"),
        30,
    )

    # Every Secret ends up holding a token of the new key.
    def all_new() -> str | None:
        found = secrets_by_kid(kube, namespace)
        done = [k for k, v in found.items() if len(v) == COUNT and k != old_kid]
        return done[0] if done else None

    new_kid = wait_for(f"all {COUNT} Secrets re-issued under a new key", all_new, timeout=900, interval=2)
    assert new_kid in kids(f"{operator.base_url}/jwks.json")
    secrets = secrets_by_kid(kube, namespace)[new_kid]
    assert all(header_of(token_of(s))["kid"] == new_kid for s in secrets)
    for secret in secrets[:10]:  # a sample through both verifiers (all headers checked above)
        token = token_of(secret)
        SEEN_TOKENS.add(token)
        assert rejected_by_sdk(sdk, token) is None
        assert go_verifier.check(token) == f"ok {new_kid}"

    listed = json.loads(agenttoken_cli(kube, "keys", "list", "-o", "json").stdout)
    assert {"kid": old_kid, "purpose": "", "alg": "", "state": "revoked"} in listed
    assert any(r["kid"] == new_kid and r["purpose"] == "access-token" for r in listed)

    # Status and Events say what happened.
    tokens = json.loads(kube.kubectl("get", "agenttokens", "-n", namespace, "-o", "json").stdout)["items"]
    assert {t["status"].get("keyId") for t in tokens} == {new_kid}
    events = json.loads(kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    assert any(
        e["reason"] == "TokenRenewed" and f"signing key {old_kid} was revoked" in e["message"] for e in events
    )
    operator_events = json.loads(kube.kubectl("get", "events", "-n", OPERATOR_NS, "-o", "json").stdout)[
        "items"
    ]
    assert any(
        e["reason"] == "SigningKeyRevoked" and e["involvedObject"]["name"] == "agenttoken-key-revocations"
        for e in operator_events
    )
    # The ring keeps a tombstone and no private material of the revoked key.
    ring = stored_rings(kube)["keyring.json"]
    assert old_kid in {r["kid"] for r in ring["revoked"]}
    assert old_kid not in {k["kid"] for k in ring["keys"]}

    # A GitOps revert (the kid removed from the ConfigMap) never brings the key back.
    kube.kubectl(
        "patch", "configmap", "agenttoken-key-revocations", "-n", OPERATOR_NS, "--type=merge",
        "-p", json.dumps({"data": {"revoked-kids": ""}}),
    )  # fmt: skip
    kube.kubectl("annotate", "agenttoken", "kr-0", "-n", namespace, "agenttoken.dev/rotate=after-revert")
    wait_for(
        "a rotation after the revert",
        lambda: (
            (kube.get_json("agenttoken", "kr-0", "-n", namespace) or {})
            .get("status", {})
            .get("lastHandledRotateRequest")
            == "after-revert"
        ),
        60,
    )
    assert old_kid not in kids(f"{operator.base_url}/jwks.json")
    assert old_kid in {r["kid"] for r in stored_rings(kube)["keyring.json"]["revoked"]}


def test_a_crash_right_after_the_revocation_is_stored_loses_nothing(
    kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    """kill -9 right after the ring Secret holds the revocation (JWKS not published, no token
    re-issued yet): the restarted operator publishes without the key, keeps the replacement key it
    stored (no second one), and re-issues every token."""
    count = 30
    create_many(kube, namespace, count, prefix="crash")
    old_kid = wait_for(
        f"{count} Secrets of one key",
        lambda: next((k for k, v in secrets_by_kid(kube, namespace).items() if len(v) == count), None),
        timeout=300,
        interval=1,
    )
    marker = tmp_path / "crashed"
    operator.stop()
    crashing = operator.crashing_twin("after-key-ring-write", marker)
    crashing.start()
    try:
        assert agenttoken_cli(kube, "keys", "revoke", old_kid).returncode == 0
        wait_for("the test crash point", crashing.exited, timeout=60)
    finally:
        crashing.stop()
    assert marker.exists()
    ring = stored_rings(kube)["keyring.json"]
    assert old_kid in {r["kid"] for r in ring["revoked"]}
    stored = {k["kid"] for k in ring["keys"]}
    operator.start()
    wait_for("the old key out of the JWKS", lambda: old_kid not in kids(f"{operator.base_url}/jwks.json"), 30)
    new_kid = wait_for(
        f"all {count} Secrets re-issued",
        lambda: next(
            (k for k, v in secrets_by_kid(kube, namespace).items() if len(v) == count and k != old_kid), None
        ),
        timeout=300,
        interval=1,
    )
    assert new_kid in stored, "the restarted operator generated another key instead of the stored one"
    assert {k["kid"] for k in stored_rings(kube)["keyring.json"]["keys"]} == stored
