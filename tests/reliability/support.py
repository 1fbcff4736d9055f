"""Helpers shared by the reliability tests: fast reads through the admin API, token checks."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from agenttoken.core.times import parse_time
from devcluster import LocalCluster
from tests.e2e.kube import Kube, wait_for

from .conftest import now

GROUP_PATH = "/apis/agenttoken.dev/v1alpha1"


def new_namespace(kube: Kube, prefix: str, labels: dict[str, str] | None = None, timeout: float = 60) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.apply(
        json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
        )
    )
    kube.wait_default_sa(name, timeout=timeout)
    return name


def short_lived(name: str, renew_percent: int, rollout: dict[str, Any] | None = None) -> str:
    """An AgentToken with the shortest ttl the CRD allows (60s), renewed at `renew_percent`
    of its lifetime left, its Secret named `<name>-token`."""
    spec: dict[str, Any] = {
        "audience": ["https://api.example.com"],
        "ttl": "60s",
        "renewBeforePercentage": renew_percent,
        "secret": {"name": f"{name}-token"},
    }
    if rollout:
        spec["rollout"] = rollout
    return json.dumps(
        {
            "apiVersion": "agenttoken.dev/v1alpha1",
            "kind": "AgentToken",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def get(cluster: LocalCluster, path: str) -> dict[str, Any]:
    code, body = cluster.api("GET", path, timeout=30)
    assert code == 200, f"GET {path}: HTTP {code}"
    result: dict[str, Any] = json.loads(body)
    return result


def agenttokens(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get(cluster, f"{GROUP_PATH}/namespaces/{namespace}/agenttokens")["items"]
    return items


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            result: dict[str, Any] = cond
            return result
    return {}


def is_ready(obj: dict[str, Any]) -> bool:
    ready = condition(obj, "Ready")
    return ready.get("status") == "True" and ready.get("observedGeneration") == obj["metadata"]["generation"]


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()}


def jwks(cluster: LocalCluster) -> KeySet:
    cm = get(cluster, "/api/v1/namespaces/agenttoken-system/configmaps/agenttoken-jwks")
    return KeySet.import_key_set(json.loads(cm["data"]["jwks.json"]))


def verified_claims(token: str, keys: KeySet) -> dict[str, Any]:
    """Signature checked against the published JWKS (raises if it does not verify)."""
    claims: dict[str, Any] = jose_jwt.decode(token, keys).claims
    return claims


def check_secret_holds_valid_token(cluster: LocalCluster, keys: KeySet, token_obj: dict[str, Any]) -> None:
    """The AgentToken's Secret holds the token its status names, signed by a published key, unexpired."""
    meta, st = token_obj["metadata"], token_obj["status"]
    name = token_obj["spec"]["secret"]["name"]
    secret = get(cluster, f"/api/v1/namespaces/{meta['namespace']}/secrets/{name}")
    data = secret_data(secret)
    claims = verified_claims(data["token"], keys)
    where = f"{meta['namespace']}/{meta['name']}"
    assert claims["jti"] == st["tokenId"], f"{where}: Secret and status name different tokens"
    assert claims["exp"] > now().timestamp(), f"{where}: token in the Secret has expired"
    assert parse_time(st["expiresAt"]) > now(), f"{where}: status says the token expired"
    assert json.loads(data["token.json"])["tokenId"] == st["tokenId"], f"{where}: token.json torn"


def wait_all(
    cluster: LocalCluster, namespaces: list[str], what: str, probe: Any, timeout: float
) -> list[dict[str, Any]]:
    """Poll until `probe(obj)` holds for every AgentToken in `namespaces`; returns them."""

    def check() -> list[dict[str, Any]] | None:
        items = [o for ns in namespaces for o in agenttokens(cluster, ns)]
        bad = [o["metadata"]["name"] for o in items if not probe(o)]
        return items if items and not bad else None

    return wait_for(what, check, timeout=timeout, interval=1.0)
