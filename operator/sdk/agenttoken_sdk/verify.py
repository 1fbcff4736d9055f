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
* The JWKS is fetched lazily and cached for at most jwks_max_age (5 minutes, what the operator's
  Cache-Control allows), so a key revoked in an emergency stops verifying within that bound. An
  unknown kid (the issuer rotated keys) triggers one refresh, at most once per jwks_min_refresh, so
  garbage kids cannot make us hammer the issuer. Through an outage the last good keys keep
  verifying until jwks_max_age + jwks_stale_grace (10 minutes) after the last good fetch, then
  every token is refused: blocking the fetch cannot keep a revoked key alive for longer than a
  frozen revocation list is trusted (its validity plus revocations_stale_grace, 15 minutes).
* The revocation list is signed and carries its own validity, so it can outlive the operator. It is
  a set of JWS parts (typ "agenttoken-revocations+jwt", never accepted as a token, as a token's typ
  is never accepted as a list) signed by a key of the issuer's JWKS, each with iat and next_update;
  the operator signs every part again when half of its 10-minute validity is left. The verifier
  checks it again at most every revocations_max_age (500 ms: a revocation bites within a second)
  and keeps using the last good list while the source is unreachable or stale, until its
  next_update plus revocations_stale_grace (default 5 minutes); only then, or before any good
  list, does it fail closed (check "revoked"). Unsigned, forged, foreign, incomplete, expired and
  replayed older lists are refused (the last good one keeps answering within its bounds). The
  source is revocations_url (HTTP, any operator replica) or revocations_path (the mounted
  ConfigMaps: no call to the operator at all).
* Bindings fail safe: with Verifier.environment set, a token without "env" is rejected; a token with
  "cidr" is rejected when the caller's address is unknown.
* Payload structure (JSON object, required RFC 9068 claims and their types) is part of "format" and is
  checked first; a malformed token is rejected whether or not its signature would verify.
* The token never appears in an exception message, log line or repr. kids from the header are
  attacker-controlled: they are shortened and repr()-quoted before they appear in a message.
* Every verification leaves an audit record (verifylog): a structured log line and a Prometheus
  counter by subject, AgentToken, result and failed check; claims are used for it only once the
  signature verified. Pass audit=False to turn it off, or your own VerificationAudit.

Where each part lives (private modules under agenttoken_sdk._verification): token parsing and the
"format" check in `token`, the JWKS and revocation-list caches in `sources`, the claim checks from
"typ" to "cidr" as a chain of small pure functions in `checks`. This module is the facade that
wires them in the order of CHECKS and writes the audit record.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any, Literal

from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jws import JWSRegistry

from agenttoken_sdk._verification.checks import Policy, first_failure
from agenttoken_sdk._verification.model import CHECKS, Claims, VerificationError, short
from agenttoken_sdk._verification.sources import (
    Key,
    KeySet,
    RevocationList,
    SignedRevocations,
    read_path,
    urllib_fetch,
    verify_revocations,
)
from agenttoken_sdk._verification.token import ParsedToken, parse, verified_claims
from agenttoken_sdk.jose import MAX_REVOCATION_LIST_BYTES, SUPPORTED_ALGORITHMS, jws_registry
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


def _allowed_algorithms(algorithms: Collection[str]) -> tuple[str, ...]:
    """algorithms without repeats, or ValueError/TypeError when it is not a subset of ours."""
    if isinstance(algorithms, str):
        raise TypeError("algorithms must be a collection of names, not a string")
    allowed = tuple(dict.fromkeys(algorithms))
    unsupported = [a for a in allowed if a not in SUPPORTED_ALGORITHMS]
    if not allowed or unsupported:
        raise ValueError(
            f"algorithms must be a non-empty subset of {', '.join(SUPPORTED_ALGORITHMS)}"
            + (f"; not allowed: {', '.join(map(short, unsupported))}" if unsupported else "")
        )
    return allowed


def _check_sources(
    issuer: str, audience: str, keys: tuple[object, ...], revocations: tuple[str | None, ...]
) -> None:
    if not issuer:
        raise ValueError("issuer must not be empty")
    if not audience:
        raise ValueError("audience must not be empty")
    if sum(x is not None for x in keys) != 1 or sum(x is not None for x in revocations) > 1:
        raise ValueError(
            "give exactly one of jwks, jwks_url and jwks_path, and at most one of revocations_url and "
            "revocations_path"
        )


def _check_durations(**durations: timedelta) -> None:
    for name, value in durations.items():
        if value < timedelta(0):
            raise ValueError(f"{name} must not be negative")


class Verifier:
    """Verifies access tokens for one API (audience) from one issuer. Thread-safe.

    Give the issuer's public keys as `jwks` (a JWK Set dict, used as is), `jwks_url` (fetched on
    first use, refreshed when a token names an unknown kid) or `jwks_path` (the mounted
    agenttoken-jwks ConfigMap's jwks.json, read the same way). The revocation list comes from
    `revocations_url` or `revocations_path` (a directory of mounted signed parts). `fetch` does the HTTP GETs
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
        revocations_path: str | None = None,
        jwks_path: str | None = None,
        algorithms: Collection[str] = ("ES256", "RS256", "EdDSA"),
        leeway: timedelta = timedelta(seconds=30),
        environment: str | None = None,
        clock: Callable[[], datetime] = now_utc,
        fetch: Callable[[str], bytes] | None = None,
        jwks_min_refresh: timedelta = timedelta(seconds=30),
        jwks_max_age: timedelta = timedelta(minutes=5),
        jwks_stale_grace: timedelta = timedelta(minutes=10),
        revocations_max_age: timedelta = timedelta(milliseconds=500),
        revocations_stale_grace: timedelta = timedelta(minutes=5),
        audit: VerificationAudit | Literal[False] | None = None,
    ) -> None:
        _check_sources(issuer, audience, (jwks, jwks_url, jwks_path), (revocations_url, revocations_path))
        self._algorithms = _allowed_algorithms(algorithms)
        _check_durations(
            leeway=leeway,
            jwks_min_refresh=jwks_min_refresh,
            jwks_max_age=jwks_max_age,
            jwks_stale_grace=jwks_stale_grace,
            revocations_max_age=revocations_max_age,
            revocations_stale_grace=revocations_stale_grace,
        )
        if environment == "":
            raise ValueError("environment must be None or a non-empty string")

        self._issuer = issuer
        self._audience = audience
        self._registries: dict[str, JWSRegistry] = {a: jws_registry([a]) for a in self._algorithms}
        # Lists are larger than tokens; their own registries keep the token cap tight.
        self._list_registries = {
            a: jws_registry([a], max_payload=MAX_REVOCATION_LIST_BYTES) for a in self._algorithms
        }
        self._leeway = leeway.total_seconds()
        self._environment = environment
        self._clock = clock
        fetch = fetch if fetch is not None else urllib_fetch
        jwks_fetch = read_path if jwks_path is not None else fetch
        self._keys = KeySet(
            jwks=jwks,
            url=jwks_url or jwks_path,
            fetch=jwks_fetch,
            min_refresh=jwks_min_refresh,
            max_age=jwks_max_age,
            stale_grace=jwks_stale_grace,
        )
        self._revocations = self._revocation_list(
            revocations_url, revocations_path, fetch, revocations_max_age, revocations_stale_grace
        )
        # None: the default record (global Prometheus registry, logger agenttoken.verify.audit).
        self._audit = None if audit is False else (audit or VerificationAudit())

    def _revocation_list(
        self,
        url: str | None,
        path: str | None,
        fetch: Callable[[str], bytes],
        max_age: timedelta,
        stale_grace: timedelta,
    ) -> RevocationList | None:
        """From `url` over HTTP (`fetch`) or from the mounted `path`; None: no revocation check."""
        if url is None and path is None:
            return None
        return RevocationList(
            url=url if url is not None else str(path),
            fetch=fetch if url is not None else read_path,
            max_age=max_age,
            stale_grace=stale_grace,
            verify=self._verify_revocations,
        )

    def _verify_revocations(self, body: bytes, now: datetime) -> SignedRevocations:
        return verify_revocations(
            body,
            issuer=self._issuer,
            keys=self._keys,
            registries=self._list_registries,
            now=now,
            leeway=self._leeway,
        )

    def __repr__(self) -> str:
        return f"Verifier(issuer={self._issuer!r}, audience={self._audience!r})"

    @property
    def issuer(self) -> str:
        """The issuer (`iss`) tokens must come from."""
        return self._issuer

    @property
    def audience(self) -> str:
        """The audience (`aud`) tokens must hold: for a protected resource, its resource URI."""
        return self._audience

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
        """The checks in the order of CHECKS: format, alg, kid, signature here, then the claim chain."""
        now = self._clock()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("clock must return timezone-aware datetimes")
        parsed = parse(token)  # format
        alg = self._algorithm(parsed)  # alg
        key = self._key(parsed, alg, now)  # kid, and alg again: the key must be meant for alg
        self._check_signature(parsed, key, alg)  # signature
        signed.update(parsed.claims)
        revocations = self._revocations
        policy = Policy(
            issuer=self._issuer,
            audience=self._audience,
            leeway=self._leeway,
            environment=self._environment,
            required_scopes=tuple(
                required_scopes.split() if isinstance(required_scopes, str) else required_scopes
            ),
            client_address=client_address,
            revoked_ids=None if revocations is None else lambda: revocations.revoked_ids(now),
        )
        failure = first_failure(parsed, policy, now.timestamp())  # typ ... cidr
        if failure is not None:
            raise failure.error()
        return verified_claims(parsed.claims)

    def _algorithm(self, parsed: ParsedToken) -> str:
        alg = parsed.header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise VerificationError(
                "alg", f"algorithm {short(alg)} is not allowed (allowed: {', '.join(self._algorithms)})"
            )
        return alg

    def _key(self, parsed: ParsedToken, alg: str, now: datetime) -> Key:
        kid = parsed.header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise VerificationError("kid", "token header has no kid")
        key, jwks_error = self._keys.key_for(kid, now)
        if key is None:
            why = f" (fetching the JWKS failed: {jwks_error})" if jwks_error else ""
            raise VerificationError("kid", f"no key with kid {short(kid)} in the issuer's JWKS{why}")
        if not key.fits(alg):
            raise VerificationError(
                "alg", f"algorithm {alg} does not match the key named by kid {short(kid)}"
            )
        return key

    def _check_signature(self, parsed: ParsedToken, key: Key, alg: str) -> None:
        try:
            jws.deserialize_compact(parsed.compact, key.key, algorithms=[alg], registry=self._registries[alg])
        except BadSignatureError:
            raise VerificationError("signature", "signature does not verify") from None
        except (JoseError, ValueError, TypeError, KeyError):
            raise VerificationError("signature", "signature could not be verified with the key") from None
