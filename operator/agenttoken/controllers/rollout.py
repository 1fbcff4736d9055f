"""Rollouts: the rollout step of a reconcile, and the restart queue that patches workloads.

Decisions (which workloads, whether a restart is needed, how a rollout is going, when the
previous token is revoked) are in `core.rollout`, `core.rolloutreport` and `core.revocation`
(pure). `RolloutStep` applies them for one AgentToken; `RolloutManager` owns the timing: requests for one workload within the debounce
window are merged into one patch (one new ReplicaSet), and no more than `max_inflight` rollouts
(`max_inflight_per_namespace` per namespace) run at once. A workload counts as in flight from
our patch until the API reports its rollout Complete, Failed or Paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agenttoken import api
from agenttoken.controllers import metrics
from agenttoken.controllers.context import Key, Pass
from agenttoken.controllers.finalizer import Revoker
from agenttoken.core import rolloutreport
from agenttoken.core.outcome import Event, StepResult
from agenttoken.core.rollout import (
    Workload,
    WorkloadRef,
    annotation_key,
    needs_restart,
    progress,
    reduce,
    rollout_done,
)
from agenttoken.core.secretdata import TokenRecord
from agenttoken.core.status import Outcome
from agenttoken.kube.adapter import Kube
from agenttoken.kube.caches import SYNC_WAIT, WorkloadCache
from agenttoken.kube.errors import KubeError
from agenttoken.kube.events import EventRecorder

log = logging.getLogger(__name__)
Clock = Callable[[], datetime.datetime]


@dataclass(frozen=True)
class RolloutOptions:
    debounce: float = 2.0
    max_inflight: int = 10
    max_inflight_per_namespace: int = 5


class RolloutManager:
    def __init__(
        self,
        kube: Kube,
        options: RolloutOptions,
        workloads: WorkloadCache,
        events: EventRecorder,
        may_restart: Callable[[str], bool] = lambda namespace: True,
    ) -> None:
        self.kube = kube
        self.may_restart = may_restart  # leadership.owns: only the shard's holder restarts
        self.options = options
        self.workloads = workloads
        self.events = events
        self._pending: dict[WorkloadRef, dict[str, str]] = {}
        self._due: dict[WorkloadRef, float] = {}
        self._inflight: dict[WorkloadRef, float] = {}  # ref -> monotonic start
        self._patched_generation: dict[WorkloadRef, int] = {}
        self._restarted_for: dict[WorkloadRef, str] = {}  # what the RolloutComplete Event names
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        workloads.subscribe(self.on_workload)

    # -- the workload cache tells us --

    def on_workload(self, ref: WorkloadRef, w: Workload | None) -> None:
        if w is None:
            self._inflight.pop(ref, None)
            self._patched_generation.pop(ref, None)
            self._restarted_for.pop(ref, None)
        else:
            self._settle(ref, w)

    def _settle(self, ref: WorkloadRef, w: Workload) -> None:
        """Free the slot of `ref` once the rollout our patch started has finished."""
        if ref in self._inflight:
            state = rollout_done(w, self._patched_generation.get(ref, 0))
            if state is not None:
                _, message = progress(w)
                self._patched_generation.pop(ref, None)
                started = self._inflight.pop(ref)
                elapsed = time.monotonic() - started
                metrics.ROLLOUT_DURATION.labels(kind=ref.kind, result=state).observe(elapsed)
                self._wakeup.set()  # a slot freed up
                reason = {"Complete": api.REASON_ROLLOUT_COMPLETE, "Failed": api.REASON_ROLLOUT_FAILED}.get(
                    state, api.REASON_ROLLOUT_PAUSED
                )
                why = self._restarted_for.pop(ref, "new token(s)")
                self._event(ref, reason, f"rollout {state.lower()} after {elapsed:.1f}s ({why}): {message}")

    # -- restarts --

    def request(self, ref: WorkloadRef, key: str, value: str) -> None:
        """Ask for `ref`'s pod template to carry key=value; merged with others within the debounce window."""
        pending = self._pending.setdefault(ref, {})
        if pending.get(key) == value:
            return
        pending[key] = value
        self._due.setdefault(ref, time.monotonic() + self.options.debounce)
        self._wakeup.set()

    def is_pending(self, ref: WorkloadRef) -> bool:
        return ref in self._pending

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="agenttoken-rollouts")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _slots_free(self, namespace: str) -> bool:
        in_ns = sum(1 for r in self._inflight if r.namespace == namespace)
        return (
            len(self._inflight) < self.options.max_inflight
            and in_ns < self.options.max_inflight_per_namespace
        )

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            due = sorted((t, r) for r, t in self._due.items() if t <= now)
            for _, ref in due:
                if ref in self._inflight or not self._slots_free(ref.namespace):
                    continue  # waits for a slot; re-checked when a rollout finishes
                await self._restart(ref)
            self._wakeup.clear()
            waiting = [t for r, t in self._due.items() if t > now]
            timeout = (min(waiting) - now) if waiting else 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.05, min(timeout, 5.0)))

    async def _restart(self, ref: WorkloadRef) -> None:
        wanted = self._pending.pop(ref, {})
        self._due.pop(ref, None)
        if not self.may_restart(ref.namespace):
            return  # not ours (any more): the holder asks again when it reconciles the token
        try:
            # The watch cache decides; the patch is content-addressed, so a stale cache costs at
            # most a no-op patch (the same annotation value starts no rollout), and a missed one
            # is asked for again by the workload event that brings the newer state. Only a
            # workload not seen yet is read first. Saves a round trip per restart.
            current = self.workloads.get(ref)
            if current is None:
                body = await self.kube.get_workload(ref.kind, ref.namespace, ref.name)
                if body is None:
                    return
                current = reduce(ref.kind, body)
            changes = {k: v for k, v in wanted.items() if needs_restart(current, k, v)}
            if not changes:
                return
            written = await self.kube.patch_pod_template_annotations(
                ref.kind, ref.namespace, ref.name, changes
            )
        except KubeError as exc:
            log.warning("restart of %s in %s failed: %s; retrying", ref, ref.namespace, exc)
            for k, v in wanted.items():
                self._pending.setdefault(ref, {}).setdefault(k, v)
            self._due[ref] = time.monotonic() + 5
            return
        self._inflight[ref] = time.monotonic()
        self._patched_generation[ref] = reduce(ref.kind, written).generation
        metrics.RESTARTS.labels(kind=ref.kind).inc()
        # One Event per restart, when it ends (RolloutComplete, RolloutFailed or RolloutPaused,
        # naming the token(s) it was for): no RestartTriggered before it, one write less per
        # renewal; the start shows in the workload's own Events (ScalingReplicaSet).
        self._restarted_for[ref] = "restarted for new token(s): " + ", ".join(
            f"{k.rsplit('.', 1)[-1]}={v}" for k, v in changes.items()
        )
        # The watch may have reported the whole rollout before our patch's response was handled:
        # the cache judges on whichever view is newer (and tells us), or the slot would wait for
        # an event that already came.
        self.workloads.on_written(ref.kind, written)

    def _event(self, ref: WorkloadRef, reason: str, message: str) -> None:
        involved = {"apiVersion": "apps/v1", "kind": ref.kind, "namespace": ref.namespace, "name": ref.name}
        self.events.post(
            involved, warning=reason == api.REASON_ROLLOUT_FAILED, reason=reason, message=message
        )

    def inflight_count(self) -> int:
        return len(self._inflight)


class RolloutStep:
    """The rollout step of a reconcile: report status.rollout/consumers, ask for restarts,
    warn once about slow rollouts and stranded consumers, revoke the previous token when due."""

    def __init__(
        self,
        restarts: RolloutManager | None,
        revoker: Revoker,
        clock: Clock,
        recheck: Callable[[Key], None] = lambda key: None,
    ) -> None:
        self.restarts = restarts
        self.revoker = revoker
        self.clock = clock
        self.recheck = recheck  # look at an AgentToken again (the work queue)
        self._deferred: set[Key] = set()  # passes that came before the workload cache was synced
        self._after_sync: asyncio.Task[None] | None = None
        # Warn-once marks, one per AgentToken (dropped with it): the token id warned about, or
        # for consumers the stranded workloads warned about (a new one warns again).
        self._warned_slow: dict[Key, str] = {}
        self._warned_consumers: dict[Key, tuple[str, ...]] = {}

    def forget(self, key: Key) -> None:
        self._warned_slow.pop(key, None)
        self._warned_consumers.pop(key, None)
        self._deferred.discard(key)

    async def step(self, p: Pass, record: TokenRecord, outcome: Outcome) -> StepResult:
        previous = (p.body.get("status") or {}).get("rollout") or {}
        if self.restarts is not None and not await self._synced(self.restarts.workloads):
            return self._defer(p, outcome)
        workloads = self.restarts.workloads.in_namespace(p.namespace) if self.restarts else []
        report = rolloutreport.report(
            name=p.name, spec=p.spec, record=record, workloads=workloads, previous=previous, now=self.clock()
        )
        if self.restarts is not None:
            for ref in report.restart:
                self.restarts.request(ref, annotation_key(p.name), record.token_id)
        outcome = dataclasses.replace(
            outcome,
            reconciling=report.reconciling or outcome.reconciling,
            stalled=report.stalled or outcome.stalled,
        )
        events: list[Event] = []
        if report.too_slow and self._warned_slow.get(p.key) != record.token_id:
            self._warned_slow[p.key] = record.token_id
            events.append(rolloutreport.too_slow_event(report.message))
        if report.stranded and self._warned_consumers.get(p.key) != report.stranded:
            self._warned_consumers[p.key] = report.stranded
            events.append(rolloutreport.stranded_event(report.stranded, p.spec.rollout.strategy == "Restart"))
        revoked_id = previous.get("revokedTokenId")
        if report.revocation.due and record.previous_token_id and record.previous_expires_at:
            revoked = await self.revoker.revoke(
                p.body, record.previous_token_id, record.previous_expires_at, "Rotated"
            )
            events.extend([revoked] if revoked else [])
            revoked_id = record.previous_token_id
        return StepResult(
            outcome,
            status=report.status(p.spec, record, revoked_id),
            wake=(report.wake_at,) if report.wake_at else (),
            events=tuple(events),
        )

    def stop(self) -> None:
        if self._after_sync is not None:
            self._after_sync.cancel()

    async def _synced(self, workloads: WorkloadCache) -> bool:
        """Whether the workload cache is synced, waiting for it in the first SYNC_WAIT seconds
        after a start (the pass's status is then written once, not once now and again with the
        workloads). Past that (e.g. a watch that cannot start), the pass is deferred."""
        return await workloads.wait_synced(SYNC_WAIT)

    def _defer(self, p: Pass, outcome: Outcome) -> StepResult:
        """Right after a start the workload cache may not have seen every workload yet, and an
        empty cache reads as "no targets: rollout complete", which would start the previous
        token's revocation grace while pods still run with it. So status.rollout and consumers
        stay as written, nothing is restarted or revoked, and the AgentToken is looked at again
        once the cache is synced (what client-go controllers get from WaitForCacheSync)."""
        assert self.restarts is not None
        self._deferred.add(p.key)
        if self._after_sync is None:
            self._after_sync = asyncio.create_task(self._recheck_when_synced(self.restarts.workloads))
        st = p.body.get("status") or {}
        return StepResult(outcome, status={"rollout": st.get("rollout"), "consumers": st.get("consumers")})

    async def _recheck_when_synced(self, workloads: WorkloadCache) -> None:
        await workloads.synced.wait()
        for key in sorted(self._deferred):
            self.recheck(key)
        self._deferred.clear()
