"""What issuer adapters get from the operator: the adapter, the signing key, credential Secrets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agenttoken.core.conditions import Reason
from agenttoken.core.keys import SigningKey
from agenttoken.core.secretdata import decode_data
from agenttoken.issuers import IssueError, IssuerSpec
from agenttoken.kube.adapter import Kube


@dataclass(frozen=True)
class IssuerDeps:
    kube: Kube
    signing_key: Callable[[], SigningKey]  # the built-in issuer's current key; RuntimeError if none yet
    issuer_url: str  # the built-in issuer's `iss`
    operator_namespace: str  # where a ClusterTokenIssuer's credential Secrets live
    # The OAuth client-assertion key: never signs access tokens (own ring, own JWKS).
    assertion_key: Callable[[], SigningKey]


async def credential(
    deps: IssuerDeps, issuer: IssuerSpec, ref: Mapping[str, Any] | None, default_key: str
) -> str | None:
    """A credential from a Secret (issuer's namespace, or the operator's for cluster issuers)."""
    if not ref:
        return None
    ns = issuer.secret_namespace or deps.operator_namespace
    found = await deps.kube.get_secret(ns, ref["name"])
    raw = ((found or {}).get("data") or {}).get(ref.get("key") or default_key)
    if not raw:
        raise IssueError(
            f"credentials: Secret {ns}/{ref['name']} (key {ref.get('key') or default_key!r}) not found"
        )
    return decode_data({"v": raw})["v"]


def keys_problem(deps: IssuerDeps, *, assertion: bool = False) -> Reason | None:
    """KeysNotReady while the built-in signing key (or the client-assertion key) is not loaded yet."""
    try:
        deps.signing_key()
        if assertion:
            deps.assertion_key()
    except RuntimeError as exc:
        return Reason("KeysNotReady", str(exc))
    return None


async def credential_problem(
    deps: IssuerDeps, issuer: IssuerSpec, field: str, default_key: str
) -> Reason | None:
    """CredentialsNotFound while the Secret `issuer.config[field]` names is missing."""
    ref = issuer.config.get(field)
    if not ref:
        return None
    try:
        await credential(deps, issuer, ref, default_key)
    except IssueError as exc:
        return Reason("CredentialsNotFound", str(exc).removeprefix("credentials: "))
    return None
