"""Following kopf's relists for a watch cache (the rules: core.relist).

A cache feeds every watch event of its kind through `event`; once a listing is over (its quiet
period passed), each cached key it did not report is handed to `recheck`, one at a time: the
cache's owner reads it fresh and acts on what it finds. Suspects are rare (objects that left the
watch while it was down), so one at a time is plenty, and a relist of 10k objects that all come
back costs no call at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

from agenttoken.core.relist import QUIET, Relists

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class RelistFollower(Generic[K]):
    def __init__(
        self,
        what: str,
        scope: Callable[[K], Hashable],
        cached: Callable[[], Iterable[K]],
        recheck: Callable[[K], Awaitable[None]],
        *,
        quiet: float = QUIET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.relists: Relists[K] = Relists(scope, quiet)
        self.cached = cached
        self.recheck = recheck
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def event(self, event_type: str | None, key: K) -> None:
        self.relists.event(event_type, key, self.clock())
        if event_type is not None or self._task is not None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop (a synchronous unit test)
            self._task = asyncio.get_running_loop().create_task(
                self._follow(), name=f"agenttoken-relist-{self.what}"
            )

    async def _follow(self) -> None:
        try:
            while (deadline := self.relists.deadline) is not None:
                await asyncio.sleep(max(0.0, deadline - self.clock()))
                suspects = self.relists.over(self.clock(), list(self.cached()))
                if suspects:
                    log.info(
                        "a relist of %s did not report %d cached objects: reading them again",
                        self.what,
                        len(suspects),
                    )
                for key in suspects or ():
                    if self.relists.reported(key):
                        continue  # the listing went on after all, and reported it
                    try:
                        await self.recheck(key)
                    except Exception as exc:  # the recheck keeps the cache safe on failure itself
                        log.warning("reading %s %s again after a relist failed: %s", self.what, key, exc)
        finally:
            self._task = None  # no await since the last deadline check: a new listing restarts it

    async def stop(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
