"""Which pods hold live per-pod tokens, kept in the cluster, so a deleted pod's tokens are revoked
even when every replica was down while it went away.

One ConfigMap in the operator's namespace (`agenttoken-pod-tokens`, key `pods.json`):
`{"<pod uid>": ["<namespace>", "<pod name>", <until>]}`, `until` (POSIX seconds) at or after the
`exp` of every token issued to that pod. The token endpoint writes an entry BEFORE it hands out a
token that would outlive it (write-ahead: killed in between, the entry is there and the token is
not), with `until = exp + horizon`, so a pod refreshing its token writes once per horizon, not
per token. Concurrent grants share one write (group commit). Every write is read-modify-write
with the resourceVersion (another replica makes it 409, we read again): no entry is lost.

The sweeper (primary only) revokes `pod:<uid>` on the signed revocation list (core.revocation,
the verifier refuses any token carrying that pod uid) with the entry's `until` as its expiry, then
drops the entry: killed in between, the next sweep revokes again (a no-op). A pod is gone when
its watch says DELETED, or when a read finds no pod of that name and uid (after a restart).
Entries past `until` are dropped without a revocation: their tokens have expired.
Size: about 80 bytes an entry, so ~12,000 pods with live tokens per MiB (documented bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from agenttoken import api
from agenttoken.controllers import podmetrics
from agenttoken.controllers.revocation import RevocationStore
from agenttoken.core.podtoken import PodIdentity, revoked_pod_id
from agenttoken.core.revocation import Revoked
from agenttoken.kube.adapter import Kube
from agenttoken.kube.podreviews import PodReviews
from agenttoken.kube.retry import retry_on_conflict

log = logging.getLogger(__name__)

LEDGER_CONFIGMAP = "agenttoken-pod-tokens"
LEDGER_KEY = "pods.json"
SWEEP = 10.0  # seconds between sweeps when no pod deletion wakes the sweeper

Entry = tuple[str, str, int]  # namespace, pod name, until


def parse(configmap: Mapping[str, Any] | None) -> dict[str, Entry]:
    raw = ((configmap or {}).get("data") or {}).get(LEDGER_KEY) or "{}"
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    out: dict[str, Entry] = {}
    for uid, value in (doc if isinstance(doc, dict) else {}).items():
        if isinstance(value, list) and len(value) == 3 and isinstance(value[2], int):
            out[str(uid)] = (str(value[0]), str(value[1]), value[2])
    return out


def merged(
    stored: Mapping[str, Entry], new: Mapping[str, Entry], drop: set[str], now: float
) -> dict[str, Entry]:
    """The stored entries with `new` added (the later `until` wins), `drop` and expired ones removed."""
    out = {uid: e for uid, e in stored.items() if e[2] > now and uid not in drop}
    for uid, entry in new.items():
        if uid not in out or out[uid][2] < entry[2]:
            out[uid] = entry
    return out


class PodLedger:
    def __init__(
        self,
        kube: Kube,
        reviews: PodReviews,
        namespace: str,
        revocations: RevocationStore,
        horizon: datetime.timedelta = datetime.timedelta(minutes=30),
    ) -> None:
        self.kube, self.reviews, self.namespace, self.revocations = kube, reviews, namespace, revocations
        self.horizon = horizon.total_seconds()
        self.entries: dict[str, Entry] = {}
        # The latest `until` this replica saw stored per pod (its own writes, the watch): a watch
        # event older than our own last write must not make grants write again.
        self._recorded: dict[str, int] = {}
        self._alive: set[str] = set()  # uids of ledger pods a watch or read saw existing
        self._gone: set[str] = set()  # uids of pods seen deleted (refused at once, revoked by the sweep)
        self._batch: dict[str, Entry] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._kick = asyncio.Event()
        self._sweep_now = asyncio.Event()

    # -- reading --

    def _observe(self, configmap: Mapping[str, Any] | None) -> None:
        self.entries = parse(configmap)
        for uid, entry in self.entries.items():
            self._recorded[uid] = max(self._recorded.get(uid, 0), entry[2])
        podmetrics.LEDGER_ENTRIES.set(len(self.entries))

    async def load(self) -> None:
        self._observe(await self.kube.get_configmap(self.namespace, LEDGER_CONFIGMAP))

    async def follow(self) -> None:
        async for configmap in self.kube.watch_configmap(self.namespace, LEDGER_CONFIGMAP):
            self._observe(configmap)

    def gone(self, uid: str) -> bool:
        return uid in self._gone

    def on_pod_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        uid = (body.get("metadata") or {}).get("uid", "")
        if event_type == "DELETED":
            self._alive.discard(uid)
            if uid in self.entries or uid in self._batch:
                self._gone.add(uid)
                self._sweep_now.set()
        elif uid in self.entries:
            self._alive.add(uid)

    # -- the token endpoint's write-ahead --

    async def ensure(self, who: PodIdentity, expires: float) -> None:
        """Return once the ledger holds this pod until `expires` or later."""
        if self._recorded.get(who.pod_uid, 0) >= expires:
            return
        entry = (who.namespace, who.pod_name, int(expires + self.horizon))
        queued = self._batch.get(who.pod_uid)
        if queued is None or queued[2] < entry[2]:
            self._batch[who.pod_uid] = entry
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._kick.set()
        await waiter

    async def run_writer(self) -> None:
        """One write for every grant that queued an entry meanwhile (group commit)."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            batch, waiters = self._batch, self._waiters
            self._batch, self._waiters = {}, []
            try:
                await retry_on_conflict(partial(self._write, batch, set()), what="pod token ledger")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pod token ledger: write failed (%s)", type(exc).__name__)
                for w in waiters:
                    if not w.done():
                        w.set_exception(RuntimeError("the pod token ledger could not be written"))
                continue
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def _write(self, new: Mapping[str, Entry], drop: set[str]) -> None:
        configmap = await self.kube.get_configmap(self.namespace, LEDGER_CONFIGMAP)
        entries = merged(parse(configmap), new, drop, time.time())
        metadata: dict[str, Any] = {
            "name": LEDGER_CONFIGMAP,
            "namespace": self.namespace,
            "labels": {api.LABEL_MANAGED_BY: api.OPERATOR_NAME},
        }
        if configmap is not None:
            metadata["resourceVersion"] = configmap["metadata"]["resourceVersion"]
        data = {
            LEDGER_KEY: json.dumps({u: list(e) for u, e in sorted(entries.items())}, separators=(",", ":"))
        }
        written = await self.kube.write_configmap(
            self.namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        )
        self._observe(written)

    # -- the sweeper (primary only) --

    async def _is_gone(self, uid: str, entry: Entry) -> bool:
        if uid in self._gone:
            return True
        if uid in self._alive:
            return False
        pod = await self.reviews.get_pod(entry[0], entry[1])
        if pod is not None and (pod.get("metadata") or {}).get("uid") == uid:
            self._alive.add(uid)
            return False
        return True

    async def sweep(self, may_write: Callable[[], bool]) -> int:
        """Revoke the tokens of pods that are gone, then drop their entries; the pods revoked."""
        now = time.time()
        # Pods dropped from the ledger are on the signed list now (or their tokens expired).
        self._gone &= set(self.entries) | set(self._batch)
        self._recorded = {uid: until for uid, until in self._recorded.items() if until > now}
        done: set[str] = {uid for uid, e in self.entries.items() if e[2] <= now}
        revoked: list[Revoked] = []
        for uid, entry in list(self.entries.items()):
            if uid not in done and await self._is_gone(uid, entry):
                revoked.append(
                    Revoked(
                        token_id=revoked_pod_id(uid),
                        expires_at=datetime.datetime.fromtimestamp(entry[2], datetime.UTC),
                        namespace=entry[0],
                        name=entry[1],
                        revoked_at=datetime.datetime.now(datetime.UTC),
                        reason="PodDeleted",
                    )
                )
        if not may_write() or not (revoked or done):
            return 0
        if revoked:
            await self.revocations.revoke(revoked, may_write)
            podmetrics.PODS_REVOKED.inc(len(revoked))
            log.info("revoked the tokens of %d deleted pod(s)", len(revoked))
        drop = done | {r.token_id.removeprefix("pod:") for r in revoked}
        await retry_on_conflict(partial(self._write, {}, drop), what="pod token ledger")
        self._gone -= drop
        return len(revoked)

    async def run_sweeper(self, may_write: Callable[[], bool]) -> None:
        while True:
            try:
                await self.sweep(may_write)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pod token ledger: sweep failed (%s); retrying", type(exc).__name__)
            self._sweep_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_now.wait(), SWEEP)
