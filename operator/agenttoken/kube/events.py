"""The one Event recorder: Events are best-effort, posted in the background, bounded in a burst.

A reconcile never waits for an Event (in a burst of new AgentTokens the Secret and the status
come first; the Events follow), and a failed post is logged, never retried or raised. Events
alike (same namespace, reason, type, kind) within WINDOW seconds of the first are posted as one
Event that names and counts them (core.eventbatch): a burst of 1,000 new AgentTokens costs a
handful of Event writes, not 1,000 (docs/agenttoken.md, Events).

At shutdown `close` posts what is pending and then refuses more: it runs before the Kubernetes
session closes (runtime.handlers cleanup), so a batch still in its window is not posted later
on a closed session ("RuntimeError: Session is closed" at exit); an Event posted after that
(e.g. a Lease handed back by the last step of shutdown) is dropped with a debug log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import aiohttp

from agenttoken.core import eventbatch
from agenttoken.core.eventbatch import Batch
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError

log = logging.getLogger(__name__)
FLUSH_SECONDS = 5.0
WINDOW = 1.0  # seconds an Event waits for others alike
Key = tuple[str, str, bool, str]  # core.eventbatch.key


class EventRecorder:
    def __init__(self, kube: Kube, concurrency: int = 4, window: float = WINDOW) -> None:
        self.kube = kube
        self.window = window
        self._batches: dict[Key, Batch] = {}
        self._sleepers: dict[Key, asyncio.Task[None]] = {}  # one per batch: posts it after the window
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._closed = False

    def post(self, involved: dict[str, Any], *, warning: bool, reason: str, message: str) -> None:
        """Queue an Event about `involved` (apiVersion, kind, namespace, name[, uid])."""
        if self._closed:
            log.debug("not posting event %s for %s %s/%s: shutting down", reason, *_names(involved))
            return
        key = eventbatch.key(involved, warning, reason)
        batch = self._batches.get(key)
        if batch is not None:
            batch.add(involved)
            return
        self._batches[key] = eventbatch.start(involved, message)
        self._sleepers[key] = self._spawn(self._post_after(key, self.window))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _post_after(self, key: Key, delay: float) -> None:
        await asyncio.sleep(delay)
        self._sleepers.pop(key, None)
        batch = self._batches.pop(key, None)
        if batch is not None:
            await self._post(key, batch)

    async def _post(self, key: Key, batch: Batch) -> None:
        _, reason, warning, _ = key
        involved, message, count = eventbatch.summary(batch, reason)
        async with self._slots:
            try:
                await self.kube.emit_event(
                    involved, warning=warning, reason=reason, message=message, count=count
                )
            except (KubeError, aiohttp.ClientError, TimeoutError) as exc:  # best effort: never raised
                log.warning("could not post event %s for %s %s/%s: %s", reason, *_names(involved), exc)

    async def flush(self) -> None:
        """Let queued Events out before the process stops (for at most FLUSH_SECONDS), without
        waiting for the rest of their window."""
        for key, sleeper in list(self._sleepers.items()):
            sleeper.cancel()
            batch = self._batches.pop(key, None)
            if batch is not None:
                self._spawn(self._post(key, batch))
        self._sleepers.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=FLUSH_SECONDS)

    async def close(self) -> None:
        """Post what is pending (flush), then refuse more: before the Kubernetes session closes."""
        await self.flush()
        self._closed = True
        for task in list(self._tasks):  # still posting after FLUSH_SECONDS: given up, not left to fail
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _names(involved: dict[str, Any]) -> tuple[str, str, str]:
    return involved["kind"], involved["namespace"], involved["name"]
