"""Does an AgentToken's request fit its issuer's policy? A chain of pure checks, first miss wins.

Each check names the offending field and value, so the reason reaches the AgentToken's Ready
condition (`PolicyViolation`) and a Warning Event verbatim. Globs (`tickets:*`,
`https://*.example.com`) know two wildcards, `*` (any run of characters) and `?` (one character);
everything else is literal and case-sensitive. The chart's admission policy translates globs to
regular expressions the same way in CEL, so admission and reconcile agree.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agenttoken.core.timing import format_duration


@dataclass(frozen=True)
class IssuerPolicy:
    allowed_scopes: tuple[str, ...] | None = None  # None: any scope
    allowed_audiences: tuple[str, ...] | None = None  # None: any audience
    min_ttl: datetime.timedelta | None = None
    max_ttl: datetime.timedelta | None = None
    namespace_selector: Mapping[str, str] | None = None  # cluster issuers: matchLabels


@dataclass(frozen=True)
class Request:
    namespace: str
    namespace_labels: Mapping[str, str]
    scopes: Sequence[str]
    audience: Sequence[str]
    ttl: datetime.timedelta


@dataclass(frozen=True)
class Violation:
    field: str
    value: str
    message: str

    def __str__(self) -> str:
        return self.message


@functools.lru_cache(maxsize=1024)
def glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


def _allowed(value: str, patterns: Sequence[str]) -> bool:
    return any(glob_regex(p).fullmatch(value) for p in patterns)


def _namespace(policy: IssuerPolicy, req: Request) -> Violation | None:
    selector = policy.namespace_selector
    if selector and any(req.namespace_labels.get(k) != v for k, v in selector.items()):
        wanted = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return Violation(
            "metadata.namespace",
            req.namespace,
            f"namespace {req.namespace!r} is not selected by the issuer ({wanted})",
        )
    return None


def _scopes(policy: IssuerPolicy, req: Request) -> Violation | None:
    if policy.allowed_scopes is None:
        return None
    for scope in req.scopes:
        if not _allowed(scope, policy.allowed_scopes):
            return Violation(
                "spec.scopes",
                scope,
                f"scope {scope!r} is not allowed by the issuer (allowed: {', '.join(policy.allowed_scopes) or 'none'})",
            )
    return None


def _audience(policy: IssuerPolicy, req: Request) -> Violation | None:
    if policy.allowed_audiences is None:
        return None
    for aud in req.audience:
        if not _allowed(aud, policy.allowed_audiences):
            return Violation(
                "spec.audience",
                aud,
                f"audience {aud!r} is not allowed by the issuer (allowed: {', '.join(policy.allowed_audiences) or 'none'})",
            )
    return None


def _ttl(policy: IssuerPolicy, req: Request) -> Violation | None:
    ttl = format_duration(req.ttl)
    if policy.min_ttl is not None and req.ttl < policy.min_ttl:
        return Violation(
            "spec.ttl", ttl, f"ttl {ttl} is below the issuer's minimum {format_duration(policy.min_ttl)}"
        )
    if policy.max_ttl is not None and req.ttl > policy.max_ttl:
        return Violation(
            "spec.ttl", ttl, f"ttl {ttl} is above the issuer's maximum {format_duration(policy.max_ttl)}"
        )
    return None


CHECKS: tuple[Callable[[IssuerPolicy, Request], Violation | None], ...] = (
    _namespace,
    _scopes,
    _audience,
    _ttl,
)


def check(policy: IssuerPolicy, req: Request) -> Violation | None:
    for rule in CHECKS:
        violation = rule(policy, req)
        if violation is not None:
            return violation
    return None
