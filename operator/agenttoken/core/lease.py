"""Leader election on coordination.k8s.io/v1 Leases: the decisions, pure, with client-go's semantics.

Why hand-written: kubernetes_asyncio ships a port of the Python client's `leaderelection`, but it
elects once and returns when leadership is lost (no re-acquire, no release on shutdown), never
counts leaseTransitions, writes local naive time with a "Z" suffix (wrong outside UTC), awaits
its API calls without a bound (a hung renewal keeps a holder believing it leads after another
may have taken over: no fencing), and drives one lock per elector where sharding needs M. What
is decided here follows client-go's `tryAcquireOrRenew` (tools/leaderelection); the loop that
reads, writes and sleeps is controllers.leadership, the API calls kube.leases.

Two clocks, like client-go: expiry is judged on this process's monotonic clock from when a
record was *observed* to change (`Observation.seen_at`), never by comparing our wall clock with
the renewTime another host wrote, so clock skew between hosts cannot hand a lease to two holders.
Wall-clock times are only written for people (kubectl) to read.

Fencing: a holder counts itself holding only until `renewed_at + renew_deadline`, where
`renewed_at` is when its last successful write was *sent*. Another candidate may take the lease
only after seeing that record unchanged for `lease_duration` on its own clock, and it cannot
have seen it before it was sent; so the holder stops `lease_duration - renew_deadline` (5 s by
default) before anyone else may start, whatever state its requests are in.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from agenttoken.core.times import parse_time

SHARD_LEASE_PREFIX = "agenttoken-shard-"
ANN_SHARDS = "agenttoken.dev/shards"
MEMBER_LEASE_PREFIX = "agenttoken-member-"


def shard_of(namespace: str, shards: int) -> int:
    """The shard of every AgentToken in `namespace`: stable across processes and versions
    (sha256, never Python's salted hash()), so every replica agrees without talking."""
    if shards <= 1:
        return 0
    return int.from_bytes(hashlib.sha256(namespace.encode()).digest()[:8], "big") % shards


def shard_lease_name(shard: int) -> str:
    return f"{SHARD_LEASE_PREFIX}{shard}"


def member_lease_name(identity: str) -> str:
    """Identities may hold characters a name may not (e.g. from --identity): hashed."""
    return MEMBER_LEASE_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LeaseTimings:
    """client-go's defaults for controllers (kube-controller-manager uses the same)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        # client-go's NewLeaderElector checks, so a flag cannot configure a lease that two
        # holders could believe they hold.
        if min(self.lease_duration, self.renew_deadline, self.retry_period) <= 0:
            raise ValueError("lease duration, renew deadline and retry period must be positive")
        if self.lease_duration <= self.renew_deadline:
            raise ValueError("the lease duration must be longer than the renew deadline")
        if self.renew_deadline <= 1.2 * self.retry_period:
            raise ValueError("the renew deadline must be longer than 1.2 x the retry period")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str  # "" once released
    duration: int  # leaseDurationSeconds
    acquired: datetime.datetime | None
    renewed: datetime.datetime | None
    transitions: int
    version: str | None = None  # metadata.resourceVersion: the precondition of our next write
    shards: int | None = None  # the writer's --shards (annotation ANN_SHARDS), see `disagrees`

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> LeaseRecord:
        spec = body.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=int(spec.get("leaseDurationSeconds") or 0),
            acquired=parse_time(spec.get("acquireTime")),
            renewed=parse_time(spec.get("renewTime")),
            transitions=int(spec.get("leaseTransitions") or 0),
            version=(body.get("metadata") or {}).get("resourceVersion"),
            shards=_int_or_none(((body.get("metadata") or {}).get("annotations") or {}).get(ANN_SHARDS)),
        )

    def spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder or None,
            "leaseDurationSeconds": self.duration,
            "acquireTime": micro_time(self.acquired),
            "renewTime": micro_time(self.renewed),
            "leaseTransitions": self.transitions,
        }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def disagrees(shard_zero: Observation | None, identity: str, shards: int, now: float) -> bool:
    """Shard 0 is live and held by a replica running with another --shards (a rolling update that
    changes it): its namespaces map to other shards than ours, so both could own a namespace.
    Shard 0's holder decides; everyone else holds nothing until it is gone (it releases on
    shutdown, or its Lease expires)."""
    rec = shard_zero.record if shard_zero is not None else None
    return (
        shard_zero is not None
        and rec is not None
        and rec.holder not in ("", identity)
        and rec.shards not in (None, shards)
        and not is_vacant(shard_zero, now)
    )


def micro_time(value: datetime.datetime | None) -> str | None:
    """A Lease's MicroTime (RFC 3339 with microseconds, UTC)."""
    if value is None:
        return None
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Observation:
    """What this process has seen of one Lease: the record, and when (monotonic) it last changed."""

    record: LeaseRecord | None
    seen_at: float


def observe(previous: Observation | None, record: LeaseRecord | None, now: float) -> Observation:
    """client-go's observedRecord/observedTime: the clock restarts only when the record changes
    (any field, the resourceVersion included), never on a mere re-read."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def vacant_since(obs: Observation) -> float | None:
    """Since when (monotonic) anyone may take the lease; None: it does not exist yet."""
    if obs.record is None:
        return None
    if not obs.record.holder:
        return obs.seen_at
    return obs.seen_at + obs.record.duration


def is_vacant(obs: Observation, now: float) -> bool:
    since = vacant_since(obs)
    return since is None or now >= since


class Step(Enum):
    CREATE = "create"
    UPDATE = "update"  # with the observed resourceVersion as precondition
    WAIT = "wait"  # held by another and not expired


@dataclass(frozen=True)
class Plan:
    step: Step
    record: LeaseRecord | None  # what to write (CREATE/UPDATE)


def plan(obs: Observation, identity: str, now: float, wall: datetime.datetime, timings: LeaseTimings) -> Plan:
    """One tryAcquireOrRenew: create a missing lease, renew our own, take a vacant one, or wait."""
    duration = math.ceil(timings.lease_duration)
    rec = obs.record
    if rec is None:
        return Plan(Step.CREATE, LeaseRecord(identity, duration, wall, wall, 0))
    if rec.holder == identity:
        return Plan(Step.UPDATE, dataclasses.replace(rec, duration=duration, renewed=wall))
    if not is_vacant(obs, now):
        return Plan(Step.WAIT, None)
    # A new holder: acquireTime now, one more transition (client-go counts from any other holder,
    # the released "" included).
    return Plan(Step.UPDATE, LeaseRecord(identity, duration, wall, wall, rec.transitions + 1, rec.version))


def release(obs: Observation, identity: str, wall: datetime.datetime) -> LeaseRecord | None:
    """client-go's release: holder cleared, duration 1 s, so the next candidate takes it at once."""
    rec = obs.record
    if rec is None or rec.holder != identity:
        return None
    return dataclasses.replace(rec, holder="", duration=1, acquired=wall, renewed=wall)


def holds(renewed_at: float | None, now: float, timings: LeaseTimings) -> bool:
    """Fencing: ours only while the renew deadline since the last successful renewal's send
    time has not passed (see the module docstring)."""
    return renewed_at is not None and now < renewed_at + timings.renew_deadline


# -- sharding: M shard Leases over R replicas --


def fair_share(shards: int, members: int) -> int:
    return math.ceil(shards / max(1, members))


def live_members(observed: Iterable[Observation], now: float) -> int:
    """Replicas whose member Lease is held and not expired (ours included)."""
    return sum(1 for obs in observed if obs.record is not None and not is_vacant(obs, now))


@dataclass(frozen=True)
class Balance:
    take: tuple[int, ...]
    release: tuple[int, ...]


def _takeable(obs: Observation | None, identity: str, now: float) -> bool:
    """Missing, vacant, or still ours on the Lease (we stopped after a missed deadline, or a
    restart with a stable identity): plan() renews the latter without a transition."""
    return obs is None or is_vacant(obs, now) or (obs.record is not None and obs.record.holder == identity)


def balance(
    identity: str,
    held: Iterable[int],
    shards: Mapping[int, Observation | None],
    members: int,
    now: float,
    timings: LeaseTimings,
) -> Balance:
    """Which shards to try to take and which to hand back, aiming at the fair share.

    Vacant shards are taken up to the share, in an order that differs per replica (rendezvous
    hash), so candidates starting together mostly go for different shards. A shard vacant for a
    whole lease duration more is taken even past the share: serving it beats balance (the
    replica that should take it may be gone). Extras above the share are handed back, shard 0
    (the primary's) last, so the cluster-wide singletons move as rarely as possible.
    """
    mine = set(held)
    target = fair_share(len(shards), members)
    extra = len(mine) - target
    if extra > 0:
        return Balance((), tuple(sorted(mine, reverse=True)[:extra]))
    vacant = [s for s, obs in shards.items() if s not in mine and _takeable(obs, identity, now)]
    vacant.sort(key=lambda s: hashlib.sha256(f"{identity}/{s}".encode()).digest())
    take = vacant[: max(0, -extra)]
    for s in vacant[len(take) :]:
        obs = shards[s]
        since = vacant_since(obs) if obs is not None else None
        if since is not None and now >= since + timings.lease_duration:
            take.append(s)  # orphaned
    return Balance(tuple(take), ())
