"""The unused-token policy: marking, suspension and revocation as pure steps over recorded facts."""

from __future__ import annotations

import datetime

import pytest

from agenttoken.core.model import InvalidSpec, parse_spec
from agenttoken.core.rollout import consumed_in
from agenttoken.core.usage import (
    IDLE,
    IN_USE,
    REVOKED,
    SUSPENDED,
    UNUSED,
    UnusedPolicy,
    Usage,
    assess,
    parse_usage,
)

T0 = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
POLICY = UnusedPolicy(mark_after=10 * S, suspend_after=5 * S, revoke_after=5 * S)


def roundtrip(usage: Usage) -> Usage:
    """What a restarted operator reads back from status."""
    parsed = parse_usage(usage.to_status())
    assert parsed is not None
    return parsed


def test_flag_then_suspend_then_revoke_each_after_its_period() -> None:
    d = assess(POLICY, None, False, T0, "jti-1")
    assert (d.usage.state, d.step, d.usage.unused_since, d.wake_at) == (IDLE, None, T0, T0 + 10 * S)
    d = assess(POLICY, roundtrip(d.usage), False, T0 + 9 * S, "jti-1")
    assert d.step is None
    d = assess(POLICY, roundtrip(d.usage), False, T0 + 10 * S, "jti-1")
    assert (d.usage.state, d.step, d.usage.marked_at, d.wake_at) == (UNUSED, UNUSED, T0 + 10 * S, T0 + 15 * S)
    assert d.needs_confirmation
    assert not d.usage.suspends_renewal
    d = assess(POLICY, roundtrip(d.usage), False, T0 + 15 * S, "jti-1")
    assert (d.usage.state, d.step, d.wake_at) == (SUSPENDED, SUSPENDED, T0 + 20 * S)
    assert d.usage.suspends_renewal
    d = assess(POLICY, roundtrip(d.usage), False, T0 + 20 * S, "jti-1")
    assert (d.usage.state, d.step, d.usage.revoked_token_id, d.wake_at) == (REVOKED, REVOKED, "jti-1", None)
    d = assess(POLICY, roundtrip(d.usage), False, T0 + 99 * S, "jti-1")
    assert (d.usage.state, d.step) == (REVOKED, None)


def test_after_an_outage_steps_are_spaced_not_taken_at_once() -> None:
    idle = assess(POLICY, None, False, T0, None).usage
    d = assess(POLICY, roundtrip(idle), False, T0 + 3600 * S, "jti")
    assert d.step == UNUSED
    d = assess(POLICY, roundtrip(d.usage), False, T0 + 3601 * S, "jti")
    assert d.step is None
    assert d.wake_at == T0 + 3605 * S


def test_marking_only_by_default() -> None:
    d = assess(UnusedPolicy(mark_after=S), None, False, T0, None)
    d = assess(UnusedPolicy(mark_after=S), d.usage, False, T0 + S, None)
    assert d.step == UNUSED
    d = assess(UnusedPolicy(mark_after=S), d.usage, False, T0 + 10**6 * S, None)
    assert (d.usage.state, d.step, d.wake_at) == (UNUSED, None, None)


def test_a_consumer_undoes_every_step_and_keeps_the_revoked_id() -> None:
    usage = Usage(
        state=REVOKED,
        unused_since=T0,
        marked_at=T0,
        suspended_at=T0,
        revoked_at=T0,
        revoked_token_id="jti-old",
    )
    d = assess(POLICY, usage, True, T0 + S, "jti-old")
    assert (d.usage.state, d.step) == (IN_USE, IN_USE)
    assert d.usage.revoked_token_id == "jti-old"  # the renewal chain replaces that token
    assert (d.usage.unused_since, d.usage.marked_at, d.usage.suspended_at) == (None, None, None)
    assert not d.needs_confirmation
    assert assess(POLICY, d.usage, True, T0 + 2 * S, "jti-new").step is None


def test_losing_the_last_consumer_records_when_it_was_last_seen() -> None:
    used = assess(POLICY, None, True, T0, "jti").usage
    d = assess(POLICY, roundtrip(used), False, T0 + 7 * S, "jti")
    assert (d.usage.state, d.usage.unused_since, d.usage.last_consumed_at) == (IDLE, T0 + 7 * S, T0 + 7 * S)
    again = assess(POLICY, roundtrip(d.usage), False, T0 + 8 * S, "jti").usage
    assert again.unused_since == T0 + 7 * S


def test_withdrawing_the_opt_in_resumes_renewal() -> None:
    suspended = Usage(state=SUSPENDED, unused_since=T0, marked_at=T0, suspended_at=T0)
    d = assess(UnusedPolicy(mark_after=S), suspended, False, T0 + S, "jti")
    assert d.usage.state == UNUSED
    assert not d.usage.suspends_renewal


def test_spec_unused_parses_and_revocation_needs_suspension() -> None:
    base = {"audience": ["a"], "secret": {"name": "s"}}
    assert parse_spec(base).unused == UnusedPolicy()
    spec = parse_spec({**base, "unused": {"markAfter": "2s", "suspendAfter": "3s", "revokeAfter": "4s"}})
    assert spec.unused == UnusedPolicy(2 * S, 3 * S, 4 * S)
    with pytest.raises(InvalidSpec, match="suspendAfter"):
        parse_spec({**base, "unused": {"revokeAfter": "4s"}})


def _pod_spec(secret: str) -> dict[str, object]:
    return {"containers": [{"name": "c", "envFrom": [{"secretRef": {"name": secret}}]}]}


def test_consumed_in_counts_running_workloads_pods_and_cronjobs() -> None:
    deployment = {
        "metadata": {"name": "d", "namespace": "ns"},
        "spec": {"replicas": 1, "template": {"spec": _pod_spec("s")}},
    }
    scaled_to_zero = {**deployment, "spec": {"replicas": 0, "template": {"spec": _pod_spec("s")}}}
    assert consumed_in({"Deployment": [deployment]}, "s")
    assert not consumed_in({"Deployment": [deployment]}, "other")
    assert not consumed_in({"Deployment": [scaled_to_zero]}, "s")
    pod = {"spec": _pod_spec("s"), "status": {"phase": "Running"}}
    assert consumed_in({"Pod": [pod]}, "s")
    assert not consumed_in({"Pod": [{**pod, "status": {"phase": "Succeeded"}}]}, "s")
    cronjob = {"spec": {"jobTemplate": {"spec": {"template": {"spec": _pod_spec("s")}}}}}
    assert consumed_in({"CronJob": [cronjob]}, "s")
    assert not consumed_in({"CronJob": [{"spec": {**cronjob["spec"], "suspend": True}}]}, "s")
