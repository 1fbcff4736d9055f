"""Sharded, a replica keeps the AgentToken bodies of its own shards only, and of the others just
their names (core.shardindex); gaining a shard reads its AgentTokens fresh, a paged LIST per
namespace (controllers.takeover), retried until it succeeds and stopped if the shard goes again."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from agenttoken.controllers import takeover
from agenttoken.controllers.agenttoken import Controller, ControllerOptions
from agenttoken.controllers.keys import KeyManager
from agenttoken.controllers.leadership import Leadership
from agenttoken.core.lease import shard_of
from agenttoken.core.shardindex import ShardIndex
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError

from .test_relist import until

T0 = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
SHARDS = 2


def namespaces_of(shard: int, count: int = 2) -> list[str]:
    found = [f"ns-{i}" for i in range(100) if shard_of(f"ns-{i}", SHARDS) == shard]
    return found[:count]


MINE, OTHER = namespaces_of(0), namespaces_of(1)


class Shards:
    """The leadership as the controller sees it: which shards are held, and the listeners."""

    def __init__(self, held: set[int], shards: int = SHARDS) -> None:
        self.shards, self.held = shards, held
        self.listeners: list[Any] = []

    def owns(self, namespace: str) -> bool:
        return shard_of(namespace, self.shards) in self.held

    def is_primary(self) -> bool:
        return 0 in self.held

    def subscribe(self, listener: Any) -> None:
        self.listeners.append(listener)

    def change(self, shard: int, held: bool) -> None:
        (self.held.add if held else self.held.discard)(shard)
        for listener in self.listeners:
            listener(shard, held)


class NoKeys:
    namespace = "agenttoken-system"

    def subscribe_revoked(self, listener: object) -> None:
        pass


def body(namespace: str, name: str, rv: int, renewal: datetime.datetime | None = None) -> dict[str, Any]:
    status = {"observedGeneration": 1}
    if renewal is not None:
        status["renewalTime"] = renewal.isoformat().replace("+00:00", "Z")  # type: ignore[assignment]
    meta = {
        "namespace": namespace,
        "name": name,
        "uid": f"u-{name}",
        "resourceVersion": str(rv),
        "generation": 1,
    }
    return {"metadata": meta, "spec": {"audience": ["a"]}, "status": status}


class ListingKube:
    """AgentTokens by namespace, served in pages of `page`; the first `failures` calls fail, and
    while `gate` is set a call waits for it (a LIST in flight)."""

    def __init__(
        self, items: dict[str, list[dict[str, Any]]], page: int = 2, failures: int = 0, broken: str = ""
    ) -> None:
        self.items, self.page, self.failures, self.broken = items, page, failures, broken
        self.calls: list[tuple[str, str]] = []
        self.secrets: dict[str, list[dict[str, Any]]] = {}
        self.secret_lists: list[str] = []
        self.secret_gate: asyncio.Event | None = None
        self.gate: asyncio.Event | None = None

    async def list_page(
        self, plural: str, namespace: str, selector: str | None = None, limit: int = 0, token: str = ""
    ) -> dict[str, Any]:
        if plural == "secrets":
            self.secret_lists.append(namespace)
            if self.secret_gate is not None:
                await self.secret_gate.wait()
            return {"items": self.secrets.get(namespace, []), "metadata": {}}
        self.calls.append((namespace, token))
        if self.gate is not None:
            await self.gate.wait()
        if self.failures or namespace == self.broken:
            self.failures = max(0, self.failures - 1)
            raise KubeError(503, "the apiserver is unavailable")
        start = int(token or 0)
        items = self.items.get(namespace, [])
        more = start + self.page < len(items)
        return {
            "items": items[start : start + self.page],
            "metadata": {"continue": str(start + self.page) if more else ""},
        }


def controller(kube: object, shards: Shards) -> Controller:
    return Controller(
        cast(Kube, kube), cast(KeyManager, NoKeys()), ControllerOptions(issuer_url="https://i"),
        clock=lambda: T0, leadership=cast(Leadership, shards),
    )  # fmt: skip


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(takeover, "BACKOFF", (0.01, 0.02))


def test_the_index_names_each_shards_agenttokens_and_forgets_emptied_namespaces() -> None:
    index = ShardIndex(SHARDS)
    index.add_all([(OTHER[0], "a"), (OTHER[0], "b"), (OTHER[1], "c"), (MINE[0], "d")])
    assert len(index) == 4
    assert index.namespaces(1) == set(OTHER)
    index.remove((OTHER[1], "c"))
    index.remove((OTHER[1], "never-seen"))
    assert index.namespaces(1) == {OTHER[0]}, "a namespace whose last AgentToken went is not listed"
    assert index.take(1) == {OTHER[0]: {"a", "b"}}
    assert index.take(1) == {}
    assert len(index) == 1


def test_a_sharded_replica_keeps_no_body_of_another_shard_and_a_deletion_cleans_its_name() -> None:
    ctl = controller(ListingKube({}), Shards({0}))
    ctl.on_token_event(None, body(MINE[0], "mine", 5))
    ctl.on_token_event(None, body(OTHER[0], "theirs", 6))
    ctl.on_token_event("MODIFIED", body(OTHER[0], "theirs", 7))
    assert set(ctl.tokens.bodies) == {(MINE[0], "mine")}
    assert set(ctl.queue.due) == {(MINE[0], "mine")}
    assert ctl.shardcache.index.namespaces(1) == {OTHER[0]}
    assert REGISTRY.get_sample_value("agenttoken_tokens_cached") == 1.0
    ctl.on_token_event("DELETED", body(OTHER[0], "theirs", 8))
    assert len(ctl.shardcache.index) == 0
    assert ctl.tokens._gone == {}, "no tombstone kept for another shard's AgentToken"


def test_with_one_shard_a_standby_keeps_every_body_and_schedules_none() -> None:
    ctl = controller(ListingKube({}), Shards(set(), shards=1))
    ctl.on_token_event(None, body(OTHER[0], "t", 5))
    assert set(ctl.tokens.bodies) == {(OTHER[0], "t")}
    assert not ctl.queue.due
    assert len(ctl.shardcache.index) == 0


def test_a_gained_shard_is_read_fresh_paged_retried_and_scheduled_overdue_first() -> None:
    overdue = T0 - datetime.timedelta(minutes=5)
    later = T0 + datetime.timedelta(minutes=30)
    listed = [body(OTHER[0], f"t{i}", 10 + i, overdue if i == 1 else later) for i in range(5)]

    async def scenario() -> None:
        kube = ListingKube({OTHER[0]: listed, OTHER[1]: []}, failures=1)
        kube.secrets[OTHER[0]] = [
            {"metadata": {"namespace": OTHER[0], "name": "t0-token", "resourceVersion": "20"}}
        ]
        shards = Shards({0})
        ctl = controller(kube, shards)
        for item in listed:
            ctl.on_token_event(None, body(OTHER[0], item["metadata"]["name"], 1))
        ctl.on_token_event(None, body(OTHER[1], "deleted-unseen", 1))  # gone; no event reached us
        kube.gate = asyncio.Event()
        shards.change(1, True)
        await until(lambda: kube.calls, "the first LIST")
        newer = body(OTHER[0], "t0", 99, later)
        ctl.on_token_event("MODIFIED", newer)  # arrives while the LIST is in flight: kept
        kube.gate.set()
        await until(lambda: len(ctl.tokens.bodies) == 5 and not ctl.shardcache._loads, "the shard read")
        assert ctl.tokens.get((OTHER[0], "t0"))["metadata"]["resourceVersion"] == "99"  # type: ignore[index]
        assert ctl.queue.due[(OTHER[0], "t1")] == overdue.timestamp()
        assert ctl.queue.due[(OTHER[0], "t4")] == T0.timestamp()
        assert (OTHER[1], "") in kube.calls, "a namespace with nothing left: one empty LIST"
        assert {(OTHER[0], "2"), (OTHER[0], "4")} <= set(kube.calls), "paged"
        assert len(ctl.shardcache.index) == 0
        assert REGISTRY.get_sample_value("agenttoken_shard_list_failures_total") >= 1.0  # type: ignore[operator]
        assert sorted(kube.secret_lists) == sorted(OTHER), "each namespace's Secrets: one LIST"
        assert ctl.secrets.get((OTHER[0], "t0-token")) is not None, "no GET per pass"
        await ctl.shardcache.stop()

    asyncio.run(scenario())


def test_a_shard_lost_mid_list_stops_reading_and_keeps_only_names() -> None:
    listed = [body(OTHER[0], f"t{i}", 10 + i) for i in range(3)]

    async def scenario() -> None:
        kube = ListingKube({OTHER[0]: listed})
        shards = Shards({0})
        ctl = controller(kube, shards)
        for item in listed:
            ctl.on_token_event(None, item)
        kube.gate = asyncio.Event()
        shards.change(1, True)
        await until(lambda: kube.calls, "the LIST")
        ctl.on_token_event("MODIFIED", body(OTHER[0], "t0", 50))  # ours meanwhile: kept
        assert (OTHER[0], "t0") in ctl.tokens.bodies
        shards.change(1, False)
        kube.gate.set()
        await asyncio.sleep(0.05)
        assert not ctl.tokens.bodies
        assert not ctl.queue.due
        assert ctl.shardcache.index.take(1) == {OTHER[0]: {"t0", "t1", "t2"}}
        await ctl.shardcache.stop()

    asyncio.run(scenario())


def test_losing_a_shard_drops_its_bodies_and_secrets_keeping_names_for_the_next_takeover() -> None:
    async def scenario() -> None:
        shards = Shards({0, 1})
        ctl = controller(ListingKube({}), shards)
        ctl.on_token_event(None, body(OTHER[0], "t", 5))
        secret = {"metadata": {"namespace": OTHER[0], "name": "t-token", "resourceVersion": "6"}}
        ctl.on_secret_event(None, secret)
        assert ctl.secrets.get((OTHER[0], "t-token")) is not None
        shards.change(1, False)
        assert not ctl.tokens.bodies
        assert not ctl.queue.due
        assert ctl.secrets.get((OTHER[0], "t-token")) is None
        assert ctl.shardcache.index.namespaces(1) == {OTHER[0]}

    asyncio.run(scenario())


def test_a_read_cut_short_by_fencing_gives_its_names_back_when_the_loss_arrives() -> None:
    listed = {ns: [body(ns, f"t{i}", 10 + i) for i in range(3)] for ns in OTHER}

    async def scenario() -> None:
        kube = ListingKube(listed)
        shards = Shards({0})
        ctl = controller(kube, shards)
        for items in listed.values():
            for item in items:
                ctl.on_token_event(None, item)
        kube.gate = asyncio.Event()
        shards.change(1, True)
        await until(lambda: kube.calls, "the LIST")
        shards.held.discard(1)  # fenced: owns() says no before the loss reaches the controller
        kube.gate.set()
        task = ctl.shardcache._loads[1][0]
        await until(task.done, "the read to stop")
        shards.change(1, False)
        assert not ctl.tokens.bodies
        assert ctl.shardcache.index.take(1) == {ns: {"t0", "t1", "t2"} for ns in OTHER}
        await ctl.shardcache.stop()

    asyncio.run(scenario())


def test_while_a_namespace_cannot_be_listed_the_others_are_scheduled_and_it_is_retried() -> None:
    overdue = T0 - datetime.timedelta(minutes=5)
    later = T0 + datetime.timedelta(minutes=30)
    listed = [body(OTHER[0], "over", 10, overdue), body(OTHER[0], "later", 11, later)]

    async def scenario() -> None:
        kube = ListingKube({OTHER[0]: listed}, broken=OTHER[1])
        shards = Shards({0})
        ctl = controller(kube, shards)
        ctl.on_token_event(None, body(OTHER[0], "over", 1))
        ctl.on_token_event(None, body(OTHER[1], "unreadable", 1))
        shards.change(1, True)
        await until(lambda: sum(1 for c in kube.calls if c[0] == OTHER[1]) >= 3, "retries")
        assert ctl.queue.due[(OTHER[0], "over")] == overdue.timestamp()
        assert ctl.queue.due[(OTHER[0], "later")] == later.timestamp(), "renewed in time all the same"
        assert 1 in ctl.shardcache._loads, "still reading: never given up"
        shards.change(1, False)
        assert ctl.shardcache.index.take(1) == {OTHER[0]: {"over", "later"}, OTHER[1]: {"unreadable"}}
        await ctl.shardcache.stop()

    asyncio.run(scenario())


def test_secrets_listed_after_the_shard_was_fenced_are_not_kept() -> None:
    async def scenario() -> None:
        kube = ListingKube({OTHER[0]: [body(OTHER[0], "t", 10)]})
        kube.secrets[OTHER[0]] = [
            {"metadata": {"namespace": OTHER[0], "name": "t-token", "resourceVersion": "20"}}
        ]
        kube.secret_gate = asyncio.Event()
        shards = Shards({0})
        ctl = controller(kube, shards)
        ctl.on_token_event(None, body(OTHER[0], "t", 1))
        shards.change(1, True)
        await until(lambda: kube.secret_lists, "the Secret LIST")
        shards.held.discard(1)  # fenced while it is in flight
        kube.secret_gate.set()
        await until(ctl.shardcache._loads[1][0].done, "the read to end")
        assert ctl.secrets.get((OTHER[0], "t-token")) is None
        await ctl.shardcache.stop()

    asyncio.run(scenario())
