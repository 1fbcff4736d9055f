"""The unused-token policy's step right after a start: it waits for the workload cache as the
rollout step does, so a new AgentToken's one status write already carries status.usage (a pass
that judged nothing wrote a second status, 0.2 s later, that only added it: api_economy)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agenttoken.controllers import usage as usage_step
from agenttoken.controllers.usage import Usage
from agenttoken.core.usage import IDLE, IN_USE, UsageDecision
from agenttoken.kube.caches import WorkloadCache
from tests.unit.test_rollout_step import WEB, a_pass
from tests.unit.test_rolloutreport import T0


class NoRevocations:
    async def revoke(self, *args: Any) -> None:
        raise AssertionError("nothing is revoked here")


def usage(workloads: WorkloadCache, margin: float = 0.0) -> Usage:
    return Usage(None, workloads, NoRevocations(), lambda: T0, margin=margin, recheck=lambda key: None)  # type: ignore[arg-type]


async def started(
    u: Usage, workloads: WorkloadCache, sync_after: float, body: dict[str, Any] | None
) -> asyncio.Task[None]:
    """The operator's start: the warm-up runs, the watch delivers `body` and the cache is
    synced `sync_after` seconds later."""

    def listed() -> None:
        if body is not None:
            workloads.on_event("Deployment", None, body)
        workloads.synced.set()

    asyncio.get_running_loop().call_later(sync_after, listed)
    return asyncio.create_task(u.warm_up())


@pytest.mark.parametrize(("body", "state"), [(None, IDLE), (WEB, IN_USE)])
def test_a_pass_just_before_the_sync_is_judged_with_the_workloads(
    body: dict[str, Any] | None, state: str
) -> None:
    async def go() -> UsageDecision | None:
        workloads = WorkloadCache()
        u = usage(workloads)
        warm_up = await started(u, workloads, 0.05, body)
        decision, events = await u.assess(a_pass())
        await warm_up
        assert events == ()
        return decision

    decision = asyncio.run(go())
    assert decision is not None
    assert decision.usage is not None
    assert decision.usage.state == state


def test_a_cache_that_does_not_sync_is_not_judged_and_not_waited_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(usage_step, "SYNC_WAIT", 0.05)

    async def go() -> tuple[UsageDecision | None, float]:
        workloads = WorkloadCache()
        u = usage(workloads)
        first, _ = await u.assess(a_pass())  # waits out the rest of the 0.05 s
        started_at = time.monotonic()
        await u.assess(a_pass())  # past the start's wait: at once
        return first, time.monotonic() - started_at

    first, second_took = asyncio.run(go())
    assert first is None  # status.usage is left as it was (none yet)
    assert second_took < 0.05


def test_a_warm_up_margin_is_not_waited_for_in_a_pass() -> None:
    """--usage-warmup asks for judging later, not for holding every pass that long."""

    async def go() -> UsageDecision | None:
        workloads = WorkloadCache()
        workloads.synced.set()
        u = usage(workloads, margin=30.0)
        warm_up = asyncio.create_task(u.warm_up())
        decision, _ = await asyncio.wait_for(u.assess(a_pass()), timeout=5)
        warm_up.cancel()
        return decision

    assert asyncio.run(go()) is None


def test_the_wait_for_the_sync_counts_from_the_start_not_per_caller() -> None:
    """Two steps of one pass (usage, rollout) share the wait, and a watch that cannot start
    costs later passes nothing."""

    async def go() -> tuple[bool, bool, float, bool]:
        workloads = WorkloadCache()
        first = await workloads.wait_synced(0.05)
        started_at = time.monotonic()
        again = await workloads.wait_synced(0.05)
        took = time.monotonic() - started_at
        workloads.synced.set()
        return first, again, took, await workloads.wait_synced(0.05)

    first, again, took, synced = asyncio.run(go())
    assert (first, again, synced) == (False, False, True)
    assert took < 0.05
