"""status.rollout/consumers, restarts to ask for, and when the previous token is revoked. Pure."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from agenttoken import api
from agenttoken.core import rolloutreport
from agenttoken.core.model import AgentTokenSpec, parse_spec
from agenttoken.core.revocation import AfterRollout, after_rollout
from agenttoken.core.rollout import Workload, annotation_key, reduce
from agenttoken.core.secretdata import TokenRecord
from agenttoken.core.times import format_time

T0 = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
S = dt.timedelta(seconds=1)
ENV = {
    "containers": [{"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}}]}]
}
VOLUME = {"volumes": [{"name": "t", "secret": {"secretName": "tok"}}]}


def spec(rollout: dict[str, Any] | None = None) -> AgentTokenSpec:
    raw: dict[str, Any] = {"audience": ["https://api"], "ttl": "1h", "secret": {"name": "tok"}}
    if rollout is not None:
        raw["rollout"] = rollout
    return parse_spec(raw)


def record(**over: Any) -> TokenRecord:
    base = TokenRecord(
        token_id="jti-2",
        token_hash="sha256:x",
        key_id="k",
        revision=2,
        issued_at=T0,
        expires_at=T0 + dt.timedelta(hours=1),
        spec_hash="h",
        previous_token_id="jti-1",
        previous_expires_at=T0 + dt.timedelta(minutes=30),
    )
    return dataclasses.replace(base, **over)


def workload(
    name: str, pod_spec: dict[str, Any], *, token: str | None = None, rolling: bool = False
) -> Workload:
    annotations = {annotation_key("agent"): token} if token else {}
    status = {
        "observedGeneration": 2,
        "replicas": 1,
        "updatedReplicas": 0 if rolling else 1,
        "availableReplicas": 1,
    }
    body = {
        "metadata": {"name": name, "namespace": "ns", "generation": 2},
        "spec": {"replicas": 1, "template": {"metadata": {"annotations": annotations}, "spec": pod_spec}},
        "status": status,
    }
    return reduce("Deployment", body)


def report(
    s: AgentTokenSpec, workloads: list[Workload], previous: dict[str, Any] | None = None, **over: Any
) -> Any:
    now = over.pop("now", T0 + dt.timedelta(minutes=1))
    return rolloutreport.report(
        name="agent", spec=s, record=record(**over), workloads=workloads, previous=previous or {}, now=now
    )


def test_consumers_say_how_they_read_and_whether_renewals_restart_them() -> None:
    s = spec({"targets": [{"kind": "Deployment", "name": "web"}]})
    got = report(s, [workload("web", ENV, token="jti-2"), workload("cron", ENV), workload("files", VOLUME)])
    assert got.consumers == [
        {
            "kind": "Deployment",
            "name": "cron",
            "via": ["env"],
            "needsRestart": True,
            "restartedOnRenewal": False,
        },
        {
            "kind": "Deployment",
            "name": "files",
            "via": ["volume"],
            "needsRestart": False,
            "restartedOnRenewal": False,
        },
        {
            "kind": "Deployment",
            "name": "web",
            "via": ["env"],
            "needsRestart": True,
            "restartedOnRenewal": True,
        },
    ]
    assert got.stranded == ("Deployment/cron",)
    event = rolloutreport.stranded_event(got.stranded, restart=True)
    assert event.reason == api.REASON_CONSUMER_NEEDS_RESTART
    assert event.warning


def test_a_target_without_the_new_token_is_restarted_and_the_rollout_is_in_progress() -> None:
    s = spec({"targets": [{"kind": "Deployment", "name": "web"}]})
    got = report(s, [workload("web", ENV, token="jti-1")])
    assert [r.name for r in got.restart] == ["web"]
    assert got.state == "RollingOut"
    assert got.reconciling is not None
    assert got.reconciling.reason == api.REASON_ROLLING_OUT
    assert got.wake_at == T0 + dt.timedelta(minutes=30), "look again when the previous token expires"
    assert not got.too_slow
    assert got.revocation == AfterRollout(None, False, None)


def test_the_previous_token_expiring_first_means_the_rollout_is_too_slow() -> None:
    s = spec({"targets": [{"kind": "Deployment", "name": "web"}]})
    got = report(s, [workload("web", ENV, token="jti-2", rolling=True)], now=T0 + dt.timedelta(minutes=31))
    assert got.too_slow
    assert got.reconciling is not None
    assert got.reconciling.reason == api.REASON_ROLLOUT_TOO_SLOW
    assert got.wake_at is None


def test_completion_is_reported_and_the_previous_token_revoked_after_the_grace() -> None:
    s = spec({"targets": [{"kind": "Deployment", "name": "web"}], "revokeAfter": "30s"})
    done = [workload("web", ENV, token="jti-2")]
    before = {"tokenId": "jti-2", "state": "RollingOut"}
    first = report(s, done, before)
    assert first.state == "Complete"
    completed = first.targets[0]["completedAt"]
    assert first.revocation == AfterRollout(
        T0 + dt.timedelta(seconds=90), False, T0 + dt.timedelta(seconds=90)
    )
    assert first.wake_at == T0 + dt.timedelta(seconds=90)
    status = first.status(s, record(), None)
    assert status["rollout"]["revokeAt"] == format_time(T0 + dt.timedelta(seconds=90))
    later = report(
        s,
        done,
        {"tokenId": "jti-2", "state": "Complete", "targets": first.targets},
        now=T0 + 2 * dt.timedelta(minutes=1),
    )
    assert later.targets[0]["completedAt"] == completed
    assert later.revocation.due
    assert later.status(s, record(), "jti-1")["rollout"] | {"targets": None} == {
        "strategy": "Restart",
        "tokenId": "jti-2",
        "state": "Complete",
        "message": "1 target(s) rolled out",
        "targets": None,
        "previousTokenId": "jti-1",
        "revokeAt": None,
        "revokedTokenId": "jti-1",
    }


def test_a_failed_rollout_stalls() -> None:
    s = spec({"targets": [{"kind": "Deployment", "name": "web"}]})
    body_status = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 0, "availableReplicas": 0,
                   "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}  # fmt: skip
    failed = reduce(
        "Deployment",
        {
            "metadata": {"name": "web", "namespace": "ns", "generation": 2},
            "spec": {
                "replicas": 1,
                "template": {"metadata": {"annotations": {annotation_key("agent"): "jti-2"}}, "spec": ENV},
            },
            "status": body_status,
        },
    )
    got = report(s, [failed], {"tokenId": "jti-2", "state": "RollingOut"})
    assert got.state == "Failed"
    assert got.stalled is not None
    assert got.stalled.reason == api.REASON_ROLLOUT_FAILED


G = dt.timedelta(seconds=30)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("no predecessor", {"previous_token_id": None}, AfterRollout(None, False, None)),
        ("rollout not complete", {"rollout_complete": False}, AfterRollout(None, False, None)),
        (
            "grace ends after it expires anyway",
            {"previous_expires_at": T0 + 20 * S},
            AfterRollout(None, False, None),
        ),
        ("not yet", {"now": T0 + 10 * S}, AfterRollout(T0 + 30 * S, False, T0 + 30 * S)),
        ("due", {"now": T0 + 30 * S}, AfterRollout(T0 + 30 * S, True, None)),
        (
            "already revoked",
            {"revoked_token_id": "jti-1", "now": T0 + 40 * S},
            AfterRollout(T0 + 30 * S, False, None),
        ),
        (
            "counts from the last target's completion",
            {"completed": [T0 + 5 * S, None, T0 + 20 * S], "now": T0 + 40 * S},
            AfterRollout(T0 + 50 * S, False, T0 + 50 * S),
        ),
    ],
)
def test_when_the_previous_token_is_revoked(
    name: str, kwargs: dict[str, Any], expected: AfterRollout
) -> None:
    args: dict[str, Any] = {
        "previous_token_id": "jti-1",
        "previous_expires_at": T0 + dt.timedelta(hours=1),
        "issued_at": T0,
        "rollout_complete": True,
        "completed": [],
        "grace": G,
        "revoked_token_id": None,
        "now": T0,
    } | kwargs
    assert after_rollout(**args) == expected, name


def test_progress_steps_of_a_rollout_leave_the_status_as_written() -> None:
    """Status is written on the rollout's state changes, not at each progress step."""
    s = spec({"targets": [{"kind": "Deployment", "name": "web"}]})
    observing = reduce(
        "Deployment",
        {
            "metadata": {"name": "web", "namespace": "ns", "generation": 3},
            "spec": {"replicas": 1, "template": {"metadata": {"annotations": {annotation_key("agent"): "jti-2"}}, "spec": ENV}},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
        },
    )  # fmt: skip
    started = report(s, [observing], {"tokenId": "jti-2"})
    assert started.state == "RollingOut"
    written = started.status(s, record(), None)["rollout"]
    # The Deployment moves on (another progress message), the state does not: nothing to write.
    moved_on = workload("web", ENV, token="jti-2", rolling=True)
    assert (
        rolloutreport.report(
            name="agent", spec=s, record=record(), workloads=[moved_on], previous={}, now=T0
        ).targets
        != written["targets"]
    )
    step = report(s, [moved_on], written)
    assert step.status(s, record(), None)["rollout"] == written
    # It completes: a state change, written.
    done = report(s, [workload("web", ENV, token="jti-2")], written)
    assert done.state == "Complete"
    assert done.targets[0]["state"] == "Complete"
    assert done.targets[0]["completedAt"]
