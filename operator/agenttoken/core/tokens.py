"""What an agent's access token contains, and how it is signed and checked.

Tokens are RFC 9068 JWT access tokens ("typ": "at+jwt") so any OAuth resource server can validate them
with the issuer's JWKS. The claims are a pure function of the request, the issuer and the injected
time; only the signature and the default jti are random. A token is a bearer secret: it is never put
into a repr or an exception message. Use token_hash() wherever a token must be identified.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    DecodeError,
    ExceededSizeError,
    ExpiredTokenError,
    InvalidKeyCurveError,
    InvalidKeyIdError,
    InvalidPayloadError,
    JoseError,
    KeyParameterError,
    MissingAlgorithmError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import KeySet, KeySetSerialization

from agenttoken.core.keys import SUPPORTED_ALGORITHMS, SigningKey, jws_registry
from agenttoken_sdk.jose import CLAIM_NAMESPACE, TOKEN_TYPE

__all__ = [
    "CLAIM_NAMESPACE",
    "TOKEN_TYPE",
    "MintedToken",
    "TokenInvalid",
    "TokenRequest",
    "build_claims",
    "client_assertion",
    "default_subject",
    "mint",
    "token_hash",
    "verify",
]

# Claims RFC 9068 section 2.2 requires in every access token.
_REQUIRED_CLAIMS: Final = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")


def _is_scope_token(scope: str) -> bool:
    # RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    return bool(scope) and all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in scope)


@dataclass(frozen=True)
class TokenRequest:
    """Everything that decides a token's claims, taken from an AgentToken."""

    namespace: str
    name: str
    uid: str
    subject: str | None
    audience: tuple[str, ...]
    scopes: tuple[str, ...]
    ttl: timedelta
    environment: str | None = None
    allowed_cidrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for attr in ("namespace", "name", "uid"):
            if not getattr(self, attr):
                raise ValueError(f"token request: {attr} must not be empty")
        if not self.audience or not all(isinstance(a, str) and a for a in self.audience):
            raise ValueError("token request: audience must contain at least one non-empty string")
        bad = [s for s in self.scopes if not isinstance(s, str) or not _is_scope_token(s)]
        if bad:
            raise ValueError(f"token request: invalid scope(s) {bad!r} (no spaces, quotes or backslashes)")
        if self.ttl < timedelta(seconds=1):
            raise ValueError(f"token request: ttl must be at least 1s, got {self.ttl}")
        for cidr in self.allowed_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError:
                raise ValueError(f"token request: {cidr!r} is not a CIDR without host bits") from None


def default_subject(namespace: str, name: str) -> str:
    """The subject (and client_id) that identifies an AgentToken: "agenttoken:<namespace>:<name>"."""
    return f"agenttoken:{namespace}:{name}"


def build_claims(
    req: TokenRequest, *, issuer: str, now: datetime, jti: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JWT claims for req, issued by issuer at now.

    iat = nbf = now rounded down to the second; exp = iat + ttl (whole seconds). aud is always a list.
    scope is omitted when there are no scopes. The AgentToken's identity (namespace, name, uid) lives
    under the CLAIM_NAMESPACE object; the bindings verifiers check, `env` and `cidr`, are top-level
    claims (as [sdk]'s verifier and third-party APIs read them) and only present when set.
    """
    _require_aware("now", now)
    if not issuer:
        raise ValueError("issuer must not be empty")
    if not jti:
        raise ValueError("jti must not be empty")
    iat = math.floor(now.timestamp())
    client_id = default_subject(req.namespace, req.name)
    private: dict[str, Any] = {"namespace": req.namespace, "name": req.name, "uid": req.uid}
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": req.subject or client_id,
        "aud": list(req.audience),
        "exp": iat + int(req.ttl.total_seconds()),
        "nbf": iat,  # before iat, so a token from the future fails the more telling "nbf" check
        "iat": iat,
        "jti": jti,
        "client_id": client_id,
    }
    if req.scopes:
        claims["scope"] = " ".join(req.scopes)
    if req.environment:
        claims["env"] = req.environment
    if req.allowed_cidrs:
        claims["cidr"] = [str(ipaddress.ip_network(c, strict=True)) for c in req.allowed_cidrs]
    claims[CLAIM_NAMESPACE] = private
    # Extra claims (a per-pod token's pod) never replace a registered or the operator's own claim.
    claims.update({k: v for k, v in (extra or {}).items() if k not in claims})
    return claims


@dataclass(frozen=True)
class MintedToken:
    """A signed token and what is safe to record about it. The token itself is hidden from repr."""

    token: str = field(repr=False)
    token_id: str
    key_id: str
    issued_at: datetime
    expires_at: datetime
    claims: dict[str, Any] = field(hash=False)

    @property
    def token_hash(self) -> str:
        return token_hash(self.token)


def mint(
    req: TokenRequest,
    key: SigningKey,
    *,
    issuer: str,
    now: datetime,
    jti: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> MintedToken:
    """Sign a new access token for req with key. jti defaults to a random UUID."""
    token_id = jti if jti is not None else str(uuid.uuid4())
    claims = build_claims(req, issuer=issuer, now=now, jti=token_id, extra=extra)
    header = {"alg": key.algorithm, "kid": key.kid, "typ": TOKEN_TYPE}
    registry = jws_registry([key.algorithm])
    token = jwt.encode(header, claims, key.joserfc_key, algorithms=[key.algorithm], registry=registry)
    return MintedToken(
        token=token,
        token_id=token_id,
        key_id=key.kid,
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        claims=claims,
    )


def client_assertion(
    key: SigningKey,
    *,
    client_id: str,
    audience: str,
    now: datetime,
    lifetime: timedelta,
    jti: str | None = None,
) -> str:
    """A `private_key_jwt` client assertion (RFC 7523 section 2.2, OIDC Core section 9).

    iss = sub = the client id, aud = the authorization server's token endpoint, a fresh jti (servers
    reject a replayed assertion) and a short lifetime.
    """
    _require_aware("now", now)
    iat = math.floor(now.timestamp())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": iat,
        "exp": iat + int(lifetime.total_seconds()),
        "jti": jti or str(uuid.uuid4()),
    }
    header = {"alg": key.algorithm, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(
        header, claims, key.joserfc_key, algorithms=[key.algorithm], registry=jws_registry([key.algorithm])
    )


def token_hash(token: str) -> str:
    """The token's "sha256:<hex>" digest: identifies it in status and annotations without revealing it."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenInvalid(ValueError):
    """A token failed verification. `check` names what failed; the message never contains the token."""

    def __init__(self, check: str, reason: str) -> None:
        self.check = check
        self.reason = reason
        super().__init__(f"token invalid: {check}: {reason}")


_CLAIM_REASONS: Final = {
    "iss": "issuer does not match",
    "aud": "audience does not match",
    "nbf": "token is not valid yet",
    "iat": "token was issued in the future",
    "exp": "token has expired",
}


def verify(
    token: str,
    jwks: dict[str, Any],
    *,
    issuer: str,
    now: datetime,
    leeway: timedelta = timedelta(seconds=30),
    audience: str | None = None,
) -> dict[str, Any]:
    """Check token against the public JWK Set jwks ({"keys": [...]}) at now; return its claims.

    Checks, in order: the JWKS loads; the compact JWS is well formed, its alg is one we sign with, and
    its signature verifies with the JWKS key its kid names (that key's alg must match); typ is "at+jwt";
    a kid is present; the claims RFC 9068 requires are present; iss; exp/nbf/iat with leeway; aud when
    audience is given. Raises TokenInvalid naming the failed check.
    """
    _require_aware("now", now)
    try:
        keyset = KeySet.import_key_set(cast(KeySetSerialization, jwks))
    except (JoseError, ValueError, TypeError, KeyError):
        raise TokenInvalid("jwks", "the JWK Set could not be loaded") from None
    if not isinstance(token, str):
        raise TokenInvalid("format", "token must be a string")

    try:
        decoded = jwt.decode(token, keyset, algorithms=SUPPORTED_ALGORITHMS, registry=jws_registry())
    except InvalidKeyIdError:
        raise TokenInvalid("kid", "no key in the JWK Set matches the token's kid and alg") from None
    except (UnsupportedAlgorithmError, MissingAlgorithmError):
        raise TokenInvalid(
            "alg", f"algorithm not allowed (allowed: {', '.join(SUPPORTED_ALGORITHMS)})"
        ) from None
    except BadSignatureError:
        raise TokenInvalid("signature", "signature does not verify") from None
    except (KeyParameterError, InvalidKeyCurveError):
        raise TokenInvalid("key", "the key named by kid cannot verify this algorithm") from None
    except (DecodeError, InvalidPayloadError, ExceededSizeError):
        raise TokenInvalid("format", "not a well-formed compact JWS carrying a JSON object") from None
    except (JoseError, ValueError, TypeError, KeyError):
        raise TokenInvalid("header", "the token header was rejected") from None

    typ = decoded.header.get("typ")
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != TOKEN_TYPE:
        raise TokenInvalid("typ", f"header typ must be {TOKEN_TYPE!r}")
    if "kid" not in decoded.header:
        raise TokenInvalid("kid", "token header has no kid")

    options: dict[str, jwt.ClaimsOption] = {name: {"essential": True} for name in _REQUIRED_CLAIMS}
    options["iss"] = {"essential": True, "value": issuer}
    if audience is not None:
        options["aud"] = {"essential": True, "value": audience}
    registry = jwt.JWTClaimsRegistry(
        now=math.floor(now.timestamp()), leeway=int(leeway.total_seconds()), **options
    )
    try:
        registry.validate(decoded.claims)
    except ExpiredTokenError:
        raise TokenInvalid("exp", _CLAIM_REASONS["exp"]) from None
    except MissingClaimError as error:
        raise TokenInvalid("claims", f"missing required claim(s): {error.claim}") from None
    except ClaimError as error:
        raise TokenInvalid(error.claim, _CLAIM_REASONS.get(error.claim, "invalid value")) from None
    return decoded.claims
