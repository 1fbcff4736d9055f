"""kube.watchlist: the informers are told to stream the initial state only when the apiserver ends a
probe watch with the initial-events-end bookmark; anything else keeps the plain listing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from agenttoken.core.watchstate import INITIAL_EVENTS_END
from agenttoken.kube.watchlist import supports_watch_list


class Response:
    def __init__(self, status: int, events: list[dict[str, Any]], hang: bool = False) -> None:
        self.status, self.events, self.hang, self.released = status, events, hang, False

    @property
    def content(self) -> AsyncIterator[bytes]:
        async def lines() -> AsyncIterator[bytes]:
            for event in self.events:
                yield json.dumps(event).encode() + b"\n"
            if self.hang:
                await asyncio.sleep(3600)

        return lines()

    def release(self) -> None:
        self.released = True


class Core:
    def __init__(self, outcome: Response | Exception) -> None:
        self.outcome = outcome
        self.params: dict[str, Any] = {}

    async def list_namespaced_config_map(self, namespace: str, **params: Any) -> Response:
        self.params = params
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class Kube:
    def __init__(self, outcome: Response | Exception) -> None:
        self.core = Core(outcome)


def probe(outcome: Response | Exception, within: float = 5.0) -> bool:
    return asyncio.run(supports_watch_list(Kube(outcome), "agenttoken-system", within))  # type: ignore[arg-type]


BOOKMARK = {
    "type": "BOOKMARK",
    "object": {"metadata": {"resourceVersion": "12", "annotations": {INITIAL_EVENTS_END: "true"}}},
}


def test_streams_when_the_initial_events_end_bookmark_comes() -> None:
    response = Response(200, [BOOKMARK], hang=True)
    assert probe(response)
    assert response.released


def test_asks_for_initial_events_with_the_required_match() -> None:
    kube = Kube(Response(200, [BOOKMARK]))
    asyncio.run(supports_watch_list(kube, "ns"))  # type: ignore[arg-type]
    params = kube.core.params
    assert params["watch"]
    assert params["send_initial_events"]
    assert params["allow_watch_bookmarks"]
    assert params["resource_version_match"] == "NotOlderThan"


def test_lists_when_refused() -> None:
    assert not probe(RuntimeError("422: sendInitialEvents is forbidden"))
    assert not probe(Response(422, []))
    assert not probe(Response(200, [{"type": "ERROR", "object": {"code": 400}}]))


def test_lists_when_the_stream_ends_or_stalls_without_the_bookmark() -> None:
    plain = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}
    assert not probe(Response(200, [plain]))
    assert not probe(Response(200, [plain], hang=True), within=0.2)
