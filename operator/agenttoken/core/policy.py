"""Does an AgentToken's request fit its issuer's policy? A chain of pure checks, first miss wins.

Every claim a namespace user sets and an API may trust has a control here: `sub` (allowedSubjects,
and the rule no policy can lift: `agenttoken:<namespace>:...` subjects belong to that namespace),
`aud` (allowedAudiences), `scope` (allowedScopes), `env` (allowedEnvironments), the lifetime
(minTTL/maxTTL), and for cluster issuers the namespace itself (namespaceSelector).

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
from agenttoken.core.tokens import default_subject

# Placeholders an allowedSubjects pattern may hold, replaced by the AgentToken's own names.
PLACEHOLDERS = ("{namespace}", "{name}")
# Subjects under this prefix are the operator's canonical ones (`agenttoken:<namespace>:<name>`).
CANONICAL_PREFIX = "agenttoken:"


@dataclass(frozen=True)
class IssuerPolicy:
    allowed_scopes: tuple[str, ...] | None = None  # None: any scope
    allowed_audiences: tuple[str, ...] | None = None  # None: any audience
    min_ttl: datetime.timedelta | None = None
    max_ttl: datetime.timedelta | None = None
    namespace_selector: Mapping[str, str] | None = None  # cluster issuers: matchLabels
    # Subjects beyond the canonical one (always allowed); globs with {namespace}/{name}.
    allowed_subjects: tuple[str, ...] = ()
    allowed_environments: tuple[str, ...] | None = None  # None: any environment


@dataclass(frozen=True)
class Request:
    namespace: str
    namespace_labels: Mapping[str, str]
    scopes: Sequence[str]
    audience: Sequence[str]
    ttl: datetime.timedelta
    name: str = ""  # the AgentToken's name (for {name} and its canonical subject)
    subject: str | None = None  # None: the canonical subject
    environment: str | None = None


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


def other_namespace(subject: str, namespace: str) -> bool:
    """Does `subject` claim to be an AgentToken of another namespace? (Case-insensitive: an API
    may compare subjects that way.) No issuer policy can allow that."""
    folded = subject.lower()
    return folded.startswith(CANONICAL_PREFIX) and not folded.startswith(f"{CANONICAL_PREFIX}{namespace}:")


def subject_patterns(policy: IssuerPolicy, namespace: str, name: str) -> tuple[str, ...]:
    """The subjects this AgentToken may carry: its canonical one, then the policy's patterns with
    the placeholders replaced (names hold no glob characters, so they stay literal)."""
    expanded = tuple(
        p.replace("{namespace}", namespace).replace("{name}", name) for p in policy.allowed_subjects
    )
    return (default_subject(namespace, name), *expanded)


def _subject(policy: IssuerPolicy, req: Request) -> Violation | None:
    subject = req.subject or default_subject(req.namespace, req.name)
    if other_namespace(subject, req.namespace):
        return Violation(
            "spec.subject",
            subject,
            f"subject {subject!r} names another namespace's AgentToken; no issuer may grant that "
            f"(subjects under {CANONICAL_PREFIX!r} must start with '{CANONICAL_PREFIX}{req.namespace}:')",
        )
    allowed = subject_patterns(policy, req.namespace, req.name)
    if req.subject is None or _allowed(subject, allowed):
        return None
    return Violation(
        "spec.subject",
        subject,
        f"subject {subject!r} is not allowed by the issuer (allowed: {', '.join(allowed)})",
    )


def _environment(policy: IssuerPolicy, req: Request) -> Violation | None:
    if policy.allowed_environments is None or req.environment is None:
        return None
    if _allowed(req.environment, policy.allowed_environments):
        return None
    return Violation(
        "spec.environment",
        req.environment,
        f"environment {req.environment!r} is not allowed by the issuer "
        f"(allowed: {', '.join(policy.allowed_environments) or 'none'})",
    )


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
    _subject,
    _scopes,
    _audience,
    _environment,
    _ttl,
)


def check(policy: IssuerPolicy, req: Request) -> Violation | None:
    for rule in CHECKS:
        violation = rule(policy, req)
        if violation is not None:
            return violation
    return None


def _strings(value: object) -> list[str]:
    """A claim that is a string or a list of strings (RFC 7519 `aud`), as a list; anything
    else in the list is kept as its repr, so it is refused rather than ignored."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v if isinstance(v, str) else repr(v) for v in value]
    return []


def check_claims(policy: IssuerPolicy, req: Request, claims: Mapping[str, object]) -> Violation | None:
    """Does a token minted elsewhere (a webhook's JWT) carry only claims the policy allows?

    The issuer answered for `req`; what it put into `sub`, `aud`, `scope` and `env` is checked
    like a request would be (a claim it left out is not checked: it grants nothing)."""
    sub, aud, scope, env = (claims.get(k) for k in ("sub", "aud", "scope", "env"))
    returned = Request(
        namespace=req.namespace,
        namespace_labels=req.namespace_labels,
        scopes=scope.split() if isinstance(scope, str) else (),
        audience=_strings(aud),
        ttl=req.ttl,
        name=req.name,
        # A subject that is not a string cannot be compared: refuse it as given.
        subject=sub if isinstance(sub, str) else None if sub is None else repr(sub),
        environment=env if isinstance(env, str) else None,
    )
    for rule in (_subject, _scopes, _audience, _environment):
        violation = rule(policy, returned)
        if violation is not None:
            return violation
    return None
