"""controllers.leasethread: the Lease loop on its own thread; listeners still run on the main loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from agenttoken.controllers.leadership import Leadership
from agenttoken.controllers.leasethread import LeaseThread

from .test_leadership import FakeLeases


class FakeKube:
    closed = False

    async def close(self) -> None:
        self.closed = True


def test_the_loop_runs_on_its_own_thread_and_talks_to_the_main_loop_only_through_it() -> None:
    store, kube = FakeLeases(), FakeKube()
    loops: dict[str, Any] = {}

    def make(_: Any) -> Leadership:
        loops["made_on"] = threading.get_ident()
        return Leadership(store, identity="a", shards=2)  # type: ignore[arg-type]

    async def connect() -> Any:
        return kube

    async def go() -> None:
        main = threading.get_ident()
        thread = LeaseThread(make, connect)  # type: ignore[arg-type]
        leadership = await thread.start()
        assert loops["made_on"] != main
        assert leadership.held() == {0, 1}  # alone: both shards, after the first round
        heard: list[tuple[int, bool, int]] = []
        leadership.subscribe(lambda shard, held: heard.append((shard, held, threading.get_ident())))
        await thread.stop()
        assert store.holder(0) == store.holder(1) == ""  # handed back
        assert kube.closed
        await asyncio.sleep(0)  # the main loop runs what the thread handed it
        assert sorted(h[:2] for h in heard) == [(0, False), (1, False)]
        assert {h[2] for h in heard} == {main}

    asyncio.run(go())
