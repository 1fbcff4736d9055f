"""An AgentToken seen before its issuer (right after a start): the issuer is read once instead
of writing IssuerNotFound; a missing one is reported, and read no more than once."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, cast

from agenttoken import api
from agenttoken.controllers.issuer import Issuers
from agenttoken.core.conditions import Reason
from agenttoken.core.lease import shard_of
from agenttoken.core.model import parse_spec
from agenttoken.issuers.registry import Registry
from agenttoken.kube.adapter import Kube

BUILTIN = {
    "apiVersion": "agenttoken.dev/v1alpha1",
    "kind": "ClusterTokenIssuer",
    "metadata": {"name": "builtin", "resourceVersion": "7"},
    "spec": {"builtin": {}},
}


class FakeKube:
    def __init__(self, issuers: dict[str, dict[str, Any]]) -> None:
        self.issuers = issuers
        self.reads: list[str] = []

    async def get_issuer(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(name)
        return self.issuers.get(name)


def issuers(kube: FakeKube) -> Issuers:
    def now() -> dt.datetime:
        return dt.datetime(2026, 11, 30, tzinfo=dt.UTC)

    return Issuers(cast(Kube, kube), cast(Registry, None), now, lambda key: None)


def spec(issuer: str) -> Any:
    return parse_spec(
        {
            "audience": ["a"],
            "secret": {"name": "s"},
            "issuerRef": {"kind": "ClusterTokenIssuer", "name": issuer},
        }
    )


def test_an_issuer_not_watched_yet_is_read_instead_of_reported_missing() -> None:
    kube = FakeKube({"builtin": BUILTIN})
    found = asyncio.run(issuers(kube).resolve(("ns", "t"), spec("builtin")))
    assert not isinstance(found, Reason)
    assert kube.reads == ["builtin"]


def test_a_missing_issuer_is_reported_and_read_once() -> None:
    kube = FakeKube({})
    store = issuers(kube)
    for name in ("t1", "t2"):
        got = asyncio.run(store.resolve(("ns", name), spec("nowhere")))
        assert isinstance(got, Reason)
        assert got.reason == api.REASON_ISSUER_NOT_FOUND
    assert kube.reads == ["nowhere"]


def test_a_read_never_overrides_what_the_watch_said() -> None:
    """Deleted while the read was on its way: the watch's word stands."""
    kube = FakeKube({"builtin": BUILTIN})
    store = issuers(kube)
    store.on_event(api.CLUSTERTOKENISSUER_KIND, "DELETED", BUILTIN)
    got = asyncio.run(store.resolve(("ns", "t"), spec("builtin")))
    assert isinstance(got, Reason)
    assert got.reason == api.REASON_ISSUER_NOT_FOUND


def test_a_gained_shard_looks_again_at_its_issuers_and_the_primary_at_every_cluster_issuer() -> None:
    cache = issuers(FakeKube({}))
    namespaces = [f"team-{i}" for i in range(12)]
    for ns in namespaces:
        body = {"metadata": {"name": "local", "namespace": ns}, "spec": {"builtin": {}}}
        cache.on_event(api.TOKENISSUER_KIND, "ADDED", body)
    cache.on_event(api.CLUSTERTOKENISSUER_KIND, "ADDED", BUILTIN)
    seen: list[tuple[str, str]] = []

    async def reconcile(kind: str, body: dict[str, Any]) -> None:
        seen.append((kind, body["metadata"].get("namespace", "")))
        if len(seen) == 1:
            raise RuntimeError("one issuer failing does not skip the others")

    async def gain(shard: int) -> list[tuple[str, str]]:
        seen.clear()
        cache.resync(shard, 3, reconcile)
        await asyncio.gather(*cache._resyncs)
        return sorted(seen)

    for shard in range(3):
        got = asyncio.run(gain(shard))
        mine = [(api.TOKENISSUER_KIND, ns) for ns in namespaces if shard_of(ns, 3) == shard]
        cluster = [(api.CLUSTERTOKENISSUER_KIND, "")] if shard == 0 else []
        assert mine  # every shard has some
        assert got == sorted(mine + cluster)
