"""The workload watch cache: reduced Deployments, StatefulSets and DaemonSets, and when it is synced.

Fed by the watch events (runtime.handlers) and by the responses to our own restart patches;
read by the rollout step, the unused-token policy and the restart queue. Listeners hear about
every change (the restart queue frees slots, the AgentToken controller looks again at the
tokens a workload concerns), so data flows one way: event -> cache -> listeners -> queue.

`synced`: kopf offers no hook for "the initial listing of this kind has been delivered", so it is
derived from an explicit LIST: the cache is synced once a LIST (of the same scope the watches
cover) finds no workload the cache has not seen. Until then an empty cache must not be read as
"no consumer" (the unused-token policy waits for it).

A workload deleted while a watch was down is absent from kopf's relist, which never reports it:
`follow_relists` reads each cached workload a relist did not report again (kube.relists).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agenttoken.core.rollout import Workload, WorkloadRef, reduce
from agenttoken.kube.relists import RelistFollower

log = logging.getLogger(__name__)

Listener = Callable[[WorkloadRef, Workload | None], None]
RefLister = Callable[[], Awaitable[set[tuple[str, str, str]]]]
Reader = Callable[[str, str, str], Awaitable[dict[str, Any] | None]]  # kind, namespace, name
# For how long after a start a reconcile pass waits for the cache to be synced (the rollout step
# and the unused-token policy both read it): a few seconds, so that the pass's status is written
# once, with what the workloads say, not once now and again after the sync.
SYNC_WAIT = 5.0


class WorkloadCache:
    def __init__(self) -> None:
        self.workloads: dict[WorkloadRef, Workload] = {}
        self.by_namespace: dict[str, set[WorkloadRef]] = {}
        self.synced = asyncio.Event()
        self._listeners: list[Listener] = []
        self._seen: set[WorkloadRef] = set()  # until synced: every ref ever reported, deleted too
        self.relists: RelistFollower[WorkloadRef] | None = None
        self._created = time.monotonic()

    def follow_relists(self, read: Reader, *, namespaced: bool = False) -> None:
        """Read again, with `read`, what a relist no longer reports. `namespaced`: kopf watches
        each namespace on its own (core.relist's scopes)."""

        async def recheck(ref: WorkloadRef) -> None:
            before = self.workloads.get(ref)
            found = await read(ref.kind, ref.namespace, ref.name)
            if found is not None:
                self.on_written(ref.kind, found)  # a watch view newer than the read wins
            elif before is not None and self.workloads.get(ref) is before:  # not re-created meanwhile
                self._drop(ref)

        self.relists = RelistFollower(
            "workloads",
            (lambda ref: (ref.kind, ref.namespace)) if namespaced else (lambda ref: ref.kind),
            self.workloads.keys,
            recheck,
        )

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def on_event(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        w = reduce(kind, body)
        if not self.synced.is_set():
            self._seen.add(w.ref)
        if self.relists is not None:
            self.relists.event(event_type, w.ref)
        if event_type == "DELETED":
            self._drop(w.ref)
            return
        self._store(w)

    def _drop(self, ref: WorkloadRef) -> None:
        self.workloads.pop(ref, None)
        self.by_namespace.get(ref.namespace, set()).discard(ref)
        self._notify(ref, None)

    def on_written(self, kind: str, body: dict[str, Any]) -> Workload:
        """The response to our own patch. The watch may have reported later states before it
        was handled (kwok finishes a one-pod rollout at once): the newer view wins."""
        patched = reduce(kind, body)
        cached = self.workloads.get(patched.ref)
        if cached is not None and cached.generation >= patched.generation:
            self._notify(cached.ref, cached)
            return cached
        self._store(patched)
        return patched

    def _store(self, w: Workload) -> None:
        self.workloads[w.ref] = w
        self.by_namespace.setdefault(w.ref.namespace, set()).add(w.ref)
        self._notify(w.ref, w)

    def _notify(self, ref: WorkloadRef, w: Workload | None) -> None:
        for listener in self._listeners:
            listener(ref, w)

    def get(self, ref: WorkloadRef) -> Workload | None:
        return self.workloads.get(ref)

    def in_namespace(self, namespace: str) -> list[Workload]:
        return [self.workloads[r] for r in self.by_namespace.get(namespace, set()) if r in self.workloads]

    async def wait_synced(self, within: float) -> bool:
        """Whether the cache is synced, waiting for it until `within` seconds after the cache
        was made (the operator's start). Counted from the start, not per caller: the steps of
        one pass that each wait share the wait, and a watch that cannot start (e.g. no RBAC)
        costs passes nothing once that time is over."""
        left = self._created + within - time.monotonic()
        if not self.synced.is_set() and left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.synced.wait(), timeout=left)
        return self.synced.is_set()

    async def sync(self, list_refs: RefLister, interval: float = 0.2, max_interval: float = 30.0) -> None:
        """Set `synced` once a LIST finds nothing the watches have not delivered yet. Each LIST
        is the current state, so a workload deleted meanwhile drops out of the next one. Tries
        again after `interval`, doubling up to `max_interval` (a watch that cannot start, e.g.
        for lack of RBAC, must not turn into a LIST a second)."""
        while not self.synced.is_set():
            try:
                missing = len({WorkloadRef(*ref) for ref in await list_refs()} - self._seen)
            except Exception as exc:  # apiserver down, RBAC, timeouts: try again, never give up
                log.warning("listing workloads to sync the cache failed: %s; retrying", exc)
                missing = -1
            if missing == 0:
                self.synced.set()
                self._seen.clear()
                log.info("workload cache synced: %d workloads", len(self.workloads))
                return
            log.debug("workload cache not synced yet: %d listed workloads not seen", missing)
            await asyncio.sleep(interval)
            interval = min(interval * 2, max_interval)
