"""Keeps the signed revocation list in the cluster, beside the JWKS (the operator's namespace).

Objects (all ConfigMaps in the operator's namespace):

* `agenttoken-revocations-<i>` for i in 0..PARTS-1: one signed part each (key
  `revocations-<i>.jws`, a compact JWS; see core.revocation). Verifiers mount them (a projected
  volume of all parts gives one directory) or fetch `/revocations.json` from any replica, which
  serves these objects exactly as stored: a replica never serves a list it signed in memory.
* `agenttoken-revocations`: the unsigned *pending* document (key `pending.json`). `agenttoken
  revoke` has no signing key, so it appends there; the operator folds pending entries into the
  signed parts and removes them from pending, only after the signed write succeeded. Verifiers
  never read it: an unsigned list could be forged by anyone between them and the cluster.

Every write is read-modify-write with the object's resourceVersion (a second replica or the CLI
makes it 409 and we read again), so no entry is ever lost. The re-sign loop (`run`) signs every
part again before half its validity is gone and folds pending entries; it takes `may_write` (the
leader check, HA-INTERFACE.md) and asks it before every write. Revocations caused by an
AgentToken (`revoke`) are written by whichever replica reconciles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from agenttoken import api
from agenttoken.controllers import metrics
from agenttoken.core import revocation
from agenttoken.core.keys import SigningKey
from agenttoken.core.revocation import PARTS, ListPart, RevocationListFull, Revoked
from agenttoken.kube.adapter import Kube
from agenttoken.kube.retry import retry_on_conflict

log = logging.getLogger(__name__)

PENDING_CONFIGMAP = "agenttoken-revocations"
PENDING_KEY = "pending.json"
LEGACY_KEY = "revoked.json"  # the unsigned list of earlier versions: folded in like pending entries
# How often the re-sign loop looks (a write happens only when a part is due or pending has entries).
TICK = datetime.timedelta(seconds=15)


def part_configmap(part: int) -> str:
    return f"agenttoken-revocations-{part}"


def part_key(part: int) -> str:
    return f"revocations-{part}.jws"


PART_CONFIGMAPS = tuple(part_configmap(i) for i in range(PARTS))


def pending_entries(configmap: Mapping[str, Any] | None) -> tuple[Revoked, ...]:
    data = (configmap or {}).get("data") or {}
    return revocation.add(
        revocation.from_json(data.get(PENDING_KEY, "")), revocation.from_json(data.get(LEGACY_KEY, ""))
    )


def next_pending(
    configmap: Mapping[str, Any] | None, new: Iterable[Revoked], now: datetime.datetime, namespace: str
) -> tuple[dict[str, Any], tuple[Revoked, ...]]:
    """One read-modify-write step of the pending document (`agenttoken revoke`): the stored
    entries plus `new`, expired ones pruned; with the stored resourceVersion (409 if it moved)."""
    entries = revocation.prune(revocation.add(pending_entries(configmap), new), now)
    return _pending_body(configmap, entries, namespace), entries


def _pending_body(
    configmap: Mapping[str, Any] | None, entries: Iterable[Revoked], namespace: str
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": PENDING_CONFIGMAP,
        "namespace": namespace,
        "labels": {api.LABEL_MANAGED_BY: api.OPERATOR_NAME},
    }
    version = ((configmap or {}).get("metadata") or {}).get("resourceVersion")
    if version is not None:
        metadata["resourceVersion"] = version
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {PENDING_KEY: revocation.to_json(entries)},
    }


def stored_part(configmap: Mapping[str, Any] | None, part: int) -> tuple[str | None, ListPart | None]:
    """The signed document of a part ConfigMap and what it says (None, None when absent)."""
    signed = ((configmap or {}).get("data") or {}).get(part_key(part))
    if not isinstance(signed, str):
        return None, None
    return signed, revocation.read_part(signed)


class RevocationStore:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        clock: Callable[[], datetime.datetime],
        *,
        issuer: str,
        signer: Callable[[], SigningKey],
        validity: datetime.timedelta = revocation.VALIDITY,
        max_part_bytes: int = revocation.MAX_PART_BYTES,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.clock = clock
        self.issuer = issuer
        self.signer = signer
        self.validity = validity
        self.max_part_bytes = max_part_bytes
        metrics.REVOCATION_LIST_LIMIT_BYTES.set(max_part_bytes)
        # The signed parts as stored in the cluster (what every replica serves), and what they say.
        self.signed: dict[int, str] = {}
        self.parts: dict[int, ListPart] = {}
        self._locks = [asyncio.Lock() for _ in range(PARTS)]
        # Revocations waiting for the next write of their part (group commit, `_commit`).
        self._queued: list[list[tuple[list[Revoked], Callable[[], bool], asyncio.Future[bool]]]] = [
            [] for _ in range(PARTS)
        ]
        self._pending_seen = asyncio.Event()

    # -- reading --

    async def load(self) -> None:
        for i in range(PARTS):
            self.observe_part(i, await self.kube.get_configmap(self.namespace, part_configmap(i)))

    def observe_part(self, part: int, configmap: Mapping[str, Any] | None) -> None:
        """Take a part as stored in the cluster; never go back to an older one (a watch event can
        arrive after the response of our own, newer write)."""
        signed, parsed = stored_part(configmap, part)
        if signed is None or parsed is None:
            return
        known = self.parts.get(part)
        if known is None or parsed.seq >= known.seq:
            self.signed[part], self.parts[part] = signed, parsed
            metrics.observe_revocation_part(part, len(parsed.revoked), len(signed), parsed.next_update)

    def document(self) -> dict[str, Any]:
        """What `/revocations.json` serves: the stored signed parts, in order."""
        return {"lists": [self.signed[i] for i in sorted(self.signed)]}

    def is_revoked(self, token_id: str) -> bool:
        part = self.parts.get(revocation.part_of(token_id))
        return part is not None and token_id in part.revoked

    @property
    def size(self) -> int:
        return sum(len(p.revoked) for p in self.parts.values())

    # -- writing --

    async def revoke(self, new: Iterable[Revoked], may_write: Callable[[], bool] = lambda: True) -> None:
        """Put `new` on the signed list; RevocationListFull (nothing of that part written) when a
        part would outgrow its bound: refused and counted, never dropped silently."""
        by_part: dict[int, list[Revoked]] = {}
        for entry in new:
            by_part.setdefault(revocation.part_of(entry.token_id), []).append(entry)
        for part, entries in sorted(by_part.items()):
            await self._commit(part, entries, may_write)

    async def _commit(self, part: int, entries: list[Revoked], may_write: Callable[[], bool]) -> None:
        """Group commit: revocations that arrive while a write of their part is under way go into
        the next write together. Each write is a read, a signature and a write, one at a time per
        part; a namespace of 600 AgentTokens deleted at once cost 600 of them in a row, and the
        finalizers waiting for them held every reconcile slot (new tokens waited a minute).
        Only callers with the same `may_write` share a write: one caller's "not now" (e.g. the
        pod sweeper's leader check) must never turn into another's silently unwritten revocation."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queued[part].append((entries, may_write, done))
        async with self._locks[part]:
            batch, self._queued[part] = self._queued[part], []  # empty: an earlier holder wrote ours
            groups: dict[int, list[tuple[list[Revoked], Callable[[], bool], asyncio.Future[bool]]]] = {}
            for queued in batch:
                groups.setdefault(id(queued[1]), []).append(queued)
            for group in groups.values():
                try:
                    written = await self._write(part, [e for q, _, _ in group for e in q], group[0][1])
                except Exception as exc:
                    for _, _, waiter in group:
                        waiter.set_exception(exc)
                except BaseException:
                    cancelled = RuntimeError("revocation write cancelled")
                    for _, _, waiter in (q for g in groups.values() for q in g):
                        if not waiter.done():
                            waiter.set_exception(cancelled)
                    done.exception()  # ours is re-raised as the cancellation itself
                    raise
                else:
                    for _, _, waiter in group:
                        waiter.set_result(written)
        await done

    async def _write_part(self, part: int, entries: list[Revoked], may_write: Callable[[], bool]) -> bool:
        async with self._locks[part]:
            return await self._write(part, entries, may_write)

    async def _write(self, part: int, entries: list[Revoked], may_write: Callable[[], bool]) -> bool:
        """One read-modify-write of the part, again on 409; the caller holds the part's lock."""
        return await retry_on_conflict(
            partial(self._sign_and_write, part, entries, may_write), what=f"revocation list part {part}"
        )

    async def _sign_and_write(self, part: int, entries: list[Revoked], may_write: Callable[[], bool]) -> bool:
        """One read-modify-write of a part (409 when another writer came first). False when
        nothing was written (`may_write` said no, or nothing to do)."""
        now = self.clock()
        configmap = await self.kube.get_configmap(self.namespace, part_configmap(part))
        self.observe_part(part, configmap)
        key = self.signer()
        _, current = stored_part(configmap, part)
        if (
            current is not None
            and all(e.token_id in current.revoked for e in entries)
            and not revocation.needs_signing(current, key.kid, now, self.validity)
        ):
            # Nothing to add and still current: another replica signed it (or folded the same
            # pending entries) meanwhile.
            return False
        base = current if current is not None and current.parts == PARTS else revocation.empty_part(part)
        updated = revocation.next_part(base, entries, now, self.validity)
        try:
            signed = revocation.sign_part(updated, key, self.issuer, limit=self.max_part_bytes)
        except RevocationListFull:
            metrics.REVOCATION_LIST_REFUSED.inc(len(entries))
            raise
        if not may_write():
            return False
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": part_configmap(part),
                "namespace": self.namespace,
                "labels": {api.LABEL_MANAGED_BY: api.OPERATOR_NAME},
                **(
                    {"resourceVersion": configmap["metadata"]["resourceVersion"]}
                    if configmap is not None
                    else {}
                ),
            },
            "data": {part_key(part): signed},
        }
        self.observe_part(part, await self.kube.write_configmap(self.namespace, body))
        return True

    async def resign(self, may_write: Callable[[], bool] = lambda: True) -> int:
        """Sign every part that is missing, due, or signed by an older key; the parts written.
        Also what an emergency key revocation calls (the new key signs at once)."""
        written = 0
        kid = self.signer().kid
        for part in range(PARTS):
            if not may_write():
                break
            if revocation.needs_signing(self.parts.get(part), kid, self.clock(), self.validity):
                written += await self._write_part(part, [], may_write)
        return written

    async def fold_pending(self, may_write: Callable[[], bool] = lambda: True) -> int:
        """Move pending entries (from `agenttoken revoke`) into the signed parts; the number moved.
        They leave pending only after the signed write: a crash in between leaves them pending,
        and folding them again is a no-op. A refused (full) part keeps its entries pending."""
        configmap = await self.kube.get_configmap(self.namespace, PENDING_CONFIGMAP)
        entries = revocation.prune(pending_entries(configmap), self.clock())
        if not entries or not may_write():
            return 0
        folded: list[Revoked] = []
        by_part: dict[int, list[Revoked]] = {}
        for entry in entries:
            by_part.setdefault(revocation.part_of(entry.token_id), []).append(entry)
        for part, part_entries in sorted(by_part.items()):
            try:
                await self._write_part(part, part_entries, may_write)
            except RevocationListFull as exc:
                log.error("%s; %d pending revocation(s) stay pending", exc, len(part_entries))
                continue
            if self.parts.get(part) is not None and all(
                e.token_id in self.parts[part].revoked for e in part_entries
            ):
                folded += part_entries
        if folded and may_write():
            await retry_on_conflict(
                partial(self._clear_pending, {e.token_id for e in folded}), what="pending revocations"
            )
        return len(folded)

    async def _clear_pending(self, done: set[str]) -> None:
        configmap = await self.kube.get_configmap(self.namespace, PENDING_CONFIGMAP)
        if configmap is None:
            return
        keep = [e for e in pending_entries(configmap) if e.token_id not in done]
        body = _pending_body(configmap, revocation.prune(keep, self.clock()), self.namespace)
        await self.kube.write_configmap(self.namespace, body)

    # -- loops --

    async def run(self, may_write: Callable[[], bool] = lambda: True) -> None:
        """The cluster-wide writer: fold pending entries as soon as they appear, and sign every
        part again before it is half way to its next update. Errors are logged and retried."""
        while True:
            try:
                await self.fold_pending(may_write)
                await self.resign(may_write)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("revocation list: signing or folding failed; retrying in %ss", TICK.seconds)
            self._pending_seen.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pending_seen.wait(), TICK.total_seconds())

    async def follow(self) -> None:
        """Keep the served parts equal to the cluster's; wake `run` when pending entries appear
        or a part was deleted."""

        async def watch_part(part: int) -> None:
            async for configmap in self.kube.watch_configmap(self.namespace, part_configmap(part)):
                if configmap is None:
                    # Deleted (by hand?): stop serving it and let `run` sign it again now rather
                    # than when the part we knew would have been due.
                    self.signed.pop(part, None)
                    self.parts.pop(part, None)
                    self._pending_seen.set()
                else:
                    self.observe_part(part, configmap)

        async def watch_pending() -> None:
            async for configmap in self.kube.watch_configmap(self.namespace, PENDING_CONFIGMAP):
                if pending_entries(configmap):
                    self._pending_seen.set()

        await asyncio.gather(watch_pending(), *(watch_part(i) for i in range(PARTS)))
