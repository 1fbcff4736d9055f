"""Events bounded in a burst: alike Events within the window become one that names and counts them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest

from agenttoken.core import eventbatch
from agenttoken.kube.events import EventRecorder
from agenttoken.runtime import handlers


def involved(name: str, namespace: str = "ns") -> dict[str, Any]:
    return {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "namespace": namespace,
        "name": name,
    }


def test_a_lone_event_is_posted_unchanged() -> None:
    batch = eventbatch.start(involved("a"), "token t1 issued")
    assert eventbatch.summary(batch, "TokenIssued") == (involved("a"), "token t1 issued", 1)


def test_many_alike_name_a_few_and_count_the_rest() -> None:
    batch = eventbatch.start(involved("t0"), "token x issued")
    for i in range(1, 25):
        batch.add(involved(f"t{i}"))
    who, message, count = eventbatch.summary(batch, "TokenIssued")
    assert who == involved("t0")
    assert count == 25
    assert message.startswith("TokenIssued for 25 AgentTokens: t0, t1,")
    assert "t9 and 15 more" in message
    assert "t10" not in message
    assert message.endswith("the first: token x issued")


class FakeKube:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str, int]] = []

    async def emit_event(
        self, involved: dict[str, Any], *, warning: bool, reason: str, message: str, count: int = 1
    ) -> None:
        self.posted.append((involved["namespace"], involved["name"], reason, count))


def test_a_burst_costs_one_event_per_namespace_and_reason() -> None:
    async def run() -> list[tuple[str, str, str, int]]:
        kube = FakeKube()
        recorder = EventRecorder(kube, window=0.05)  # type: ignore[arg-type]
        for i in range(100):
            recorder.post(involved(f"t{i}"), warning=False, reason="TokenIssued", message="m")
        recorder.post(involved("x", "other"), warning=False, reason="TokenIssued", message="m")
        recorder.post(involved("t0"), warning=True, reason="IssueFailed", message="m")
        await asyncio.sleep(0.2)
        recorder.post(involved("t0"), warning=False, reason="TokenIssued", message="m")  # a new window
        await recorder.flush()  # posts what is pending without waiting for its window
        return kube.posted

    assert sorted(asyncio.run(run())) == [
        ("ns", "t0", "IssueFailed", 1),
        ("ns", "t0", "TokenIssued", 1),
        ("ns", "t0", "TokenIssued", 100),
        ("other", "x", "TokenIssued", 1),
    ]


class ClosingKube(FakeKube):
    """Like aiohttp's session: posting after close raises RuntimeError("Session is closed")."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    async def emit_event(
        self, involved: dict[str, Any], *, warning: bool, reason: str, message: str, count: int = 1
    ) -> None:
        if self.closed:
            raise RuntimeError("Session is closed")
        await super().emit_event(involved, warning=warning, reason=reason, message=message, count=count)

    async def close(self) -> None:
        self.closed = True


def test_shutdown_posts_pending_events_before_the_session_closes_and_drops_later_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> tuple[list[tuple[str, str, str, int]], list[object]]:
        kube = ClosingKube()
        failures: list[object] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: failures.append(context))
        recorder = EventRecorder(kube, window=0.05)  # type: ignore[arg-type]
        memo = kopf.Memo(events=recorder, kube=kube)
        recorder.post(involved("t0"), warning=False, reason="TokenIssued", message="m")
        recorder.post(involved("lease", "ops"), warning=False, reason="LeaseLost", message="m")
        await handlers.cleanup(memo=memo)  # as kopf calls it at exit: no controller, no leadership
        assert kube.closed
        recorder.post(involved("t1"), warning=False, reason="TokenIssued", message="m")  # too late
        assert not recorder._tasks, "nothing left to post on the closed session"
        return kube.posted, failures

    with caplog.at_level(logging.DEBUG, logger="agenttoken.kube.events"):
        posted, failures = asyncio.run(run())
    assert sorted(posted) == [("ns", "t0", "TokenIssued", 1), ("ops", "lease", "LeaseLost", 1)]
    assert failures == []
    assert "not posting event TokenIssued for AgentToken ns/t1: shutting down" in caplog.text
