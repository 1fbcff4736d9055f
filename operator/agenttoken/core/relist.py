"""What a relist no longer reports (pure, no I/O; the caller passes the time).

kopf's watcher lists again when a watch cannot continue (410 Gone: its resourceVersion was
compacted away; 429 after its retries) and reports each listed object as an event of type None.
What left the watch in the gap (deleted, or taken out of our label selector by a foreign write)
is simply absent from that list, and kopf never says so. client-go's informers do: Replace()
turns it into a DeletedFinalStateUnknown. A cache fed from kopf would keep a stale copy, and
whoever trusts it would never hear of the change (a relabelled Secret: its owner until its next
renewal).

Only for the kinds kopf still watches (workloads): the AgentTokens and managed Secrets come from
our own informers (kube.informer), whose relist diff is exact (core.watchstate).

`Relists` gives back client-go's semantics as far as kopf allows. Events of type None mark a
listing in progress. kopf tells handlers nothing when it ends, so a quiet period after the last
one is taken as its end (`deadline`). Keys then in the cache but reported neither by the listing
nor by any watch event since it began are suspects (`over`): the caller reads each one fresh.
The read is authoritative, so a wrong guess about the end costs one read, never a wrong
decision; and a watch event after the listing (a Secret created after the list's snapshot) counts
as reported.

Scopes: one watch stream lists one scope (a kind, cluster-wide, or in one namespace: kopf
watches per namespace when the operator is limited to namespaces). A listing only vouches for
the scopes it reported something in. The first listing of a scope is the initial one: the cache
held only what this process read or wrote itself, like an informer's empty store before its
first Replace, so it costs nothing. Blind spot: a relist that reports nothing at all in a scope
(every object of it gone in the gap) is not noticed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# Longer than the gaps between the events of one listing (kopf yields a LIST response in one go;
# each object's handler runs after kopf's 0.1 s batch window), shorter than anyone should wait.
QUIET = 5.0


class Relists(Generic[K]):
    def __init__(self, scope: Callable[[K], Hashable], quiet: float = QUIET) -> None:
        self.scope = scope
        self.quiet = quiet
        self._listed_before: set[Hashable] = set()  # scopes whose initial listing is over
        self._scopes: set[Hashable] = set()  # scopes the current listing reported something in
        self._reported: set[K] = set()  # keys reported since the current listing began
        self._last: float | None = None  # when the current listing's latest object came
        # The listing that ended last, to go on with if it turns out not to have ended.
        self._ended: float | None = None
        self._previous: tuple[set[Hashable], set[K], set[Hashable]] = (set(), set(), set())

    def event(self, event_type: str | None, key: K, now: float) -> None:
        """Every watch event of the kind, in the order handled; type None is a listed object."""
        if event_type is None:
            if self._last is None:
                self._begin(now)
            self._last = now
            self._scopes.add(self.scope(key))
        if self._last is not None:
            self._reported.add(key)

    def _begin(self, now: float) -> None:
        scopes, reported, listed_before = self._previous
        if self._ended is not None and now - self._ended < self.quiet:
            # Listed objects again right after the end: that listing's events only paused longer
            # than `quiet` (a busy event loop). It goes on, as it was: what it reported stays
            # reported, and a scope it listed first stays in its initial listing. Without this,
            # the rest of a 10k initial listing would count as a relist missing the first part.
            self._scopes, self._reported, self._listed_before = scopes, reported, listed_before
        self._previous = (set(), set(), set(self._listed_before))

    def reported(self, key: K) -> bool:
        """Whether the listing under way reported `key` (a suspect named too early, no more)."""
        return self._last is not None and key in self._reported

    @property
    def deadline(self) -> float | None:
        """When the current listing counts as over; None: no listing in progress."""
        return None if self._last is None else self._last + self.quiet

    def over(self, now: float, cached: Iterable[K]) -> list[K] | None:
        """None while no listing is in progress or it may still go on. Else it is over: the keys
        of `cached` it should have reported but did not (none for a scope's initial listing)."""
        if self._last is None or now < self._last + self.quiet:
            return None
        vouched = self._scopes & self._listed_before
        suspects = [k for k in cached if k not in self._reported and self.scope(k) in vouched]
        self._previous = (self._scopes, self._reported, self._previous[2])
        self._ended = now
        self._listed_before |= self._scopes
        self._scopes, self._reported, self._last = set(), set(), None
        return suspects
