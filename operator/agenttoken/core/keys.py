"""Signing keys for access tokens and their rotation with overlap.

Resource servers cache the issuer's JWKS, so a key must be published before it signs anything
("publish ahead") and must stay published after it stops signing until every token it signed has
expired. plan_rotation is a pure decision over a KeyRing and the injected time: the operator runs it
on every reconcile, stores the result in a Secret, and publishes ring.jwks(now). Running it twice at
the same time changes nothing, so a crash between planning and storing is harmless.

Algorithms: ES256 (P-256, the default: small and fast), RS256 (RSA 2048, the RFC 7518 minimum, for
verifiers that only speak RSA; 2048 keeps key generation fast) and EdDSA (Ed25519).

Purposes: a ring signs either access tokens (PURPOSE_ACCESS, published in the JWKS every verifier
trusts) or OAuth client assertions (PURPOSE_ASSERTION, published in a separate JWKS that only the
OAuth server is configured with). A verifier of access tokens never sees an assertion key, so an
assertion (or anything else signed by that key) can never pass as an access token.

Emergency revocation (`revoke_key`): the key's private material leaves the ring at once and only a
tombstone (kid, time) stays, forever: a revoked kid is never published or used to sign again.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Final

from joserfc import jwk
from joserfc.errors import JoseError

from agenttoken.core.timing import format_duration
from agenttoken_sdk.jose import SUPPORTED_ALGORITHMS, jws_registry

__all__ = [
    "DEFAULT_ALGORITHM",
    "PURPOSES",
    "PURPOSE_ACCESS",
    "PURPOSE_ASSERTION",
    "SUPPORTED_ALGORITHMS",
    "KeyPolicy",
    "KeyRing",
    "RevokedKey",
    "SigningKey",
    "generate_key",
    "jws_registry",
    "plan_rotation",
    "revoke_key",
]

DEFAULT_ALGORITHM: Final = "ES256"

# JWS algorithm -> (JWK key type, curve or RSA size, JWK "crv" if any).
_KEY_SPECS: Final[dict[str, tuple[str, str | int, str | None]]] = {
    "ES256": ("EC", "P-256", "P-256"),
    "RS256": ("RSA", 2048, None),
    "EdDSA": ("OKP", "Ed25519", "Ed25519"),
}

_RING_FORMAT_VERSION: Final = 1

# What a ring's keys sign. Stored in the ring, so a ring can never be loaded for the other purpose.
PURPOSE_ACCESS: Final = "access-token"
PURPOSE_ASSERTION: Final = "client-assertion"
PURPOSES: Final = (PURPOSE_ACCESS, PURPOSE_ASSERTION)


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in _KEY_SPECS:
        raise ValueError(
            f"unsupported signing algorithm {algorithm!r}; expected one of {', '.join(SUPPORTED_ALGORITHMS)}"
        )


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")


@dataclass(frozen=True)
class SigningKey:
    """One signing key and its schedule.

    kid is the RFC 7638 thumbprint of the public key. The key is published from the moment it is in the
    ring, signs from activates_at, and stops signing at retired_at (when a newer key took over). The
    private JWK never appears in repr; treat the dict as read-only.
    """

    kid: str
    algorithm: str
    created_at: datetime
    activates_at: datetime
    private_jwk: dict[str, Any] = field(repr=False, hash=False)
    retired_at: datetime | None = None

    def __post_init__(self) -> None:
        _check_algorithm(self.algorithm)
        _require_aware("created_at", self.created_at)
        _require_aware("activates_at", self.activates_at)
        if self.retired_at is not None:
            _require_aware("retired_at", self.retired_at)

    @cached_property
    def joserfc_key(self) -> jwk.Key:
        """The private key as a joserfc key object, ready to sign with (cached)."""
        return jwk.import_key(
            self.private_jwk, parameters={"kid": self.kid, "alg": self.algorithm, "use": "sig"}
        )

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK, with kid, alg and use=sig: what goes into the JWKS."""
        public = dict(self.joserfc_key.as_dict(private=False))
        public.update({"kid": self.kid, "alg": self.algorithm, "use": "sig"})
        return public

    def is_pending(self, now: datetime) -> bool:
        """Published but not signing yet."""
        return self.retired_at is None and now < self.activates_at

    def is_active(self, now: datetime) -> bool:
        """Allowed to sign at now (the ring signs with the newest active key)."""
        return self.activates_at <= now and (self.retired_at is None or now < self.retired_at)

    def _order(self) -> tuple[datetime, datetime, str]:
        return (self.activates_at, self.created_at, self.kid)


def generate_key(algorithm: str, now: datetime, *, activates_at: datetime | None = None) -> SigningKey:
    """A fresh key for algorithm, created at now and signing from activates_at (default: now)."""
    _check_algorithm(algorithm)
    _require_aware("now", now)
    key_type, size, _ = _KEY_SPECS[algorithm]
    key = jwk.JWKRegistry.generate_key(key_type, size, private=True)
    return SigningKey(
        kid=key.thumbprint(),
        algorithm=algorithm,
        created_at=now,
        activates_at=now if activates_at is None else activates_at,
        private_jwk=dict(key.as_dict(private=True)),
    )


@dataclass(frozen=True)
class KeyPolicy:
    """How often to rotate and how long keys overlap.

    publish_ahead should exceed how long verifiers cache the JWKS. A retired key stays published for
    max_token_ttl + leeway, so every token it signed can still be verified until it expires.
    """

    algorithm: str = DEFAULT_ALGORITHM
    rotation_period: timedelta = timedelta(days=30)
    publish_ahead: timedelta = timedelta(minutes=10)
    max_token_ttl: timedelta = timedelta(hours=168)
    leeway: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        _check_algorithm(self.algorithm)
        if self.rotation_period <= timedelta(0):
            raise ValueError("rotation_period must be positive")
        if not timedelta(0) <= self.publish_ahead < self.rotation_period:
            raise ValueError("publish_ahead must be at least zero and shorter than rotation_period")
        if self.max_token_ttl <= timedelta(0):
            raise ValueError("max_token_ttl must be positive")
        if self.leeway < timedelta(0):
            raise ValueError("leeway must not be negative")

    @property
    def retention(self) -> timedelta:
        """How long a retired key stays published."""
        return self.max_token_ttl + self.leeway


_DEFAULT_RETENTION: Final = KeyPolicy().retention


@dataclass(frozen=True)
class RevokedKey:
    """A tombstone: this kid was revoked at revoked_at and must never be published or sign again."""

    kid: str
    revoked_at: datetime

    def __post_init__(self) -> None:
        _require_aware("revoked_at", self.revoked_at)


@dataclass(frozen=True)
class KeyRing:
    """All keys an issuer knows for one purpose, the tombstones of revoked keys, and how long retired
    keys stay published (set by plan_rotation)."""

    keys: tuple[SigningKey, ...] = ()
    retention: timedelta = _DEFAULT_RETENTION
    purpose: str = PURPOSE_ACCESS
    revoked: tuple[RevokedKey, ...] = ()

    def __post_init__(self) -> None:
        kids = [k.kid for k in self.keys]
        if len(set(kids)) != len(kids):
            raise ValueError("key ring has duplicate key ids")
        if self.retention < timedelta(0):
            raise ValueError("retention must not be negative")
        if self.purpose not in PURPOSES:
            raise ValueError(f"key ring purpose must be one of {', '.join(PURPOSES)}")
        if set(kids) & self.revoked_kids:
            raise ValueError("key ring holds a revoked key")

    @property
    def revoked_kids(self) -> frozenset[str]:
        return frozenset(r.kid for r in self.revoked)

    def signing_key(self, now: datetime) -> SigningKey | None:
        """The newest active key (latest activates_at <= now, not retired at now), or None."""
        active = [k for k in self.keys if k.is_active(now)]
        return max(active, key=SigningKey._order, default=None)

    def pending(self, now: datetime) -> list[SigningKey]:
        """Keys published ahead that do not sign yet, oldest first."""
        return sorted((k for k in self.keys if k.is_pending(now)), key=SigningKey._order)

    def published(self, now: datetime) -> list[SigningKey]:
        """Keys verifiers must know at now: pending, active, or retired less than `retention` ago.

        Newest first, so the signing key (or the key about to take over) leads the JWKS.
        """
        live = [k for k in self.keys if k.retired_at is None or now <= k.retired_at + self.retention]
        return sorted(live, key=SigningKey._order, reverse=True)

    def jwks(self, now: datetime) -> dict[str, Any]:
        """The public JWK Set to serve at now. Never contains private key members."""
        return {"keys": [k.public_jwk() for k in self.published(now)]}

    def to_json(self) -> str:
        """Serialize for a Kubernetes Secret. CONTAINS PRIVATE KEYS: only ever write it to a Secret."""
        doc = {
            "version": _RING_FORMAT_VERSION,
            "purpose": self.purpose,
            "revoked": [{"kid": r.kid, "revokedAt": r.revoked_at.isoformat()} for r in self.revoked],
            "retentionSeconds": self.retention.total_seconds(),
            "keys": [
                {
                    "kid": k.kid,
                    "alg": k.algorithm,
                    "createdAt": k.created_at.isoformat(),
                    "activatesAt": k.activates_at.isoformat(),
                    "retiredAt": k.retired_at.isoformat() if k.retired_at else None,
                    "jwk": k.private_jwk,
                }
                for k in self.keys
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, *, purpose: str = PURPOSE_ACCESS) -> KeyRing:
        """Parse to_json output. Every kid is checked against its key's thumbprint, and the ring's
        purpose against `purpose` (a ring written before purposes existed signs access tokens).

        Errors name the field that is wrong, never key material.
        """
        try:
            doc = json.loads(text)
        except ValueError:
            raise ValueError("key ring is not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("version") != _RING_FORMAT_VERSION:
            raise ValueError(f"key ring must be a JSON object with version {_RING_FORMAT_VERSION}")
        raw_keys = doc.get("keys")
        if not isinstance(raw_keys, list):
            raise ValueError("key ring field 'keys' must be a list")
        retention = doc.get("retentionSeconds")
        if isinstance(retention, bool) or not isinstance(retention, int | float):
            raise ValueError("key ring field 'retentionSeconds' must be a number")
        stored_purpose = doc.get("purpose", PURPOSE_ACCESS)
        if stored_purpose != purpose:
            raise ValueError(f"key ring purpose is {stored_purpose!r}, expected {purpose!r}")
        raw_revoked = doc.get("revoked", [])
        if not isinstance(raw_revoked, list):
            raise ValueError("key ring field 'revoked' must be a list")
        revoked = tuple(_revoked_from_doc(i, item) for i, item in enumerate(raw_revoked))
        keys = tuple(_key_from_doc(i, item) for i, item in enumerate(raw_keys))
        return cls(keys=keys, retention=timedelta(seconds=retention), purpose=purpose, revoked=revoked)


def _revoked_from_doc(index: int, item: Any) -> RevokedKey:
    where = f"revoked[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("kid"), str) or not item["kid"]:
        raise ValueError(f"{where} must be an object with a kid")
    return RevokedKey(kid=item["kid"], revoked_at=_parse_time(f"{where}.revokedAt", item.get("revokedAt")))


def _parse_time(where: str, value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{where} is not an ISO 8601 time") from None
    _require_aware(where, parsed)
    return parsed


def _key_from_doc(index: int, item: Any) -> SigningKey:
    where = f"keys[{index}]"
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object")
    algorithm = item.get("alg")
    if not isinstance(algorithm, str) or algorithm not in _KEY_SPECS:
        raise ValueError(f"{where}.alg must be one of {', '.join(SUPPORTED_ALGORITHMS)}")
    private_jwk = item.get("jwk")
    if not isinstance(private_jwk, dict):
        raise ValueError(f"{where}.jwk must be an object")
    key_type, _, curve = _KEY_SPECS[algorithm]
    try:
        key = jwk.import_key(private_jwk)
    except (JoseError, ValueError, TypeError, KeyError):
        raise ValueError(f"{where}.jwk is not a valid JWK") from None
    if (
        key.key_type != key_type
        or not key.is_private
        or (curve is not None and private_jwk.get("crv") != curve)
    ):
        raise ValueError(f"{where}.jwk is not a private {algorithm} key")
    if item.get("kid") != key.thumbprint():
        raise ValueError(f"{where}.kid does not match the key's RFC 7638 thumbprint")
    retired = item.get("retiredAt")
    return SigningKey(
        kid=item["kid"],
        algorithm=algorithm,
        created_at=_parse_time(f"{where}.createdAt", item.get("createdAt")),
        activates_at=_parse_time(f"{where}.activatesAt", item.get("activatesAt")),
        private_jwk=dict(private_jwk),
        retired_at=None if retired is None else _parse_time(f"{where}.retiredAt", retired),
    )


KeyGenerator = Callable[[str, datetime], SigningKey]


def _retire_superseded(keys: list[SigningKey], now: datetime) -> tuple[list[SigningKey], list[str]]:
    """Retire every active key that a newer key has taken over from; the newest stays signing.

    A key retires at the activation time of the next newer key, which is when signing_key() stopped
    choosing it (even if nobody ran plan_rotation at that moment).
    """
    started = sorted((k for k in keys if k.activates_at <= now), key=SigningKey._order)
    retire_at: dict[str, datetime] = {}
    activated: list[str] = []
    for older, newer in itertools.pairwise(started):
        if older.retired_at is None:
            retire_at[older.kid] = newer.activates_at
            if newer.kid not in activated:
                activated.append(newer.kid)
    reasons = [f"activated key {kid}" for kid in activated]
    result = []
    for k in keys:
        if k.kid in retire_at:
            k = replace(k, retired_at=retire_at[k.kid])
            reasons.append(f"retired key {k.kid} (superseded at {_fmt(retire_at[k.kid])})")
        result.append(k)
    return result, reasons


def _fmt(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def plan_rotation(
    ring: KeyRing,
    policy: KeyPolicy,
    now: datetime,
    *,
    generate: KeyGenerator = generate_key,
) -> tuple[KeyRing, list[str]]:
    """Decide the ring for now: returns (new ring, human-readable reasons; empty if nothing changed).

    1. Activate: a key whose activates_at has come takes over; the key it replaces is retired at that
       activation time.
    2. Generate: with no key able to sign, create one that signs at once (bootstrap: there is nothing
       to overlap with). Otherwise, with nothing pending, create a key that signs from
       now + publish_ahead when the signing key has signed for rotation_period - publish_ahead, or when
       its algorithm differs from policy.algorithm.
       A pending key of a previous algorithm is still allowed to activate; the next plan rotates again.
    3. Remove keys retired more than max_token_ttl + leeway ago.

    Idempotent: plan_rotation(plan_rotation(r, p, t)[0], p, t) returns an equal ring and no reasons.
    `generate` is injectable for tests; it is the only source of randomness.
    """
    _require_aware("now", now)
    keys, reasons = _retire_superseded(list(ring.keys), now)
    generate = _never_revoked(generate, ring.revoked_kids)

    current = KeyRing(tuple(keys), ring.retention).signing_key(now)
    has_pending = any(k.is_pending(now) for k in keys)
    new_key: SigningKey | None = None
    if current is None:
        new_key = generate(policy.algorithm, now)
        reasons.append(
            f"generated key {new_key.kid} ({policy.algorithm}; no key could sign, so it signs at once)"
        )
    elif not has_pending:
        due = now - current.activates_at >= policy.rotation_period - policy.publish_ahead
        if current.algorithm != policy.algorithm or due:
            activates = now + policy.publish_ahead
            new_key = replace(generate(policy.algorithm, now), activates_at=activates)
            why = (
                f"algorithm change {current.algorithm} -> {policy.algorithm}"
                if current.algorithm != policy.algorithm
                else f"key {current.kid} is due for rotation"
            )
            reasons.append(
                f"generated key {new_key.kid} ({policy.algorithm}; {why}; "
                f"publish ahead until {_fmt(activates)})"
            )
    if new_key is not None:
        keys.append(new_key)
        # With publish_ahead == 0 the new key takes over at once; do it now so a second call is a no-op.
        keys, more = _retire_superseded(keys, now)
        reasons.extend(more)

    kept: list[SigningKey] = []
    for k in keys:
        if k.retired_at is not None and k.retired_at + policy.retention < now:
            reasons.append(f"removed key {k.kid} (retired at {_fmt(k.retired_at)}; its tokens have expired)")
        else:
            kept.append(k)
    if policy.retention != ring.retention:
        reasons.append(f"retention of retired keys set to {format_duration(policy.retention)}")
    return replace(ring, keys=tuple(kept), retention=policy.retention), reasons


def _never_revoked(generate: KeyGenerator, revoked: frozenset[str]) -> KeyGenerator:
    """A generator that never returns a revoked kid (a thumbprint collision is astronomically
    unlikely; the check makes "never comes back" a property of the code, not of chance)."""

    def fresh(algorithm: str, now: datetime) -> SigningKey:
        for _ in range(8):
            key = generate(algorithm, now)
            if key.kid not in revoked:
                return key
        raise RuntimeError("the key generator keeps returning revoked key ids")

    return fresh


def revoke_key(
    ring: KeyRing,
    kid: str,
    policy: KeyPolicy,
    now: datetime,
    *,
    generate: KeyGenerator = generate_key,
) -> tuple[KeyRing, list[str]]:
    """Emergency revocation of `kid`: returns (new ring, reasons; empty if it was already revoked).

    The key and its private material leave the ring at once (so it is neither published nor able
    to sign) and a tombstone stays forever. When the ring has no signing key left, a fresh key
    signs at once: there is no time to publish ahead, verifiers fetch the JWKS again on an unknown
    kid. Older keys the revoked key had superseded stay retired (never signing again). A kid the
    ring does not hold is still tombstoned: revoking ahead (e.g. a kid seen in a leaked token) is
    allowed. Idempotent, like plan_rotation.
    """
    _require_aware("now", now)
    if kid in ring.revoked_kids:
        return ring, []
    held = [k for k in ring.keys if k.kid == kid]
    # Retire every started key first, so removing the newest cannot bring an older one back.
    keys, _ = _retire_superseded(list(ring.keys), now)
    keys = [k for k in keys if k.kid != kid]
    tombstones = (*ring.revoked, RevokedKey(kid, now))
    reasons = [f"revoked key {kid}" + ("" if held else " (not in the ring: tombstoned ahead)")]
    revoked_ring = replace(ring, keys=tuple(keys), revoked=tombstones)
    if revoked_ring.signing_key(now) is None:
        fresh = _never_revoked(generate, revoked_ring.revoked_kids)(policy.algorithm, now)
        keys, _ = _retire_superseded([*keys, fresh], now)
        reasons.append(
            f"generated key {fresh.kid} ({policy.algorithm}; replaces revoked key {kid}, signs at once)"
        )
        revoked_ring = replace(revoked_ring, keys=tuple(keys))
    return revoked_ring, reasons
