"""The workload cache: listeners hear every change, our own write's response never hides a
newer watch view, and `synced` is set once a LIST finds nothing the watches have not delivered."""

from __future__ import annotations

import asyncio
from typing import Any

from agenttoken.core.rollout import Workload, WorkloadRef
from agenttoken.kube.caches import WorkloadCache


def body(name: str, generation: int = 1, namespace: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "generation": generation},
        "spec": {"replicas": 1, "template": {"spec": {}}},
        "status": {"observedGeneration": generation, "replicas": 1},
    }


def test_listeners_hear_changes_and_deletions_in_order() -> None:
    cache = WorkloadCache()
    heard: list[tuple[str, WorkloadRef, int | None]] = []

    def listener(tag: str) -> Any:
        def hear(ref: WorkloadRef, w: Workload | None) -> None:
            heard.append((tag, ref, w.generation if w else None))

        return hear

    cache.subscribe(listener("first"))
    cache.subscribe(listener("second"))
    cache.on_event("Deployment", None, body("web"))
    cache.on_event("Deployment", "DELETED", body("web"))
    ref = WorkloadRef("Deployment", "ns", "web")
    assert heard == [("first", ref, 1), ("second", ref, 1), ("first", ref, None), ("second", ref, None)]
    assert cache.in_namespace("ns") == []


def test_a_write_response_older_than_the_watch_view_does_not_win() -> None:
    cache = WorkloadCache()
    cache.on_event("Deployment", "MODIFIED", body("web", generation=3))
    assert cache.on_written("Deployment", body("web", generation=2)).generation == 3
    assert cache.on_written("Deployment", body("web", generation=4)).generation == 4
    assert [w.generation for w in cache.in_namespace("ns")] == [4]


def test_synced_once_a_listing_finds_nothing_unseen() -> None:
    async def scenario() -> tuple[int, bool]:
        cache = WorkloadCache()
        listings = [
            {("Deployment", "ns", "web"), ("StatefulSet", "ns", "db")},  # the watches lag behind
            {("Deployment", "ns", "web"), ("StatefulSet", "ns", "db")},
            {("Deployment", "ns", "web")},  # db was deleted before its watch event came
        ]
        calls = 0

        async def lister() -> set[tuple[str, str, str]]:
            nonlocal calls
            calls += 1
            if calls == 2:
                cache.on_event("Deployment", None, body("web"))
            return listings[min(calls, len(listings)) - 1]

        await asyncio.wait_for(cache.sync(lister, interval=0.01), timeout=5)
        return calls, cache.synced.is_set()

    assert asyncio.run(scenario()) == (3, True)


def test_an_empty_cluster_is_synced_at_once() -> None:
    async def scenario() -> bool:
        cache = WorkloadCache()

        async def lister() -> set[tuple[str, str, str]]:
            return set()

        await asyncio.wait_for(cache.sync(lister), timeout=5)
        return cache.synced.is_set()

    assert asyncio.run(scenario())
