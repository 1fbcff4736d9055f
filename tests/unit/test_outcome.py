"""How a reconcile pass went (core.outcome): failure carry-over, the token record, Event
reasons, the next wake-up. Table-driven, with an injected clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from agenttoken import api
from agenttoken.core import outcome as outcomes
from agenttoken.core.conditions import Reason
from agenttoken.core.model import AgentTokenSpec, TokenStatus, parse_spec
from agenttoken.core.renewal import Action, Decision, Snapshot
from agenttoken.core.secretdata import TokenRecord, desired_secret, observe
from agenttoken.core.status import Outcome
from agenttoken.core.timing import next_retry_time, renewal_time
from agenttoken.core.tokens import token_hash
from agenttoken.core.usage import IN_USE, REVOKED, SUSPENDED, UNUSED, UnusedPolicy, Usage, UsageDecision

T0 = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJhIn0.sig"
MIN = dt.timedelta(minutes=1)


def spec(**over: Any) -> AgentTokenSpec:
    return parse_spec({"audience": ["https://api"], "ttl": "1h", "secret": {"name": "tok"}} | over)


def record(s: AgentTokenSpec, **over: Any) -> TokenRecord:
    base = TokenRecord(
        token_id="jti-1",
        token_hash=token_hash(TOKEN),
        key_id="kid-1",
        revision=1,
        issued_at=T0,
        expires_at=T0 + s.ttl,
        spec_hash=s.claims_hash(),
    )
    return dataclasses.replace(base, **over)


def reconciling(reason: str, message: str = "why") -> dict[str, Any]:
    return {"type": api.COND_RECONCILING, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (TokenStatus(), None),
        (
            TokenStatus(failed_attempts=2, conditions=(reconciling(api.REASON_ISSUE_FAILED, "boom"),)),
            Reason(api.REASON_ISSUE_FAILED, "boom"),
        ),
        (
            TokenStatus(failed_attempts=1, conditions=(reconciling(api.REASON_VERIFICATION_FAILED, "401"),)),
            Reason(api.REASON_VERIFICATION_FAILED, "401"),
        ),
        # A Reconciling condition for something else (a rollout) is not the failure.
        (
            TokenStatus(failed_attempts=3, conditions=(reconciling(api.REASON_ROLLING_OUT),)),
            Reason(api.REASON_RENEWAL_FAILED, "3 failed attempt(s); retrying"),
        ),
        # Failures recorded but no condition (e.g. status written by an older version).
        (TokenStatus(failed_attempts=1), Reason(api.REASON_RENEWAL_FAILED, "1 failed attempt(s); retrying")),
    ],
)
def test_the_last_failure_keeps_being_reported_between_attempts(
    status: TokenStatus, expected: Reason | None
) -> None:
    assert outcomes.carried_failure(status) == expected


def test_the_starting_outcome_carries_attempts_suspension_and_failure() -> None:
    status = TokenStatus(
        failed_attempts=2, last_failure_time=T0, conditions=(reconciling(api.REASON_RENEWAL_FAILED, "x"),)
    )
    got = outcomes.starting_outcome(status, spec(suspend=True))
    assert got == Outcome(
        failed_attempts=2,
        last_failure_time=T0,
        suspended=True,
        failure=Reason(api.REASON_RENEWAL_FAILED, "x"),
    )


def _snap(s: AgentTokenSpec, body: dict[str, Any] | None) -> Snapshot:
    return Snapshot(
        spec=s,
        status=TokenStatus(token_id="jti-1"),
        secret=observe(body, name="agent", uid=UID, spec=s),
        rotate_request=None,
        jitter_key=UID,
    )


def test_the_token_record_reported_before_minting() -> None:
    s = spec()
    rec = record(s)
    body = desired_secret(namespace="ns", name="agent", uid=UID, spec=s, token=TOKEN, record=rec)
    intact, gone = _snap(s, body), _snap(s, None)
    adopted = record(s, token_id="jti-2", revision=2)
    none = Decision(Action.NONE, "Current", "ok")
    assert outcomes.reported_record(intact, none) == rec
    assert outcomes.reported_record(gone, none) is None
    assert outcomes.reported_record(gone, dataclasses.replace(none, adopt=adopted)) == adopted
    # The token in someone else's Secret is not ours to report or roll out.
    assert outcomes.reported_record(intact, Decision(Action.CONFLICT, "SecretConflict", "not ours")) is None


@pytest.mark.parametrize(
    ("first", "decision_reason", "reason", "starts"),
    [
        (True, "NoToken", api.REASON_ISSUED, "issued token jti-9 (revision 3)"),
        (False, "SecretMissing", api.REASON_SECRET_RESTORED, "the message; issued token jti-9"),
        (False, "TokenAltered", api.REASON_SECRET_RESTORED, "the message; issued token jti-9"),
        (False, "RenewalDue", api.REASON_RENEWED, "the message; issued token jti-9"),
    ],
)
def test_the_event_after_a_new_token(first: bool, decision_reason: str, reason: str, starts: str) -> None:
    rec = record(spec(), token_id="jti-9", revision=3)
    event = outcomes.issued_event(first, Decision(Action.MINT, decision_reason, "the message"), rec)
    assert event.warning is False
    assert event.reason == reason
    assert event.message == f"{starts}, expires {rec.expires_at.isoformat()}"


def test_a_failed_first_token_is_issue_failed_and_a_successor_renewal_failed() -> None:
    assert outcomes.issue_failure_reason(True) == api.REASON_ISSUE_FAILED
    assert outcomes.issue_failure_reason(False) == api.REASON_RENEWAL_FAILED


RENEW = renewal_time(T0, T0 + dt.timedelta(hours=1), spec().renewal, UID)
NONE = Decision(Action.NONE, "Current", "ok")


@pytest.mark.parametrize(
    ("name", "now", "over", "decision", "out", "expected"),
    [
        ("renewal time", T0 + MIN, {}, NONE, Outcome(), RENEW),
        (
            "suspended: only the expiry",
            T0 + MIN,
            {"suspend": True},
            NONE,
            Outcome(),
            T0 + dt.timedelta(hours=1),
        ),
        (
            "failing: the next retry",
            T0 + MIN,
            {},
            NONE,
            Outcome(failed_attempts=2, last_failure_time=T0 + MIN),
            next_retry_time(T0 + MIN, 2, T0 + dt.timedelta(hours=1)),
        ),
        (
            "backoff ends",
            T0 + MIN,
            {},
            Decision(Action.BACKOFF, "Backoff", "wait", wake_at=T0 + 2 * MIN),
            Outcome(),
            T0 + 2 * MIN,
        ),
        ("everything past: a second from now", T0 + dt.timedelta(hours=2), {}, NONE, Outcome(), None),
        # A pass that decided "not yet" just before the renewal time and ended just after it:
        # the renewal is looked at again now, not at the expiry (late renewals under load).
        (
            "renewal time just past, expiry ahead",
            RENEW + dt.timedelta(milliseconds=300),
            {},
            NONE,
            Outcome(),
            None,
        ),
    ],
)
def test_the_next_wakeup(
    name: str,
    now: dt.datetime,
    over: dict[str, Any],
    decision: Decision,
    out: Outcome,
    expected: dt.datetime | None,
) -> None:
    s = spec(**over)
    got = outcomes.next_wakeup(
        spec=s, record=record(s), decision=decision, outcome=out, jitter_key=UID, now=now
    )
    assert got == (expected or now + dt.timedelta(seconds=1)), name


def test_no_token_and_nothing_to_retry_needs_no_wakeup() -> None:
    got = outcomes.next_wakeup(
        spec=spec(), record=None, decision=NONE, outcome=Outcome(), jitter_key=UID, now=T0
    )
    assert got is None


@pytest.mark.parametrize(
    ("left", "failing", "warns"),
    [
        (dt.timedelta(minutes=5), True, True),  # 5 of 60 minutes left: under 10 %
        (dt.timedelta(minutes=30), True, False),
        (dt.timedelta(minutes=5), False, False),  # renewal is not failing
        (dt.timedelta(minutes=-1), True, False),  # already expired: Ready says so
    ],
)
def test_expiry_warning(left: dt.timedelta, failing: bool, warns: bool) -> None:
    s = spec()
    rec = record(s)
    out = Outcome(failure=Reason(api.REASON_RENEWAL_FAILED, "x") if failing else None)
    event = outcomes.expiry_warning(rec, out, s, 0.1, rec.expires_at - left)
    assert (event is not None) == warns
    if event is not None:
        assert event.reason == api.REASON_EXPIRING
        assert event.warning


POLICY = spec(unused={"markAfter": "1h", "suspendAfter": "1h", "revokeAfter": "1h"})


@pytest.mark.parametrize(
    ("step", "expired", "reason", "warning"),
    [
        (IN_USE, False, api.REASON_IN_USE, False),
        (UNUSED, False, api.REASON_UNUSED, True),
        (SUSPENDED, False, api.REASON_UNUSED_SUSPENDED, True),
        (REVOKED, False, api.REASON_UNUSED_REVOKED, True),
        (REVOKED, True, api.REASON_UNUSED_REVOKED, True),
    ],
)
def test_usage_step_events(step: str, expired: bool, reason: str, warning: bool) -> None:
    usage = Usage(state=step, unused_since=T0, marked_at=T0)
    event = outcomes.usage_event(step, usage, POLICY, already_expired=expired)
    assert (event.reason, event.warning) == (reason, warning)
    assert event.message.endswith("nothing to add to the revocation list)") == expired


def test_usage_outcome_flags_suspends_and_marks_the_revoked_token() -> None:
    s, rec = POLICY, record(POLICY)
    assert outcomes.with_usage(Outcome(), UsageDecision(Usage(state=IN_USE)), s, rec) == Outcome()
    suspended = Usage(state=SUSPENDED, unused_since=T0, marked_at=T0, suspended_at=T0)
    got = outcomes.with_usage(Outcome(), UsageDecision(suspended), s, rec)
    assert got.unused is not None
    assert got.unused.reason == api.REASON_UNUSED_SUSPENDED
    assert got.suspended_why
    assert got.revoked is None
    revoked = dataclasses.replace(suspended, state=REVOKED, revoked_at=T0, revoked_token_id="jti-1")
    got = outcomes.with_usage(Outcome(), UsageDecision(revoked), s, rec)
    assert got.revoked is not None
    assert got.revoked.reason == api.REASON_TOKEN_REVOKED
    # A token minted after the revocation is not the revoked one.
    got = outcomes.with_usage(Outcome(), UsageDecision(revoked), s, record(s, token_id="jti-2"))
    assert got.revoked is None
    assert isinstance(s.unused, UnusedPolicy)
