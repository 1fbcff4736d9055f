"""The rollout step right after a start: an unsynced workload cache is not "no targets"."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from agenttoken.controllers import rollout
from agenttoken.controllers.context import Key, Pass
from agenttoken.controllers.rollout import RolloutManager, RolloutOptions, RolloutStep
from agenttoken.core.model import parse_spec, parse_status
from agenttoken.core.rollout import WorkloadRef
from agenttoken.core.status import Outcome
from agenttoken.issuers import IssuerSpec
from agenttoken.kube.caches import WorkloadCache
from tests.unit.test_rolloutreport import T0, record

ROLLOUT = {"strategy": "Restart", "targets": [{"kind": "Deployment", "name": "web"}]}
WRITTEN = {"tokenId": "jti-1", "state": "Complete", "targets": [{"kind": "Deployment", "name": "web"}]}
# A rolled-out Deployment reading the Secret `tok` through a volume.
WEB = {
    "metadata": {"name": "web", "namespace": "ns", "generation": 1},
    "spec": {
        "replicas": 1,
        "template": {"spec": {"volumes": [{"name": "t", "secret": {"secretName": "tok"}}]}},
    },
    "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
}


class NoRevocations:
    async def revoke(self, *args: Any) -> None:
        raise AssertionError("nothing may be revoked before the workload cache is synced")


def a_pass() -> Pass:
    body = {
        "metadata": {"name": "agent", "namespace": "ns", "uid": "u"},
        "spec": {"audience": ["https://api"], "ttl": "1h", "secret": {"name": "tok"}, "rollout": ROLLOUT},
        "status": {"tokenId": "jti-1", "rollout": WRITTEN, "consumers": [{"kind": "Deployment"}]},
    }
    issuer = IssuerSpec(kind="ClusterTokenIssuer", namespace="", name="default", type="builtin", config={})
    return Pass(
        body=body, spec=parse_spec(body["spec"]), issuer=issuer, previous=parse_status(body["status"]), now=T0
    )


def test_a_pass_before_the_workload_cache_is_synced_changes_nothing_and_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rollout, "SYNC_WAIT", 0.01)  # the cache does not sync within the wait

    async def go() -> tuple[dict[str, Any], list[Key], list[Key]]:
        workloads = WorkloadCache()
        manager = RolloutManager(None, RolloutOptions(), workloads, None)  # type: ignore[arg-type]
        rechecked: list[Key] = []
        step = RolloutStep(manager, NoRevocations(), lambda: T0 + dt.timedelta(hours=1), rechecked.append)  # type: ignore[arg-type]
        p = a_pass()
        # The previous token's grace would be long over: an empty cache read as "no targets"
        # would call the rollout complete and revoke it.
        result = await step.step(p, record(previous_expires_at=T0 + dt.timedelta(minutes=5)), Outcome())
        assert not manager.is_pending(WorkloadRef("Deployment", "ns", "web"))  # no restart asked
        before_sync = list(rechecked)
        workloads.synced.set()
        for _ in range(10):
            await asyncio.sleep(0)
        step.stop()
        return dict(result.status), before_sync, rechecked

    status, before_sync, rechecked = asyncio.run(go())
    assert status == {"rollout": WRITTEN, "consumers": [{"kind": "Deployment"}]}
    assert before_sync == []
    assert rechecked == [("ns", "agent")]


def test_a_pass_right_after_a_start_waits_briefly_for_the_cache_and_is_judged_once() -> None:
    """Synced during the wait: the pass is judged with the workloads, no second pass needed."""

    async def go() -> tuple[dict[str, Any], list[Key], bool]:
        workloads = WorkloadCache()
        manager = RolloutManager(None, RolloutOptions(), workloads, None)  # type: ignore[arg-type]
        rechecked: list[Key] = []
        step = RolloutStep(manager, NoRevocations(), lambda: T0, rechecked.append)  # type: ignore[arg-type]

        def listed() -> None:  # the watch delivers the Deployment, then the cache is synced
            workloads.on_event("Deployment", None, WEB)
            workloads.synced.set()

        asyncio.get_running_loop().call_later(0.05, listed)
        result = await step.step(a_pass(), record(), Outcome())
        step.stop()
        return dict(result.status), rechecked, manager.is_pending(WorkloadRef("Deployment", "ns", "web"))

    status, rechecked, restart_asked = asyncio.run(go())
    assert rechecked == []
    assert restart_asked  # judged with the Deployment the cache holds now
    assert status["rollout"]["tokenId"] == "jti-2"
    assert [c["name"] for c in status["consumers"]] == ["web"]
