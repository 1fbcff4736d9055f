"""The one Event recorder: Events are best-effort, posted in the background a few at a time.

A reconcile never waits for an Event (in a burst of new AgentTokens the Secret and the status
come first; the Events follow), and a failed post is logged, never retried or raised.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError

log = logging.getLogger(__name__)
FLUSH_SECONDS = 5.0


class EventRecorder:
    def __init__(self, kube: Kube, concurrency: int = 4) -> None:
        self.kube = kube
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)

    def post(self, involved: dict[str, Any], *, warning: bool, reason: str, message: str) -> None:
        """Queue an Event about `involved` (apiVersion, kind, namespace, name[, uid])."""
        task = asyncio.get_running_loop().create_task(self._post(involved, warning, reason, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, involved: dict[str, Any], warning: bool, reason: str, message: str) -> None:
        async with self._slots:
            try:
                await self.kube.emit_event(involved, warning=warning, reason=reason, message=message)
            except KubeError as exc:
                log.warning(
                    "could not post event %s for %s %s/%s: %s",
                    reason,
                    involved["kind"],
                    involved["namespace"],
                    involved["name"],
                    exc,
                )

    async def flush(self) -> None:
        """Let queued Events out before the process stops (for at most FLUSH_SECONDS)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=FLUSH_SECONDS)
