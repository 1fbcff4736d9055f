"""runtime.memory: freed heap goes back to the OS once the event stream is quiet, not during it."""

from __future__ import annotations

from agenttoken.runtime.memory import Trimmer, _glibc_trim


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def trimmer(clock: Clock, calls: list[int]) -> Trimmer:
    def trim() -> bool:
        calls.append(1)
        return True

    return Trimmer(trim, quiet=2.0, min_gap=5.0, min_interval=30.0, clock=clock)


def test_nothing_to_trim_before_any_work() -> None:
    clock, calls = Clock(), list[int]()
    t = trimmer(clock, calls)
    clock.now += 100
    assert not t.maybe_trim()
    assert calls == []


def test_trims_once_the_stream_pauses_not_during_a_burst() -> None:
    clock, calls = Clock(), list[int]()
    t = trimmer(clock, calls)
    for _ in range(10):
        t.busy()
        clock.now += 0.5
        assert not t.maybe_trim()  # events every 0.5 s for 5 s: still busy
    clock.now += 2.0
    assert t.maybe_trim()
    assert len(calls) == 1
    assert not t.maybe_trim()  # nothing new since


def test_pauses_trim_at_most_every_min_gap() -> None:
    clock, calls = Clock(), list[int]()
    t = trimmer(clock, calls)
    t.busy()
    clock.now += 6
    assert t.maybe_trim()
    t.busy()
    clock.now += 2.5
    assert not t.maybe_trim()  # paused, but 2.5 s after the last trim
    clock.now += 3
    assert t.maybe_trim()
    assert len(calls) == 2


def test_a_steady_trickle_still_trims_every_min_interval() -> None:
    clock, calls = Clock(), list[int]()
    t = trimmer(clock, calls)
    trims = 0
    for _ in range(120):  # an event every second for two minutes: never a 2 s pause
        t.busy()
        clock.now += 1.0
        trims += t.maybe_trim()
    assert trims == 4
    assert len(calls) == 4


def test_without_malloc_trim_nothing_happens() -> None:
    t = Trimmer(None, clock=Clock())
    t._trim = None  # as on musl or macOS
    t.busy()
    t.clock = lambda: 1e9
    assert not t.maybe_trim()


def test_glibc_trim_is_callable_here() -> None:
    trim = _glibc_trim()  # the image and this machine run glibc
    assert trim is not None
    trim()
