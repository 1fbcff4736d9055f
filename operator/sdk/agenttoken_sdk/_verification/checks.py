"""The claim checks after the signature verified: typ, iss, aud, exp, nbf, scope, revoked, env, cidr.

A chain of small pure checks, as in cert-manager's reissuance policies: each takes the token, the
Policy and an injected `now` (POSIX seconds) and returns None or the reason it failed; the chain
runs them in the order of CHECKS and stops at the first failure, which it names. The only input
that is not plain data is the revocation list, a lookup the Verifier injects so that it is fetched
only when the chain gets that far (a token that fails earlier costs no request).

Bindings fail safe: with Policy.environment set, a token without "env" is rejected; a token with
"cidr" is rejected when the caller's address is unknown. nbf covers iat as well: a token issued
in the future is not valid yet either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, NamedTuple

from agenttoken_sdk._verification.model import Failure, short
from agenttoken_sdk._verification.token import ParsedToken, audiences, number, scopes
from agenttoken_sdk.jose import POD_CLAIM, TOKEN_TYPE, revoked_pod_id

RevokedIds = Callable[[], frozenset[str] | None]


class Policy(NamedTuple):
    """What one verification demands: the Verifier's settings and the caller's arguments.

    A NamedTuple rather than a frozen dataclass: one is built per verification, and this is half
    the cost (the verify path is benchmarked, bench/crypto.py).
    """

    issuer: str
    audience: str
    leeway: float  # seconds, for exp, nbf and iat
    environment: str | None = None
    required_scopes: tuple[str, ...] = ()
    client_address: str | None = None
    # None: no revocation list configured. Returns None when the list is unavailable (fail closed).
    revoked_ids: RevokedIds | None = None


Check = Callable[[ParsedToken, Policy, float], str | None]


def _fmt(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def check_typ(token: ParsedToken, policy: Policy, now: float) -> str | None:
    typ = token.header.get("typ")
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != TOKEN_TYPE:
        return f"header typ must be {TOKEN_TYPE!r}"
    return None


def check_iss(token: ParsedToken, policy: Policy, now: float) -> str | None:
    if token.claims.get("iss") != policy.issuer:
        return f"issuer is not {policy.issuer!r}"
    return None


def check_aud(token: ParsedToken, policy: Policy, now: float) -> str | None:
    held = audiences(token.claims)
    if not held or not all(isinstance(a, str) for a in held):
        return "claim 'aud' must be a string or a list of strings"
    if policy.audience not in held:
        return f"token is not meant for audience {policy.audience!r}"
    return None


def check_exp(token: ParsedToken, policy: Policy, now: float) -> str | None:
    exp = number(token.claims.get("exp"))
    if exp is None:
        return "claim 'exp' must be a number"
    if now >= exp + policy.leeway:
        return f"token expired at {_fmt(exp)}"
    return None


def check_nbf(token: ParsedToken, policy: Policy, now: float) -> str | None:
    nbf = number(token.claims.get("nbf"))
    if nbf is None and "nbf" in token.claims:
        return "claim 'nbf' must be a number"
    for name, value in (("nbf", nbf), ("iat", float(token.claims["iat"]))):
        if value is not None and now + policy.leeway < value:
            return f"token is not valid before {_fmt(value)} ({name})"
    return None


def check_scope(token: ParsedToken, policy: Policy, now: float) -> str | None:
    held = scopes(token.claims)
    missing = [s for s in dict.fromkeys(policy.required_scopes) if s not in held]
    if missing:
        return f"missing required scope(s): {', '.join(missing)}"
    return None


def check_revoked(token: ParsedToken, policy: Policy, now: float) -> str | None:
    if policy.revoked_ids is None:
        return None
    revoked = policy.revoked_ids()
    if revoked is None:
        return "the revocation list is unavailable; failing closed"
    if token.claims["jti"] in revoked:
        return f"token {short(token.claims['jti'])} has been revoked"
    pod = token.claims.get(POD_CLAIM)
    uid = (pod.get("pod") or {}).get("uid") if isinstance(pod, dict) else None
    if isinstance(uid, str) and revoked_pod_id(uid) in revoked:
        return f"token {short(token.claims['jti'])} was issued to pod {short(uid)}, which was deleted"
    return None


def check_env(token: ParsedToken, policy: Policy, now: float) -> str | None:
    env = token.claims.get("env")
    if policy.environment is None or env == policy.environment:
        return None
    if env is None:
        return f"token is not bound to environment {policy.environment!r}"
    return f"token is for environment {short(env)}, not {policy.environment!r}"


def check_cidr(token: ParsedToken, policy: Policy, now: float) -> str | None:
    cidrs: list[str] | None = token.claims.get("cidr")
    if cidrs is None:
        return None
    if policy.client_address is None:
        return "token is bound to networks but the client address is unknown"
    try:
        address = ipaddress.ip_address(policy.client_address)
    except ValueError:
        return f"client address {short(policy.client_address)} is not an IP"
    if not _address_in(address, cidrs):
        return f"client address {address} is outside the token's networks"
    return None


def _address_in(address: ipaddress.IPv4Address | ipaddress.IPv6Address, cidrs: list[str]) -> bool:
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)  # "::ffff:10.1.2.3" from a dual-stack socket
    networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return any(a.version == n.version and a in n for a in candidates for n in networks)


#: The claim checks by name, in the order of CHECKS (its tail after "signature").
CLAIM_CHECKS: Final[tuple[tuple[str, Check], ...]] = (
    ("typ", check_typ),
    ("iss", check_iss),
    ("aud", check_aud),
    ("exp", check_exp),
    ("nbf", check_nbf),
    ("scope", check_scope),
    ("revoked", check_revoked),
    ("env", check_env),
    ("cidr", check_cidr),
)


def first_failure(
    token: ParsedToken, policy: Policy, now: float, chain: tuple[tuple[str, Check], ...] = CLAIM_CHECKS
) -> Failure | None:
    """Run chain in order; the first check that fails, with its reason, or None when all pass."""
    for name, check in chain:
        reason = check(token, policy, now)
        if reason is not None:
            return Failure(name, reason)
    return None
