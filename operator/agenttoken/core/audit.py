"""Periodic review: what each AgentToken grants, who uses it, and what looks wrong. Pure.

`agenttoken audit` feeds it the AgentTokens it lists; each becomes a row (scopes, audience,
TTL, issuer, consumers, last rotation, days since last use) with findings. Every finding has a
severity so a pipeline can gate on them (`--fail-on`):

| finding      | severity | when                                                              |
|--------------|----------|-------------------------------------------------------------------|
| BroadScope   | high     | a scope holds a wildcard (`*`) or an admin-like word (configurable) |
| Expired      | high     | the current token has expired (renewal suspended or failing)      |
| LongTTL      | medium   | spec.ttl is above the threshold (default 24h)                     |
| Unused       | medium   | the operator marked it: no consumer for spec.unused.markAfter     |
| NoConsumers  | low      | no workload consumes its Secret right now                         |
| NeverRotated | low      | only one token was ever issued and the object is older than the rotation age |
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from agenttoken import api
from agenttoken.core.times import parse_time
from agenttoken.core.timing import parse_duration
from agenttoken.core.usage import FLAGGED, IN_USE, parse_usage

SEVERITIES: Final = ("low", "medium", "high")
DEFAULT_ADMIN_WORDS: Final = ("admin", "administrator", "root", "superuser", "sudo", "owner")


@dataclass(frozen=True)
class ReviewPolicy:
    admin_words: tuple[str, ...] = DEFAULT_ADMIN_WORDS
    max_ttl: datetime.timedelta = datetime.timedelta(hours=24)
    rotation_age: datetime.timedelta = datetime.timedelta(hours=168)


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    message: str


@dataclass(frozen=True)
class Row:
    namespace: str
    name: str
    scopes: tuple[str, ...]
    audience: tuple[str, ...]
    ttl: str
    issuer: str
    consumers: tuple[str, ...]
    revision: int
    last_rotation: str | None
    days_since_last_use: int | None
    usage: str | None
    expires_at: str | None
    findings: tuple[Finding, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "scopes": list(self.scopes),
            "audience": list(self.audience),
            "ttl": self.ttl,
            "issuer": self.issuer,
            "consumers": list(self.consumers),
            "revision": self.revision,
            "lastRotation": self.last_rotation,
            "daysSinceLastUse": self.days_since_last_use,
            "usage": self.usage,
            "expiresAt": self.expires_at,
            "findings": [{"id": f.id, "severity": f.severity, "message": f.message} for f in self.findings],
        }


def broad_scope(scope: str, admin_words: Iterable[str]) -> str | None:
    """Why `scope` is broad: a wildcard, or a word (split on : . / - _) that names an admin."""
    if "*" in scope:
        return "wildcard"
    words = {w.lower() for w in re.split(r"[:./_-]", scope) if w}
    hit = sorted(words & {w.lower() for w in admin_words})
    return f"admin-like ({hit[0]})" if hit else None


def review(obj: Mapping[str, Any], policy: ReviewPolicy, now: datetime.datetime) -> Row:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    scopes = tuple(spec.get("scopes") or ())
    issuer = spec.get("issuerRef") or {}
    consumers = tuple(f"{c.get('kind')}/{c.get('name')}" for c in status.get("consumers") or [])
    usage = parse_usage(status.get("usage"))
    revision = int(status.get("revision") or 0)
    findings: list[Finding] = []

    for scope in scopes:
        why = broad_scope(scope, policy.admin_words)
        if why:
            findings.append(Finding("BroadScope", "high", f"scope {scope!r} is {why}"))

    expires = parse_time(status.get("expiresAt"))
    if expires is not None and expires <= now:
        findings.append(Finding("Expired", "high", f"the current token expired at {status.get('expiresAt')}"))

    ttl_text = str(spec.get("ttl") or "1h")
    try:
        ttl: datetime.timedelta | None = parse_duration(ttl_text)
    except ValueError:
        ttl = None
    if ttl is not None and ttl > policy.max_ttl:
        findings.append(Finding("LongTTL", "medium", f"ttl {ttl_text} is above {_hours(policy.max_ttl)}"))

    # The operator's judgement (running pods, fresh reads) when it has one; else the listed consumers.
    in_use = usage.state == IN_USE if usage is not None else bool(consumers)
    if usage is not None and usage.state in FLAGGED:
        findings.append(
            Finding(
                "Unused",
                "medium",
                f"marked {usage.state} by the operator: no consumer since {status['usage'].get('unusedSince')}",
            )
        )
    elif not in_use:
        findings.append(Finding("NoConsumers", "low", "no workload consumes its Secret"))

    created = parse_time(meta.get("creationTimestamp"))
    if revision <= 1 and created is not None and now - created >= policy.rotation_age:
        findings.append(
            Finding(
                "NeverRotated",
                "low",
                f"{'one token' if revision else 'no token'} issued since {meta.get('creationTimestamp')}",
            )
        )

    days: int | None = None
    if in_use:
        days = 0
    elif usage is not None and usage.last_consumed_at is not None:
        days = max(0, (now - usage.last_consumed_at).days)
    return Row(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        scopes=scopes,
        audience=tuple(spec.get("audience") or ()),
        ttl=ttl_text,
        issuer=f"{issuer.get('kind', api.CLUSTERTOKENISSUER_KIND)}/{issuer.get('name', api.BUILTIN_ISSUER_NAME)}",
        consumers=consumers,
        revision=revision,
        last_rotation=status.get("issuedAt"),
        days_since_last_use=days,
        usage=usage.state if usage else None,
        expires_at=status.get("expiresAt"),
        findings=tuple(sorted(findings, key=lambda f: (-SEVERITIES.index(f.severity), f.id))),
    )


def _hours(delta: datetime.timedelta) -> str:
    return f"{delta.total_seconds() / 3600:g}h"


def failing(rows: Sequence[Row], fail_on: str | None) -> list[Finding]:
    """Findings at or above `fail_on` (None: never fail)."""
    if fail_on is None:
        return []
    floor = SEVERITIES.index(fail_on)
    return [f for r in rows for f in r.findings if SEVERITIES.index(f.severity) >= floor]


def counts(rows: Sequence[Row]) -> dict[str, int]:
    return {s: sum(1 for r in rows for f in r.findings if f.severity == s) for s in SEVERITIES}
