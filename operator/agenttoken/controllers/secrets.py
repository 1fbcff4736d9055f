"""The managed Secrets: the only place that writes the Secret cache, and every Secret write.

The cache is fed from here alone: watch events, fresh reads before acting, the responses to our
own writes. Writes stay guarded the way two replicas and a kill at any line need: a create
never overwrites a Secret nobody looked at (409: read it, decide again), and the token record
in the Secret's annotations says which token it holds.
"""

from __future__ import annotations

from typing import Any

from agenttoken import api
from agenttoken.core.bodycache import BodyCache
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError

Key = tuple[str, str]  # (namespace, Secret name)


class SecretRejected(Exception):
    """The apiserver refused the Secret the spec describes (HTTP 422): retrying cannot help."""


class SecretAppeared(Exception):
    """Creating the Secret found one already there: the reconcile decides again with it."""

    def __init__(self) -> None:
        super().__init__("the Secret already exists")


class SecretStore:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._cache = BodyCache()

    def get(self, key: Key) -> dict[str, Any] | None:
        return self._cache.get(key)

    def owners_signed_by(self, kids: frozenset[str]) -> set[Key]:
        """AgentTokens (namespace, name) whose Secret records a token signed by one of `kids`."""
        found: set[Key] = set()
        for (namespace, _), body in self._cache.bodies.items():
            meta = body.get("metadata") or {}
            owner = (meta.get("labels") or {}).get(api.LABEL_AGENTTOKEN)
            if owner and (meta.get("annotations") or {}).get(api.ANN_KEY_ID) in kids:
                found.add((namespace, owner))
        return found

    def on_event(self, event_type: str | None, body: dict[str, Any]) -> bool:
        """A watch event; True if it told us something new."""
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            # Also when the Secret merely left our label selector: remember the deletion's
            # resourceVersion so a late response to our own write cannot revive a stale copy.
            self._cache.drop(key, body)
            return True
        return self._cache.offer(key, body)

    async def refresh(self, key: Key) -> None:
        """Read it from the API: act only on a fresh read (the cache may lag, e.g. after a restart)."""
        fresh = await self.kube.get_secret(*key)
        if fresh is None:
            self._cache.drop(key)
        else:
            self._cache.replace(key, fresh)

    async def write(self, key: Key, desired: dict[str, Any], *, exists: bool) -> None:
        """Patch the Secret, or create it. A 422 naming fields of the Secret: SecretRejected
        (an admission policy's 422 names none: that one is retried with backoff). A create
        that finds one there: SecretAppeared, with the found Secret in the cache."""
        try:
            written = await self._put(key, desired, exists=exists)
        except KubeError as exc:
            if exc.invalid_object:
                raise SecretRejected(str(exc)) from None
            raise
        self._cache.offer(key, written)

    async def _put(self, key: Key, desired: dict[str, Any], *, exists: bool) -> dict[str, Any]:
        namespace, name = key
        if exists:
            return await self.kube.patch_secret(namespace, name, desired)
        desired["data"] = {k: v for k, v in desired["data"].items() if v is not None}
        try:
            return await self.kube.create_secret(namespace, desired)
        except KubeError as exc:
            if not exc.conflict:
                raise
            # It exists after all: never overwrite what we have not looked at.
            found = await self.kube.get_secret(namespace, name)
            if found is None:
                raise  # gone again; the next attempt creates it
            self._cache.replace(key, found)
            raise SecretAppeared from None

    async def create_skeleton(self, key: Key, skeleton: dict[str, Any]) -> dict[str, Any]:
        """Create the Secret without a token (metadata only), for a token bound to it."""
        created = await self.kube.create_secret(key[0], skeleton)
        self._cache.offer(key, created)
        return created
