"""Verifying agent access tokens in the APIs that receive them.

The operator's agenttoken.tokens.verify() answers "did our issuer sign this?"; a resource server
needs more: which scopes the caller holds, whether the token was revoked a second ago, whether it
is bound to another environment or network. Verifier does all of it with a fixed order of checks,
so each rejection names exactly one reason (VerificationError.check) that an API can log and count
without logging the token:

    format, alg, kid, signature, typ, iss, aud, exp, nbf, scope, revoked, env, cidr

Design choices, and why:

* Algorithms are pinned. Only ES256, RS256 and EdDSA (Ed25519) can ever be allowed, so "none" and
  HS* (the key-confusion attack where the public key is used as an HMAC secret) are refused from the
  header, before any key is touched. The key named by kid must also be meant for the header's alg
  (its JWK "alg", key type and curve), so a token cannot pick a weaker reading of a good key.
* The JWKS is fetched lazily and cached. An unknown kid (the issuer rotated keys) triggers one
  refresh, at most once per jwks_min_refresh, so garbage kids cannot make us hammer the issuer.
* The revocation list is cached for at most revocations_max_age (500 ms by default) so a revocation
  bites within a second. When it cannot be fetched or parsed we fail closed (check "revoked"): an
  API that accepted revoked tokens during an outage would make revocation useless. The one bounded
  exception is revocations_stale_grace (default 0: none): the last list fetched successfully keeps
  answering for that long after it was fetched, so a restart of the operator (one replica: seconds
  without a pod behind its Service) does not refuse every call; no revocation can be published
  while the operator is down anyway. Only the "jti"
  of each entry is read, so an entry with a malformed time still revokes.
* Bindings fail safe: with Verifier.environment set, a token without "env" is rejected; a token with
  "cidr" is rejected when the caller's address is unknown.
* Payload structure (JSON object, required RFC 9068 claims and their types) is part of "format" and is
  checked first; a malformed token is rejected whether or not its signature would verify.
* The token never appears in an exception message, log line or repr. kids from the header are
  attacker-controlled: they are shortened and repr()-quoted before they appear in a message.
* Every verification leaves an audit record (verifylog): a structured log line and a Prometheus
  counter by subject, AgentToken, result and failed check; claims are used for it only once the
  signature verified. Pass audit=False to turn it off, or your own VerificationAudit.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey, import_key
from joserfc.jws import JWSRegistry

from agenttoken_sdk.jose import CLAIM_NAMESPACE, SUPPORTED_ALGORITHMS, TOKEN_TYPE, jws_registry
from agenttoken_sdk.times import now_utc
from agenttoken_sdk.verifylog import ACCEPTED, REJECTED, VerificationAudit, VerificationRecord

__all__ = [
    "CHECKS",
    "Claims",
    "VerificationError",
    "Verifier",
    "now_utc",
    "urllib_fetch",
]

#: Every check Verifier.verify() performs, in the order it performs them.
CHECKS: Final = (
    "format",
    "alg",
    "kid",
    "signature",
    "typ",
    "iss",
    "aud",
    "exp",
    "nbf",
    "scope",
    "revoked",
    "env",
    "cidr",
)

# Generous for a JWT with many scopes and CIDRs; anything larger is not one of ours.
_MAX_TOKEN_CHARS: Final = 16 * 1024
# JWKS documents and revocation lists fetched over HTTP.
_MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024
_FETCH_TIMEOUT_SECONDS: Final = 5.0
_B64URL_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# JWS alg -> (JWK kty, JWK crv or None).
_KEY_TYPES: Final[dict[str, tuple[str, str | None]]] = {
    "ES256": ("EC", "P-256"),
    "RS256": ("RSA", None),
    "EdDSA": ("OKP", "Ed25519"),
}

_PublicKey = ECKey | RSAKey | OKPKey


def urllib_fetch(url: str) -> bytes:
    """GET url (http or https only) with a timeout and a size cap; the default `fetch` of Verifier."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("only http and https URLs can be fetched")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (scheme checked)
    with urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT_SECONDS) as response:  # noqa: S310
        body: bytes = response.read(_MAX_DOCUMENT_BYTES + 1)
    if len(body) > _MAX_DOCUMENT_BYTES:
        raise ValueError(f"response is larger than {_MAX_DOCUMENT_BYTES} bytes")
    return body


class VerificationError(ValueError):
    """A token was rejected. `check` is one of CHECKS; the message never contains the token."""

    def __init__(self, check: str, reason: str) -> None:
        self.check = check
        self.reason = reason
        super().__init__(f"token rejected: {check}: {reason}")


@dataclass(frozen=True)
class Claims:
    """The verified claims of a token, typed. `raw` is a copy of the whole claim set."""

    subject: str
    client_id: str
    audience: tuple[str, ...]
    scopes: tuple[str, ...]
    token_id: str
    issued_at: datetime
    expires_at: datetime
    environment: str | None
    cidrs: tuple[str, ...]
    namespace: str | None
    name: str | None
    uid: str | None
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)


@dataclass(frozen=True)
class _Key:
    kid: str
    alg: str | None
    kty: str
    crv: str | None
    key: _PublicKey = field(repr=False)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 66 else text[:63] + "..."


def _b64url_decode(segment: str) -> bytes:
    if not segment or not set(segment) <= _B64URL_CHARS or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate member")  # two parsers could pick different values
        result[key] = value
    return result


def _json_object(segment: str) -> dict[str, Any]:
    doc = json.loads(_b64url_decode(segment), object_pairs_hook=_unique_object)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def _number(value: object) -> float | None:
    """value as a float if it is a JSON number (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _fmt(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _check_payload_format(claims: dict[str, Any]) -> None:
    """Presence and types of the claims that have no check of their own (iss, aud, exp, nbf do)."""
    for name in ("sub", "client_id", "jti"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise VerificationError("format", f"claim {name!r} must be a non-empty string")
    if _number(claims.get("iat")) is None:
        raise VerificationError("format", "claim 'iat' must be a number")
    for name in ("scope", "env"):
        if name in claims and not isinstance(claims[name], str):
            raise VerificationError("format", f"claim {name!r} must be a string")
    if "cidr" in claims:
        cidrs = claims["cidr"]
        if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
            raise VerificationError("format", "claim 'cidr' must be a list of strings")
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise VerificationError("format", "claim 'cidr' holds a value that is not a CIDR") from None
    if CLAIM_NAMESPACE in claims:
        private = claims[CLAIM_NAMESPACE]
        if not isinstance(private, dict) or not all(
            isinstance(private.get(k, ""), str) for k in ("namespace", "name", "uid")
        ):
            raise VerificationError("format", f"claim {CLAIM_NAMESPACE!r} must be an object of strings")


def _address_in(address: ipaddress.IPv4Address | ipaddress.IPv6Address, cidrs: list[str]) -> bool:
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)  # "::ffff:10.1.2.3" from a dual-stack socket
    networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return any(a.version == n.version and a in n for a in candidates for n in networks)


class Verifier:
    """Verifies access tokens for one API (audience) from one issuer. Thread-safe.

    Give the issuer's public keys either as `jwks` (a JWK Set dict, used as is) or as `jwks_url`
    (fetched on first use, refreshed when a token names an unknown kid). `fetch` does the HTTP GETs
    (default: urllib_fetch); `clock` is the time source for exp/nbf and both caches.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        jwks: dict[str, Any] | None = None,
        revocations_url: str | None = None,
        algorithms: Collection[str] = ("ES256", "RS256", "EdDSA"),
        leeway: timedelta = timedelta(seconds=30),
        environment: str | None = None,
        clock: Callable[[], datetime] = now_utc,
        fetch: Callable[[str], bytes] | None = None,
        jwks_min_refresh: timedelta = timedelta(seconds=30),
        revocations_max_age: timedelta = timedelta(milliseconds=500),
        revocations_stale_grace: timedelta = timedelta(0),
        audit: VerificationAudit | Literal[False] | None = None,
    ) -> None:
        if not issuer:
            raise ValueError("issuer must not be empty")
        if not audience:
            raise ValueError("audience must not be empty")
        if (jwks is None) == (jwks_url is None):
            raise ValueError("give exactly one of jwks and jwks_url")
        if isinstance(algorithms, str):
            raise TypeError("algorithms must be a collection of names, not a string")
        allowed = tuple(dict.fromkeys(algorithms))
        unsupported = [a for a in allowed if a not in SUPPORTED_ALGORITHMS]
        if not allowed or unsupported:
            raise ValueError(
                f"algorithms must be a non-empty subset of {', '.join(SUPPORTED_ALGORITHMS)}"
                + (f"; not allowed: {', '.join(map(_short, unsupported))}" if unsupported else "")
            )
        for name, value in (
            ("leeway", leeway),
            ("jwks_min_refresh", jwks_min_refresh),
            ("revocations_max_age", revocations_max_age),
            ("revocations_stale_grace", revocations_stale_grace),
        ):
            if value < timedelta(0):
                raise ValueError(f"{name} must not be negative")
        if environment == "":
            raise ValueError("environment must be None or a non-empty string")

        self._issuer = issuer
        self._audience = audience
        self._jwks_url = jwks_url
        self._revocations_url = revocations_url
        self._algorithms = allowed
        self._registries: dict[str, JWSRegistry] = {a: jws_registry([a]) for a in allowed}
        self._leeway = leeway.total_seconds()
        self._environment = environment
        self._clock = clock
        self._fetch = fetch if fetch is not None else urllib_fetch
        self._jwks_min_refresh = jwks_min_refresh
        self._revocations_max_age = revocations_max_age
        self._revocations_stale_grace = revocations_stale_grace
        # None: the default record (global Prometheus registry, logger agenttoken.verify.audit).
        self._audit = None if audit is False else (audit or VerificationAudit())

        self._jwks_lock = threading.Lock()
        self._keys: dict[str, _Key] = {} if jwks is None else self._parse_jwks(jwks)
        self._jwks_fetched_at: datetime | None = None  # last fetch attempt, successful or not
        self._jwks_error: str | None = None  # exception type of the last failed fetch
        self._revocations_lock = threading.Lock()
        self._revoked: frozenset[str] = frozenset()
        self._revocations_fetched_at: datetime | None = None  # last successful fetch
        self._revocations_tried_at: datetime | None = None  # last fetch attempt

    def __repr__(self) -> str:
        return f"Verifier(issuer={self._issuer!r}, audience={self._audience!r})"

    # ------------------------------------------------------------------ verification

    def verify(
        self,
        token: str,
        *,
        required_scopes: Collection[str] = (),
        client_address: str | None = None,
    ) -> Claims:
        """Verify token and return its claims, or raise VerificationError naming the failed check.

        required_scopes: scopes the token must all hold (a string is read as a space-delimited list).
        client_address: the caller's IP address (no port); needed when the token is CIDR-bound.
        Each call writes one audit record (see verifylog), accepted or rejected.
        """
        signed: dict[str, Any] = {}  # filled with the claims once the signature verified
        try:
            result = self._verify(token, required_scopes, client_address, signed)
        except VerificationError as exc:
            self._write_audit(REJECTED, exc.check, exc.reason, signed, client_address)
            raise
        self._write_audit(ACCEPTED, None, None, result.raw, client_address)
        return result

    def _write_audit(
        self,
        result: str,
        check: str | None,
        reason: str | None,
        claims: dict[str, Any],
        client_address: str | None,
    ) -> None:
        if self._audit is None:
            return
        self._audit.record(
            VerificationRecord.of(
                result=result,
                check=check,
                reason=reason,
                audience=self._audience,
                claims=claims,
                client_address=client_address,
            )
        )

    def _verify(
        self,
        token: str,
        required_scopes: Collection[str],
        client_address: str | None,
        signed: dict[str, Any],
    ) -> Claims:
        now_dt = self._clock()
        if now_dt.tzinfo is None or now_dt.utcoffset() is None:
            raise ValueError("clock must return timezone-aware datetimes")
        now = now_dt.timestamp()

        # format
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise VerificationError(
                "format", f"token must be a non-empty string of at most {_MAX_TOKEN_CHARS} chars"
            )
        parts = token.split(".")
        if len(parts) != 3:
            raise VerificationError("format", "not a compact JWS (three dot-separated parts)")
        try:
            header = _json_object(parts[0])
            claims = _json_object(parts[1])
            if parts[2]:
                _b64url_decode(parts[2])
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise VerificationError(
                "format", "header, payload or signature is not base64url-encoded JSON object"
            ) from None
        if "crit" in header:
            raise VerificationError("format", "critical header extensions are not supported")
        _check_payload_format(claims)

        # alg
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise VerificationError(
                "alg", f"algorithm {_short(alg)} is not allowed (allowed: {', '.join(self._algorithms)})"
            )

        # kid
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise VerificationError("kid", "token header has no kid")
        key, jwks_error = self._key_for(kid, now_dt)
        if key is None:
            why = f" (fetching the JWKS failed: {jwks_error})" if jwks_error else ""
            raise VerificationError("kid", f"no key with kid {_short(kid)} in the issuer's JWKS{why}")
        kty, crv = _KEY_TYPES[alg]
        if (key.alg is not None and key.alg != alg) or key.kty != kty or (crv is not None and key.crv != crv):
            raise VerificationError(
                "alg", f"algorithm {alg} does not match the key named by kid {_short(kid)}"
            )

        # signature
        try:
            jws.deserialize_compact(token, key.key, algorithms=[alg], registry=self._registries[alg])
        except BadSignatureError:
            raise VerificationError("signature", "signature does not verify") from None
        except (JoseError, ValueError, TypeError, KeyError):
            raise VerificationError("signature", "signature could not be verified with the key") from None
        signed.update(claims)

        # typ
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower().removeprefix("application/") != TOKEN_TYPE:
            raise VerificationError("typ", f"header typ must be {TOKEN_TYPE!r}")

        # iss
        if claims.get("iss") != self._issuer:
            raise VerificationError("iss", f"issuer is not {self._issuer!r}")

        # aud
        aud = claims.get("aud")
        audiences = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
        if not audiences or not all(isinstance(a, str) for a in audiences):
            raise VerificationError("aud", "claim 'aud' must be a string or a list of strings")
        if self._audience not in audiences:
            raise VerificationError("aud", f"token is not meant for audience {self._audience!r}")

        # exp
        exp = _number(claims.get("exp"))
        if exp is None:
            raise VerificationError("exp", "claim 'exp' must be a number")
        if now >= exp + self._leeway:
            raise VerificationError("exp", f"token expired at {_fmt(exp)}")

        # nbf (and iat: a token issued in the future is not valid yet either)
        nbf = _number(claims.get("nbf"))
        if nbf is None and "nbf" in claims:
            raise VerificationError("nbf", "claim 'nbf' must be a number")
        iat = float(claims["iat"])
        for name, value in (("nbf", nbf), ("iat", iat)):
            if value is not None and now + self._leeway < value:
                raise VerificationError("nbf", f"token is not valid before {_fmt(value)} ({name})")

        # scope
        held = tuple(claims.get("scope", "").split())
        wanted = required_scopes.split() if isinstance(required_scopes, str) else list(required_scopes)
        missing = [s for s in dict.fromkeys(wanted) if s not in held]
        if missing:
            raise VerificationError("scope", f"missing required scope(s): {', '.join(missing)}")

        # revoked
        if self._revocations_url is not None and claims["jti"] in self._revoked_ids(now_dt):
            raise VerificationError("revoked", f"token {_short(claims['jti'])} has been revoked")

        # env
        env = claims.get("env")
        if self._environment is not None and env != self._environment:
            raise VerificationError(
                "env",
                f"token is for environment {_short(env)}, not {self._environment!r}"
                if env is not None
                else f"token is not bound to environment {self._environment!r}",
            )

        # cidr
        cidrs: list[str] | None = claims.get("cidr")
        if cidrs is not None:
            if client_address is None:
                raise VerificationError(
                    "cidr", "token is bound to networks but the client address is unknown"
                )
            try:
                address = ipaddress.ip_address(client_address)
            except ValueError:
                raise VerificationError(
                    "cidr", f"client address {_short(client_address)} is not an IP"
                ) from None
            if not _address_in(address, cidrs):
                raise VerificationError("cidr", f"client address {address} is outside the token's networks")

        private = claims.get(CLAIM_NAMESPACE) or {}
        return Claims(
            subject=claims["sub"],
            client_id=claims["client_id"],
            audience=audiences,
            scopes=held,
            token_id=claims["jti"],
            issued_at=datetime.fromtimestamp(iat, UTC),
            expires_at=datetime.fromtimestamp(exp, UTC),
            environment=env,
            cidrs=tuple(cidrs or ()),
            namespace=private.get("namespace"),
            name=private.get("name"),
            uid=private.get("uid"),
            raw=copy.deepcopy(claims),
        )

    # ------------------------------------------------------------------ JWKS

    def _parse_jwks(self, jwks: Any) -> dict[str, _Key]:
        """Usable public signing keys by kid. Entries that are not are skipped (a later one may be)."""
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ValueError("JWKS must be an object with a 'keys' list")
        keys: dict[str, _Key] = {}
        for entry in jwks["keys"]:
            if not isinstance(entry, dict):
                continue
            kid, alg, use = entry.get("kid"), entry.get("alg"), entry.get("use", "sig")
            if not isinstance(kid, str) or not kid or kid in keys or use != "sig":
                continue
            if alg is not None and not isinstance(alg, str):
                continue
            try:
                key = import_key(entry)
            except (JoseError, ValueError, TypeError, KeyError):
                continue
            if key.is_private or not isinstance(key, ECKey | RSAKey | OKPKey):
                continue  # a JWKS is public; one with private members is misconfigured
            crv = entry.get("crv")
            keys[kid] = _Key(kid, alg, key.key_type, crv if isinstance(crv, str) else None, key)
        return keys

    def _key_for(self, kid: str, now: datetime) -> tuple[_Key | None, str | None]:
        """The key for kid (refreshing the JWKS if allowed), and why the last JWKS fetch failed, if it did."""
        with self._jwks_lock:
            if self._jwks_url is not None and kid not in self._keys and self._may_refresh_jwks(now):
                self._jwks_fetched_at = now
                try:
                    self._keys = self._parse_jwks(json.loads(self._fetch(self._jwks_url)))
                    self._jwks_error = None
                except Exception as error:  # keep the keys we had; the rate limit spaces out retries
                    self._jwks_error = type(error).__name__
            return self._keys.get(kid), self._jwks_error

    def _may_refresh_jwks(self, now: datetime) -> bool:
        last = self._jwks_fetched_at
        # A clock that went backwards must not block refreshes until it catches up.
        return last is None or now < last or now - last >= self._jwks_min_refresh

    # ------------------------------------------------------------------ revocations

    def _revoked_ids(self, now: datetime) -> frozenset[str]:
        assert self._revocations_url is not None
        with self._revocations_lock:
            ok_at = self._revocations_fetched_at
            if ok_at is not None and ok_at <= now < ok_at + self._revocations_max_age:
                return self._revoked
            tried = self._revocations_tried_at
            # While serving a stale list, try again at most once per max age (not per call).
            if (
                not self._revocations_stale_grace
                or tried is None
                or now < tried
                or now - tried >= self._revocations_max_age
            ):
                self._revocations_tried_at = now
                try:
                    fetched = self._parse_revocations(self._fetch(self._revocations_url))
                except Exception:  # whatever went wrong: the stale list within its grace, or fail closed
                    fetched = None
                if fetched is not None:
                    self._revoked, self._revocations_fetched_at = fetched, now
                    return fetched
            if ok_at is not None and ok_at <= now <= ok_at + self._revocations_stale_grace:
                return self._revoked
            raise VerificationError("revoked", "the revocation list is unavailable; failing closed")

    @staticmethod
    def _parse_revocations(body: bytes) -> frozenset[str]:
        doc = json.loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("revoked"), list):
            raise ValueError("revocation list must be an object with a 'revoked' list")
        return frozenset(
            item["jti"]
            for item in doc["revoked"]
            if isinstance(item, dict) and isinstance(item.get("jti"), str)
        )
