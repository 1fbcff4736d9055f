"""Which workloads to restart and how their rollouts are judged; the revocation list. Pure."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from agenttoken.core import revocation
from agenttoken.core.revocation import Revoked
from agenttoken.core.rollout import (
    InterestIndex,
    RolloutSpec,
    TargetSpec,
    WorkloadRef,
    annotation_key,
    needs_restart,
    progress,
    reduce,
    rollout_done,
    select,
    summarize,
    target_status,
)

T0 = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def deployment(
    name: str = "web",
    *,
    labels: dict[str, str] | None = None,
    pod_spec: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    generation: int = 2,
    status: dict[str, Any] | None = None,
    paused: bool = False,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": labels or {}, "generation": generation},
        "spec": {
            "replicas": 3,
            "paused": paused,
            "template": {"metadata": {"annotations": annotations or {}}, "spec": pod_spec or {}},
        },
        "status": status
        if status is not None
        else {"observedGeneration": generation, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3},
    }


def test_annotation_key_fits_kubernetes_limits() -> None:
    assert annotation_key("web") == "agenttoken.dev/revision.web"
    long = annotation_key("a" * 253)
    assert len(long.split("/", 1)[1]) <= 63
    assert long != annotation_key("a" * 252 + "b")


@pytest.mark.parametrize(
    ("pod_spec", "via", "needs"),
    [
        ({"volumes": [{"name": "t", "secret": {"secretName": "tok"}}]}, "volume", False),
        (
            {"volumes": [{"name": "t", "projected": {"sources": [{"secret": {"name": "tok"}}]}}]},
            "projected",
            False,
        ),
        (
            {
                "containers": [
                    {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}}]}
                ]
            },
            "env",
            True,
        ),
        ({"containers": [{"envFrom": [{"secretRef": {"name": "tok"}}]}]}, "envFrom", True),
        (
            {
                "volumes": [{"name": "t", "secret": {"secretName": "tok"}}],
                "containers": [{"volumeMounts": [{"name": "t", "mountPath": "/x", "subPath": "token"}]}],
            },
            "volume",
            True,
        ),
    ],
)
def test_consumers_are_found_with_how_they_read(pod_spec: dict[str, Any], via: str, needs: bool) -> None:
    w = reduce("Deployment", deployment(pod_spec=pod_spec))
    found = w.consumes_secret("tok")
    assert found
    assert {c.via for c in found} == {via}
    assert any(c.needs_restart for c in found) is needs
    assert not w.consumes_secret("other")


def test_select_by_name_label_and_discovery() -> None:
    named = reduce("Deployment", deployment("named"))
    labelled = reduce("Deployment", deployment("labelled", labels={"agents": "yes"}))
    consumer = reduce(
        "Deployment", deployment("consumer", pod_spec={"volumes": [{"secret": {"secretName": "tok"}}]})
    )
    bystander = reduce("Deployment", deployment("bystander"))
    spec = RolloutSpec(
        strategy="Restart",
        targets=(TargetSpec(kind="Deployment", name="named"), TargetSpec(match_labels={"agents": "yes"})),
        auto_discover=True,
    )
    chosen = select(spec, "tok", [named, labelled, consumer, bystander])
    assert [w.ref.name for w in chosen] == ["consumer", "labelled", "named"]
    assert select(RolloutSpec(strategy="Restart"), "tok", [consumer]) == []


def test_restart_is_content_addressed() -> None:
    key = annotation_key("web")
    w = reduce("Deployment", deployment(annotations={key: "jti-1", "other/annotation": "x"}))
    assert w.annotations == {key: "jti-1"}  # only our keys are kept in memory
    assert not needs_restart(w, key, "jti-1")
    assert needs_restart(w, key, "jti-2")


@pytest.mark.parametrize(
    ("status", "paused", "state"),
    [
        (
            {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3},
            False,
            "Complete",
        ),
        (
            {"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3},
            False,
            "RollingOut",
        ),
        (
            {"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3},
            False,
            "RollingOut",
        ),
        (
            {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3},
            False,
            "RollingOut",
        ),
        (
            {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2},
            False,
            "RollingOut",
        ),
        (
            {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3},
            True,
            "Paused",
        ),
        (
            {
                "observedGeneration": 2,
                "conditions": [
                    {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "stuck"}
                ],
            },
            False,
            "Failed",
        ),
    ],
)
def test_deployment_progress_like_kubectl(status: dict[str, Any], paused: bool, state: str) -> None:
    assert progress(reduce("Deployment", deployment(status=status, paused=paused)))[0] == state


def test_statefulset_waits_for_its_revision() -> None:
    body = deployment(
        status={
            "observedGeneration": 2,
            "replicas": 3,
            "updatedReplicas": 3,
            "readyReplicas": 3,
            "availableReplicas": 3,
            "currentRevision": "a",
            "updateRevision": "b",
        }
    )
    assert progress(reduce("StatefulSet", body))[0] == "RollingOut"
    body["status"]["currentRevision"] = "b"
    assert progress(reduce("StatefulSet", body))[0] == "Complete"


def test_daemonset_counts_scheduled_pods() -> None:
    body = deployment(
        status={
            "observedGeneration": 2,
            "desiredNumberScheduled": 2,
            "updatedNumberScheduled": 1,
            "numberAvailable": 2,
            "currentNumberScheduled": 2,
        }
    )
    assert progress(reduce("DaemonSet", body))[0] == "RollingOut"
    body["status"]["updatedNumberScheduled"] = 2
    assert progress(reduce("DaemonSet", body))[0] == "Complete"


def test_target_status_keeps_start_and_completion_times() -> None:
    key = annotation_key("web")
    pending = target_status(reduce("Deployment", deployment()), "jti-2", key, None, T0)
    assert pending["state"] == "Pending"
    assert pending["startedAt"] is None
    rolling = reduce("Deployment", deployment(annotations={key: "jti-2"}, status={"observedGeneration": 1}))
    started = target_status(rolling, "jti-2", key, pending, T0)
    assert (started["state"], started["startedAt"]) == ("RollingOut", "2026-11-22T12:00:00Z")
    done = reduce("Deployment", deployment(annotations={key: "jti-2"}))
    later = T0 + dt.timedelta(seconds=30)
    complete = target_status(done, "jti-2", key, started, later)
    assert (complete["startedAt"], complete["completedAt"]) == (
        "2026-11-22T12:00:00Z",
        "2026-11-22T12:00:30Z",
    )
    assert (
        target_status(done, "jti-2", key, complete, later + dt.timedelta(minutes=5))["completedAt"]
        == complete["completedAt"]
    )


def test_summary_reports_the_worst_state() -> None:
    entries = [
        {"kind": "Deployment", "name": "a", "state": "Complete", "message": "ok"},
        {"kind": "Deployment", "name": "b", "state": "RollingOut", "message": "1 of 3"},
    ]
    assert summarize(entries)[0] == "RollingOut"
    entries.append({"kind": "Deployment", "name": "c", "state": "Failed", "message": "stuck"})
    state, message = summarize(entries)
    assert state == "Failed"
    assert "Deployment/c: stuck" in message
    assert summarize([]) == ("Complete", "no targets")


def test_revocation_list_keeps_live_ids_only() -> None:
    live = Revoked("jti-live", T0 + dt.timedelta(hours=1), "ns", "a", T0)
    dead = Revoked("jti-dead", T0 - dt.timedelta(hours=1), "ns", "b", T0)
    entries = revocation.add((), [live, dead])
    entries = revocation.add(
        entries, [Revoked("jti-live", T0 + dt.timedelta(hours=1), "ns", "a", T0 + dt.timedelta(minutes=1))]
    )
    assert [e.token_id for e in entries] == ["jti-dead", "jti-live"]
    assert entries[1].revoked_at == T0  # the first revocation time is kept
    pruned = revocation.prune(entries, T0)
    assert [e.token_id for e in pruned] == ["jti-live"]
    assert revocation.from_json(revocation.to_json(pruned)) == pruned
    assert revocation.is_revoked(pruned, "jti-live")


def test_interest_index_finds_what_a_workload_references() -> None:
    index = InterestIndex()
    index.put("ns", "reader", "reader-tok", RolloutSpec())
    index.put("ns", "annotated", "annotated-tok", RolloutSpec())
    index.put("ns", "targeting", "t-tok", RolloutSpec(targets=(TargetSpec(match_labels={"agents": "yes"}),)))
    index.put("other", "reader", "reader-tok", RolloutSpec())
    workload = reduce(
        "Deployment",
        deployment(
            "app",
            labels={"agents": "yes"},
            annotations={annotation_key("annotated"): "jti-1"},
            pod_spec={"volumes": [{"secret": {"secretName": "reader-tok"}}]},
        ),
    )
    assert index.concerned(workload.ref, workload) == {"reader", "annotated", "targeting"}
    bystander = reduce("Deployment", deployment("bystander"))
    assert index.concerned(bystander.ref, bystander) == set()
    assert index.concerned(bystander.ref, None) == {"reader", "annotated", "targeting"}
    # Moving an AgentToken to another Secret and deleting one update every view.
    index.put("ns", "reader", "elsewhere", RolloutSpec())
    index.drop("ns", "annotated")
    assert index.concerned(workload.ref, workload) == {"targeting"}
    index.drop("ns", "targeting")
    index.drop("ns", "reader")
    assert index.concerned(workload.ref, None) == set()
    assert index.concerned(WorkloadRef("Deployment", "other", "x"), None) == {"reader"}


def test_a_rollout_is_done_when_the_patched_generation_finished_rolling() -> None:
    rolling = {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3}
    assert rollout_done(reduce("Deployment", deployment(generation=3, status=rolling)), 3) is None
    # An event from before our patch says nothing about our rollout, even if it looks finished.
    assert rollout_done(reduce("Deployment", deployment(generation=2)), 3) is None
    assert rollout_done(reduce("Deployment", deployment(generation=3)), 3) == "Complete"
    assert rollout_done(reduce("Deployment", deployment(generation=4, paused=True)), 3) == "Paused"


def test_a_newer_restart_request_does_not_keep_the_finished_rollout_in_flight() -> None:
    # The next token's request for the same workload arrived while our rollout ran: the slot
    # must still be freed (the request waits for it), or the workload is stuck for good.
    finished = reduce("Deployment", deployment(generation=3, annotations={annotation_key("web"): "t1"}))
    assert needs_restart(finished, annotation_key("web"), "t2")
    assert rollout_done(finished, 3) == "Complete"
