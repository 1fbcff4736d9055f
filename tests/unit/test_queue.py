"""The work queue: the earliest due time wins, a key is never worked on twice at once (it runs
again right after), and a failed run is retried later."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from agenttoken.controllers.queue import RETRY_AFTER_ERROR, Key, WorkQueue

T0 = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
KEY = ("ns", "agent")
DEADLINE = 5.0


class Observed(WorkQueue):
    """Tells when the loop dispatched a key and when a key was scheduled for later."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dispatched = asyncio.Event()
        self.later: list[dt.datetime] = []
        self.scheduled_later = asyncio.Event()

    def _dispatch(self, key: Key) -> None:
        super()._dispatch(key)
        self.dispatched.set()

    def schedule(self, key: Key, when: dt.datetime) -> None:
        if when > self.clock():
            self.later.append(when)
            self.scheduled_later.set()
        super().schedule(key, when)


def test_the_earliest_time_wins() -> None:
    async def scenario() -> float:
        async def work(key: tuple[str, str]) -> None:
            return None

        queue = WorkQueue(work, lambda: T0, workers=1)
        queue.schedule(KEY, T0 + dt.timedelta(minutes=5))
        queue.schedule(KEY, T0 + dt.timedelta(minutes=1))
        queue.schedule(KEY, T0 + dt.timedelta(minutes=3))
        return queue.due[KEY]

    assert asyncio.run(scenario()) == (T0 + dt.timedelta(minutes=1)).timestamp()


def test_a_key_due_while_in_flight_runs_again_after_and_never_twice_at_once() -> None:
    async def scenario() -> tuple[int, int]:
        runs = concurrent = peak = 0
        started, release, second = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def work(key: tuple[str, str]) -> None:
            nonlocal runs, concurrent, peak
            runs += 1
            concurrent += 1
            peak = max(peak, concurrent)
            if runs == 1:
                started.set()
                await release.wait()
            else:
                second.set()
            concurrent -= 1

        queue = Observed(work, lambda: dt.datetime.now(dt.UTC), workers=4)
        await queue.start()
        queue.now(KEY)
        await asyncio.wait_for(started.wait(), DEADLINE)
        queue.dispatched.clear()
        queue.now(KEY)  # due again while the first run is in flight
        await asyncio.wait_for(queue.dispatched.wait(), DEADLINE)
        assert runs == 1, "not while the first run is in flight"
        release.set()
        await asyncio.wait_for(second.wait(), DEADLINE)
        await queue.stop()
        return runs, peak

    assert asyncio.run(scenario()) == (2, 1)


def test_a_failed_run_is_retried_later() -> None:
    async def scenario() -> float:
        now = dt.datetime.now(dt.UTC)
        failed = asyncio.Event()

        async def work(key: tuple[str, str]) -> None:
            failed.set()
            raise RuntimeError("boom")

        queue = Observed(work, lambda: now, workers=1)
        await queue.start()
        queue.now(KEY)
        await asyncio.wait_for(failed.wait(), DEADLINE)
        await asyncio.wait_for(queue.scheduled_later.wait(), DEADLINE)
        await queue.stop()
        return (queue.later[0] - now).total_seconds()

    assert asyncio.run(scenario()) == RETRY_AFTER_ERROR.total_seconds()


def test_keys_of_shards_this_replica_does_not_hold_are_never_scheduled() -> None:
    owned = {"mine"}

    async def scenario() -> dict[Key, float]:
        async def work(key: tuple[str, str]) -> None:
            return None

        queue = WorkQueue(work, lambda: T0, workers=1, accept=lambda key: key[0] in owned)
        queue.schedule(("mine", "a"), T0)
        queue.schedule(("theirs", "b"), T0)
        queue.now(("theirs", "c"))
        return queue.due

    assert list(asyncio.run(scenario())) == [("mine", "a")]
