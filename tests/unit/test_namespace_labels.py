"""The controller's namespace label cache (fed by a namespaces watch in cluster-wide mode)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, cast

from agenttoken.controllers.agenttoken import Controller, ControllerOptions
from agenttoken.controllers.keys import KeyManager
from agenttoken.core.model import parse_spec
from agenttoken.kube.adapter import Kube

T0 = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)


class CountingKube:
    """Only what the label lookup touches: a namespace GET, counted."""

    def __init__(self) -> None:
        self.gets = 0

    async def get_namespace(self, name: str) -> dict[str, Any]:
        self.gets += 1
        return {"metadata": {"name": name, "labels": {"from": "get"}}}


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


class NoKeys:
    namespace = "agenttoken-system"

    def subscribe_revoked(self, listener: object) -> None:
        pass


def controller(kube: CountingKube) -> Controller:
    return Controller(
        cast(Kube, kube),
        cast(KeyManager, NoKeys()),
        ControllerOptions(issuer_url="https://i"),
        clock=lambda: T0,
    )


def test_watched_labels_are_used_and_changes_recheck_the_namespace() -> None:
    kube = CountingKube()
    ctl = controller(kube)
    ctl._index_for_workloads(("team-a", "bot"), parse_spec({"audience": ["a"], "secret": {"name": "s"}}))
    ctl.on_namespace_event(None, namespace("team-a", agents="allowed"))
    assert not ctl.queue.due, "the initial listing re-checks nothing"
    assert asyncio.run(ctl.issuers.labels("team-a")) == {"agents": "allowed"}
    ctl.on_namespace_event("MODIFIED", namespace("team-a", agents="allowed"))
    assert not ctl.queue.due, "an unchanged label set re-checks nothing"
    ctl.on_namespace_event("MODIFIED", namespace("team-a"))
    assert ctl.queue.due == {("team-a", "bot"): T0.timestamp()}
    assert asyncio.run(ctl.issuers.labels("team-a")) == {}
    assert kube.gets == 0
    ctl.on_namespace_event("DELETED", namespace("team-a"))
    assert asyncio.run(ctl.issuers.labels("team-a")) == {"from": "get"}  # a miss falls back to GET
    assert kube.gets == 1
