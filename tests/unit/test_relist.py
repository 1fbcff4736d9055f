"""Objects a kopf relist no longer reports: read again, like client-go's Replace() would delete
them (core.relist, kube.relists), for the kinds kopf still watches (workloads). The AgentTokens
and Secrets come from our own informers, whose relist diff is exact (tests/unit/test_informer.py)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, cast

from agenttoken import api
from agenttoken.controllers.agenttoken import Controller, ControllerOptions
from agenttoken.controllers.keys import KeyManager
from agenttoken.core.conditions import Reason
from agenttoken.core.model import parse_status
from agenttoken.core.relist import Relists
from agenttoken.core.rollout import WorkloadRef
from agenttoken.core.status import Outcome
from agenttoken.kube.adapter import Kube
from agenttoken.kube.caches import WorkloadCache
from agenttoken.kube.errors import KubeError
from agenttoken.kube.relists import RelistFollower

T0 = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
QUIET = 5.0


def by_namespace(key: tuple[str, str]) -> str:
    return key[0]


def test_the_initial_listing_of_a_scope_suspects_nothing() -> None:
    relists: Relists[tuple[str, str]] = Relists(by_namespace, QUIET)
    cached = [("a", "read-before-listing"), ("a", "s1")]
    relists.event(None, ("a", "s1"), now=0.0)
    assert relists.deadline == QUIET
    assert relists.over(QUIET - 0.1, cached) is None, "still listing"
    assert relists.over(QUIET, cached) == []
    assert relists.deadline is None
    assert relists.over(100.0, cached) is None, "no listing in progress"


def test_a_relist_suspects_what_it_did_not_report_and_only_once_its_quiet_period_is_over() -> None:
    relists: Relists[tuple[str, str]] = Relists(by_namespace, QUIET)
    for name in ("s1", "s2", "s3"):
        relists.event(None, ("a", name), now=0.0)
    assert relists.over(QUIET, []) == []
    relists.event("MODIFIED", ("a", "s1"), now=10.0)  # streaming: no listing
    assert relists.deadline is None
    relists.event(None, ("a", "s1"), now=20.0)  # 410 Gone: listed again, without s2 and s3
    relists.event(None, ("a", "s4"), now=23.0)  # later objects of the same listing push the end
    assert relists.over(20.0 + QUIET, [("a", "s1"), ("a", "s2")]) is None
    relists.event("ADDED", ("a", "s3"), now=24.0)  # the watch after the list: reported too
    cached = [("a", "s1"), ("a", "s2"), ("a", "s3"), ("a", "s4")]
    assert relists.over(23.0 + QUIET, cached) == [("a", "s2")]
    relists.event(None, ("a", "s1"), now=40.0)
    assert relists.over(40.0 + QUIET, cached) == [("a", "s2"), ("a", "s3"), ("a", "s4")]


def test_a_listing_vouches_only_for_the_scopes_it_listed() -> None:
    # kopf limited to namespaces: one watch stream per namespace, each relisting on its own.
    relists: Relists[tuple[str, str]] = Relists(by_namespace, QUIET)
    relists.event(None, ("a", "s1"), now=0.0)
    relists.event(None, ("b", "s1"), now=0.0)
    relists.over(QUIET, [])
    relists.event(None, ("a", "s1"), now=10.0)  # only namespace a relisted
    relists.event(None, ("c", "s1"), now=10.0)  # c's first listing (a new namespace matched)
    cached = [("a", "s2"), ("b", "s2"), ("c", "s2")]
    assert relists.over(10.0 + QUIET, cached) == [("a", "s2")]
    relists.event(None, ("c", "s1"), now=20.0)  # c's relist now counts
    assert relists.over(20.0 + QUIET, cached) == [("c", "s2")]


def test_a_listing_that_pauses_longer_than_the_quiet_period_goes_on_as_it_was() -> None:
    # A busy event loop delays a 10k listing's events past the quiet period: its end was guessed
    # too early. The rest must not count as a relist that missed the first part (a GET each).
    relists: Relists[tuple[str, str]] = Relists(by_namespace, QUIET)
    cached = [("a", "s1"), ("a", "s2")]
    relists.event(None, ("a", "s1"), now=0.0)
    assert relists.over(QUIET, cached) == [], "the initial listing"
    relists.event(None, ("a", "s2"), now=QUIET + 1)  # it went on after all
    assert relists.over(2 * QUIET + 1, cached) == [], "still the initial listing, s1 reported"
    relists.event(None, ("a", "s1"), now=100.0)  # a relist, pausing in the middle
    assert relists.over(100.0 + QUIET, cached) == [("a", "s2")]
    assert not relists.reported(("a", "s2"))
    relists.event(None, ("a", "s2"), now=100.0 + QUIET + 1)  # reported: no read needed after all
    assert relists.reported(("a", "s2"))
    assert relists.over(100.0 + 2 * QUIET + 1, cached) == []
    relists.event(None, ("a", "s1"), now=200.0)  # a later relist is one of its own
    assert relists.over(200.0 + QUIET, cached) == [("a", "s2")]


# -- wired --


class NoKeys:
    namespace = "agenttoken-system"

    def subscribe_revoked(self, listener: object) -> None:
        pass


def controller(kube: object) -> Controller:
    ctl = Controller(
        cast(Kube, kube),
        cast(KeyManager, NoKeys()),
        ControllerOptions(issuer_url="https://i"),
        clock=lambda: T0,
    )
    ctl.tokens.offer(("ns", "agent"), {"metadata": {"namespace": "ns", "name": "agent", "uid": "u1"}})
    return ctl


async def until(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_time(follower: RelistFollower[Any]) -> None:
    """The follower on a fake clock; its real sleeps short (it looks again every 50 ms)."""
    follower.clock = FakeClock()
    follower.relists.quiet = 0.05


async def listing_over(follower: RelistFollower[Any]) -> None:
    """Time passes: the listing under way is over (and handled), and the next is one of its own."""
    clock = cast(FakeClock, follower.clock)
    clock.now += 1.0
    await until(lambda: follower.relists.deadline is None and follower._task is None, "the listing's end")
    clock.now += 1.0


# -- wired: workloads --


def deployment(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "generation": 1}, "spec": {}, "status": {}}


def test_a_workload_deleted_during_a_watch_gap_leaves_the_cache() -> None:
    async def scenario() -> None:
        reads: list[tuple[str, str, str]] = []

        async def read(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
            reads.append((kind, namespace, name))
            return None

        cache = WorkloadCache()
        cache.follow_relists(read)
        assert cache.relists is not None
        fake_time(cache.relists)
        heard: list[tuple[WorkloadRef, object]] = []
        cache.subscribe(lambda ref, w: heard.append((ref, w)))
        cache.on_event("Deployment", None, deployment("web"))
        cache.on_event("Deployment", None, deployment("api"))
        cache.on_event("StatefulSet", None, deployment("db"))
        await listing_over(cache.relists)
        cache.on_event("Deployment", None, deployment("web"))  # relisted without api
        heard.clear()
        gone = WorkloadRef("Deployment", "ns", "api")
        await listing_over(cache.relists)
        assert reads == [("Deployment", "ns", "api")]  # not the StatefulSet: its kind did not relist
        assert heard == [(gone, None)]
        assert cache.get(gone) is None
        await cache.relists.stop()

    asyncio.run(scenario())


# -- AgentTokens: our finalizer makes a relist report a deletion (deletionTimestamp set); one
# deleted in a gap after a foreign writer removed the finalizer is caught by its next status write.


class GoneKube:
    async def patch_agenttoken_status(self, namespace: str, name: str, status: Any) -> dict[str, Any]:
        raise KubeError(404, "not found")


def test_an_agenttoken_whose_status_write_finds_it_gone_leaves_the_cache() -> None:
    ctl = controller(GoneKube())
    body = ctl.tokens.get(("ns", "agent"))
    assert body is not None
    why = Reason(api.REASON_INVALID_SPEC, "x")
    asyncio.run(ctl._write_status(body, parse_status(None), None, None, Outcome(stalled=why)))
    assert ctl.tokens.get(("ns", "agent")) is None
