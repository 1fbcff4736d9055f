"""Is anyone still using this token? Stale and orphan AgentTokens, decided from recorded facts. Pure.

"Consumed" means what the cluster shows: a Deployment, StatefulSet or DaemonSet in the
AgentToken's namespace that runs pods (desired or current replicas above zero) and whose pod
template reads the Secret through a volume, a projected volume, an env `secretKeyRef` or
`envFrom` (the consumers `rollout` already finds for restarts). Before a step that takes
something away (marking, suspension, revocation) the operator also reads the namespace's Pods
and CronJobs fresh from the API, so bare Pods, Jobs and CronJobs count too, and a stale cache
never suspends a token that is in use.

The facts live in `status.usage`, so a restarted operator re-derives the same state and the
same next step from them:

- `unusedSince`: when the operator first saw the Secret without a consumer (absent while used);
- `lastConsumedAt`: the last time it saw a consumer (absent if it never saw one);
- `markedAt`, `suspendedAt`, `revokedAt` (+ `revokedTokenId`): when each step happened.

Steps, each one period after the previous step actually happened (so an operator that was down
never does two steps at once): `Idle` (unused, not flagged yet) -> `Unused` after `markAfter` ->
`Suspended` after `suspendAfter` (opt-in) -> `Revoked` after `revokeAfter` (opt-in). A consumer
showing up at any step returns the AgentToken to `InUse`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from agenttoken.core.times import format_time, parse_time

IN_USE: Final = "InUse"
IDLE: Final = "Idle"
UNUSED: Final = "Unused"
SUSPENDED: Final = "Suspended"
REVOKED: Final = "Revoked"
FLAGGED: Final = frozenset({UNUSED, SUSPENDED, REVOKED})

DEFAULT_MARK_AFTER: Final = datetime.timedelta(hours=168)


@dataclass(frozen=True)
class UnusedPolicy:
    """spec.unused: when to flag, and (opt-in) when to suspend and revoke an unused token."""

    mark_after: datetime.timedelta = DEFAULT_MARK_AFTER
    suspend_after: datetime.timedelta | None = None
    revoke_after: datetime.timedelta | None = None


@dataclass(frozen=True)
class Usage:
    """status.usage."""

    state: str = IDLE
    unused_since: datetime.datetime | None = None
    last_consumed_at: datetime.datetime | None = None
    marked_at: datetime.datetime | None = None
    suspended_at: datetime.datetime | None = None
    revoked_at: datetime.datetime | None = None
    revoked_token_id: str | None = None

    @property
    def suspends_renewal(self) -> bool:
        return self.state in (SUSPENDED, REVOKED)

    def to_status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "unusedSince": format_time(self.unused_since),
            "lastConsumedAt": format_time(self.last_consumed_at),
            "markedAt": format_time(self.marked_at),
            "suspendedAt": format_time(self.suspended_at),
            "revokedAt": format_time(self.revoked_at),
            "revokedTokenId": self.revoked_token_id,
        }


def parse_usage(raw: Mapping[str, Any] | None) -> Usage | None:
    if not raw or not isinstance(raw, Mapping):
        return None
    return Usage(
        state=str(raw.get("state") or IDLE),
        unused_since=parse_time(raw.get("unusedSince")),
        last_consumed_at=parse_time(raw.get("lastConsumedAt")),
        marked_at=parse_time(raw.get("markedAt")),
        suspended_at=parse_time(raw.get("suspendedAt")),
        revoked_at=parse_time(raw.get("revokedAt")),
        revoked_token_id=raw.get("revokedTokenId") or None,
    )


@dataclass(frozen=True)
class UsageDecision:
    usage: Usage
    # The step taken now (UNUSED, SUSPENDED, REVOKED, or IN_USE when a flagged token is used
    # again), for the Event; None when nothing changed state.
    step: str | None = None
    # When the next step is due (the controller wakes the AgentToken then).
    wake_at: datetime.datetime | None = None

    @property
    def needs_confirmation(self) -> bool:
        """Steps that flag or take something away are confirmed by a fresh read of the cluster."""
        return self.step in (UNUSED, SUSPENDED, REVOKED)


def assess(
    policy: UnusedPolicy,
    previous: Usage | None,
    consumed: bool,
    now: datetime.datetime,
    token_id: str | None,
) -> UsageDecision:
    """The usage state after observing `consumed` at `now`; at most one step per call."""
    prev = previous or Usage()
    if consumed:
        usage = Usage(state=IN_USE, revoked_at=prev.revoked_at, revoked_token_id=prev.revoked_token_id)
        return UsageDecision(usage, IN_USE if prev.state in FLAGGED else None)

    # Not consumed. The unused period starts when we first notice it (never earlier: after an
    # upgrade or a restart, an older guess could flag or suspend a token in use).
    was_used = previous is not None and prev.state == IN_USE
    since = prev.unused_since if prev.unused_since is not None and not was_used else now
    last = now if was_used else prev.last_consumed_at
    usage = replace(prev, unused_since=since, last_consumed_at=last)
    if policy.suspend_after is None:  # the opt-in was withdrawn: renewal resumes
        usage = replace(usage, suspended_at=None, revoked_at=None)
    elif policy.revoke_after is None:
        usage = replace(usage, revoked_at=None)
    if was_used:
        usage = replace(usage, marked_at=None, suspended_at=None, revoked_at=None)

    step: str | None = None
    if usage.marked_at is None:
        due = since + policy.mark_after
        if now >= due:
            usage, step = replace(usage, marked_at=now), UNUSED
    elif policy.suspend_after is not None and usage.suspended_at is None:
        due = usage.marked_at + policy.suspend_after
        if now >= due:
            usage, step = replace(usage, suspended_at=now), SUSPENDED
    elif policy.revoke_after is not None and usage.suspended_at is not None and usage.revoked_at is None:
        due = usage.suspended_at + policy.revoke_after
        if now >= due:
            usage, step = replace(usage, revoked_at=now, revoked_token_id=token_id), REVOKED
    usage = replace(usage, state=_state(usage))
    return UsageDecision(usage, step, _next_step(policy, usage))


def _state(usage: Usage) -> str:
    if usage.revoked_at is not None:
        return REVOKED
    if usage.suspended_at is not None:
        return SUSPENDED
    if usage.marked_at is not None:
        return UNUSED
    return IDLE


def _next_step(policy: UnusedPolicy, usage: Usage) -> datetime.datetime | None:
    if usage.marked_at is None:
        assert usage.unused_since is not None  # set whenever the Secret is not consumed
        return usage.unused_since + policy.mark_after
    if usage.suspended_at is None:
        return usage.marked_at + policy.suspend_after if policy.suspend_after is not None else None
    if usage.revoked_at is None and policy.revoke_after is not None:
        return usage.suspended_at + policy.revoke_after
    return None


def message(step: str, usage: Usage, secret: str, policy: UnusedPolicy) -> str:
    """The Event and condition text for `step` (or the current state)."""
    since = format_time(usage.unused_since)
    if step == IN_USE:
        return f"Secret {secret} is consumed again; renewal continues normally"
    if step == UNUSED:
        text = f"no workload has consumed Secret {secret} since {since}"
        if policy.suspend_after is not None:
            when = format_time(usage.marked_at + policy.suspend_after) if usage.marked_at else "later"
            text += f"; renewal will be suspended at {when}"
        return text
    if step == SUSPENDED:
        text = f"renewal suspended: no workload has consumed Secret {secret} since {since}"
        if policy.revoke_after is not None and usage.suspended_at is not None:
            text += f"; the token will be revoked at {format_time(usage.suspended_at + policy.revoke_after)}"
        return text
    return (
        f"token {usage.revoked_token_id} revoked: no workload has consumed Secret {secret} since {since}; "
        "a new token is issued as soon as a workload consumes the Secret again"
    )
