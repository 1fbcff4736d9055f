"""Is the token still used? The unused-token policy's step of a reconcile (spec.unused).

Decisions are `core.usage.assess` (pure). Consumption is read from the workload cache, which is
judged only once it is synced (kube.caches) plus `margin` seconds (`--usage-warmup`): an empty
cache right after a start must never read as "no consumer". Steps that flag or take something
away are confirmed by a fresh listing of the namespace (Pods and CronJobs count too), shared
for a few seconds by the AgentTokens of that namespace whose steps fall due together.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

from agenttoken.controllers.context import Key, Pass
from agenttoken.controllers.finalizer import Revoker
from agenttoken.core.outcome import Event, usage_event
from agenttoken.core.rollout import consumed_in
from agenttoken.core.usage import IN_USE, REVOKED, UsageDecision, assess
from agenttoken.kube.adapter import Kube
from agenttoken.kube.caches import SYNC_WAIT, WorkloadCache

# Seconds a fresh listing of a namespace's consumers is reused by the unused-token policy.
LISTING_TTL = 2.0
Clock = Callable[[], datetime.datetime]


class Usage:
    def __init__(
        self,
        kube: Kube,
        workloads: WorkloadCache | None,
        revoker: Revoker,
        clock: Clock,
        *,
        margin: float,
        recheck: Callable[[Key], None],
    ) -> None:
        self.kube = kube
        self.workloads = workloads
        self.revoker = revoker
        self.clock = clock
        self.margin = margin
        self.recheck = recheck  # look at an AgentToken again (the work queue)
        self.ready = False  # the workload cache is synced and the margin has passed
        self._waiting: set[Key] = set()  # AgentTokens with a step pending when ready
        self._listings: dict[str, tuple[float, dict[str, list[dict[str, Any]]]]] = {}

    async def warm_up(self) -> None:
        """Wait for the workload cache, then look again at the AgentTokens that were waiting."""
        if self.workloads is None:
            return
        await self.workloads.synced.wait()
        await asyncio.sleep(self.margin)
        self.ready = True
        for key in sorted(self._waiting):
            self.recheck(key)
        self._waiting.clear()

    async def assess(self, p: Pass) -> tuple[UsageDecision | None, tuple[Event, ...]]:
        """Where this AgentToken stands under spec.unused; takes the step that is due."""
        if self.workloads is None:
            return None, ()  # no workload watches: consumption is unknown
        previous = p.previous
        if not await self._judgeable():
            # Keep what status says (a suspension stays) until the workload cache is synced.
            if previous.usage is not None and previous.usage.state != IN_USE:
                self._waiting.add(p.key)  # only a token with a step pending needs a look then
            return (UsageDecision(previous.usage) if previous.usage else None), ()
        consumed = any(
            w.runs_pods and w.consumes_secret(p.spec.secret_name)
            for w in self.workloads.in_namespace(p.namespace)
        )
        decision = assess(p.spec.unused, previous.usage, consumed, p.now, previous.token_id)
        if decision.needs_confirmation and consumed_in(
            await self._fresh_listing(p.namespace), p.spec.secret_name
        ):
            decision = assess(p.spec.unused, previous.usage, True, p.now, previous.token_id)
        if decision.step is None:
            return decision, ()
        if decision.step == REVOKED and previous.token_id and previous.expires_at:
            await self.revoker.revoke(p.body, previous.token_id, previous.expires_at, "Unused")
        expired = not (previous.expires_at and previous.expires_at > p.now)
        return decision, (usage_event(decision.step, decision.usage, p.spec, already_expired=expired),)

    async def _judgeable(self) -> bool:
        """Whether consumption may be judged in this pass. Right after a start (no margin
        asked for), a pass waits for the workload cache as the rollout step does, and shares
        that wait (kube.caches.SYNC_WAIT): a new AgentToken reconciled just before the sync
        would otherwise get a status without status.usage, and its next pass (e.g. on the watch
        event of the Secret it created) a second status write that only adds it."""
        if not self.ready and self.margin <= 0 and self.workloads is not None:
            # warm_up, on its way, still looks again at the AgentTokens that were waiting.
            self.ready = await self.workloads.wait_synced(SYNC_WAIT)
        return self.ready

    def forget(self, key: Key) -> None:
        self._waiting.discard(key)

    async def _fresh_listing(self, namespace: str) -> dict[str, list[dict[str, Any]]]:
        """Kube.list_consumers, shared for a few seconds by every AgentToken of the namespace
        whose step falls due together (e.g. many tokens marked right after the warm-up)."""
        held = self._listings.get(namespace)
        if held is not None and time.monotonic() - held[0] < LISTING_TTL:
            return held[1]
        listing = await self.kube.list_consumers(namespace)
        self._listings[namespace] = (time.monotonic(), listing)
        for ns in [n for n, (t, _) in self._listings.items() if time.monotonic() - t >= LISTING_TTL]:
            del self._listings[ns]
        return listing
