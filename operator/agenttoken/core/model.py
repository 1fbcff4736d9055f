"""Typed views of an AgentToken's spec and status, parsed once from the raw object.

The CRD schema and its CEL rules reject bad input at admission; parsing here repeats the checks
that matter for safety (an object stored before a schema change, or `--validate=false`), and
raises `InvalidSpec` naming the field so the reason reaches a status condition.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agenttoken import api
from agenttoken.core import connectivity
from agenttoken.core.connectivity import VerifySpec
from agenttoken.core.rollout import RolloutSpec, parse_rollout
from agenttoken.core.times import parse_time
from agenttoken.core.timing import RenewalPolicy, parse_duration
from agenttoken.core.tokens import TokenRequest
from agenttoken.core.usage import UnusedPolicy, Usage, parse_usage

MIN_TTL = datetime.timedelta(seconds=60)
MAX_TTL = datetime.timedelta(hours=168)


class InvalidSpec(ValueError):
    """The spec cannot be acted on; the message names the field."""


@dataclass(frozen=True)
class SecretKeys:
    token: str = api.DEFAULT_TOKEN_KEY
    expires_at: str = api.DEFAULT_EXPIRES_AT_KEY
    bundle: str = api.DEFAULT_BUNDLE_KEY
    # Optional: the raw token again under an env-var name, so `envFrom` exposes it as is.
    env: str | None = None

    def managed(self) -> tuple[str, ...]:
        return (self.token, self.expires_at, self.bundle, *((self.env,) if self.env else ()))


@dataclass(frozen=True)
class ConfigTemplate:
    """spec.secret.config: a template rendered into its own key (see core.templates)."""

    key: str
    template: str


@dataclass(frozen=True)
class AgentTokenSpec:
    audience: tuple[str, ...]
    scopes: tuple[str, ...]
    ttl: datetime.timedelta
    renewal: RenewalPolicy
    secret_name: str
    keys: SecretKeys = SecretKeys()
    config: ConfigTemplate | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: str | None = None
    issuer_kind: str = api.CLUSTERTOKENISSUER_KIND
    issuer_name: str = api.BUILTIN_ISSUER_NAME
    environment: str | None = None
    allowed_cidrs: tuple[str, ...] = ()
    suspend: bool = False
    rollout: RolloutSpec = field(default_factory=RolloutSpec)
    verify: VerifySpec | None = None
    unused: UnusedPolicy = field(default_factory=UnusedPolicy)
    delivery: str = "Secret"  # or "PerPod" (core.podtoken): no Secret, one token per pod
    service_account: str | None = None  # PerPod: the ServiceAccount whose pods get tokens

    @property
    def per_pod(self) -> bool:
        return self.delivery == "PerPod"

    def token_request(self, namespace: str, name: str, uid: str) -> TokenRequest:
        return TokenRequest(
            namespace=namespace,
            name=name,
            uid=uid,
            subject=self.subject,
            audience=self.audience,
            scopes=self.scopes,
            ttl=self.ttl,
            environment=self.environment,
            allowed_cidrs=self.allowed_cidrs,
        )

    def claims_hash(self) -> str:
        """Hash of everything that goes into a token: a change means the current token is stale."""
        material = {
            "aud": self.audience,
            "scope": self.scopes,
            "ttl": self.ttl.total_seconds(),
            "sub": self.subject,
            "issuer": [self.issuer_kind, self.issuer_name],
            "env": self.environment,
            "cidr": self.allowed_cidrs,
        }
        digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        return digest[:16]


def _strings(value: Any, path: str, *, required: bool) -> tuple[str, ...]:
    if value is None:
        if required:
            raise InvalidSpec(f"{path} is required")
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidSpec(f"{path} must be a list of non-empty strings")
    if required and not value:
        raise InvalidSpec(f"{path} must not be empty")
    if len(set(value)) != len(value):
        raise InvalidSpec(f"{path} must not repeat values")
    return tuple(value)


def _duration(value: Any, path: str) -> datetime.timedelta:
    if not isinstance(value, str):
        raise InvalidSpec(f"{path} must be a duration string like 1h or 30m")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidSpec(f"{path}: {exc}") from None


def parse_spec(spec: Mapping[str, Any]) -> AgentTokenSpec:
    ttl = _duration(spec.get("ttl", "1h"), "spec.ttl")
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidSpec(f"spec.ttl must be between 60s and 168h, got {spec.get('ttl')}")
    before = spec.get("renewBefore")
    percentage = spec.get("renewBeforePercentage")
    if before is not None and percentage is not None:
        raise InvalidSpec("spec.renewBefore and spec.renewBeforePercentage are mutually exclusive")
    renew_before = _duration(before, "spec.renewBefore") if before is not None else None
    if renew_before is not None and renew_before >= ttl:
        raise InvalidSpec("spec.renewBefore must be shorter than spec.ttl")
    if percentage is not None and (not isinstance(percentage, int) or not 5 <= percentage <= 95):
        raise InvalidSpec("spec.renewBeforePercentage must be an integer from 5 to 95")
    delivery, service_account = _delivery(spec)
    secret = spec.get("secret") or {}
    secret_name = "" if delivery == "PerPod" else secret.get("name")
    if not isinstance(secret_name, str) or not (secret_name or delivery == "PerPod"):
        raise InvalidSpec("spec.secret.name is required")
    raw_keys = secret.get("keys") or {}
    keys = SecretKeys(
        token=raw_keys.get("token", api.DEFAULT_TOKEN_KEY),
        expires_at=raw_keys.get("expiresAt", api.DEFAULT_EXPIRES_AT_KEY),
        bundle=raw_keys.get("bundle", api.DEFAULT_BUNDLE_KEY),
        env=raw_keys.get("env") or None,
    )
    if keys.env is not None and not _ENV_NAME.fullmatch(keys.env):
        raise InvalidSpec(
            "spec.secret.keys.env must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
        )
    config = _config(secret.get("config"))
    all_keys = (*keys.managed(), *((config.key,) if config else ()))  # as secrets.managed_keys
    if len(set(all_keys)) != len(all_keys):
        raise InvalidSpec("spec.secret.keys and spec.secret.config.key must all name different keys")
    template = secret.get("template") or {}
    issuer = spec.get("issuerRef") or {}
    subject = spec.get("subject") or None
    if subject is not None and (not isinstance(subject, str) or not _SUBJECT.fullmatch(subject)):
        raise InvalidSpec("spec.subject must be 1-253 characters without spaces or control characters")
    parsed = AgentTokenSpec(
        audience=_strings(spec.get("audience"), "spec.audience", required=True),
        scopes=_strings(spec.get("scopes"), "spec.scopes", required=False),
        ttl=ttl,
        renewal=RenewalPolicy(renew_before=renew_before, renew_before_percentage=percentage),
        secret_name=secret_name,
        keys=keys,
        config=config,
        labels=dict(template.get("labels") or {}),
        annotations=dict(template.get("annotations") or {}),
        subject=subject,
        issuer_kind=issuer.get("kind", api.CLUSTERTOKENISSUER_KIND),
        issuer_name=issuer.get("name", api.BUILTIN_ISSUER_NAME),
        environment=spec.get("environment") or None,
        allowed_cidrs=_strings(spec.get("allowedCIDRs"), "spec.allowedCIDRs", required=False),
        suspend=bool(spec.get("suspend", False)),
        rollout=_rollout(spec.get("rollout")),
        verify=_verify(spec.get("verify")),
        unused=_unused(spec.get("unused")),
        delivery=delivery,
        service_account=service_account,
    )
    try:  # the token request repeats the claim-level checks (scope characters, CIDRs)
        parsed.token_request("namespace", "name", "uid")
    except ValueError as exc:
        raise InvalidSpec(str(exc).removeprefix("token request: ")) from None
    return parsed


# No whitespace or control characters: an API that trims or splits a subject must see the same one.
_SUBJECT = re.compile(r"[^\s\x00-\x1f\x7f]{1,253}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _delivery(spec: Mapping[str, Any]) -> tuple[str, str | None]:
    """spec.delivery and spec.serviceAccountName, with the combinations that make no sense
    refused (the CRD's CEL rules say the same at admission)."""
    delivery = spec.get("delivery") or "Secret"
    account = spec.get("serviceAccountName") or None
    if delivery not in ("Secret", "PerPod"):
        raise InvalidSpec("spec.delivery must be Secret or PerPod")
    if delivery == "Secret":
        if account is not None:
            raise InvalidSpec("spec.serviceAccountName only applies to delivery PerPod")
        return delivery, None
    if not isinstance(account, str):
        raise InvalidSpec("delivery PerPod needs spec.serviceAccountName")
    extra = [f for f in ("secret", "rollout", "unused", "verify") if spec.get(f) is not None]
    if extra:
        raise InvalidSpec(
            f"delivery PerPod writes no Secret and restarts nothing: spec.{extra[0]} does not apply"
        )
    return delivery, account


def _config(raw: Any) -> ConfigTemplate | None:
    """Shape only; the controller checks the template itself (`templates.check`) and stalls
    with its own reason, before anything is minted."""
    if raw is None:
        return None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("key"), str)
        or not isinstance(raw.get("template"), str)
    ):
        raise InvalidSpec("spec.secret.config needs key and template")
    if not _SECRET_KEY.fullmatch(raw["key"]):
        raise InvalidSpec("spec.secret.config.key must be a valid Secret key")
    return ConfigTemplate(key=raw["key"], template=raw["template"])


def _verify(raw: Any) -> VerifySpec | None:
    try:
        return connectivity.parse(raw, parse_duration)
    except ValueError as exc:
        raise InvalidSpec(str(exc)) from None


def _rollout(raw: Any) -> RolloutSpec:
    if raw is not None and not isinstance(raw, dict):
        raise InvalidSpec("spec.rollout must be an object")
    try:
        rollout = parse_rollout(raw, parse_duration)
    except ValueError as exc:
        raise InvalidSpec(f"spec.rollout.revokeAfter: {exc}") from None
    if rollout.strategy not in ("Restart", "None"):
        raise InvalidSpec("spec.rollout.strategy must be Restart or None")
    for i, target in enumerate(rollout.targets):
        if (target.name is None) == (not target.match_labels):
            raise InvalidSpec(f"spec.rollout.targets[{i}] needs exactly one of name or selector")
        if target.name is not None and target.kind is None:
            raise InvalidSpec(f"spec.rollout.targets[{i}].kind is required with a name")
    return rollout


def _unused(raw: Any) -> UnusedPolicy:
    if raw is None:
        return UnusedPolicy()
    if not isinstance(raw, dict):
        raise InvalidSpec("spec.unused must be an object")
    periods = {
        key: _duration(raw[key], f"spec.unused.{key}") if raw.get(key) is not None else None
        for key in ("markAfter", "suspendAfter", "revokeAfter")
    }
    if periods["revokeAfter"] is not None and periods["suspendAfter"] is None:
        raise InvalidSpec(
            "spec.unused.revokeAfter needs spec.unused.suspendAfter (revocation follows suspension)"
        )
    return UnusedPolicy(
        mark_after=periods["markAfter"] or UnusedPolicy().mark_after,
        suspend_after=periods["suspendAfter"],
        revoke_after=periods["revokeAfter"],
    )


@dataclass(frozen=True)
class TokenStatus:
    """What status says about the current token and its renewal; re-derived after every restart."""

    token_id: str | None = None
    key_id: str | None = None
    token_hash: str | None = None
    issued_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None
    renewal_time: datetime.datetime | None = None
    revision: int = 0
    failed_attempts: int = 0
    last_failure_time: datetime.datetime | None = None
    last_handled_rotate_request: str | None = None
    observed_generation: int | None = None
    conditions: tuple[Mapping[str, Any], ...] = ()
    verification: Mapping[str, Any] | None = None  # the last successful spec.verify check
    usage: Usage | None = None


def parse_status(status: Mapping[str, Any] | None) -> TokenStatus:
    status = status or {}
    return TokenStatus(
        token_id=status.get("tokenId"),
        key_id=status.get("keyId"),
        token_hash=status.get("tokenHash"),
        issued_at=parse_time(status.get("issuedAt")),
        expires_at=parse_time(status.get("expiresAt")),
        renewal_time=parse_time(status.get("renewalTime")),
        revision=int(status.get("revision") or 0),
        failed_attempts=int(status.get("failedAttempts") or 0),
        last_failure_time=parse_time(status.get("lastFailureTime")),
        last_handled_rotate_request=status.get("lastHandledRotateRequest"),
        observed_generation=status.get("observedGeneration"),
        conditions=tuple(status.get("conditions") or ()),
        verification=status.get("verification"),
        usage=parse_usage(status.get("usage")),
    )
