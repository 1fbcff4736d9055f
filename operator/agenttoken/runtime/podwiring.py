"""Wiring of per-pod tokens (delivery PerPod): the token endpoint's service, the pod ledger and
its loops, and the pod watch that tells the ledger when a pod is gone.

Every replica serves the endpoint and keeps the ledger's view; the sweeper (revocations of
deleted pods) writes only on the primary, like the other cluster-wide writers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from agenttoken.controllers.agenttoken import Controller
from agenttoken.controllers.keys import KeyManager
from agenttoken.controllers.leadership import Leadership
from agenttoken.controllers.podledger import PodLedger
from agenttoken.controllers.podstatus import PodTokenCounts, run_flusher
from agenttoken.controllers.podtokens import PodTokenService
from agenttoken.controllers.revocation import RevocationStore
from agenttoken.core.bodycache import BodyCache
from agenttoken.kube.adapter import Kube
from agenttoken.kube.podreviews import PodReviews

TASKS = ("podledger_follow", "podledger_writer", "podledger_sweeper", "podtokens_flusher")


async def start(
    memo: kopf.Memo,
    kube: Kube,
    keys: KeyManager,
    controller: Controller,
    revocations: RevocationStore,
    leadership: Leadership,
) -> PodTokenService:
    reviews = PodReviews(kube)
    ledger = PodLedger(kube, reviews, keys.namespace, revocations)
    await ledger.load()
    counts = PodTokenCounts()
    service = PodTokenService(
        reviews, ledger, revocations, controller.issuers, BodyCache(),  # PerPod ones, every shard's
        keys.signing_key, keys.issuer, counts,
    )  # fmt: skip
    memo["podledger"], memo["podtokens"] = ledger, service
    loops: dict[str, Any] = {
        "podledger_follow": ledger.follow(),
        "podledger_writer": ledger.run_writer(),
        "podledger_sweeper": ledger.run_sweeper(leadership.is_primary),
        "podtokens_flusher": run_flusher(kube, reviews, counts),
    }
    for name, loop in loops.items():
        memo[name] = asyncio.create_task(loop, name=f"agenttoken-{name}")
    return service


def stop(memo: kopf.Memo) -> None:
    for name in TASKS:
        task: asyncio.Task[None] | None = memo.get(name)
        if task is not None:
            task.cancel()


@kopf.on.event("v1", "pods")
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    ledger: PodLedger | None = memo.get("podledger")
    if ledger is not None:
        ledger.on_pod_event(event.get("type"), event["object"])
