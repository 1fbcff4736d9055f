"""The issuer's documents a Verifier fetches: its JWKS and its revocation list, each cached.

* The JWKS is fetched lazily and cached. An unknown kid (the issuer rotated keys) triggers one
  refresh, at most once per `min_refresh`, so garbage kids cannot make us hammer the issuer. A
  failed fetch keeps the keys we had; the rate limit spaces out the retries.
* The revocation list is signed (JWS parts of typ REVOCATION_LIST_TYPE, by a key of the JWKS)
  and carries its own validity (iat, next_update). It is checked again at most every `max_age`;
  the last good list answers until next_update plus a grace, then the answer is None and the
  "revoked" check fails closed. Unsigned, forged, foreign, incomplete, expired or replayed older
  lists are never used.

Both are thread-safe: one lock each, held across the fetch, so concurrent verifications of a
token with a new kid cause one fetch, not one per thread.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey, import_key
from joserfc.jws import JWSRegistry

from agenttoken_sdk.jose import REVOCATION_LIST_TYPE

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
        self, *, jwks: dict[str, Any] | None, url: str | None, fetch: Fetch, min_refresh: timedelta
    ) -> None:
        self._url = url
        self._fetch = fetch
        self._min_refresh = min_refresh
        self._lock = threading.Lock()
        self._keys: dict[str, Key] = {} if jwks is None else parse_jwks(jwks)
        self._fetched_at: datetime | None = None  # last fetch attempt, successful or not
        self._error: str | None = None  # exception type of the last failed fetch

    def key_for(self, kid: str, now: datetime) -> tuple[Key | None, str | None]:
        """The key for kid (refreshing the JWKS if allowed), and why the last JWKS fetch failed, if it did."""
        with self._lock:
            if self._url is not None and kid not in self._keys and self._may_refresh(now):
                self._fetched_at = now
                try:
                    self._keys = parse_jwks(json.loads(self._fetch(self._url)))
                    self._error = None
                except Exception as error:  # keep the keys we had; the rate limit spaces out retries
                    self._error = type(error).__name__
            return self._keys.get(kid), self._error

    def _may_refresh(self, now: datetime) -> bool:
        return _stale(self._fetched_at, now, self._min_refresh)


# ---------------------------------------------------------------------------------- revocations

# Part files in a mounted directory (a projected volume of the agenttoken-revocations-<i>
# ConfigMaps): revocations-<i>.jws. kubelet's own entries (..data, ..2026_...) start with dots.
_PART_SUFFIX: Final = ".jws"


def read_path(path: str) -> bytes:
    """The revocation document at a mounted path: a directory of signed parts (`*.jws`), or one
    file holding either the JSON document `/revocations.json` serves or one compact JWS."""
    if os.path.isdir(path):
        lists = []
        for name in sorted(os.listdir(path)):
            if name.startswith(".") or not name.endswith(_PART_SUFFIX):
                continue
            with open(os.path.join(path, name), "rb") as f:
                lists.append(f.read(_MAX_DOCUMENT_BYTES).decode().strip())
        return json.dumps({"lists": lists}).encode()
    with open(path, "rb") as f:
        body = f.read(_MAX_DOCUMENT_BYTES + 1)
    if len(body) > _MAX_DOCUMENT_BYTES:
        raise ValueError(f"{path} is larger than {_MAX_DOCUMENT_BYTES} bytes")
    return body


@dataclass(frozen=True)
class SignedRevocations:
    """A complete, verified revocation list: every part, their union, and until when it is current."""

    revoked: frozenset[str]
    next_update: float  # the earliest next_update of its parts (POSIX seconds)
    seqs: tuple[int, ...]  # per part; a later list must not go back (a replayed older part)


def _b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


def verify_revocations(
    body: bytes,
    *,
    issuer: str,
    keys: KeySet,
    registries: dict[str, JWSRegistry],
    now: datetime,
    leeway: float,
) -> SignedRevocations:
    """Check a revocation document: every part a JWS of typ REVOCATION_LIST_TYPE, by an allowed
    algorithm, signed by a key of the issuer's JWKS, for this issuer, issued no later than now
    (plus leeway), and the parts complete (0..parts-1, once each). ValueError otherwise: an
    unsigned, forged, foreign or incomplete list is never used."""
    doc = json.loads(body) if body.lstrip()[:1] == b"{" else {"lists": [body.decode().strip()]}
    lists = doc.get("lists") if isinstance(doc, dict) else None
    if not isinstance(lists, list) or not lists or not all(isinstance(x, str) for x in lists):
        raise ValueError("revocation list must be signed parts: an object with a non-empty 'lists'")
    parts: dict[int, dict[str, Any]] = {}
    counts = set()
    for compact in lists:
        header_b64, payload_b64, _ = compact.split(".")
        header = _b64json(header_b64)
        if not isinstance(header, dict) or header.get("typ") != REVOCATION_LIST_TYPE or "crit" in header:
            raise ValueError(f"revocation list part is not of typ {REVOCATION_LIST_TYPE}")
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in registries or not isinstance(kid, str):
            raise ValueError("revocation list part has a disallowed alg or no kid")
        key, _ = keys.key_for(kid, now)
        if key is None or not key.fits(alg):
            raise ValueError("revocation list part is signed by a key not in the issuer's JWKS")
        try:
            jws.deserialize_compact(compact, key.key, algorithms=[alg], registry=registries[alg])
        except (JoseError, ValueError, TypeError, KeyError):
            raise ValueError("revocation list part signature does not verify") from None
        payload = _b64json(payload_b64)
        if not isinstance(payload, dict) or payload.get("iss") != issuer:
            raise ValueError("revocation list part is not from this issuer")
        revoked = payload.get("revoked")
        if not isinstance(revoked, dict):
            raise ValueError("revocation list part has no 'revoked' object")
        part, count = _int(payload.get("part")), _int(payload.get("parts"))
        iat, next_update, _seq = (
            _int(payload.get("iat")),
            _int(payload.get("next_update")),
            _int(payload.get("seq")),
        )
        if iat > now.timestamp() + leeway or next_update <= iat:
            raise ValueError("revocation list part is not valid yet or has no validity")
        if not 0 <= part < count or part in parts:
            raise ValueError("revocation list parts are inconsistent")
        counts.add(count)
        parts[part] = payload
    if len(counts) != 1 or len(parts) != counts.pop():
        raise ValueError("revocation list is incomplete (a part is missing)")
    ordered = [parts[i] for i in range(len(parts))]
    return SignedRevocations(
        revoked=frozenset(jti for p in ordered for jti in p["revoked"]),
        next_update=float(min(p["next_update"] for p in ordered)),
        seqs=tuple(p["seq"] for p in ordered),
    )


class RevocationList:
    """The issuer's signed revocation list (fetched from `url`: a URL, or a path given to a
    file-reading `fetch`), checked at most every `max_age`. The last good list keeps answering
    until its next_update plus `stale_grace`; after that, or before any good list, the answer is
    None and the "revoked" check fails closed. A list older than the one held is refused."""

    def __init__(
        self,
        *,
        url: str,
        fetch: Fetch,
        max_age: timedelta,
        stale_grace: timedelta,
        verify: Callable[[bytes, datetime], SignedRevocations],
    ) -> None:
        self._url = url
        self._fetch = fetch
        self._max_age = max_age
        self._stale_grace = stale_grace.total_seconds()
        self._verify = verify
        self._lock = threading.Lock()
        self._good: SignedRevocations | None = None
        self._good_body: bytes | None = None
        self._tried_at: datetime | None = None  # last fetch attempt
        self.error: str | None = None  # why the last fetch was not used (never the document)

    def revoked_ids(self, now: datetime) -> frozenset[str] | None:
        """The revoked token ids, or None when no current list can be had (fail closed)."""
        with self._lock:
            if _stale(self._tried_at, now, self._max_age):
                self._tried_at = now
                self._refresh(now)
            good = self._good
            if good is not None and now.timestamp() <= good.next_update + self._stale_grace:
                return good.revoked
            return None

    def _refresh(self, now: datetime) -> None:
        try:
            body = self._fetch(self._url)
            if body == self._good_body:
                self.error = None
                return  # unchanged: already verified
            fetched = self._verify(body, now)
            held = self._good
            if (
                held is not None
                and len(held.seqs) == len(fetched.seqs)
                and any(new < old for new, old in zip(fetched.seqs, held.seqs, strict=True))
            ):
                raise ValueError("revocation list is older than the one held (replayed?)")
            if now.timestamp() > fetched.next_update + self._stale_grace:
                raise ValueError("revocation list has expired (next_update plus grace passed)")
        except Exception as error:  # whatever went wrong: keep the last good list within its grace
            self.error = (
                f"{type(error).__name__}: {error}" if isinstance(error, ValueError) else type(error).__name__
            )
            return
        self._good, self._good_body, self.error = fetched, body, None
