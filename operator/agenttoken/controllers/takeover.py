"""Which AgentTokens to look at again when something outside them changed: a shard of the
leadership was gained or lost (controllers.leadership), or signing keys were revoked
(controllers.keys); and, sharded, what a replica keeps of the shards it does not hold.

One shard (the default): every replica keeps every AgentToken body from the watch, and a
takeover queues them from that warm cache, with no LIST. Sharded (`--shards` > 1): a replica
keeps bodies of its own shards only, and of the others just the names (core.shardindex); a
takeover reads the gained shard's AgentTokens fresh, a paged LIST per namespace the index names,
in the background: the event loop keeps serving, each page is offered into the token cache
(core.bodycache's resourceVersion ordering decides against watch events that arrive meanwhile,
which are kept as usual: the shard is ours from the gain on) and scheduled like the initial
listing, overdue tokens first. A failed LIST is retried with backoff for as long as the shard is
held (giving up would leave its tokens unrenewed); losing the shard stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable
from typing import Any

from agenttoken import api
from agenttoken.controllers import metrics
from agenttoken.controllers.context import Key
from agenttoken.controllers.issuer import Issuers, Reconcile
from agenttoken.controllers.leadership import Leadership
from agenttoken.controllers.queue import WorkQueue
from agenttoken.controllers.secrets import SecretStore
from agenttoken.core.bodycache import BodyCache
from agenttoken.core.lease import shard_of
from agenttoken.core.model import parse_status
from agenttoken.core.shardindex import ShardIndex
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError

log = logging.getLogger(__name__)

PAGE = 500  # AgentTokens per LIST page: ~1-2 MB of JSON, parsed in one go on the event loop
NAMESPACES_AT_ONCE = 8  # LISTs in flight per takeover: each waits mostly on the apiserver
YIELD_EVERY = 100  # bodies offered between two turns of the event loop (~10 ms of work)
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # seconds before retrying a failed LIST, then every 30 s


def signed_by(kids: frozenset[str], secrets: SecretStore, tokens: BodyCache) -> set[Key]:
    """AgentTokens whose current token one of `kids` signed. Status and the Secret's record both
    say which key signed; either may lag the other, so both are asked."""
    affected = secrets.owners_signed_by(kids)
    affected.update(k for k, b in tokens.bodies.items() if (b.get("status") or {}).get("keyId") in kids)
    return {key for key in affected if tokens.get(key) is not None}


def _renewal(body: dict[str, Any]) -> datetime.datetime | None:
    """The renewal time its status records, if that status describes the spec as it is now."""
    status = parse_status(body.get("status"))
    current = status.observed_generation == body.get("metadata", {}).get("generation")
    return status.renewal_time if current else None


def overdue(body: dict[str, Any], now: datetime.datetime) -> datetime.datetime | None:
    """When a listed AgentToken should have been renewed, if that is past; else None: look at it
    now (also when its status does not describe its current spec)."""
    when = _renewal(body)
    return when if when is not None and when < now else None


def due_later(body: dict[str, Any], now: datetime.datetime) -> datetime.datetime | None:
    """Its renewal time if there is nothing to do before it, as far as its status tells."""
    when = _renewal(body)
    return when if when is not None and when >= now else None


def enqueue(queue: WorkQueue, now: datetime.datetime, key: Key, body: dict[str, Any]) -> None:
    """Schedule an AgentToken found by a listing: overdue ones at their recorded renewal time (so
    the oldest go first), the others now (a pass that finds nothing to do writes nothing)."""
    metrics.observe_token(key, body)
    queue.schedule(key, overdue(body, now) or now)


class ShardCache:
    """The token cache's shard rules; `enqueue(key, body)` schedules a listed AgentToken (the
    controller's, with its clock: `enqueue` above)."""

    def __init__(
        self,
        kube: Kube,
        leadership: Leadership,
        tokens: BodyCache,
        secrets: SecretStore,
        queue: WorkQueue,
        enqueue: Callable[[Key, dict[str, Any]], None],
        clock: Callable[[], datetime.datetime],
    ) -> None:
        self.kube, self.leadership, self.tokens, self.queue = kube, leadership, tokens, queue
        self.secrets = secrets
        self.enqueue, self.clock = enqueue, clock
        self.sharded = leadership.shards > 1
        self.index = ShardIndex(leadership.shards)
        self._loads: dict[int, tuple[asyncio.Task[None], dict[str, set[str]]]] = {}
        metrics.TOKENS_CACHED.set_function(lambda: float(len(tokens.bodies)))

    def keeps(self, key: Key) -> bool:
        """Whether a watch event's body is kept. Sharded, another shard's is not: its name is."""
        if not self.sharded or self.leadership.owns(key[0]):
            return True
        self.index.add(key)
        if self.tokens.get(key) is not None:  # fenced before the loss reached us: keep none
            self._forget(key)
        return False

    def deleted(self, key: Key, body: dict[str, Any]) -> None:
        """A DELETED event: forget the body, or the name. Only a shard held keeps a tombstone
        (against a late LIST or write response bringing the body back; core.bodycache)."""
        ours = not self.sharded or self.leadership.owns(key[0])
        self.tokens.drop(key, body if ours else None)
        self.index.remove(key)

    def gained(self, shard: int) -> None:
        if not self.sharded:
            return
        self._stop_load(shard)
        names = self.index.take(shard)
        if names:
            task = asyncio.create_task(self._load(shard, names), name=f"agenttoken-shard-{shard}-load")
            self._loads[shard] = (task, names)

    def lost(self, shard: int) -> None:
        """Schedule none of the shard's AgentTokens; sharded, drop their bodies and keep their
        names (and the names a load under way had not finished with)."""
        keys = [k for k in list(self.tokens.bodies) if shard_of(k[0], self.leadership.shards) == shard]
        if self.sharded:
            self._stop_load(shard)
            self.index.add_all(keys)
        for key in keys:
            self.queue.forget(key)
            metrics.forget(key)
            if self.sharded:
                self.tokens.drop(key)

    def _forget(self, key: Key) -> None:
        self.tokens.drop(key)
        self.queue.forget(key)
        metrics.forget(key)

    def _stop_load(self, shard: int) -> None:
        load = self._loads.pop(shard, None)
        if load is not None:
            load[0].cancel()  # no body is offered after this: offering happens between awaits
            self.index.add_all((ns, name) for ns, names in load[1].items() for name in names)

    async def stop(self) -> None:
        for task, _ in list(self._loads.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loads.clear()

    async def _load(self, shard: int, names: dict[str, set[str]]) -> None:
        """Read the shard; what is overdue or changed is queued at once, the rest (not due, as
        its status says) at its renewal time, and now once the whole shard is read: their passes
        (a Secret GET each) would compete with the read, and find nothing to do before then."""
        started = asyncio.get_running_loop().time()
        slots = asyncio.Semaphore(NAMESPACES_AT_ONCE)
        later: list[Key] = []

        async def one(namespace: str) -> int | None:
            async with slots:
                return await self._list(namespace, later)

        async def secrets(namespace: str) -> None:
            async with slots:
                await self.secrets.read_namespace(namespace, PAGE, lambda: self.leadership.owns(namespace))

        counts = await asyncio.gather(*(one(ns) for ns in sorted(names)))
        if None in counts:
            return  # fenced meanwhile: the loss (or a gain again) puts the names back
        listed = asyncio.get_running_loop().time() - started
        # The Secrets after every AgentToken is queued: the overdue passes read theirs anyway;
        # the looks below then find them cached.
        await asyncio.gather(*(secrets(ns) for ns in sorted(names)))
        for i, key in enumerate(later):
            body = self.tokens.get(key)
            if body is not None and self.leadership.owns(key[0]):
                self.enqueue(key, body)  # its latest body: a watch event may have brought a newer one
            if i % (YIELD_EVERY * 5) == 0:
                await asyncio.sleep(0)
        if self._loads.get(shard, (None,))[0] is asyncio.current_task():
            del self._loads[shard]  # done: the shard's names now live as bodies
        log.info("shard %d: read %d AgentTokens in %d namespaces in %.1fs (with their Secrets %.1fs)", shard,
                 sum(c or 0 for c in counts), len(names), listed, asyncio.get_running_loop().time() - started)  # fmt: skip

    async def _list(self, namespace: str, later: list[Key]) -> int | None:
        """Every AgentToken of `namespace`, page by page; None if its shard stopped being held."""
        token, failures, offered = "", 0, 0
        while True:
            if not self.leadership.owns(namespace):
                return None
            try:
                page = await self.kube.list_page(api.AGENTTOKEN_PLURAL, namespace, limit=PAGE, token=token)
            except Exception as exc:  # KubeError, a timeout, a broken connection: never give up
                failures += 1
                metrics.SHARD_LIST_FAILURES.inc()
                if isinstance(exc, KubeError) and exc.status == 410:
                    token = ""  # the continue token expired: that namespace from the start
                delay = BACKOFF[min(failures, len(BACKOFF)) - 1]
                log.warning("listing the AgentTokens of namespace %s failed (again in %.0fs): %s",
                            namespace, delay, exc)  # fmt: skip
                await asyncio.sleep(delay)
                continue
            failures = 0
            now = self.clock()
            for item in page.get("items") or []:
                if not self.leadership.owns(namespace):
                    return None  # lost meanwhile (fenced): nothing more of it
                key = (namespace, (item.get("metadata") or {}).get("name", ""))
                try:
                    self._take(key, item, now, later)
                except Exception:  # one odd body must not leave the rest of the shard unread
                    log.exception("taking over AgentToken %s/%s failed", *key)
                offered += 1
                if offered % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return offered

    def _take(self, key: Key, item: dict[str, Any], now: datetime.datetime, later: list[Key]) -> None:
        if not self.tokens.offer(key, item):
            return  # the watch brought this version or a newer one, and it was queued then
        when = due_later(item, now)
        if when is None:
            self.enqueue(key, item)
            return
        # At its renewal time at the latest, even if the shard's read never ends (a namespace
        # whose LIST keeps failing); a look now follows once the whole shard is read.
        metrics.observe_token(key, item)
        self.queue.schedule(key, when)
        later.append(key)


def shard_changed(
    shard: int,
    held: bool,
    shards: int,
    *,
    cache: ShardCache,
    secrets: SecretStore,
    enqueue: Callable[[Key, dict[str, Any]], None],
    issuers: Issuers | None = None,
    reconcile_issuer: Reconcile | None = None,
) -> None:
    """Gained: queue the shard's AgentTokens, each at its recorded renewal time if overdue, like
    the initial listing: from the warm cache, and sharded, from a fresh read (ShardCache); and
    look again at its issuers' status (the last holder may have died between an issuer's change
    and its status write). Lost: schedule none of them, and (sharded) keep none of their bodies
    and Secrets: another replica's tokens are not held here."""
    if held and issuers is not None and reconcile_issuer is not None:
        issuers.resync(shard, shards, reconcile_issuer)
    if held:
        for key in [k for k in list(cache.tokens.bodies) if shard_of(k[0], shards) == shard]:
            body = cache.tokens.get(key)
            if body is not None:
                enqueue(key, body)
        cache.gained(shard)
        return
    cache.lost(shard)
    if shards > 1:
        secrets.forget_where(lambda key: shard_of(key[0], shards) == shard)
