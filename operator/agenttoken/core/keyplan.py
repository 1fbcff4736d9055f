"""Key-ring decisions over time (pure): rotation with overlap (`plan_rotation`) and emergency
revocation (`revoke_key`). The data types and their serialization live in core.keys.

Resource servers cache the issuer's JWKS, so a key must be published before it signs anything
("publish ahead") and must stay published after it stops signing until every token it signed has
expired. The operator runs plan_rotation on every key sync, stores the result in a Secret, and
publishes ring.jwks(now). Both functions are idempotent, so a crash between planning and storing is
harmless, and `generate` (injectable for tests) is their only source of randomness.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from agenttoken.core.keys import KeyPolicy, KeyRing, RevokedKey, SigningKey, generate_key
from agenttoken.core.timing import format_duration

__all__ = ["KeyGenerator", "plan_rotation", "revoke_key"]


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")


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
