"""Revoking tokens, and the finalizer that revokes the current token when its AgentToken goes.

When a token is revoked: the previous one `grace` after its successor rolled out
(`core.revocation.after_rollout`, applied by the rollout step), an unused one by the unused-token
policy (controllers.usage), the current one on deletion (here). The list itself is published by
`controllers.revocation.RevocationStore`. Finalizer patches carry the resourceVersion they were
computed from: a conflict means a newer version is on its way, never a lost write.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from agenttoken import api
from agenttoken.controllers import metrics
from agenttoken.controllers.revocation import RevocationStore
from agenttoken.core.model import parse_status
from agenttoken.core.outcome import Event
from agenttoken.core.revocation import Revoked
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError

Clock = Callable[[], datetime.datetime]
RETRY_AFTER_CONFLICT = datetime.timedelta(seconds=1)


class Revoker:
    def __init__(self, kube: Kube, revocations: RevocationStore | None, clock: Clock) -> None:
        self.kube = kube
        self.revocations = revocations
        self.clock = clock

    async def revoke(
        self, body: dict[str, Any], token_id: str, expires_at: datetime.datetime, reason: str
    ) -> Event | None:
        """Put `token_id` on the list; the TokenRevoked Event to post, if it was added."""
        meta = body["metadata"]
        if expires_at <= self.clock() or self.revocations is None:
            return None  # already useless; the list only needs live tokens
        entry = Revoked(token_id, expires_at, meta["namespace"], meta["name"], self.clock(), reason)
        await self.revocations.revoke([entry])
        metrics.REVOCATIONS.labels(reason=reason).inc()
        return Event(False, api.REASON_TOKEN_REVOKED, f"token {token_id} revoked ({reason})")

    async def add_finalizer(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Add ours; the written AgentToken, or None when a newer version is on its way to us."""
        meta = body["metadata"]
        finalizers = [*(meta.get("finalizers") or []), api.REVOKE_FINALIZER]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        try:
            return await self.kube.patch_agenttoken(meta["namespace"], meta["name"], patch)
        except KubeError as exc:
            if exc.conflict or exc.not_found:
                return None
            raise

    async def finalize(self, body: dict[str, Any]) -> tuple[tuple[Event, ...], datetime.datetime | None]:
        """Deleting an AgentToken revokes its current token, then lets the deletion proceed.
        The previous token is on the list already if its rollout finished, else it expires soon
        anyway. Returns the Events to post and when to try again (a conflict)."""
        meta = body["metadata"]
        if api.REVOKE_FINALIZER not in (meta.get("finalizers") or []):
            return (), None
        status = parse_status(body.get("status"))
        events: tuple[Event, ...] = ()
        if status.token_id and status.expires_at:
            revoked = await self.revoke(body, status.token_id, status.expires_at, "Deleted")
            events = (revoked,) if revoked else ()
        finalizers = [f for f in meta.get("finalizers") or [] if f != api.REVOKE_FINALIZER]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        try:
            await self.kube.patch_agenttoken(meta["namespace"], meta["name"], patch)
        except KubeError as exc:
            if not (exc.conflict or exc.not_found):
                raise
            if exc.conflict:
                return events, self.clock() + RETRY_AFTER_CONFLICT
        return events, None
