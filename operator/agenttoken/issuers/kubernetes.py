"""The `kubernetes` issuer: a TokenRequest for a ServiceAccount in the AgentToken's namespace.

The token is bound to the Secret that holds it (boundObjectRef), so deleting the Secret makes the
apiserver reject the token. The apiserver decides the real lifetime (it may shorten or extend the
requested expirationSeconds, never below 10 minutes): we trust its expirationTimestamp.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Mapping
from typing import Any

from agenttoken.core.times import parse_time
from agenttoken.core.tokens import token_hash
from agenttoken.issuers import IssueContext, Issued, IssueError
from agenttoken.kube.adapter import Kube, KubeError

MIN_EXPIRATION_SECONDS = 600


def _segment(token: str, index: int) -> dict[str, Any]:
    try:
        part = token.split(".")[index]
        result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return result
    except (IndexError, ValueError):
        return {}


async def request_token(
    kube: Kube, namespace: str, account: str, spec: Mapping[str, Any]
) -> tuple[str, datetime.datetime]:
    """A TokenRequest for namespace/account: (token, the expiry the apiserver decided)."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": dict(spec)}
    try:
        result = await kube.create_token(namespace, account, body)
    except KubeError as exc:
        raise IssueError(f"TokenRequest for ServiceAccount {namespace}/{account} failed: {exc}") from None
    status = result.get("status") or {}
    token, expires = status.get("token"), parse_time(status.get("expirationTimestamp"))
    if not token or expires is None:
        raise IssueError("TokenRequest returned no token or expirationTimestamp")
    return str(token), expires


async def issue(
    kube: Kube, ctx: IssueContext, config: Mapping[str, Any], *, now: datetime.datetime
) -> Issued:
    if ctx.secret_uid is None:
        raise IssueError("the Secret must exist before a bound ServiceAccount token can be requested")
    req = ctx.request
    spec = {
        "audiences": list(config.get("audiences") or req.audience),
        "expirationSeconds": max(MIN_EXPIRATION_SECONDS, int(req.ttl.total_seconds())),
        "boundObjectRef": {
            "apiVersion": "v1",
            "kind": "Secret",
            "name": ctx.secret_name,
            "uid": ctx.secret_uid,
        },
    }
    token, expires = await request_token(kube, req.namespace, config["serviceAccountName"], spec)
    claims = _segment(token, 1)
    issued = (
        datetime.datetime.fromtimestamp(claims["iat"], datetime.UTC)
        if isinstance(claims.get("iat"), int)
        else now
    )
    token_id = str(claims.get("jti") or token_hash(token).removeprefix("sha256:")[:32])
    return Issued(token, token_id, str(_segment(token, 0).get("kid", "kubernetes")), issued, expires)
