"""How one reconcile pass went, in the terms status, Events and the next wake-up need: pure.

The controller's steps (usage, issuing, rollout) each add their part to an `Outcome`
(core.status); the rules that pick reasons and carry a failure over between passes live here, so
they are tested without a cluster.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from agenttoken import api
from agenttoken.core.conditions import Reason
from agenttoken.core.model import AgentTokenSpec, TokenStatus
from agenttoken.core.renewal import Action, Decision, Snapshot
from agenttoken.core.secretdata import TokenRecord
from agenttoken.core.status import Outcome
from agenttoken.core.times import format_time
from agenttoken.core.timing import next_retry_time, renewal_time
from agenttoken.core.usage import FLAGGED, IN_USE, REVOKED, SUSPENDED, UNUSED, Usage, UsageDecision
from agenttoken.core.usage import message as usage_message

# Reasons a failed attempt reports; between attempts the last one keeps being reported.
FAILURE_REASONS = (api.REASON_RENEWAL_FAILED, api.REASON_ISSUE_FAILED, api.REASON_VERIFICATION_FAILED)
# Decisions whose new token puts back what was lost rather than renewing it.
RESTORING = ("SecretMissing", "TokenAltered")


class Event(NamedTuple):
    """An Event about the AgentToken being reconciled (Events never carry token material)."""

    warning: bool
    reason: str
    message: str


def carried_failure(previous: TokenStatus) -> Reason | None:
    """Between attempts, the last failure's own reason and cause (it names what went wrong), so
    waiting out the backoff rewrites nothing; None when the last attempt succeeded."""
    if not previous.failed_attempts:
        return None
    for c in previous.conditions:
        if c.get("type") == api.COND_RECONCILING and c.get("reason") in FAILURE_REASONS:
            return Reason(str(c["reason"]), str(c.get("message", "")))
    return Reason(api.REASON_RENEWAL_FAILED, f"{previous.failed_attempts} failed attempt(s); retrying")


def starting_outcome(previous: TokenStatus, spec: AgentTokenSpec) -> Outcome:
    """The outcome before this pass acts: failures so far carry over until an attempt succeeds."""
    return Outcome(
        failed_attempts=previous.failed_attempts,
        last_failure_time=previous.last_failure_time,
        suspended=spec.suspend,
        failure=carried_failure(previous),
    )


def reported_record(snap: Snapshot, decision: Decision) -> TokenRecord | None:
    """The token record status reports and rollouts follow before anything is minted: the one
    to adopt from the Secret, else the Secret's own if its token is intact; never the token in
    someone else's Secret (a conflict)."""
    if decision.action is Action.CONFLICT:
        return None
    return decision.adopt or (snap.secret.record if snap.secret.token_intact else None)


def template_problem(exc: Exception) -> Reason:
    return Reason(api.REASON_INVALID_CONFIG_TEMPLATE, f"spec.secret.config.template: {exc}")


def invalid_secret(exc: Exception) -> Reason:
    return Reason(api.REASON_INVALID_SPEC, f"the Secret this spec describes is invalid: {exc}")


def issued_event(first: bool, decision: Decision, record: TokenRecord) -> Event:
    """The Event after a new token reached the Secret: Issued, SecretRestored or Renewed."""
    if first:
        reason, text = api.REASON_ISSUED, f"issued token {record.token_id} (revision {record.revision})"
    elif decision.reason in RESTORING:
        reason, text = api.REASON_SECRET_RESTORED, f"{decision.message}; issued token {record.token_id}"
    else:
        reason, text = api.REASON_RENEWED, f"{decision.message}; issued token {record.token_id}"
    return Event(False, reason, f"{text}, expires {record.expires_at.isoformat()}")


def failed_attempt(
    outcome: Outcome,
    *,
    attempts: int,
    now: datetime.datetime,
    reason: str,
    message: str,
) -> Outcome:
    return dataclasses.replace(
        outcome, failed_attempts=attempts, last_failure_time=now, failure=Reason(reason, message)
    )


def issue_failure_reason(first: bool) -> str:
    """A first token that could not be minted is IssueFailed; a successor, RenewalFailed."""
    return api.REASON_ISSUE_FAILED if first else api.REASON_RENEWAL_FAILED


def with_usage(
    outcome: Outcome, decision: UsageDecision, spec: AgentTokenSpec, record: TokenRecord | None
) -> Outcome:
    """The Unused condition, a usage suspension and the revocation of an unused token."""
    usage = decision.usage
    if usage.state not in FLAGGED:
        return outcome
    reason = {
        UNUSED: api.REASON_UNUSED,
        SUSPENDED: api.REASON_UNUSED_SUSPENDED,
        REVOKED: api.REASON_UNUSED_REVOKED,
    }[usage.state]
    text = usage_message(usage.state, usage, spec.secret_name, spec.unused)
    outcome = dataclasses.replace(outcome, unused=Reason(reason, text))
    if usage.suspends_renewal:
        outcome = dataclasses.replace(
            outcome, suspended_why=f"renewal suspended: unused since {format_time(usage.unused_since)}"
        )
    if usage.state == REVOKED and record is not None and record.token_id == usage.revoked_token_id:
        outcome = dataclasses.replace(outcome, revoked=Reason(api.REASON_TOKEN_REVOKED, text))
    return outcome


def next_wakeup(
    *,
    spec: AgentTokenSpec,
    record: TokenRecord | None,
    decision: Decision,
    outcome: Outcome,
    jitter_key: str,
    now: datetime.datetime,
) -> datetime.datetime | None:
    """When this AgentToken needs looking at again for its token's own sake: the next retry or
    backoff end, the expiry (Ready flips), the renewal time. A moment already past means a second
    from now, never "skip it": a pass that decided just before its renewal time and finished
    just after it must not sleep until the expiry (the renewal would land late)."""
    times: list[datetime.datetime] = []
    if outcome.failed_attempts and outcome.last_failure_time:
        times.append(
            next_retry_time(
                outcome.last_failure_time, outcome.failed_attempts, record.expires_at if record else None
            )
        )
    elif decision.action is Action.BACKOFF and decision.wake_at:
        times.append(decision.wake_at)
    if record is not None:
        if record.expires_at > now:
            times.append(record.expires_at)  # flip Ready when it expires (suspended or failing)
        if not spec.suspend and not outcome.failed_attempts:
            snap_wake = decision.wake_at if decision.action is not Action.MINT else None
            times.append(
                snap_wake or renewal_time(record.issued_at, record.expires_at, spec.renewal, jitter_key)
            )
    soon = now + datetime.timedelta(seconds=1)
    return min(t if t > now else soon for t in times) if times else None


def expiry_warning(
    record: TokenRecord | None,
    outcome: Outcome,
    spec: AgentTokenSpec,
    fraction: float,
    now: datetime.datetime,
) -> Event | None:
    """Expiring: the token has `fraction` of its lifetime or less left and renewal keeps failing."""
    if record is None or outcome.failure is None:
        return None
    left = record.expires_at - now
    if left <= datetime.timedelta(0) or left > spec.ttl * fraction:
        return None
    return Event(
        True,
        api.REASON_EXPIRING,
        f"token {record.token_id} expires in {int(left.total_seconds())}s and renewal keeps failing",
    )


@dataclass(frozen=True)
class StepResult:
    """What one step of a reconcile pass contributes: the outcome so far (conditions), its own
    status fields, when to look again, and the Events to post."""

    outcome: Outcome
    status: Mapping[str, Any] = field(default_factory=dict)
    wake: tuple[datetime.datetime, ...] = ()
    events: tuple[Event, ...] = ()


def usage_event(step: str, usage: Usage, spec: AgentTokenSpec, *, already_expired: bool) -> Event:
    """The Event for a step of the unused-token policy (InUse again, Unused, Suspended, Revoked)."""
    text = usage_message(step, usage, spec.secret_name, spec.unused)
    if step == IN_USE:
        return Event(False, api.REASON_IN_USE, text)
    if step == UNUSED:
        return Event(True, api.REASON_UNUSED, text)
    if step == SUSPENDED:
        return Event(True, api.REASON_UNUSED_SUSPENDED, text)
    if already_expired:
        text += " (it had already expired; nothing to add to the revocation list)"
    return Event(True, api.REASON_UNUSED_REVOKED, text)
