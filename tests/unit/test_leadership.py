"""controllers.leadership: the Lease loop against an in-memory Lease store with the apiserver's
optimistic concurrency (resourceVersion), on a fake clock."""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

from agenttoken.controllers.leadership import Leadership
from agenttoken.core.lease import LeaseRecord, Observation, member_lease_name, shard_lease_name, shard_of
from agenttoken.kube.errors import KubeError


class FakeLeases:
    """The Lease API as the apiserver answers it: 409 on a stale resourceVersion or a duplicate create."""

    namespace = "agenttoken-system"

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.versions = itertools.count(1)
        self.down = False
        self.writes = 0

    def _check(self) -> None:
        if self.down:
            raise KubeError(503, "apiserver unavailable")

    async def get(self, name: str) -> dict[str, Any] | None:
        self._check()
        body = self.objects.get(name)
        return copy.deepcopy(body) if body else None

    async def list(self, role: str) -> list[dict[str, Any]]:
        self._check()
        return [copy.deepcopy(b) for b in self.objects.values() if b["metadata"]["labels"]["role"] == role]

    def _store(self, name: str, role: str, record: LeaseRecord) -> dict[str, Any]:
        self.writes += 1
        body = {
            "metadata": {
                "name": name,
                "resourceVersion": str(next(self.versions)),
                "labels": {"role": role},
                "annotations": {"agenttoken.dev/shards": str(record.shards)} if record.shards else {},
            },
            "spec": record.spec(),
        }
        self.objects[name] = body
        return copy.deepcopy(body)

    async def create(self, name: str, role: str, record: LeaseRecord) -> dict[str, Any]:
        self._check()
        if name in self.objects:
            raise KubeError(409, "already exists")
        return self._store(name, role, record)

    async def update(self, name: str, role: str, record: LeaseRecord) -> dict[str, Any]:
        self._check()
        current = self.objects.get(name)
        if current is None:
            raise KubeError(404, "not found")
        if current["metadata"]["resourceVersion"] != record.version:
            raise KubeError(409, "the object has been modified")
        return self._store(name, role, record)

    async def watch(self, role: str | None, name: str | None = None) -> Any:
        await asyncio.Event().wait()  # a watch that never reports (tests feed _watch themselves)
        yield None

    async def delete(self, name: str, version: str | None) -> None:
        self.objects.pop(name, None)

    def holder(self, shard: int) -> str:
        return str(self.objects[shard_lease_name(shard)]["spec"]["holderIdentity"] or "")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(store: FakeLeases, clock: Clock, identity: str, shards: int = 1) -> Leadership:
    return Leadership(store, identity=identity, shards=shards, clock=clock)  # type: ignore[arg-type]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def rounds(clock: Clock, *electors: Leadership, seconds: float, step: float = 2.0) -> None:
    """Every elector runs a round every `step` seconds of fake time."""

    async def go() -> None:
        end = clock.now + seconds
        while clock.now < end:
            for e in electors:
                await e.round()
            clock.now += step

    run(go())


def test_exactly_one_of_two_candidates_leads_and_the_other_waits() -> None:
    store, clock = FakeLeases(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    transitions: list[tuple[str, int, bool]] = []
    a.subscribe(lambda s, held: transitions.append(("a", s, held)))
    b.subscribe(lambda s, held: transitions.append(("b", s, held)))
    rounds(clock, a, b, seconds=60)
    assert a.is_primary()
    assert not b.is_primary()
    assert a.owns("any")
    assert not b.owns("any")
    assert store.holder(0) == "a"
    assert transitions == [("a", 0, True)]
    assert store.objects[shard_lease_name(0)]["spec"]["leaseTransitions"] == 0


def test_a_dead_leaders_lease_is_taken_after_it_expired_and_it_stopped_before() -> None:
    store, clock = FakeLeases(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    rounds(clock, a, b, seconds=10)
    died = clock.now - 2.0  # the last round ran then
    # "a" stops renewing (killed, or its loop hangs): it fences itself at the renew deadline...
    stopped_at = taken_at = None
    while taken_at is None:
        clock.now += 0.5
        if stopped_at is None and not a.is_primary():
            stopped_at = clock.now
        run(b.round())
        if b.is_primary():
            taken_at = clock.now
    assert stopped_at is not None
    assert stopped_at - died <= 10.5
    # ...and "b" takes over only after the lease duration, strictly later.
    assert 15 <= taken_at - died <= 17.5
    assert stopped_at < taken_at
    assert store.objects[shard_lease_name(0)]["spec"]["leaseTransitions"] == 1


def test_a_leader_that_cannot_renew_stops_at_the_deadline_even_while_it_keeps_trying() -> None:
    store, clock = FakeLeases(), Clock()
    a = elector(store, clock, "a")
    rounds(clock, a, seconds=4)
    assert a.is_primary()
    store.down = True
    lost: list[int] = []
    a.subscribe(lambda s, held: lost.append(s) if not held else None)
    rounds(clock, a, seconds=6)  # the last renewal was sent 8 s ago
    assert a.is_primary()  # still within the deadline
    rounds(clock, a, seconds=4)
    assert not a.is_primary()
    assert lost == [0]
    store.down = False
    rounds(clock, a, seconds=2)
    assert a.is_primary()  # nobody took it meanwhile: renewed, same holder, no transition
    assert store.objects[shard_lease_name(0)]["spec"]["leaseTransitions"] == 0


def test_a_renewal_after_the_deadline_reports_the_gap_so_refused_work_is_queued_again() -> None:
    """The loop stalled past the renew deadline (no round ran), then renews before anyone could
    take over: owns() said no meanwhile, so the listeners must hear a loss and a gain."""
    store, clock = FakeLeases(), Clock()
    a = elector(store, clock, "a")
    rounds(clock, a, seconds=4)
    heard: list[tuple[int, bool]] = []
    a.subscribe(lambda s, held: heard.append((s, held)))
    clock.now += 11  # past the renew deadline, before the lease duration
    assert not a.is_primary()
    run(a.round())
    assert a.is_primary()
    assert heard == [(0, False), (0, True)]
    assert store.objects[shard_lease_name(0)]["spec"]["leaseTransitions"] == 0  # still ours
    rounds(clock, a, seconds=4)
    assert heard == [(0, False), (0, True)]  # in-time renewals report nothing


class SlowLeases(FakeLeases):
    """Renewals whose response takes `lag` seconds of the fake clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock, self.lag = clock, 0.0

    async def update(self, name: str, role: str, record: LeaseRecord) -> dict[str, Any]:
        written = await super().update(name, role, record)
        self.clock.now += self.lag
        return written


def test_a_renewal_sent_in_time_that_returns_after_the_deadline_reports_the_gap() -> None:
    """Sent just before the deadline, answered after it: owns() said no while it was in flight,
    so refused schedules are lost unless the listeners hear a loss and a gain."""
    clock = Clock()
    store = SlowLeases(clock)
    a = elector(store, clock, "a")
    rounds(clock, a, seconds=4)
    heard: list[tuple[int, bool]] = []
    a.subscribe(lambda s, held: heard.append((s, held)))
    clock.now += 7.5  # the loop stalled: the next renewal goes out 9.5 s after the last one (sent 2 s before `rounds` ended)
    store.lag = 1.0  # and its answer comes 0.5 s past the deadline
    run(a.round())
    assert a.is_primary()
    assert heard == [(0, False), (0, True)]


def test_stop_hands_the_lease_over_at_once() -> None:
    store, clock = FakeLeases(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    rounds(clock, a, b, seconds=6)
    run(a.stop())
    assert not a.is_primary()
    assert store.holder(0) == ""
    rounds(clock, b, seconds=2)
    assert b.is_primary()


def test_a_restart_with_the_same_identity_takes_its_lease_back_at_once() -> None:
    store, clock = FakeLeases(), Clock()
    rounds(clock, elector(store, clock, "pod-0"), seconds=4)
    again = elector(store, clock, "pod-0")
    rounds(clock, again, seconds=1)
    assert again.is_primary()


def test_without_election_every_shard_is_held() -> None:
    solo = Leadership(None, identity="x", shards=3)
    run(solo.start())
    assert solo.held() == {0, 1, 2}
    assert solo.is_primary()
    assert solo.owns("anything")


def test_shards_spread_over_replicas_and_a_dead_ones_are_taken_over() -> None:
    store, clock = FakeLeases(), Clock()
    r = [elector(store, clock, f"r{i}", shards=6) for i in range(3)]
    rounds(clock, r[0], seconds=4)
    assert r[0].held() == set(range(6))
    rounds(clock, *r, seconds=20)
    assert sorted(len(e.held()) for e in r) == [2, 2, 2]
    assert set().union(*(e.held() for e in r)) == set(range(6))
    # Every namespace is owned by exactly one replica.
    for ns in (f"ns-{i}" for i in range(50)):
        assert sum(e.owns(ns) for e in r) == 1
        assert r[next(i for i, e in enumerate(r) if shard_of(ns, 6) in e.held())].owns(ns)
    # r2 dies: within lease duration + a few rounds its shards are served again, 3 and 3.
    rounds(clock, r[0], r[1], seconds=22)
    assert sorted(len(e.held()) for e in r[:2]) == [3, 3]
    assert set().union(*(e.held() for e in r[:2])) == set(range(6))
    assert not r[2].held()  # fenced on its own clock


def test_no_shard_is_ever_held_by_two_replicas() -> None:
    store, clock = FakeLeases(), Clock()
    r = [elector(store, clock, f"r{i}", shards=4) for i in range(3)]

    async def go() -> None:
        for step in range(200):
            for i, e in enumerate(r):
                if not (i == 1 and 50 <= step < 80):  # r1 stalls for 30 s, then comes back
                    await e.round()
                held = [s for x in r for s in x.held()]
                assert len(held) == len(set(held)), (step, [x.held() for x in r])
            clock.now += 1.0

    run(go())


def test_a_standby_wakes_exactly_when_the_lease_expires_and_polls_only_without_a_watch() -> None:
    store, clock = FakeLeases(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    rounds(clock, a, b, seconds=4)
    clock.now -= 2.0  # right after the last round
    assert a._next_round() == 2.0  # the holder: every retry period
    assert b._next_round() == 0.5  # below its share, no watch: a read every quarter period
    b._watching = True
    assert b._next_round() == 2.0  # the watch tells it of every change: no polling
    seen = b._observed[0].seen_at
    clock.now = b._last_round = seen + 14.8  # a round just ran
    assert abs(b._next_round() - 0.201) < 1e-6  # exactly at expiry (+1 ms of timer slack)
    clock.now = b._last_round = seen + 15.1  # the round at expiry ran (and, say, lost a race)
    assert b._next_round() == 2.0  # no busy loop on a Lease that stays expired
    # The watch shows a release: a round at once, not a period later.
    rounds(clock, a, seconds=2)  # a renews
    b._last_round = clock.now
    clock.now += 0.3
    run(a.stop())
    released = LeaseRecord.from_body(store.objects[shard_lease_name(0)])
    assert released.holder == ""
    b._observed[0] = Observation(released, clock.now)
    assert b._next_round() <= 0.001


def test_the_watch_restarts_a_standbys_expiry_clock_and_leaves_held_shards_to_our_writes() -> None:
    store, clock = FakeLeases(), Clock()
    a, b = elector(store, clock, "a", shards=2), elector(store, clock, "b", shards=2)
    rounds(clock, a, seconds=2)  # a holds both shards
    rounds(clock, b, seconds=2)
    assert not b.held()
    clock.now += 1.0
    rounds(clock, a, seconds=1)  # a renews both
    renewed = [
        copy.deepcopy(store.objects[n]) for n in (*map(shard_lease_name, (0, 1)), member_lease_name("a"))
    ]

    async def events() -> Any:
        yield None  # a broken stream first: not trusted until the next body
        assert not b._watching
        for body in renewed:
            yield body

    b.leases.watch = lambda role, name=None: events()  # type: ignore[union-attr]
    b._renewed[1] = clock.now  # as if b held shard 1: its own writes, not the watch, say what it is
    before = b._observed[1]
    run(b._watch())
    assert b._watching
    assert b._observed[0].record == LeaseRecord.from_body(renewed[0])
    assert b._observed[0].seen_at == clock.now  # the expiry counts from when the change was seen
    assert b._observed[1] is before
    assert b._members[member_lease_name("a")].seen_at == clock.now  # member Leases too (the share)


def test_a_replica_at_its_share_wakes_when_a_dead_replicas_member_lease_expires() -> None:
    """Its share rises then (fewer live replicas): waiting for the next period would add up to 2 s."""
    store, clock = FakeLeases(), Clock()
    r = [elector(store, clock, f"r{i}", shards=3) for i in range(3)]
    rounds(clock, *r, seconds=20)
    assert sorted(len(e.held()) for e in r) == [1, 1, 1]
    rounds(clock, r[0], r[1], seconds=4)  # r2 died
    seen = r[0]._members[member_lease_name("r2")].seen_at
    clock.now = r[0]._last_round = seen + 14.7
    r[0]._watching = True
    assert abs(r[0]._next_round() - 0.301) < 1e-6


def test_replicas_disagreeing_on_the_shard_count_never_both_own_a_namespace() -> None:
    """A rolling update from 1 to 3 shards: the new replicas wait for the old one to go."""
    store, clock = FakeLeases(), Clock()
    old = elector(store, clock, "old", shards=1)
    new = [elector(store, clock, f"new{i}", shards=3) for i in range(2)]
    rounds(clock, old, seconds=4)
    rounds(clock, old, *new, seconds=20)
    assert old.held() == {0}
    assert not new[0].held()
    assert not new[1].held()
    run(old.stop())  # the old pod terminates: releases
    rounds(clock, *new, seconds=10)
    assert sorted(len(n.held()) for n in new) == [1, 2]
    assert store.objects[shard_lease_name(0)]["metadata"]["annotations"] == {"agenttoken.dev/shards": "3"}
