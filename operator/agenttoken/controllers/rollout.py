"""Restarts workloads, with debounce and caps, and keeps the reduced workload cache.

Decisions (which workloads, whether a restart is needed, how a rollout is going) are in
`core.rollout` (pure). This module owns the timing: requests for one workload within the debounce
window are merged into one patch (one new ReplicaSet), and no more than `max_inflight` rollouts
(`max_inflight_per_namespace` per namespace) run at once. A workload counts as in flight from
our patch until the API reports its rollout Complete, Failed or Paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agenttoken.controllers import metrics
from agenttoken.core.rollout import Workload, WorkloadRef, needs_restart, progress, reduce, rollout_done
from agenttoken.kube.adapter import Kube, KubeError

log = logging.getLogger(__name__)


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
        on_change: Callable[[WorkloadRef, Workload | None], None],
    ) -> None:
        self.kube = kube
        self.options = options
        self.on_change = on_change  # tells the controller which AgentTokens to look at again
        self.workloads: dict[WorkloadRef, Workload] = {}
        self.by_namespace: dict[str, set[WorkloadRef]] = {}
        self._pending: dict[WorkloadRef, dict[str, str]] = {}
        self._due: dict[WorkloadRef, float] = {}
        self._inflight: dict[WorkloadRef, float] = {}  # ref -> monotonic start
        self._patched_generation: dict[WorkloadRef, int] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._event_tasks: set[asyncio.Task[None]] = set()

    # -- cache --

    def on_event(self, kind: str, event_type: str | None, body: dict[str, object]) -> None:
        w = reduce(kind, body)
        ref = w.ref
        if event_type == "DELETED":
            self.workloads.pop(ref, None)
            self.by_namespace.get(ref.namespace, set()).discard(ref)
            self._inflight.pop(ref, None)
            self._patched_generation.pop(ref, None)
            self.on_change(ref, None)
            return
        self.workloads[ref] = w
        self.by_namespace.setdefault(ref.namespace, set()).add(ref)
        self._settle(ref, w)
        self.on_change(ref, w)

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
                reason = {"Complete": "RolloutComplete", "Failed": "RolloutFailed"}.get(
                    state, "RolloutPaused"
                )
                task = asyncio.get_running_loop().create_task(
                    self._event(
                        ref,
                        reason,
                        f"rollout for new token(s) {state.lower()} after {elapsed:.1f}s: {message}",
                    )
                )
                self._event_tasks.add(task)
                task.add_done_callback(self._event_tasks.discard)

    def in_namespace(self, namespace: str) -> list[Workload]:
        return [self.workloads[r] for r in self.by_namespace.get(namespace, set()) if r in self.workloads]

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
        message = "restarted for new token(s): " + ", ".join(
            f"{k.rsplit('.', 1)[-1]}={v}" for k, v in changes.items()
        )
        await self._event(ref, "RestartTriggered", message)
        # The watch may have reported the whole rollout before our patch's response was handled
        # (kwok finishes a one-pod rollout at once): judge on whichever view is newer, or the
        # slot would wait for an event that already came.
        patched = reduce(ref.kind, written)
        cached = self.workloads.get(ref)
        if cached is not None and cached.generation >= patched.generation:
            self._settle(ref, cached)
            self.on_change(ref, cached)
        else:
            self.on_event(ref.kind, "MODIFIED", written)

    async def _event(self, ref: WorkloadRef, reason: str, message: str) -> None:
        involved = {"apiVersion": "apps/v1", "kind": ref.kind, "namespace": ref.namespace, "name": ref.name}
        try:
            await self.kube.emit_event(
                involved, warning=reason == "RolloutFailed", reason=reason, message=message
            )
        except KubeError as exc:
            log.warning("could not post event %s on %s: %s", reason, ref, exc)

    def inflight_count(self) -> int:
        return len(self._inflight)
