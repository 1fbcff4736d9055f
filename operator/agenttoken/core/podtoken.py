"""Per-pod tokens (AgentToken `spec.delivery: PerPod`): the pure rules of the token endpoint.

A pod exchanges its projected ServiceAccount token (RFC 7523 jwt-bearer `assertion`) for an
access token of the AgentToken that grants its ServiceAccount. The endpoint (controllers.podtokens)
does the I/O; here: parsing the form, a cheap look at the assertion before the TokenReview, what
the review must say (authenticated, our audience, bound to a pod), scope narrowing, the pod
claims, errors per RFC 6749 section 5.2, a token-bucket rate limiter and a bounded time cache.

Nothing here keeps or returns an assertion or a token in a message: errors name the check only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from agenttoken_sdk.jose import POD_CLAIM, revoked_pod_id

__all__ = ["POD_CLAIM", "revoked_pod_id"]

JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH: Final = "/token"
# A projected ServiceAccount token is about 1 KB; anything far larger is not one.
MAX_ASSERTION_BYTES: Final = 16 * 1024
POD_NAME_EXTRA: Final = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA: Final = "authentication.kubernetes.io/pod-uid"
SA_PREFIX: Final = "system:serviceaccount:"


def token_endpoint(issuer: str) -> str:
    """The token endpoint's URL, also the audience a pod's projected token must carry."""
    return issuer.rstrip("/") + TOKEN_PATH


class GrantError(Exception):
    """A refused grant: `error` is the RFC 6749 section 5.2 code, `description` says which check
    failed (never a token), `status` the HTTP status, `retry_after` seconds for 429."""

    def __init__(
        self, error: str, description: str, status: int = 400, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.retry_after = retry_after

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class Grant:
    assertion: str = field(repr=False)
    scopes: tuple[str, ...] | None  # None: every scope the AgentToken grants
    agenttoken: str | None  # which AgentToken, when several grant the ServiceAccount


def parse_form(form: Mapping[str, str]) -> Grant:
    grant_type = form.get("grant_type")
    if not grant_type:
        raise GrantError("invalid_request", "grant_type is required")
    if grant_type != JWT_BEARER:
        raise GrantError("unsupported_grant_type", f"only {JWT_BEARER} is supported")
    assertion = form.get("assertion") or ""
    if not assertion:
        raise GrantError("invalid_request", "assertion is required")
    if len(assertion) > MAX_ASSERTION_BYTES:
        raise GrantError("invalid_request", "assertion is too large")
    scope = form.get("scope")
    return Grant(
        assertion=assertion,
        scopes=tuple(scope.split()) if scope is not None else None,
        agenttoken=form.get("agenttoken") or None,
    )


def assertion_hash(assertion: str) -> str:
    return hashlib.sha256(assertion.encode()).hexdigest()


def _audiences(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def precheck(assertion: str, audience: str, now: float) -> float:
    """A look at the assertion's claims WITHOUT its signature (the TokenReview checks that), to
    refuse the obviously wrong without asking the apiserver; returns its `exp`."""
    parts = assertion.split(".")
    if len(parts) != 3:
        raise GrantError("invalid_grant", "assertion is not a JWT")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        raise GrantError("invalid_grant", "assertion is not a JWT") from None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise GrantError("invalid_grant", "assertion has no exp")
    if exp <= now:
        raise GrantError("invalid_grant", "assertion has expired")
    if audience not in _audiences(claims.get("aud")):
        raise GrantError("invalid_grant", f"assertion audience must be {audience}")
    return float(exp)


@dataclass(frozen=True)
class PodIdentity:
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str


def _one(extra: Mapping[str, Any], key: str) -> str | None:
    value = extra.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) and value[0]:
        return value[0]
    return None


def pod_identity(review_status: Mapping[str, Any], audience: str) -> PodIdentity:
    """Who the TokenReview says the assertion belongs to: a ServiceAccount, bound to a pod."""
    if not review_status.get("authenticated"):
        raise GrantError("invalid_grant", "the cluster did not accept the assertion")
    if audience not in (review_status.get("audiences") or []):
        raise GrantError("invalid_grant", f"assertion audience must be {audience}")
    user = review_status.get("user") or {}
    username = user.get("username") or ""
    parts = username.removeprefix(SA_PREFIX).split(":")
    if not username.startswith(SA_PREFIX) or len(parts) != 2 or not all(parts):
        raise GrantError("invalid_grant", "assertion is not a ServiceAccount token")
    extra = user.get("extra") or {}
    name, uid = _one(extra, POD_NAME_EXTRA), _one(extra, POD_UID_EXTRA)
    if name is None or uid is None:
        raise GrantError("invalid_grant", "assertion is not bound to a pod (use a projected token)")
    return PodIdentity(namespace=parts[0], service_account=parts[1], pod_name=name, pod_uid=uid)


def narrow_scopes(requested: Sequence[str] | None, granted: Sequence[str]) -> tuple[str, ...]:
    if requested is None:
        return tuple(granted)
    extra = [s for s in requested if s not in granted]
    if extra:
        raise GrantError("invalid_scope", f"scope {extra[0]!r} is not granted to this ServiceAccount")
    return tuple(dict.fromkeys(requested))


def choose(candidates: Sequence[str], wanted: str | None, who: PodIdentity) -> str:
    """The AgentToken that grants the pod's ServiceAccount (the one named, when several do)."""
    sa = f"{who.namespace}/{who.service_account}"
    if wanted is not None:
        if wanted not in candidates:
            raise GrantError("invalid_grant", f"AgentToken {wanted!r} does not grant ServiceAccount {sa}")
        return wanted
    if not candidates:
        raise GrantError("invalid_grant", f"no AgentToken with delivery PerPod grants ServiceAccount {sa}")
    if len(candidates) > 1:
        raise GrantError("invalid_request", f"several AgentTokens grant {sa}; name one with agenttoken=")
    return candidates[0]


def pod_claims(who: PodIdentity) -> dict[str, Any]:
    """The pod's identity in the access token, shaped like a projected ServiceAccount token's
    own `kubernetes.io` claim, so tools that read one read the other."""
    return {
        POD_CLAIM: {
            "namespace": who.namespace,
            "pod": {"name": who.pod_name, "uid": who.pod_uid},
            "serviceaccount": {"name": who.service_account},
        }
    }


class RateLimiter:
    """Token buckets per key (a pod uid, a ServiceAccount): `rate` per second, `burst` at most.
    Bounded: the least recently used keys are dropped past `max_keys` (a dropped key starts full)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float) -> float | None:
        """None when allowed; else the seconds until one request is."""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        self._buckets[key] = (tokens - 1 if allowed else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return None if allowed else math.ceil((1 - tokens) / self.rate * 1000) / 1000


V = TypeVar("V")


class TimedCache(Generic[V]):
    """Values until a per-entry deadline, at most `max_entries` (oldest dropped first)."""

    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, key: str, now: float) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= now:
            del self._entries[key]
            return None
        return found[1]

    def expires(self, key: str) -> float:
        """When the entry for `key` runs out (0 when there is none)."""
        found = self._entries.get(key)
        return found[0] if found is not None else 0.0

    def put(self, key: str, value: V, until: float) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (until, value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
