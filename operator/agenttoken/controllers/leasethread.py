"""controllers.leadership's loop on its own thread and event loop.

Why: a takeover is timed to the millisecond (the Lease's expiry on our clock, core.lease), but the
operator's main event loop can be busy for hundreds of milliseconds at a time (a start-up listing,
a burst of watch events, a loaded machine), and everything on it, the Lease watch and its timer
included, waits its turn: measured, up to 0.7 s after expiry on the 2-core test machine. On its own
loop the Lease calls only compete for the GIL (handed over every 5 ms). They get their own API
client (an aiohttp session belongs to one loop); what the loop tells the rest of the operator
(shard listeners, Events) is handed to the main loop in order. Fencing is unchanged: `owns()` and
`is_primary()` read the renewal times from any thread, on the clock alone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agenttoken.controllers.leadership import Leadership
from agenttoken.kube.adapter import Kube

T = TypeVar("T")


class LeaseThread:
    def __init__(
        self, make: Callable[[Kube], Leadership], connect: Callable[[], Awaitable[Kube]] = Kube.connect
    ):
        self.make = make  # builds the Leadership on the thread's loop, with the thread's client
        self.connect = connect
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agenttoken-leases", daemon=True)
        self._kube: Kube | None = None
        self.leadership: Leadership | None = None

    async def _on_thread(self, work: Awaitable[T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))  # type: ignore[arg-type]

    async def start(self) -> Leadership:
        """The first round done (whether we lead decides what startup may do), then it runs on."""
        main = asyncio.get_running_loop()
        self._thread.start()

        async def begin() -> Leadership:
            self._kube = await self.connect()
            leadership = self.make(self._kube)
            leadership.deliver = main.call_soon_threadsafe
            await leadership.start()
            return leadership

        self.leadership = await self._on_thread(begin())
        return self.leadership

    async def stop(self) -> None:
        """Hand the Leases back (Leadership.stop), then end the thread."""

        async def end() -> None:
            try:
                if self.leadership is not None:
                    await self.leadership.stop()
            finally:
                if self._kube is not None:
                    await self._kube.close()

        try:
            if self._thread.is_alive():
                await self._on_thread(end())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10)
            if not self._thread.is_alive():
                self._loop.close()
