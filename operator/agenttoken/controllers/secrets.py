"""The managed Secrets: the only place that writes the Secret cache, and every Secret write.

The cache is fed from here alone: watch events, fresh reads before acting, and the responses to
our own writes. A Secret that left our label selector while the watch was down arrives as a
DELETED from the informer's relist (kube.informer), so its owner is told like after any other.
Writes stay guarded the way two replicas and a kill at any line need: a create
never overwrites a Secret nobody looked at (409: read it, decide again), and the token record
in the Secret's annotations says which token it holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agenttoken import api
from agenttoken.controllers import metrics
from agenttoken.core.bodycache import BodyCache
from agenttoken.core.secretdata import owner_name
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, Secret name)


class SecretRejected(Exception):
    """The apiserver refused the Secret the spec describes (HTTP 422): retrying cannot help."""


class SecretAppeared(Exception):
    """Creating the Secret found one already there, or it changed since we decided (409 on our
    resourceVersion precondition): the reconcile decides again with what is there now."""

    def __init__(self, message: str = "the Secret already exists") -> None:
        super().__init__(message)


class SecretStore:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._cache = BodyCache()
        metrics.SECRETS_CACHED.set_function(lambda: float(len(self._cache.bodies)))

    def get(self, key: Key) -> dict[str, Any] | None:
        return self._cache.get(key)

    def owners_signed_by(self, kids: frozenset[str]) -> set[Key]:
        """AgentTokens (namespace, name) whose Secret records a token signed by one of `kids`."""
        found: set[Key] = set()
        for (namespace, _), body in self._cache.bodies.items():
            owner = owner_name(body)  # the full name, even where the label holds a hashed one
            if owner and ((body.get("metadata") or {}).get("annotations") or {}).get(api.ANN_KEY_ID) in kids:
                found.add((namespace, owner))
        return found

    def not_ours(self, event_type: str | None, key: Key) -> None:
        """A watch event about another shard's Secret: not kept."""
        self._cache.drop(key)

    async def read_namespace(self, namespace: str, page: int, keep: Callable[[], bool]) -> None:
        """Every managed Secret of `namespace`, for a takeover (controllers.takeover), while
        `keep()`: one LIST instead of a GET per pass. Offered: a watch event handled meanwhile
        wins if newer. Best effort: without them each pass reads its Secret itself."""
        token, selector = "", f"{api.LABEL_MANAGED_BY}={api.OPERATOR_NAME}"
        try:
            while True:
                listing = await self.kube.list_page("secrets", namespace, selector, page, token)
                if not keep():
                    return  # fenced or lost while the page was on its way: not ours to cache
                for body in listing.get("items") or []:
                    self._cache.offer((namespace, body.get("metadata", {}).get("name", "")), body)
                token = (listing.get("metadata") or {}).get("continue") or ""
                if not token:
                    return
        except Exception as exc:  # the passes read them one by one instead
            log.warning("listing the Secrets of namespace %s failed: %s", namespace, exc)

    def forget_where(self, which: Callable[[Key], bool]) -> None:
        for key in [k for k in self._cache.bodies if which(k)]:
            self._cache.drop(key)

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
        """Read it from the API: act only on a fresh read (the cache may lag, e.g. after a restart).
        A watch event handled while the read was in flight wins over it if newer (core.bodycache)."""
        fresh = await self.kube.get_secret(*key)
        if fresh is None:
            self._cache.drop(key)
        else:
            self._cache.replace(key, fresh)

    async def write(
        self, key: Key, desired: dict[str, Any], *, exists: bool, version: str | None = None
    ) -> None:
        """Patch the Secret, or create it. A 422 naming fields of the Secret: SecretRejected
        (an admission policy's 422 names none: that one is retried with backoff). A create
        that finds one there, or a patch whose `version` precondition no longer holds:
        SecretAppeared, with the Secret as it is now in the cache."""
        try:
            written = await self._put(key, desired, exists=exists, version=version)
        except KubeError as exc:
            if exc.invalid_object:
                raise SecretRejected(str(exc)) from None
            raise
        self._cache.offer(key, written)

    async def _put(
        self, key: Key, desired: dict[str, Any], *, exists: bool, version: str | None
    ) -> dict[str, Any]:
        namespace, name = key
        if exists:
            if version is not None:
                desired = {**desired, "metadata": {**desired.get("metadata", {}), "resourceVersion": version}}
            try:
                return await self.kube.patch_secret(namespace, name, desired)
            except KubeError as exc:
                if not exc.conflict:
                    raise
                await self.refresh(key)
                raise SecretAppeared("the Secret changed since it was read") from None
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
