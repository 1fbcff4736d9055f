"""Objects a kopf relist no longer reports: read again, like client-go's Replace() would delete
them (core.relist, kube.relists). A Secret that left our label selector while the watch was down
must reach its owner; the initial listing costs nothing."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, cast

from agenttoken import api
from agenttoken.controllers.agenttoken import Controller, ControllerOptions
from agenttoken.controllers.keys import KeyManager
from agenttoken.controllers.leadership import Leadership
from agenttoken.core.conditions import Reason
from agenttoken.core.model import parse_status
from agenttoken.core.relist import Relists
from agenttoken.core.rollout import WorkloadRef
from agenttoken.core.status import Outcome
from agenttoken.kube.adapter import Kube
from agenttoken.kube.caches import WorkloadCache
from agenttoken.kube.errors import KubeError

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


# -- wired: the Secret cache and its owner --


def secret(rv: str, *, managed: bool = True, name: str = "tok") -> dict[str, Any]:
    """The Secret `tok` of the AgentToken `agent`, or another one's (of an AgentToken not cached)."""
    labels = {api.LABEL_MANAGED_BY: api.OPERATOR_NAME} if managed else {}
    agent = "agent" if name == "tok" else f"{name}-owner"
    owner = {"apiVersion": api.API_VERSION, "kind": api.AGENTTOKEN_KIND, "name": agent, "uid": "u1"}
    meta = {"namespace": "ns", "name": name, "resourceVersion": rv, "labels": labels}
    return {"metadata": {**meta, "ownerReferences": [owner]}}


class SecretKube:
    def __init__(self, current: dict[str, Any] | None) -> None:
        self.current = current
        self.gets: list[tuple[str, str]] = []

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets.append((namespace, name))
        return self.current


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
    ctl.secrets.relists.relists.quiet = 0.05
    ctl.tokens.offer(("ns", "agent"), {"metadata": {"namespace": "ns", "name": "agent", "uid": "u1"}})
    return ctl


async def until(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_secret_that_left_the_selector_during_a_watch_gap_reaches_its_owner() -> None:
    async def scenario() -> None:
        kube = SecretKube(secret("9", managed=False))  # relabelled by a foreign writer in the gap
        ctl = controller(kube)
        ctl.on_secret_event(None, secret("5"))  # the initial listing
        ctl.on_secret_event(None, secret("6", name="other"))
        ctl.queue.due.clear()
        await until(lambda: ctl.secrets.relists.relists.deadline is None, "the initial listing's end")
        assert kube.gets == [], "the initial listing costs nothing"
        assert not ctl.queue.due
        ctl.on_secret_event(None, secret("6", name="other"))  # 410 Gone: relisted, without ours
        await until(lambda: kube.gets, "the fresh read")
        await until(lambda: ctl.queue.due, "the owner queued")
        assert kube.gets == [("ns", "tok")]
        assert ctl.queue.due == {("ns", "agent"): T0.timestamp()}
        assert ctl.secrets.get(("ns", "tok")) == secret("9", managed=False)  # what the owner repairs
        await ctl.secrets.relists.stop()

    asyncio.run(scenario())


class OneShard:
    """Sharded (--shards 2): this replica holds namespace `ns` only."""

    shards = 2

    def owns(self, namespace: str) -> bool:
        return namespace == "ns"

    def subscribe(self, listener: object) -> None:
        pass


def test_sharded_another_shards_secrets_are_neither_kept_nor_read_again() -> None:
    async def scenario() -> None:
        kube = SecretKube(None)
        ctl = Controller(
            cast(Kube, kube), cast(KeyManager, NoKeys()), ControllerOptions(issuer_url="https://i"),
            clock=lambda: T0, leadership=cast(Leadership, OneShard()),
        )  # fmt: skip
        ctl.secrets.relists.relists.quiet = 0.05
        foreign = secret("5", name="theirs")
        foreign["metadata"]["namespace"] = "other"
        ctl.on_secret_event(None, foreign)
        ctl.on_secret_event(None, secret("6", name="mine"))
        await until(lambda: ctl.secrets.relists.relists.deadline is None, "the initial listing's end")
        assert ctl.secrets.get(("other", "theirs")) is None
        ctl.on_secret_event(None, foreign)  # relisted, without ours: ours is read again, theirs not
        await until(lambda: kube.gets, "the fresh read")
        await until(lambda: ctl.secrets.relists.relists.deadline is None, "the relist's end")
        assert kube.gets == [("ns", "mine")]
        assert ctl.secrets.get(("other", "theirs")) is None
        await ctl.secrets.relists.stop()

    asyncio.run(scenario())


class FailingKube:
    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise KubeError(503, "apiserver unavailable")


def test_a_failed_read_forgets_the_suspect_so_the_owner_reads_it_before_judging() -> None:
    async def scenario() -> None:
        ctl = controller(FailingKube())
        ctl.on_secret_event(None, secret("5"))
        await until(lambda: ctl.secrets.relists.relists.deadline is None, "the initial listing's end")
        ctl.queue.due.clear()
        ctl.on_secret_event(None, secret("6", name="other"))
        await until(lambda: ctl.queue.due, "the owner queued")
        assert ctl.secrets.get(("ns", "tok")) is None
        await ctl.secrets.relists.stop()

    asyncio.run(scenario())


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
        cache.relists.relists.quiet = 0.05
        heard: list[tuple[WorkloadRef, object]] = []
        cache.subscribe(lambda ref, w: heard.append((ref, w)))
        cache.on_event("Deployment", None, deployment("web"))
        cache.on_event("Deployment", None, deployment("api"))
        cache.on_event("StatefulSet", None, deployment("db"))
        await until(lambda: cache.relists and cache.relists.relists.deadline is None, "the listing's end")
        cache.on_event("Deployment", None, deployment("web"))  # relisted without api
        heard.clear()
        gone = WorkloadRef("Deployment", "ns", "api")
        await until(lambda: heard, "the deletion")
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
