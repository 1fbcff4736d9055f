"""What an AgentToken's status says after a reconcile: pure, from the record and the outcome.

Status never holds token material: only the token id (jti), a hash, key id and times.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agenttoken import api
from agenttoken.core.conditions import Reason, summarize
from agenttoken.core.model import AgentTokenSpec, TokenStatus
from agenttoken.core.secretdata import TokenRecord
from agenttoken.core.times import format_time
from agenttoken.core.timing import renewal_time


@dataclass(frozen=True)
class Outcome:
    """How the reconcile went, in the terms conditions need."""

    stalled: Reason | None = None  # user action needed (invalid spec, conflict, unknown issuer)
    failure: Reason | None = None  # the last attempt failed; it will be retried
    reconciling: Reason | None = None  # work in progress other than a failure
    suspended: bool = False
    suspended_why: str | None = None  # why renewal is suspended, when not by spec.suspend
    unused: Reason | None = None  # condition Unused (no consumer for spec.unused.markAfter)
    revoked: Reason | None = None  # the token in the Secret was revoked (unused-token policy)
    failed_attempts: int = 0
    last_failure_time: datetime.datetime | None = None
    # status.verification after a successful spec.verify check of a new token (else kept as is)
    verification: Mapping[str, Any] | None = None


def render(
    *,
    previous: TokenStatus,
    generation: int | None,
    spec: AgentTokenSpec | None,
    record: TokenRecord | None,
    jitter_key: str,
    outcome: Outcome,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The full status object (as a merge patch it replaces every field we own)."""
    valid = record is not None and record.expires_at > now
    ready: Reason | None = None
    not_ready: Reason | None = None
    renews: datetime.datetime | None = None
    if record is not None and spec is not None:
        renews = renewal_time(record.issued_at, record.expires_at, spec.renewal, jitter_key)
    if valid and record is not None:
        if outcome.revoked is not None:
            not_ready = outcome.revoked
        elif outcome.suspended:
            ready = Reason(
                api.REASON_SUSPENDED,
                f"token valid until {format_time(record.expires_at)}; "
                + (outcome.suspended_why or "renewal suspended"),
            )
        elif outcome.failure is not None and outcome.failure.reason == api.REASON_VERIFICATION_FAILED:
            # A new token the API refused is not delivered; the old one, still valid, keeps Ready
            # True, and the reason says why renewal is not happening.
            ready = Reason(
                api.REASON_VERIFICATION_FAILED,
                f"token {record.token_id} valid until {format_time(record.expires_at)}; "
                f"its successor is held back: {outcome.failure.message}",
            )
        elif outcome.failure is not None:
            ready = Reason(
                api.REASON_READY,
                f"token valid until {format_time(record.expires_at)}; renewal failing: {outcome.failure.message}",
            )
        else:
            ready = Reason(
                api.REASON_READY, f"token {record.token_id} valid until {format_time(record.expires_at)}"
            )
    elif record is not None:
        not_ready = Reason(api.REASON_EXPIRED, f"the token expired at {format_time(record.expires_at)}")
        if outcome.failure is not None and outcome.failure.reason == api.REASON_VERIFICATION_FAILED:
            not_ready = Reason(
                api.REASON_VERIFICATION_FAILED,
                f"{not_ready.message}; its successor is held back: {outcome.failure.message}",
            )
        if outcome.suspended:
            not_ready = Reason(api.REASON_SUSPENDED, not_ready.message + "; renewal is suspended")
    elif outcome.suspended and outcome.failure is None:
        # Created (or left) suspended before any token: nothing is in progress, and saying
        # Progressing would leave kstatus waiting forever.
        not_ready = Reason(api.REASON_SUSPENDED, "no token issued; renewal is suspended")
    else:
        not_ready = outcome.failure or Reason(api.REASON_PROGRESSING, "no token issued yet")
    reconciling = outcome.failure or outcome.reconciling
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": summarize(
            previous=previous.conditions,
            generation=generation,
            now=now,
            ready=ready,
            not_ready=not_ready,
            reconciling=reconciling,
            stalled=outcome.stalled,
            unused=outcome.unused,
        ),
        "tokenId": record.token_id if record else previous.token_id,
        "keyId": record.key_id if record else previous.key_id,
        "tokenHash": record.token_hash if record else previous.token_hash,
        "issuedAt": format_time(record.issued_at) if record else format_time(previous.issued_at),
        "expiresAt": format_time(record.expires_at) if record else format_time(previous.expires_at),
        "renewalTime": None if outcome.suspended else format_time(renews),
        "revision": max(previous.revision, record.revision if record else 0),
        "failedAttempts": outcome.failed_attempts,
        "lastFailureTime": format_time(outcome.last_failure_time),
        "verification": (
            None
            if spec is not None and spec.verify is None
            else (outcome.verification or previous.verification)
        ),
        "lastHandledRotateRequest": (
            record.rotate_request
            if record and record.rotate_request
            else previous.last_handled_rotate_request
        ),
    }
    return status


def _without_nulls(value: Any) -> Any:
    """What the apiserver stores for a merge patch: null members are removed, at any depth."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def differs(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether writing `desired` (a merge patch) would change anything in `current`."""
    current = current or {}
    return any(_without_nulls(current.get(k)) != _without_nulls(v) for k, v in desired.items())
