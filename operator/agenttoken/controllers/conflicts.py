"""Secrets an AgentToken is in conflict with, watched one by one so the conflict resolves itself.

An AgentToken whose spec.secret.name names someone else's Secret stalls (SecretConflict) and
writes nothing. The operator watches only Secrets carrying its managed-by label, so it would
never see that Secret deleted, or handed over by labelling it. Here each conflicting Secret gets a
watch of its own (one object, by name, from the resourceVersion the conflict was decided on): when
it changes or goes, the AgentToken is looked at again at once. The number of watches is capped;
past the cap (and as a safety net for a watch that had to resume) the controller also looks
again every POLL interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable
from typing import Any, Final

from agenttoken.kube.adapter import Kube

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name): an AgentToken, or a Secret
MAX_WATCHES: Final = 200
POLL: Final = datetime.timedelta(seconds=60)


class ConflictWatch:
    def __init__(self, kube: Kube, recheck: Callable[[Key], None], limit: int = MAX_WATCHES) -> None:
        self.kube = kube
        self.recheck = recheck
        self.limit = limit
        self._watches: dict[Key, tuple[Key, asyncio.Task[None]]] = {}  # token -> (Secret, watch)

    def watching(self, token: Key) -> bool:
        return token in self._watches

    def watch(self, token: Key, secret: Key, seen: dict[str, Any] | None) -> None:
        """Look at `token` again as soon as `secret` (as `seen`, when known) changes or goes."""
        current = self._watches.get(token)
        if current is not None and current[0] == secret:
            return
        self.release(token)
        if len(self._watches) >= self.limit:
            return  # the controller's POLL wake-up covers it
        since = ((seen or {}).get("metadata") or {}).get("resourceVersion")
        task = asyncio.create_task(
            self._follow(token, secret, since), name=f"conflict-{secret[0]}/{secret[1]}"
        )
        self._watches[token] = (secret, task)

    def follow(
        self, token: Key, secret: Key, conflict: bool, seen: dict[str, Any] | None, now: datetime.datetime
    ) -> list[datetime.datetime]:
        """While the Secret is someone else's (`conflict`), watch it, so deleting or handing it
        over lets the AgentToken proceed within seconds, with no edit; the wake-up for the POLL
        safety net. Else stop watching."""
        if not conflict:
            self.release(token)
            return []
        self.watch(token, secret, seen)
        return [now + POLL]

    def release(self, token: Key) -> None:
        """The conflict is over (or the AgentToken gone): stop watching."""
        current = self._watches.pop(token, None)
        if current is not None:
            current[1].cancel()

    async def stop(self) -> None:
        tasks = [task for _, task in self._watches.values()]
        self._watches.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, token: Key, secret: Key, since: str | None) -> None:
        last = since
        try:
            async for body in self.kube.watch_secret(*secret, since=since):
                version = ((body or {}).get("metadata") or {}).get("resourceVersion")
                if body is not None and version == last:
                    continue  # the state the conflict was decided on, replayed after a resume
                last = version
                self.recheck(token)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let a watch take the controller down; the POLL covers it
            # The type only: the text of an error about someone else's Secret could quote it.
            log.warning("watch of Secret %s/%s failed (%s)", *secret, type(exc).__name__)
