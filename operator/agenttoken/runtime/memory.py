"""Giving freed heap back to the operating system.

glibc's allocator keeps memory a process has freed: after kopf's initial listing of 10,000
AgentTokens and their Secrets the parsed responses are garbage, but the pages stay in the
process (measured: 446 MB right after a restart against 266 MB steady before this). glibc's
`malloc_trim(0)` returns every free page of every arena to the kernel (madvise), documented for
exactly this. It runs once the watch events have paused for a moment after a busy spell (the
end of the initial listing, of a burst of new tokens), and at least every `min_interval` while
any event came in (renewals trickle in without pause at 10,000 tokens). It is cheap: below a
millisecond here (Python's own small-object arenas are unmapped by Python itself; what glibc
keeps is the larger blocks: response buffers, dict tables, long strings).

Wired in runtime.watches: each AgentToken and Secret event counts as work.

Where the C library is not glibc (musl, macOS) there is no `malloc_trim` and nothing happens.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Trim = Callable[[], bool]


def _glibc_trim() -> Trim | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        fn = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: bool(fn(0))


class Trimmer:
    """Counts work (`busy()`, one call per watch event); trims after some work once it has paused
    for `quiet` seconds (at most every `min_gap`), or `min_interval` after the last trim."""

    def __init__(
        self,
        trim: Trim | None = None,
        *,
        quiet: float = 2.0,
        min_gap: float = 5.0,
        min_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._trim = trim if trim is not None else _glibc_trim()
        self.quiet = quiet
        self.min_gap = min_gap
        self.min_interval = min_interval
        self.clock = clock
        self._work = 0  # events since the last trim
        self._last_work = clock()
        self._last_trim = self._last_work
        self.trims = 0

    def busy(self) -> None:
        self._work += 1
        self._last_work = self.clock()

    def maybe_trim(self) -> bool:
        now = self.clock()
        if self._trim is None or self._work == 0:
            return False
        since_trim = now - self._last_trim
        paused = now - self._last_work >= self.quiet and since_trim >= self.min_gap
        if not paused and since_trim < self.min_interval:
            return False
        self._work, self._last_trim = 0, now
        self.trims += 1
        return self._trim()

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.maybe_trim()
            except Exception as exc:  # never let memory housekeeping take the operator down
                log.warning("malloc_trim failed: %s", exc)
