"""Which shards this replica serves: the Lease loop around core.lease (decisions) and kube.leases (I/O).

Every `retry_period` one round: read the shard Leases (a GET for one shard, a LIST for more),
renew what we hold, take vacant shards up to our fair share, hand back extras; with more than one
shard also renew our member Lease, which is how replicas count each other (a replica holding no
shard is otherwise invisible). `owns(namespace)` and `is_primary()` answer from the clock alone
(core.lease.holds): once the renew deadline passes without a renewal they turn False, even if
this loop is stuck in a request, before any other replica may take the shard.

Listeners hear every change of what we hold (the controller queues a gained shard's AgentTokens
from its warm cache, drops a lost shard's from its schedule). A log line, an Event on the Lease
and `agenttoken_lease_transitions_total` record each change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import logging
import time
from collections.abc import Callable

import aiohttp

from agenttoken.controllers import metrics
from agenttoken.core import lease as core
from agenttoken.core.lease import LeaseRecord, LeaseTimings, Observation, Step
from agenttoken.kube.errors import KubeError
from agenttoken.kube.events import EventRecorder
from agenttoken.kube.leases import Leases

log = logging.getLogger(__name__)

Listener = Callable[[int, bool], None]  # (shard, held now)
# What a Lease call may fail with: the apiserver's answer, a timeout, a broken connection.
_IO_ERRORS = (KubeError, TimeoutError, aiohttp.ClientError, OSError)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _shard_number(name: str, shards: int) -> int | None:
    suffix = name.removeprefix(core.SHARD_LEASE_PREFIX)
    return int(suffix) if suffix != name and suffix.isdigit() and int(suffix) < shards else None


class Leadership:
    def __init__(
        self,
        leases: Leases | None,
        *,
        identity: str,
        shards: int = 1,
        timings: LeaseTimings | None = None,
        events: EventRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        """`leases` None: no election (`--no-leader-elect`): every shard is ours, always."""
        self.leases = leases
        self.identity = identity
        self.shards = max(1, shards)
        self.timings = timings or LeaseTimings()
        self.events = events
        self.clock = clock
        self.wall = wall
        self._renewed: dict[int, float] = {}  # shard -> when our last successful write was sent
        self._observed: dict[int, Observation] = {}
        self._members: dict[str, Observation] = {}  # member Lease name -> observation
        self._member_name = core.member_lease_name(identity)
        self._reported: set[int] = set()
        self._share = self.shards  # our fair share, from the last round
        self._member_renewed = float("-inf")
        self._listeners: list[Listener] = []
        # How listeners and Events reach the rest of the operator: directly, or handed to the
        # main event loop when this loop runs on its own thread (controllers.leasethread).
        self.deliver: Callable[[Callable[[], None]], object] = lambda call: call()
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._watching = False  # the shard Lease watch is streaming (see _watch)
        self._wake = asyncio.Event()  # a watch event: when to run the next round may have changed
        self._last_round = self._last_read = float("-inf")
        metrics.LEADER.set_function(lambda: 1.0 if self.is_primary() else 0.0)
        metrics.SHARDS_HELD.set_function(lambda: float(len(self.held())))

    # -- what we may do --

    @property
    def enabled(self) -> bool:
        return self.leases is not None

    def held(self) -> set[int]:
        if self.leases is None:
            return set(range(self.shards))
        now = self.clock()  # a copy: the loop may run on another thread (copying is atomic)
        return {s for s, sent in self._renewed.copy().items() if core.holds(sent, now, self.timings)}

    def holds(self, shard: int) -> bool:
        if self.leases is None:
            return True
        return core.holds(self._renewed.get(shard), self.clock(), self.timings)

    def owns(self, namespace: str) -> bool:
        """Per-AgentToken work in `namespace` (reconcile, Secret and status writes, rollouts)."""
        return self.holds(core.shard_of(namespace, self.shards))

    def is_primary(self) -> bool:
        """Shard 0's holder runs the cluster-wide singletons (key rotation, revocation list)."""
        return self.holds(0)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- the loop --

    async def start(self) -> None:
        """One round before returning, so startup knows whether it leads; then every retry period."""
        if self.leases is None:
            self._report()
            return
        await self.round()
        self._watcher = asyncio.create_task(self._watch(), name="agenttoken-lease-watch")
        self._task = asyncio.create_task(self._run(), name="agenttoken-leadership")

    async def stop(self) -> None:
        """Hand back what we hold (the next replica takes it at once, not after expiry)."""
        for task in (self._task, self._watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.leases is None:
            return
        for shard in sorted(self.held()):
            await self._release(shard)
        self._report()
        member = self._members.get(self._member_name)
        if self.shards > 1 and member is not None and member.record is not None:
            with contextlib.suppress(*_IO_ERRORS):
                async with asyncio.timeout(self.timings.retry_period):
                    await self.leases.delete(self._member_name, member.record.version)

    async def _run(self) -> None:
        while True:
            await self._sleep()
            try:
                await self.round()
            except Exception:  # never let the loop die: a dead loop means losing every shard
                log.exception("leader election round failed")

    async def _sleep(self) -> None:
        """Until the next round is due; a watch event may bring that moment forward."""
        while (left := self._next_round()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()

    def _next_round(self) -> float:
        """Seconds until the next round: a retry period after the last one, and exactly when a
        Lease of another replica expires on our clock (+1 ms: asyncio may wake a timer early by
        its clock resolution) or at once when the watch shows one released. A shard Lease's
        expiry is a takeover; a member Lease's raises our fair share (a dead replica's member
        Lease expires just before its shards: it renews it first). So a standby takes over at
        lease expiry plus one write, not plus up to a period. Below our share without a working
        watch it also reads every quarter period: a dead holder's last renewal is then seen
        within that (its expiry counts from then)."""
        now = self.clock()
        period = self.timings.retry_period
        others = [obs for s, obs in self._observed.items() if s not in self._renewed]
        others += [obs for name, obs in self._members.items() if name != self._member_name]
        expiries = [
            since - now + 0.001
            for obs in others
            if (since := core.vacant_since(obs)) is not None and since > self._last_round
        ]
        below = len(self.held()) < self._share
        poll = [self._last_round + period / 4 - now] if below and not self._watching else []
        return min([self._last_round + period - now, *poll, *expiries])

    async def _watch(self) -> None:
        """Observe the shard Leases as they change (client-go's observedTime is when *we* saw a
        change, so seeing it milliseconds rather than a poll later moves the expiry we wait for
        that much closer to the holder's real last renewal). Shards we hold are left to our own
        writes: a watch event can lag our latest write, and an older record would spoil the
        precondition of the next renewal."""
        assert self.leases is not None
        # One shard: just its Lease (RBAC names it); more: the shard and member Leases, by label.
        one = ("shard", core.shard_lease_name(0)) if self.shards == 1 else (None, None)
        async for body in self.leases.watch(*one):
            self._watching = body is not None
            if body is not None:
                self._seen(str(body["metadata"]["name"]), LeaseRecord.from_body(body))
            self._wake.set()

    def _seen(self, name: str, record: LeaseRecord) -> None:
        now = self.clock()
        if name.startswith(core.MEMBER_LEASE_PREFIX):
            if name != self._member_name:  # ours: our own writes say what it is
                self._members[name] = core.observe(self._members.get(name), record, now)
        elif (shard := _shard_number(name, self.shards)) is not None and shard not in self._renewed:
            self._observed[shard] = core.observe(self._observed.get(shard), record, now)

    async def round(self) -> None:
        # With the watch streaming our observations are current: a round woken at a Lease's
        # expiry goes straight to the write (its resourceVersion precondition catches a renewal
        # the watch has not brought yet). A GET/LIST still runs every retry period at least,
        # in case a watch stalls without breaking.
        if not self._watching or self.clock() - self._last_read >= self.timings.retry_period:
            await self._read()
        self._last_round = self.clock()
        members = await self._renew_member() if self.shards > 1 else 1
        self._share = core.fair_share(self.shards, members)
        for shard in sorted(self._renewed):
            if self.clock() - self._renewed[shard] >= self.timings.retry_period * 0.9:
                await self._write(shard)  # renew (or learn that we lost it)
        wanted = core.balance(
            self.identity,
            self.held(),
            {s: self._observed.get(s) for s in range(self.shards)},
            members,
            self.clock(),
            self.timings,
        )
        if core.disagrees(self._observed.get(0), self.identity, self.shards, self.clock()):
            log.warning("shard 0's holder runs with another --shards: holding nothing until it is gone")
            wanted = core.Balance((), tuple(self.held()))
        for shard in wanted.release:
            await self._release(shard)
        for shard in wanted.take:
            await self._write(shard)
        self._report()

    async def _read(self) -> None:
        assert self.leases is not None
        try:
            async with asyncio.timeout(self.timings.retry_period):
                if self.shards == 1:
                    found = await self.leases.get(core.shard_lease_name(0))
                    bodies = [found] if found is not None else []
                else:
                    bodies = await self.leases.list("shard")
        except _IO_ERRORS as exc:
            log.warning("reading the shard Leases failed: %s", exc)
            return
        by_name = {str(b["metadata"]["name"]): b for b in bodies}
        now = self._last_read = self.clock()
        for shard in range(self.shards):
            body = by_name.get(core.shard_lease_name(shard))
            record = LeaseRecord.from_body(body) if body is not None else None
            self._observed[shard] = core.observe(self._observed.get(shard), record, now)

    async def _renew_member(self) -> int:
        """Renew our member Lease and count the live replicas (ourselves included)."""
        assert self.leases is not None
        now = self.clock()
        try:
            async with asyncio.timeout(self.timings.retry_period):
                bodies = await self.leases.list("member")
            seen = {str(b["metadata"]["name"]): LeaseRecord.from_body(b) for b in bodies}
            self._members = {
                name: core.observe(self._members.get(name), seen.get(name), now)
                for name in {*seen, self._member_name}
            }
            if now - self._member_renewed >= self.timings.retry_period * 0.9:
                written = await self._put(self._member_name, "member", self._members[self._member_name])
                if written is not None:
                    self._member_renewed, self._members[self._member_name] = written
        except _IO_ERRORS as exc:
            log.warning("renewing this replica's member Lease failed: %s", exc)
        others = [o for name, o in self._members.items() if name != self._member_name]
        return 1 + core.live_members(others, self.clock())

    async def _put(self, name: str, role: str, obs: Observation) -> tuple[float, Observation] | None:
        """Write what core.lease.plan says; (send time, new observation) if it was written."""
        assert self.leases is not None
        p = core.plan(obs, self.identity, self.clock(), self.wall(), self.timings)
        if p.step is Step.WAIT or p.record is None:
            return None
        record = dataclasses.replace(p.record, shards=self.shards if role == "shard" else None)
        sent = self.clock()
        async with asyncio.timeout(self.timings.retry_period):
            if p.step is Step.CREATE:
                body = await self.leases.create(name, role, record)
            else:
                body = await self.leases.update(name, role, record)
        return sent, core.observe(obs, LeaseRecord.from_body(body), self.clock())

    async def _write(self, shard: int) -> None:
        """Renew or take one shard. A conflict means another replica wrote first: read again
        next round (if it took the shard from us, we stop at once rather than at the deadline)."""
        name = core.shard_lease_name(shard)
        obs = self._observed.get(shard) or Observation(None, self.clock())
        try:
            written = await self._put(name, "shard", obs)
        except KubeError as exc:
            if exc.conflict and shard in self._renewed:
                await self._check_taken(shard)
            elif not exc.conflict:
                log.warning("writing Lease %s failed: %s", name, exc)
            return
        except _IO_ERRORS as exc:
            log.warning("writing Lease %s failed: %s", name, exc)
            return
        if written is None:
            return
        before = self._renewed.get(shard)
        if (
            before is not None
            and shard in self._reported
            and not core.holds(before, self.clock(), self.timings)
        ):
            # The deadline passed before this renewal's answer came (a stalled loop, slow
            # requests; sent in time is not enough: owns() reads the last *recorded* renewal):
            # owns() said no meanwhile, so events, passes and schedules for the shard were
            # refused. Report the loss, and the gain at the round's end queues the shard again.
            self._renewed.pop(shard)
            self._report()
        self._renewed[shard], self._observed[shard] = written

    async def _check_taken(self, shard: int) -> None:
        assert self.leases is not None
        with contextlib.suppress(*_IO_ERRORS):
            async with asyncio.timeout(self.timings.retry_period):
                body = await self.leases.get(core.shard_lease_name(shard))
            record = LeaseRecord.from_body(body) if body is not None else None
            self._observed[shard] = core.observe(self._observed.get(shard), record, self.clock())
            if record is None or record.holder != self.identity:
                self._renewed.pop(shard, None)

    async def _release(self, shard: int) -> None:
        """Stop first (no write of ours may follow), then clear the holder on the Lease."""
        assert self.leases is not None
        self._renewed.pop(shard, None)
        self._report()
        obs = self._observed.get(shard)
        record = core.release(obs, self.identity, self.wall()) if obs is not None else None
        if record is None:
            return
        try:
            async with asyncio.timeout(self.timings.retry_period):
                body = await self.leases.update(core.shard_lease_name(shard), "shard", record)
            self._observed[shard] = core.observe(obs, LeaseRecord.from_body(body), self.clock())
        except _IO_ERRORS as exc:
            log.warning("releasing Lease %s failed (it expires instead): %s", shard, exc)

    # -- transitions --

    def _report(self) -> None:
        now = self.held()
        for shard in sorted(now ^ self._reported):
            gained = shard in now
            if not gained:
                self._renewed.pop(shard, None)  # fenced: a candidate again from the next round
            self._transition(shard, gained)
        self._reported = now

    def _transition(self, shard: int, gained: bool) -> None:
        name = core.shard_lease_name(shard)
        what = "acquired" if gained else "lost"
        role = " (primary: key rotation and the revocation list)" if shard == 0 else ""
        log.info("%s %s Lease %s%s; holding %d of %d shards", self.identity, what, name, role,
                 len(self.held()), self.shards)  # fmt: skip
        metrics.LEASE_TRANSITIONS.labels(shard=str(shard)).inc()
        if self.events is not None and self.leases is not None:
            involved = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "namespace": self.leases.namespace,
                "name": name,
            }
            reason = "LeaseAcquired" if gained else "LeaseLost"
            message = f"{self.identity} {what} {name}"
            self.deliver(
                functools.partial(self.events.post, involved, warning=False, reason=reason, message=message)
            )
        for listener in list(self._listeners):
            self.deliver(functools.partial(listener, shard, gained))
