"""runtime.watches: the AgentToken and Secret informers cover the scope kopf's namespace patterns
describe: all namespaces, each named one, or (globs, negations) each namespace matched as it
appears on a namespace watch."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from agenttoken.kube.adapter import Kube
from agenttoken.kube.informer import WatchOptions
from agenttoken.runtime.watches import AGENTTOKENS, SECRETS, Kind, Watches, is_pattern, matches


class Api:
    """Every request is a watch that stays open: only who asks for what matters here."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def call_api(self, path: str, method: str, **_: Any) -> Any:
        self.paths.append(path)
        await asyncio.Event().wait()


class FakeKube:
    def __init__(self) -> None:
        self.api_client = Api()


def kinds() -> list[Kind]:
    return [
        Kind(AGENTTOKENS, lambda t, b: None, lambda k: None),
        Kind(SECRETS, lambda t, b: None, lambda k: None),
    ]


def scoped(patterns: tuple[str, ...], after: Any = None) -> list[str]:
    async def scenario() -> list[str]:
        kube = FakeKube()
        watches = Watches(cast(Kube, kube), kinds(), patterns, WatchOptions())
        watches.start()
        if after is not None:
            after(watches)
        await asyncio.sleep(0.05)
        await watches.stop()
        return sorted(kube.api_client.paths)

    return asyncio.run(scenario())


def test_patterns_are_told_from_names() -> None:
    assert not is_pattern("team-a")
    assert all(map(is_pattern, ("team-*", "!kube-system", "a,b", "t?")))
    assert matches("team-a", ("team-*",))
    assert not matches("kube-system", ("team-*",))


def test_cluster_wide_one_watch_per_kind() -> None:
    assert scoped(()) == ["/api/v1/secrets", "/apis/agenttoken.dev/v1alpha1/agenttokens"]


def test_named_namespaces_one_watch_per_kind_and_namespace() -> None:
    assert scoped(("a", "b")) == [
        "/api/v1/namespaces/a/secrets",
        "/api/v1/namespaces/b/secrets",
        "/apis/agenttoken.dev/v1alpha1/namespaces/a/agenttokens",
        "/apis/agenttoken.dev/v1alpha1/namespaces/b/agenttokens",
    ]


def test_globs_follow_the_namespaces_that_match_as_they_appear() -> None:
    def appear(watches: Watches) -> None:
        for name in ("team-a", "other", "team-a"):
            watches._on_namespace("ADDED", {"metadata": {"name": name}})
        watches._on_namespace("DELETED", {"metadata": {"name": "team-b"}})

    assert scoped(("team-*",), appear) == [
        "/api/v1/namespaces",
        "/api/v1/namespaces/team-a/secrets",
        "/apis/agenttoken.dev/v1alpha1/namespaces/team-a/agenttokens",
    ]
