"""Our own watches (core.watchstate, kube.informer): the initial state (paged LIST or streamed),
resuming from the last resourceVersion a watch or bookmark gave, and on 410 Gone a relist whose
diff is delivered exactly: what it no longer contains is DELETED, with the last copy known."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp

from agenttoken import api
from agenttoken.controllers.agenttoken import Controller, ControllerOptions
from agenttoken.controllers.keys import KeyManager
from agenttoken.controllers.leadership import Leadership
from agenttoken.core.watchstate import INITIAL_EVENTS_END, Delivered, final_state
from agenttoken.kube.adapter import Kube
from agenttoken.kube.informer import Informer, Resource, WatchOptions

T0 = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
SECRETS = Resource("", "v1", "secrets")


def obj(name: str, rv: str, namespace: str = "ns", **extra: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "resourceVersion": rv, **extra}}


def bookmark(rv: str, *, initial_end: bool = False) -> dict[str, Any]:
    annotations = {INITIAL_EVENTS_END: "true"} if initial_end else {}
    return {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": rv, "annotations": annotations}}}


# -- the bookkeeping (pure) --


def test_a_relist_names_exactly_what_it_no_longer_contains() -> None:
    state = Delivered()
    state.begin_listing()
    for name, rv in (("a", "7"), ("b", "5"), ("c", "6")):
        state.event("ADDED", obj(name, rv))
    assert state.resume is None, "listed objects come in no version order: no resume point yet"
    assert state.end_listing("9") == [], "the initial listing"
    assert state.resume == "9"
    state.event("MODIFIED", obj("a", "10"))
    state.event("DELETED", obj("c", "11"))
    state.event("ADDED", obj("d", "12"))
    assert state.resume == "12"
    state.expired()  # 410 Gone
    assert state.resume is None
    state.begin_listing()
    state.event("ADDED", obj("a", "10"))
    assert state.end_listing("20") == [("ns", "b"), ("ns", "d")], "c was deleted on the watch already"
    assert set(state.versions) == {("ns", "a")}
    assert state.listings == 2


def test_a_bookmark_moves_the_resume_point_but_not_during_a_listing() -> None:
    state = Delivered()
    state.begin_listing()
    state.event("BOOKMARK", bookmark("3")["object"])
    assert state.resume is None
    state.end_listing("4")
    state.event("BOOKMARK", bookmark("15")["object"])
    assert state.resume == "15"
    assert state.versions == {}


def test_an_interrupted_listing_starts_over() -> None:
    state = Delivered()
    state.begin_listing()
    state.event("ADDED", obj("a", "1"))
    state.event("ADDED", obj("b", "2"))
    state.begin_listing()  # the connection broke: listed again from scratch
    state.event("ADDED", obj("a", "1"))
    assert state.end_listing("5") == [("ns", "b")]


def test_the_final_state_is_the_last_copy_at_the_listings_version() -> None:
    last = {"metadata": {"name": "s", "namespace": "ns", "resourceVersion": "3", "labels": {"x": "y"}}}
    body = final_state(("ns", "s"), last, "40")
    assert body["metadata"] == {"name": "s", "namespace": "ns", "resourceVersion": "40", "labels": {"x": "y"}}
    assert last["metadata"]["resourceVersion"] == "3", "the consumer's copy is left alone"
    assert final_state(("", "cluster-wide"), None, "41") == {
        "metadata": {"name": "cluster-wide", "resourceVersion": "41"}
    }


# -- the informer against a scripted apiserver --


class Response:
    def __init__(
        self, status: int = 200, body: Any = None, lines: list[dict[str, Any]] | None = None
    ) -> None:
        self.status, self.body, self.lines, self.reason = status, body, lines or [], "reason"
        self.released = False

    async def read(self) -> bytes:
        return json.dumps(self.body).encode() if self.body is not None else b""

    @property
    def content(self) -> AsyncIterator[bytes]:
        async def lines() -> AsyncIterator[bytes]:
            for line in self.lines:
                yield json.dumps(line).encode() + b"\n"

        return lines()

    def release(self) -> None:
        self.released = True


class Api:
    """Answers requests in order from a script; once it is used up, a watch that stays open."""

    def __init__(self, script: list[Response | Exception | asyncio.Event]) -> None:
        self.script = script
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.idle = asyncio.Event()

    async def call_api(self, path: str, method: str, *, query_params: list[tuple[str, str]], **_: Any) -> Any:
        self.calls.append((path, dict(query_params)))
        if not self.script:
            self.idle.set()
            await asyncio.Event().wait()
        step = self.script.pop(0)
        if isinstance(step, asyncio.Event):  # held until the test lets it go on
            await step.wait()
            step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


class FakeKube:
    def __init__(self, script: list[Response | Exception | asyncio.Event]) -> None:
        self.api_client = Api(script)


def listing(items: list[dict[str, Any]], rv: str, token: str | None = None) -> Response:
    return Response(body={"items": items, "metadata": {"resourceVersion": rv, "continue": token}})


async def run(
    script: list[Response | Exception], *, stream: bool = False, last: dict[Any, Any] | None = None
) -> tuple[Informer, Api, list[tuple[str, dict[str, Any]]]]:
    """Runs an informer until the script is used up; what it delivered."""
    kube = FakeKube(script)
    got: list[tuple[str, dict[str, Any]]] = []
    informer = Informer(
        cast(Kube, kube), SECRETS, lambda t, b: got.append((t, b)), namespace="ns", label_selector="a=b",
        last_known=(last or {}).get, options=WatchOptions(stream=stream, page_size=2, backoffs=(0.01, 0.02)),
    )  # fmt: skip
    informer.start()
    await asyncio.wait_for(kube.api_client.idle.wait(), 5)
    await informer.stop()
    return informer, kube.api_client, got


def test_paged_list_then_watch_then_410_relists_and_deletes_what_is_gone() -> None:
    async def scenario() -> None:
        kept = {("ns", "b"): obj("b", "2", labels={"owner": "x"})}
        script: list[Response | Exception] = [
            listing([obj("a", "1"), obj("b", "2")], "5", token="page2"),
            listing([obj("c", "3")], "5"),
            Response(lines=[{"type": "MODIFIED", "object": obj("a", "6")}, bookmark("8")]),
            Response(lines=[{"type": "ERROR", "object": {"kind": "Status", "code": 410}}]),
            listing([obj("a", "6"), obj("c", "3")], "30"),
        ]
        informer, api_, got = await run(script, last=kept)
        paths = {path for path, _ in api_.calls}
        assert paths == {"/api/v1/namespaces/ns/secrets"}
        params = [p for _, p in api_.calls]
        assert params[0] == {"limit": "2", "labelSelector": "a=b"}
        assert params[1]["continue"] == "page2"
        assert params[2]["resourceVersion"] == "5"
        assert params[2]["allowWatchBookmarks"] == "true"
        assert params[3]["resourceVersion"] == "8", "resumed from the bookmark"
        assert "resourceVersion" not in params[4]
        assert params[4]["limit"] == "2"
        assert params[5]["resourceVersion"] == "30"
        assert [(t, b["metadata"]["name"]) for t, b in got] == [
            ("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c"), ("MODIFIED", "a"),
            ("ADDED", "a"), ("ADDED", "c"), ("DELETED", "b"),
        ]  # fmt: skip
        deleted = got[-1][1]
        assert deleted["metadata"]["labels"] == {"owner": "x"}, "the last copy known"
        assert deleted["metadata"]["resourceVersion"] == "30"
        assert informer.synced.is_set()

    asyncio.run(scenario())


def test_streamed_initial_state_ends_with_its_bookmark() -> None:
    async def scenario() -> None:
        script: list[Response | Exception] = [
            Response(
                lines=[
                    {"type": "ADDED", "object": obj("a", "9")},
                    {"type": "ADDED", "object": obj("b", "4")},
                    bookmark("10", initial_end=True),
                    {"type": "DELETED", "object": obj("b", "11")},
                ]
            ),
        ]
        informer, api_, got = await run(script, stream=True)
        first = api_.calls[0][1]
        assert first["sendInitialEvents"] == "true"
        assert first["resourceVersionMatch"] == "NotOlderThan"
        assert "resourceVersion" not in first
        assert api_.calls[1][1]["resourceVersion"] == "11"
        assert [t for t, _ in got] == ["ADDED", "ADDED", "DELETED"]
        assert informer.synced.is_set()

    asyncio.run(scenario())


def test_refused_streaming_falls_back_to_a_list_and_errors_back_off_and_resume() -> None:
    async def scenario() -> None:
        script: list[Response | Exception] = [
            Response(422, {"message": "sendInitialEvents is forbidden"}),
            listing([obj("a", "1")], "5"),
            aiohttp.ClientConnectionError("reset"),
            Response(500, {"message": "etcd"}),
            Response(lines=[{"type": "ADDED", "object": obj("b", "7")}]),
        ]
        _, api_, got = await run(script, stream=True)
        params = [p for _, p in api_.calls]
        assert "sendInitialEvents" not in params[1]
        assert [p.get("resourceVersion") for p in params[2:]] == ["5", "5", "5", "7"]
        assert [(t, b["metadata"]["name"]) for t, b in got] == [("ADDED", "a"), ("ADDED", "b")]

    asyncio.run(scenario())


def test_a_consumers_error_does_not_end_the_watch() -> None:
    async def scenario() -> None:
        kube = FakeKube([listing([obj("a", "1"), obj("b", "2")], "5")])
        seen: list[str] = []

        def deliver(event_type: str, body: dict[str, Any]) -> None:
            seen.append(body["metadata"]["name"])
            raise RuntimeError("bug")

        informer = Informer(cast(Kube, kube), SECRETS, deliver)
        informer.start()
        await asyncio.wait_for(kube.api_client.idle.wait(), 5)
        await informer.stop()
        assert seen == ["a", "b"]
        assert kube.api_client.calls[-1][0] == "/api/v1/secrets"

    asyncio.run(scenario())


# -- wired: the Secret cache and its owner --


class NoKeys:
    namespace = "agenttoken-system"

    def subscribe_revoked(self, listener: object) -> None:
        pass


def secret(rv: str, *, name: str = "tok", namespace: str = "ns") -> dict[str, Any]:
    """The Secret `tok` of the AgentToken `agent` (or another's, of an AgentToken not cached)."""
    agent = "agent" if name == "tok" else f"{name}-owner"
    owner = {"apiVersion": api.API_VERSION, "kind": api.AGENTTOKEN_KIND, "name": agent, "uid": "u1"}
    labels = {api.LABEL_MANAGED_BY: api.OPERATOR_NAME}
    meta = {"namespace": namespace, "name": name, "resourceVersion": rv, "labels": labels}
    return {"metadata": {**meta, "ownerReferences": [owner]}}


class OneShard:
    """Sharded (--shards 2): this replica holds namespace `ns` only."""

    shards = 2

    def owns(self, namespace: str) -> bool:
        return namespace == "ns"

    def subscribe(self, listener: object) -> None:
        pass


def controller(leadership: object | None = None) -> Controller:
    ctl = Controller(
        cast(Kube, object()), cast(KeyManager, NoKeys()), ControllerOptions(issuer_url="https://i"),
        clock=lambda: T0, leadership=cast(Leadership | None, leadership),
    )  # fmt: skip
    ctl.tokens.offer(("ns", "agent"), {"metadata": {"namespace": "ns", "name": "agent", "uid": "u1"}})
    return ctl


def test_a_secret_that_left_the_selector_during_a_watch_gap_reaches_its_owner() -> None:
    async def scenario() -> None:
        ctl = controller()
        gap = asyncio.Event()
        kube = FakeKube(
            [
                listing([secret("5"), secret("6", name="other")], "6"),
                gap,
                Response(410, {"code": 410}),  # the watch's version was compacted away
                listing([secret("6", name="other")], "40"),  # ours was relabelled in the gap
            ]
        )
        informer = Informer(
            cast(Kube, kube), SECRETS, ctl.on_secret_event, last_known=ctl.secrets.get,
            options=WatchOptions(backoffs=(0.01,)),
        )  # fmt: skip
        informer.start()
        await asyncio.wait_for(informer.synced.wait(), 5)
        assert ctl.secrets.get(("ns", "tok")) is not None
        ctl.queue.due.clear()
        gap.set()
        await asyncio.wait_for(kube.api_client.idle.wait(), 5)
        await informer.stop()
        assert ctl.secrets.get(("ns", "tok")) is None
        assert ctl.queue.due == {("ns", "agent"): T0.timestamp()}, "the owner looks again"
        # The tombstone is at the relist's version: a late response to an older write cannot revive it.
        assert not ctl.secrets._cache.offer(("ns", "tok"), secret("39"))

    asyncio.run(scenario())


def test_sharded_another_shards_secrets_are_not_kept() -> None:
    ctl = controller(OneShard())
    ctl.on_secret_event("ADDED", secret("5", name="theirs", namespace="other"))
    ctl.on_secret_event("ADDED", secret("6", name="mine"))
    assert ctl.secrets.get(("other", "theirs")) is None
    assert ctl.secrets.get(("ns", "mine")) is not None
