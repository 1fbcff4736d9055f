"""The issuer's documents a Verifier fetches: its JWKS and its revocation list, each cached.

* The JWKS is fetched lazily and cached for at most `max_age`. An unknown kid (the issuer rotated
  keys) triggers one refresh, at most once per `min_refresh`, so garbage kids cannot make us hammer
  the issuer. A failed fetch keeps the keys we had, but only up to twice `max_age` after the last
  good fetch: a key the issuer revoked in an emergency leaves the JWKS, and an attacker who blocks
  the fetch must not keep it trusted forever (fail closed after that).
* The revocation list is cached for at most `max_age`. When it cannot be fetched or parsed the
  answer is None and the "revoked" check fails closed; the next call tries again. Only the "jti"
  of each entry is read, so an entry with a malformed time still revokes.

Both are thread-safe: one lock each, held across the fetch, so concurrent verifications of a
token with a new kid cause one fetch, not one per thread.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey, import_key

Fetch = Callable[[str], bytes]

# JWKS documents and revocation lists fetched over HTTP.
_MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024
_FETCH_TIMEOUT_SECONDS: Final = 5.0
# JWS alg -> (JWK kty, JWK crv or None).
_KEY_TYPES: Final[dict[str, tuple[str, str | None]]] = {
    "ES256": ("EC", "P-256"),
    "RS256": ("RSA", None),
    "EdDSA": ("OKP", "Ed25519"),
}

PublicKey = ECKey | RSAKey | OKPKey


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


def _stale(last: datetime | None, now: datetime, max_age: timedelta) -> bool:
    # A clock that went backwards must not block refreshes until it catches up.
    return last is None or now < last or now - last >= max_age


# ---------------------------------------------------------------------------------- JWKS


@dataclass(frozen=True)
class Key:
    """One usable public signing key of the JWKS."""

    kid: str
    alg: str | None
    kty: str
    crv: str | None
    key: PublicKey = field(repr=False)

    def fits(self, alg: str) -> bool:
        """Whether this key is meant for alg (its JWK "alg", key type and curve)."""
        kty, crv = _KEY_TYPES[alg]
        return (self.alg is None or self.alg == alg) and self.kty == kty and (crv is None or self.crv == crv)


def parse_jwks(jwks: Any) -> dict[str, Key]:
    """Usable public signing keys by kid. Entries that are not are skipped (a later one may be)."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("JWKS must be an object with a 'keys' list")
    keys: dict[str, Key] = {}
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
        keys[kid] = Key(kid, alg, key.key_type, crv if isinstance(crv, str) else None, key)
    return keys


class KeySet:
    """The issuer's public keys: given once (`jwks`), or fetched from `url` and refreshed on demand."""

    def __init__(
        self,
        *,
        jwks: dict[str, Any] | None,
        url: str | None,
        fetch: Fetch,
        min_refresh: timedelta,
        max_age: timedelta | None = None,
    ) -> None:
        self._url = url
        self._fetch = fetch
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._loaded_at: datetime | None = None  # last successful fetch
        self._lock = threading.Lock()
        self._keys: dict[str, Key] = {} if jwks is None else parse_jwks(jwks)
        self._fetched_at: datetime | None = None  # last fetch attempt, successful or not
        self._error: str | None = None  # exception type of the last failed fetch

    def key_for(self, kid: str, now: datetime) -> tuple[Key | None, str | None]:
        """The key for kid (refreshing the JWKS if allowed), and why the last JWKS fetch failed, if it did."""
        with self._lock:
            if self._url is None:
                return self._keys.get(kid), None
            expired = self._max_age is not None and _stale(self._loaded_at, now, self._max_age)
            if (kid not in self._keys or expired) and self._may_refresh(now):
                self._fetched_at = now
                try:
                    self._keys = parse_jwks(json.loads(self._fetch(self._url)))
                    self._error = None
                    self._loaded_at = now
                except Exception as error:  # keep the keys we had; the rate limit spaces out retries
                    self._error = type(error).__name__
            if self._max_age is not None and _stale(self._loaded_at, now, 2 * self._max_age):
                return None, self._error or "the JWKS is too old"
            return self._keys.get(kid), self._error

    def _may_refresh(self, now: datetime) -> bool:
        return _stale(self._fetched_at, now, self._min_refresh)


# ---------------------------------------------------------------------------------- revocations


def parse_revocations(body: bytes) -> frozenset[str]:
    """The revoked token ids of a revocation list document."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("revoked"), list):
        raise ValueError("revocation list must be an object with a 'revoked' list")
    return frozenset(
        item["jti"] for item in doc["revoked"] if isinstance(item, dict) and isinstance(item.get("jti"), str)
    )


class RevocationList:
    """The issuer's revocation list at `url`, at most `max_age` old; when a refresh fails, the last
    good list keeps answering until `stale_grace` after it was fetched (0: fail closed at once)."""

    def __init__(self, *, url: str, fetch: Fetch, max_age: timedelta, stale_grace: timedelta) -> None:
        self._url = url
        self._fetch = fetch
        self._max_age = max_age
        self._stale_grace = stale_grace
        self._lock = threading.Lock()
        self._revoked: frozenset[str] = frozenset()
        self._fetched_at: datetime | None = None  # last successful fetch
        self._tried_at: datetime | None = None  # last fetch attempt

    def revoked_ids(self, now: datetime) -> frozenset[str] | None:
        """The revoked token ids, or None when no list young enough can be had (fail closed)."""
        with self._lock:
            ok_at = self._fetched_at
            if not _stale(ok_at, now, self._max_age):
                return self._revoked
            # While serving a stale list, try again at most once per max age (not on every call).
            if not self._stale_grace or _stale(self._tried_at, now, self._max_age):
                self._tried_at = now
                try:
                    fetched = parse_revocations(self._fetch(self._url))
                except Exception:  # whatever went wrong: the stale list within its grace, or fail closed
                    fetched = None
                if fetched is not None:
                    self._revoked, self._fetched_at = fetched, now
                    return fetched
            if self._stale_grace and ok_at is not None and ok_at <= now <= ok_at + self._stale_grace:
                return self._revoked
            return None
