"""When to renew a token, and when to retry after a failure.

This is part of the pure core: no Kubernetes, no I/O, and no clock. Every decision is a function of
the times it is given, so the same inputs always give the same answer. That is what lets the operator
restart at any moment and recompute exactly the schedule it had before, and what lets the tests walk
through days of renewals without sleeping.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

__all__ = [
    "DEFAULT_RENEW_FRACTION",
    "EXPIRY_SAFETY_MARGIN",
    "MAX_JITTER",
    "MIN_RENEWAL_FRACTION",
    "MIN_RETRY_GAP",
    "RenewalPolicy",
    "backoff_delay",
    "format_duration",
    "next_retry_time",
    "parse_duration",
    "renewal_time",
]

_US = timedelta(microseconds=1)

# Microseconds per unit. "ms" is listed before "m" in the pattern so "5ms" is not read as "5m" + "s".
_UNIT_US = {"h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000, "ms": 1_000}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION_RE = re.compile(rf"(?:{_NUMBER}(?:ms|h|m|s))+", re.ASCII)
_COMPONENT_RE = re.compile(rf"({_NUMBER})(ms|h|m|s)", re.ASCII)

#: Renew when this fraction of the lifetime remains, unless the policy says otherwise.
DEFAULT_RENEW_FRACTION = (1, 3)
#: Never renew before this fraction of the lifetime has passed (avoids renewal storms on bad settings).
MIN_RENEWAL_FRACTION = (1, 10)
#: Upper bound on the jitter; it is also at most a tenth of the renewal margin.
MAX_JITTER = timedelta(seconds=60)
#: A failing renewal gets one more try at least this long before the token expires.
EXPIRY_SAFETY_MARGIN = timedelta(seconds=30)
#: Inside the safety margin, retries come halfway to expiry, until no more than twice this is left.
MIN_RETRY_GAP = timedelta(seconds=1)


def parse_duration(text: str) -> timedelta:
    """Parse a Go/Kubernetes duration such as "1h30m", "90s", "1.5h" or "250ms".

    Only h, m, s and ms are accepted. The result must be positive; it is truncated to microseconds.
    """
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}: expected a string like 1h30m")
    return _parse_duration(text)


# Every pass parses the spec's few durations again ("1h", "60s"...): 3 % of the operator's CPU
# in a burst of new AgentTokens (py-spy), for a handful of distinct strings. Errors are not cached.
@functools.lru_cache(maxsize=1024)
def _parse_duration(text: str) -> timedelta:
    if text.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: negative durations are not allowed")
    if not _DURATION_RE.fullmatch(text):
        raise ValueError(
            f"invalid duration {text!r}: expected one or more <number><unit> with units h, m, s, ms"
            " (for example 1h30m, 90s or 1.5h)"
        )
    total = Decimal(0)
    try:
        for number, unit in _COMPONENT_RE.findall(text):
            total += Decimal(number) * _UNIT_US[unit]
        result = timedelta(microseconds=int(total))
    except (InvalidOperation, OverflowError):
        raise ValueError(f"invalid duration {text!r}: too large") from None
    if result <= timedelta(0):
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return result


def format_duration(td: timedelta) -> str:
    """The inverse of parse_duration: timedelta(hours=1, minutes=30) -> "1h30m", 90 s -> "1m30s".

    Zero components are left out, days are written as hours, and a zero duration is "0s".
    """
    if td < timedelta(0):
        raise ValueError(f"cannot format negative duration {td}")
    us = td // _US
    if us == 0:
        return "0s"
    hours, rest = divmod(us, _UNIT_US["h"])
    minutes, rest = divmod(rest, _UNIT_US["m"])
    seconds, micros = divmod(rest, _UNIT_US["s"])
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if seconds == 0 and micros and micros % 1000 == 0:
        parts.append(f"{micros // 1000}ms")
    elif micros:
        parts.append(f"{seconds}.{micros:06d}".rstrip("0") + "s")
    elif seconds:
        parts.append(f"{seconds}s")
    return "".join(parts)


@dataclass(frozen=True)
class RenewalPolicy:
    """How long before expiry to renew; at most one of the two fields may be set.

    renew_before: a fixed margin before expiry (cert-manager's renewBefore).
    renew_before_percentage: renew when less than this percentage of the lifetime remains
    (cert-manager's renewBeforePercentage). Neither set: renew when a third of the lifetime remains.
    """

    renew_before: timedelta | None = None
    renew_before_percentage: int | None = None

    def __post_init__(self) -> None:
        if self.renew_before is not None and self.renew_before_percentage is not None:
            raise ValueError("renew_before and renew_before_percentage are mutually exclusive")
        if self.renew_before is not None and self.renew_before <= timedelta(0):
            raise ValueError(f"renew_before must be positive, got {self.renew_before}")
        pct = self.renew_before_percentage
        if pct is not None and (isinstance(pct, bool) or not isinstance(pct, int) or not 1 <= pct <= 99):
            raise ValueError(f"renew_before_percentage must be an integer from 1 to 99, got {pct!r}")

    def margin(self, lifetime: timedelta) -> timedelta:
        """How long before expiry to renew a token with this lifetime, before clamping and jitter."""
        if self.renew_before is not None:
            # A margin as long as the lifetime would mean "renew at once", forever: renew halfway instead.
            return self.renew_before if self.renew_before < lifetime else lifetime / 2
        if self.renew_before_percentage is not None:
            return lifetime * self.renew_before_percentage / 100
        num, den = DEFAULT_RENEW_FRACTION
        return lifetime * num / den


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")


def _jitter_fraction(key: str) -> tuple[int, int]:
    """A fraction in [0, 1) as (numerator, 2**64), derived from the key so it is stable across restarts."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big"), 1 << 64


def renewal_time(
    issued_at: datetime, expires_at: datetime, policy: RenewalPolicy, jitter_key: str = ""
) -> datetime:
    """When a token issued at issued_at and expiring at expires_at should be renewed.

    The margin comes from the policy (see RenewalPolicy.margin). Then:
    - jitter: a deterministic function of jitter_key (usually the object's UID) moves the time earlier
      by up to min(10% of the margin, 60 s), so tokens created together spread their renewals and a
      restart recomputes the same time. An empty key means no jitter.
    - clamp: the result is never earlier than issued_at + 10% of the lifetime, so a policy that asks
      for a margin close to the whole lifetime cannot turn into a renewal loop.
    """
    _require_aware("issued_at", issued_at)
    _require_aware("expires_at", expires_at)
    lifetime = expires_at - issued_at
    if lifetime <= timedelta(0):
        raise ValueError(
            f"expires_at ({expires_at.isoformat()}) must be after issued_at ({issued_at.isoformat()})"
        )
    margin = policy.margin(lifetime)
    jitter = timedelta(0)
    if jitter_key:
        max_jitter_us = min(margin / 10, MAX_JITTER) // _US
        num, den = _jitter_fraction(jitter_key)
        jitter = timedelta(microseconds=max_jitter_us * num // den)
    num, den = MIN_RENEWAL_FRACTION
    earliest = issued_at + lifetime * num / den
    return max(expires_at - margin - jitter, earliest)


def backoff_delay(
    failed_attempts: int,
    base: timedelta = timedelta(seconds=5),
    cap: timedelta = timedelta(minutes=5),
) -> timedelta:
    """Capped exponential backoff: base * 2**(n-1) for n >= 1 failures, at most cap; 0 for n <= 0."""
    if failed_attempts <= 0:
        return timedelta(0)
    base_us, cap_us = base // _US, cap // _US
    if base_us <= 0:
        return timedelta(0)
    shift = failed_attempts - 1
    # Past this many doublings the cap applies anyway; checking first avoids building huge integers.
    if shift >= cap_us.bit_length():
        return cap
    return timedelta(microseconds=min(base_us << shift, cap_us))


def next_retry_time(
    last_failure: datetime,
    failed_attempts: int,
    expires_at: datetime | None,
    *,
    base: timedelta = timedelta(seconds=5),
    cap: timedelta = timedelta(minutes=5),
    safety_margin: timedelta = EXPIRY_SAFETY_MARGIN,
) -> datetime:
    """When to retry after failed_attempts consecutive failures, the last at last_failure.

    Normally last_failure + backoff_delay(...). While the current token is still valid, a long
    backoff must not skip the last chance to renew before it expires, so the retry comes no later
    than expires_at - safety_margin. A failure inside that margin (e.g. the previous last chance
    failed, or the failures began late) is retried halfway to expiry: still before it. This stops
    once no more than 2 * MIN_RETRY_GAP remain (so last chances stay at least MIN_RETRY_GAP apart and
    cannot pile up just before expiry); then, as after expiry, the plain backoff applies.
    """
    _require_aware("last_failure", last_failure)
    retry = last_failure + backoff_delay(failed_attempts, base, cap)
    if expires_at is not None:
        _require_aware("expires_at", expires_at)
        remaining = expires_at - last_failure
        if remaining > safety_margin:
            retry = min(retry, expires_at - safety_margin)
        elif remaining > 2 * MIN_RETRY_GAP:
            retry = min(retry, last_failure + remaining / 2)
    return retry
