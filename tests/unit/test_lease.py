"""core.lease: client-go's leader election decisions, on an injected clock."""

from __future__ import annotations

import dataclasses
import datetime

import pytest

from agenttoken.core import lease
from agenttoken.core.lease import LeaseRecord, LeaseTimings, Observation, Step

T = LeaseTimings()  # 15 s / 10 s / 2 s
WALL = datetime.datetime(2026, 11, 30, 3, 0, tzinfo=datetime.UTC)


def held_by(holder: str, *, version: str = "1", transitions: int = 0, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, WALL, WALL, transitions, version)


def test_a_missing_lease_is_created_with_us_as_holder() -> None:
    p = lease.plan(Observation(None, 0.0), "a", 0.0, WALL, T)
    assert p.step is Step.CREATE
    assert p.record == LeaseRecord("a", 15, WALL, WALL, 0, None)


def test_our_own_lease_is_renewed_keeping_acquire_time_and_transitions() -> None:
    rec = dataclasses.replace(held_by("a", transitions=3), acquired=WALL - datetime.timedelta(hours=1))
    later = WALL + datetime.timedelta(seconds=2)
    p = lease.plan(Observation(rec, 0.0), "a", 2.0, later, T)
    assert p.step is Step.UPDATE
    assert p.record is not None
    assert p.record.renewed == later
    assert p.record.acquired == rec.acquired
    assert p.record.transitions == 3
    assert p.record.version == "1"  # the precondition: optimistic concurrency


def test_a_lease_held_by_another_is_left_alone_until_it_expired_on_our_clock() -> None:
    obs = Observation(held_by("b"), 100.0)
    assert lease.plan(obs, "a", 114.9, WALL, T).step is Step.WAIT
    p = lease.plan(obs, "a", 115.0, WALL, T)
    assert p.step is Step.UPDATE
    assert p.record is not None
    assert (p.record.holder, p.record.transitions, p.record.acquired, p.record.version) == ("a", 1, WALL, "1")


def test_expiry_counts_from_when_the_record_last_changed_not_from_its_renew_time() -> None:
    """The other host's renewTime may be skewed; only our observation of a change counts."""
    ancient = dataclasses.replace(held_by("b"), renewed=WALL - datetime.timedelta(days=1))
    obs = lease.observe(None, ancient, 50.0)
    assert lease.plan(obs, "a", 60.0, WALL, T).step is Step.WAIT


def test_observing_the_same_record_keeps_the_clock_a_change_restarts_it() -> None:
    first = lease.observe(None, held_by("b", version="1"), 10.0)
    assert lease.observe(first, held_by("b", version="1"), 20.0) is first
    renewed = lease.observe(first, held_by("b", version="2"), 20.0)
    assert renewed.seen_at == 20.0
    assert lease.plan(renewed, "a", 30.0, WALL, T).step is Step.WAIT  # 25 s after the first sight


def test_the_lease_duration_written_by_the_holder_decides_expiry() -> None:
    obs = Observation(held_by("b", duration=60), 0.0)
    assert lease.plan(obs, "a", 59.0, WALL, T).step is Step.WAIT
    assert lease.plan(obs, "a", 60.0, WALL, T).step is Step.UPDATE


def test_a_released_lease_is_taken_at_once_and_counts_a_transition() -> None:
    released = lease.release(Observation(held_by("b", transitions=4), 0.0), "b", WALL)
    assert released is not None
    assert (released.holder, released.duration, released.transitions) == ("", 1, 4)
    p = lease.plan(Observation(released, 5.0), "a", 5.0, WALL, T)
    assert p.step is Step.UPDATE
    assert p.record is not None
    assert (p.record.holder, p.record.transitions) == ("a", 5)


def test_only_the_holder_releases() -> None:
    assert lease.release(Observation(held_by("b"), 0.0), "a", WALL) is None
    assert lease.release(Observation(None, 0.0), "a", WALL) is None


def test_fencing_stops_at_the_renew_deadline_before_anyone_may_take_over() -> None:
    sent = 100.0
    assert lease.holds(sent, 109.9, T)
    assert not lease.holds(sent, 110.0, T)
    assert not lease.holds(None, 0.0, T)
    # Another candidate that saw our write no earlier than it was sent waits until sent + 15 s.
    other = Observation(held_by("a"), sent)
    assert lease.plan(other, "b", 110.0, WALL, T).step is Step.WAIT
    assert lease.plan(other, "b", sent + T.lease_duration, WALL, T).step is Step.UPDATE


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"),
    [(10, 10, 2), (15, 20, 2), (15, 2, 2), (15, 10, 0), (0, 10, 2)],
)
def test_timings_that_could_give_a_lease_two_holders_are_refused(
    duration: float, deadline: float, retry: float
) -> None:
    with pytest.raises(ValueError, match="must be"):
        LeaseTimings(duration, deadline, retry)


def test_record_round_trips_through_a_lease_body() -> None:
    rec = LeaseRecord("a", 15, WALL, WALL + datetime.timedelta(microseconds=5), 2, None)
    body = {"metadata": {"resourceVersion": "42"}, "spec": rec.spec()}
    assert body["spec"]["renewTime"] == "2026-11-30T03:00:00.000005Z"
    assert LeaseRecord.from_body(body) == dataclasses.replace(rec, version="42")
    assert lease.LeaseRecord.from_body({"metadata": {}}).holder == ""


def test_shard_of_is_stable_and_spreads() -> None:
    assert lease.shard_of("anything", 1) == 0
    # sha256 of the namespace: the same answer in every process and version.
    assert (
        lease.shard_of("team-a", 6)
        == int.from_bytes(__import__("hashlib").sha256(b"team-a").digest()[:8], "big") % 6
    )
    counts = [0] * 6
    for i in range(600):
        counts[lease.shard_of(f"ns-{i}", 6)] += 1
    assert min(counts) > 60


def test_member_lease_names_are_valid_names_for_any_identity() -> None:
    name = lease.member_lease_name("Host_Name/123:x")
    assert name.startswith("agenttoken-member-")
    assert name == name.lower()
    assert len(name) < 64


def shards_of(**holders: str | None) -> dict[int, Observation | None]:
    out: dict[int, Observation | None] = {}
    for key, holder in holders.items():
        shard = int(key[1:])
        out[shard] = None if holder is None else Observation(held_by(holder) if holder else held_by(""), 0.0)
    return out


def test_fair_share() -> None:
    assert [lease.fair_share(6, r) for r in (0, 1, 2, 3, 4, 6, 7)] == [6, 6, 3, 2, 2, 1, 1]


def test_a_lone_replica_takes_every_shard() -> None:
    b = lease.balance("a", [], shards_of(s0=None, s1=None, s2=None), 1, 1.0, T)
    assert sorted(b.take) == [0, 1, 2]
    assert b.release == ()


def test_a_replica_takes_vacant_shards_up_to_its_share_only() -> None:
    shards = shards_of(s0="a", s1="b", s2="", s3="", s4="b", s5="b")
    b = lease.balance("a", [0], shards, 2, 1.0, T)
    assert sorted(b.take) == [2, 3]  # share 3: two more, although b holds 3 already


def test_extras_are_handed_back_when_others_appear_shard_zero_last() -> None:
    shards = shards_of(s0="a", s1="a", s2="a", s3="a", s4="a", s5="a")
    b = lease.balance("a", range(6), shards, 3, 1.0, T)
    assert b.take == ()
    assert sorted(b.release) == [2, 3, 4, 5]


def test_a_dead_replicas_shards_are_taken_after_expiry() -> None:
    shards = shards_of(s0="a", s1="a", s2="a", s3="dead", s4="dead", s5="dead")
    assert lease.balance("a", [0, 1, 2], shards, 2, 14.0, T).take == ()
    # The dead replica's member Lease expired with its shards: one member left, share 6.
    assert sorted(lease.balance("a", [0, 1, 2], shards, 1, 15.0, T).take) == [3, 4, 5]


def test_a_shard_nobody_took_is_taken_past_the_share() -> None:
    shards = shards_of(s0="a", s1="a", s2="b", s3="b", s4="dead")
    shards[2] = shards[3] = Observation(held_by("b", version="9"), 29.0)  # b keeps renewing
    # Share ceil(5/3) = 2, held: the dead one's shard only once vacant for a further duration.
    assert lease.balance("a", [0, 1], shards, 3, 16.0, T).take == ()
    assert lease.balance("a", [0, 1], shards, 3, 30.0, T).take == (4,)


def test_a_shard_still_ours_on_the_lease_is_takeable_again_at_once() -> None:
    """After a missed renewal (fenced) or a restart with the same identity."""
    shards = shards_of(s0="a")
    assert lease.balance("a", [], shards, 1, 1.0, T).take == (0,)
    p = lease.plan(Observation(held_by("a", transitions=2), 0.0), "a", 1.0, WALL, T)
    assert p.record is not None
    assert p.record.transitions == 2


def test_candidates_prefer_different_shards() -> None:
    shards = shards_of(s0=None, s1=None, s2=None, s3=None, s4=None, s5=None)
    firsts = {lease.balance(f"replica-{i}", [], shards, 3, 0.0, T).take for i in range(6)}
    assert len(firsts) > 1


def test_live_members_counts_held_unexpired_member_leases() -> None:
    observed = [
        Observation(held_by("x"), 0.0),
        Observation(held_by("y"), -20.0),  # expired
        Observation(held_by(""), 0.0),  # released
        Observation(None, 0.0),
    ]
    assert lease.live_members(observed, 1.0) == 1
