"""Issuers: who mints an AgentToken's token, behind one small protocol.

`TokenIssuer` (namespaced: serves its own namespace) and `ClusterTokenIssuer` (cluster-wide, with
a namespace selector) each hold a policy and exactly one type: `builtin` (the operator's own
keys), `kubernetes` (TokenRequest for a ServiceAccount, bound to the Secret), `webhook` (an HTTP
service that mints) or `oauth2` (client credentials, token exchange or
jwt-bearer at an OAuth2/OIDC provider). This module is pure: parsing and readiness. The type
modules do I/O.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agenttoken import api
from agenttoken.core.model import InvalidSpec
from agenttoken.core.policy import IssuerPolicy
from agenttoken.core.timing import parse_duration
from agenttoken.core.tokens import TokenRequest

IssuerType = Literal["builtin", "kubernetes", "webhook", "oauth2"]
TYPES: tuple[IssuerType, ...] = ("builtin", "kubernetes", "webhook", "oauth2")


@dataclass(frozen=True)
class IssuerSpec:
    kind: str
    namespace: str  # "" for ClusterTokenIssuer
    name: str
    type: IssuerType
    config: Mapping[str, Any]
    policy: IssuerPolicy = field(default_factory=IssuerPolicy)

    @property
    def secret_namespace(self) -> str | None:
        """Where credential Secrets of this issuer live (None: the operator's namespace)."""
        return self.namespace or None


@dataclass(frozen=True)
class IssueContext:
    """Everything an issuer gets to mint one token."""

    request: TokenRequest
    secret_name: str
    secret_uid: str | None = None  # kubernetes: the token is bound to this Secret


@dataclass(frozen=True)
class Issued:
    token: str = field(repr=False)
    token_id: str
    key_id: str
    issued_at: datetime.datetime
    expires_at: datetime.datetime


class IssueError(RuntimeError):
    """Minting failed; the message says why and never contains a token or credential."""


class PolicyRefused(IssueError):
    """The issuer returned a token whose claims the issuer's policy does not allow (a webhook's
    `sub` other than the allowed ones): it is dropped, never written."""


def _duration(value: Any, path: str) -> datetime.timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise InvalidSpec(f"{path}: {exc}") from None


def parse_issuer(kind: str, body: Mapping[str, Any]) -> IssuerSpec:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    present = [t for t in TYPES if t in spec]
    if len(present) != 1:
        raise InvalidSpec("exactly one issuer type must be set: builtin, kubernetes, webhook or oauth2")
    raw = spec.get("policy") or {}
    scopes, audiences = raw.get("allowedScopes"), raw.get("allowedAudiences")
    environments = raw.get("allowedEnvironments")
    selector = (raw.get("namespaceSelector") or {}).get("matchLabels")
    policy = IssuerPolicy(
        allowed_scopes=tuple(scopes) if scopes is not None else None,
        allowed_audiences=tuple(audiences) if audiences is not None else None,
        min_ttl=_duration(raw.get("minTTL"), "spec.policy.minTTL"),
        max_ttl=_duration(raw.get("maxTTL"), "spec.policy.maxTTL"),
        namespace_selector=dict(selector) if selector and kind == api.CLUSTERTOKENISSUER_KIND else None,
        allowed_subjects=tuple(raw.get("allowedSubjects") or ()),
        allowed_environments=tuple(environments) if environments is not None else None,
    )
    config = spec[present[0]] or {}
    if present[0] == "kubernetes" and not config.get("serviceAccountName"):
        raise InvalidSpec("spec.kubernetes.serviceAccountName is required")
    if present[0] == "webhook" and not config.get("url"):
        raise InvalidSpec("spec.webhook.url is required")
    if present[0] == "oauth2":
        if not (config.get("tokenURL") or config.get("issuerURL")):
            raise InvalidSpec("spec.oauth2 needs tokenURL or issuerURL")
        if not config.get("clientID"):
            raise InvalidSpec("spec.oauth2 needs clientID")
        if (config.get("clientAuthMethod") or "client_secret_basic") == "client_secret_basic" and not (
            config.get("clientSecretRef") or {}
        ).get("name"):
            raise InvalidSpec("spec.oauth2 needs clientSecretRef (or clientAuthMethod private_key_jwt)")
        subject = config.get("subjectToken") or {}
        if subject.get("source") == "serviceAccount" and not subject.get("serviceAccountName"):
            raise InvalidSpec(
                "spec.oauth2.subjectToken.serviceAccountName is required for source serviceAccount"
            )
    return IssuerSpec(
        kind=kind,
        namespace=meta.get("namespace", "") if kind == api.TOKENISSUER_KIND else "",
        name=meta.get("name", ""),
        type=present[0],
        config=dict(config),
        policy=policy,
    )
