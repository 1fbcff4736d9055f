"""The work queue: one in-memory schedule for every AgentToken, worked through a bounded pool.

kopf's per-object timers and daemons cost a task and a finalizer per object (see
../shared/notes/kopf-at-scale.md); instead one coroutine sleeps until the earliest due key, then
runs the reconcile for it in a worker slot. A key is never reconciled twice at once: a key that
falls due while in flight runs again right after. A reconcile that raises is retried in 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from agenttoken.controllers import metrics

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Clock = Callable[[], datetime.datetime]
RETRY_AFTER_ERROR = datetime.timedelta(seconds=10)


class WorkQueue:
    def __init__(
        self,
        work: Callable[[Key], Awaitable[None]],
        clock: Clock,
        workers: int,
        accept: Callable[[Key], bool] = lambda key: True,
    ) -> None:
        self.work = work
        self.clock = clock
        # Whether a key is ours to work on at all (leadership.owns its namespace): every path
        # that schedules (watch events, workload and issuer changes, retries) goes through here.
        self.accept = accept
        self._heap: list[tuple[float, int, Key]] = []
        self.due: dict[Key, float] = {}  # the earliest time each key is due
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._inflight: set[Key] = set()
        self._again: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(workers)
        self._loop_task: asyncio.Task[None] | None = None

    def schedule(self, key: Key, when: datetime.datetime) -> None:
        """Work on `key` at `when` at the latest (an earlier time already queued stands)."""
        if not self.accept(key):
            return
        ts = when.timestamp()
        current = self.due.get(key)
        if current is not None and current <= ts:
            return
        self.due[key] = ts
        heapq.heappush(self._heap, (ts, next(self._seq), key))
        self._wakeup.set()

    def now(self, key: Key) -> None:
        self.schedule(key, self.clock())

    def forget(self, key: Key) -> None:
        self.due.pop(key, None)

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="agenttoken-queue")

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            now = self.clock().timestamp()
            while self._heap and self._heap[0][0] <= now:
                ts, _, key = heapq.heappop(self._heap)
                if self.due.get(key) != ts:
                    continue  # superseded by an earlier or removed entry
                del self.due[key]
                metrics.SCHEDULE_LAG.observe(max(0.0, now - ts))
                self._dispatch(key)
            self._wakeup.clear()
            delay = (self._heap[0][0] - now) if self._heap else 3600.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, min(delay, 3600.0)))

    def _dispatch(self, key: Key) -> None:
        if key in self._inflight:
            self._again.add(key)  # worked on again right after the current run
            return
        self._inflight.add(key)
        task = asyncio.create_task(self._guarded(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, key: Key) -> None:
        try:
            async with self._slots:
                started = time.perf_counter()
                try:
                    await self.work(key)
                    metrics.RECONCILE_DURATION.labels(result="success").observe(time.perf_counter() - started)
                except Exception:
                    metrics.RECONCILE_DURATION.labels(result="error").observe(time.perf_counter() - started)
                    log.exception("reconcile of %s/%s failed; retrying in 10s", *key)
                    self.schedule(key, self.clock() + RETRY_AFTER_ERROR)
        finally:
            self._inflight.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.now(key)
