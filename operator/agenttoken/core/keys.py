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

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Final

from joserfc import jwk
from joserfc.errors import JoseError

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
