"""Reading a compact JWS: its three parts, strict JSON, and the shape of its payload (check "format").

Payload structure (JSON object, required RFC 9068 claims and their types) is checked here, before
any key is touched, so a malformed token is rejected whether or not its signature would verify,
and the later checks can read the claims they rely on without checking types again.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from agenttoken_sdk._verification.model import Claims, VerificationError
from agenttoken_sdk.jose import CLAIM_NAMESPACE

# Generous for a JWT with many scopes and CIDRs; anything larger is not one of ours.
MAX_TOKEN_CHARS: Final = 16 * 1024
_B64URL_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class ParsedToken(NamedTuple):
    """A token whose parts decoded and whose payload has the required shape; not yet verified."""

    compact: str
    header: dict[str, Any]
    claims: dict[str, Any]


def parse(token: str) -> ParsedToken:
    """The token's header and claims, or VerificationError("format", ...)."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise VerificationError(
            "format", f"token must be a non-empty string of at most {MAX_TOKEN_CHARS} chars"
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
    return ParsedToken(token, header, claims)


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


def _check_payload_format(claims: dict[str, Any]) -> None:
    """Presence and types of the claims that have no check of their own (iss, aud, exp, nbf do)."""
    for name in ("sub", "client_id", "jti"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise VerificationError("format", f"claim {name!r} must be a non-empty string")
    if number(claims.get("iat")) is None:
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


# ---------------------------------------------------------------------------------- typed reads


def number(value: object) -> float | None:
    """value as a float if it is a JSON number (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def audiences(claims: dict[str, Any]) -> tuple[Any, ...]:
    """The "aud" claim as a tuple (a string is one audience); () when it is neither."""
    aud = claims.get("aud")
    return (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()


def scopes(claims: dict[str, Any]) -> tuple[str, ...]:
    """The scopes the token holds ("scope" is space-delimited; its type was checked by parse)."""
    return tuple(claims.get("scope", "").split())


def verified_claims(claims: dict[str, Any]) -> Claims:
    """The typed Claims of a claim set that passed every check."""
    private = claims.get(CLAIM_NAMESPACE) or {}
    return Claims(
        subject=claims["sub"],
        client_id=claims["client_id"],
        audience=audiences(claims),
        scopes=scopes(claims),
        token_id=claims["jti"],
        issued_at=datetime.fromtimestamp(float(claims["iat"]), UTC),
        expires_at=datetime.fromtimestamp(float(claims["exp"]), UTC),
        environment=claims.get("env"),
        cidrs=tuple(claims.get("cidr") or ()),
        namespace=private.get("namespace"),
        name=private.get("name"),
        uid=private.get("uid"),
        raw=copy.deepcopy(claims),
    )
