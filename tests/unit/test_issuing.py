"""The issuing step against a fake adapter: a new token reaches the Secret only through
SecretStore, a create that finds a Secret there decides again, and a token that failed
spec.verify is held and checked again instead of minting another."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, cast

import pytest

from agenttoken import api
from agenttoken.controllers.context import Pass
from agenttoken.controllers.issuing import Issuing
from agenttoken.controllers.secrets import SecretAppeared, SecretStore
from agenttoken.core.keys import generate_key
from agenttoken.core.model import TokenStatus, parse_spec
from agenttoken.core.renewal import Action, Snapshot, decide
from agenttoken.core.secretdata import observe
from agenttoken.core.status import Outcome
from agenttoken.issuers import parse_issuer
from agenttoken.issuers.credentials import IssuerDeps
from agenttoken.issuers.registry import Registry
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError

T0 = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
UID = "uid-1"


class FakeKube:
    """Secrets in a dict; every call recorded."""

    def __init__(self, existing: dict[str, Any] | None = None) -> None:
        self.calls: list[str] = []
        self.existing = existing
        self.version = 1

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        if self.existing is not None:
            raise KubeError(409, "already exists")
        return self._stored(body)

    async def patch_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("patch")
        return self._stored(body)

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get")
        return self.existing

    def _stored(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        return {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version), "uid": "s-1"}}


def setup(kube: FakeKube, raw_spec: dict[str, Any]) -> tuple[Issuing, SecretStore, Pass, Snapshot]:
    key = generate_key("ES256", T0 - dt.timedelta(hours=1))
    registry = Registry(
        IssuerDeps(cast(Kube, kube), lambda: key, "https://issuer", "agenttoken-system", lambda: key)
    )
    secrets = SecretStore(cast(Kube, kube))
    issuing = Issuing(cast(Kube, kube), secrets, registry, lambda: T0)
    spec = parse_spec({"audience": ["https://api"], "ttl": "1h", "secret": {"name": "tok"}} | raw_spec)
    body = {"metadata": {"namespace": "ns", "name": "agent", "uid": UID}, "spec": {}}
    builtin = parse_issuer(
        api.CLUSTERTOKENISSUER_KIND, {"metadata": {"name": "builtin"}, "spec": {"builtin": {}}}
    )
    p = Pass(body=body, spec=spec, issuer=builtin, previous=TokenStatus(), now=T0)
    snap = Snapshot(
        spec=spec,
        status=TokenStatus(),
        secret=observe(None, name="agent", uid=UID, spec=spec),
        rotate_request=None,
        jitter_key=UID,
    )
    return issuing, secrets, p, snap


def test_a_first_token_is_created_in_the_secret_and_announced() -> None:
    kube = FakeKube()
    issuing, secrets, p, snap = setup(kube, {})
    decision = decide(snap, T0)
    assert decision.action is Action.MINT
    record, result = asyncio.run(issuing.step(p, snap, decision, None, Outcome()))
    assert kube.calls == ["create"]
    assert record is not None
    assert record.revision == 1
    assert [e.reason for e in result.events] == [api.REASON_ISSUED]
    cached = secrets.get(("ns", "tok"))
    assert cached is not None
    assert observe(cached, name="agent", uid=UID, spec=p.spec).record == record


def test_a_secret_found_on_create_is_read_and_decided_again() -> None:
    found = {"metadata": {"name": "tok", "namespace": "ns", "resourceVersion": "7"}, "data": {}}
    kube = FakeKube(existing=found)
    issuing, secrets, p, snap = setup(kube, {})
    with pytest.raises(SecretAppeared):
        asyncio.run(issuing.step(p, snap, decide(snap, T0), None, Outcome()))
    assert kube.calls == ["create", "get"]
    assert secrets.get(("ns", "tok")) == found


def test_a_token_that_failed_verification_is_held_and_checked_again() -> None:
    kube = FakeKube()
    issuing, secrets, p, snap = setup(kube, {"verify": {"url": "http://127.0.0.1:9/", "timeout": "2s"}})
    decision = decide(snap, T0)
    minted: list[str] = []
    adapter = issuing.registry.adapter(p.issuer)
    original = adapter.issue

    async def counting(*args: Any) -> Any:
        issued = await original(*args)
        minted.append(issued.token_id)
        return issued

    adapter.issue = counting  # type: ignore[method-assign]
    for attempt in (1, 2):
        record, result = asyncio.run(issuing.step(p, snap, decision, None, Outcome()))
        assert record is None, "not delivered"
        assert result.outcome.failure is not None
        assert result.outcome.failure.reason == api.REASON_VERIFICATION_FAILED
        assert result.outcome.failed_attempts == 1
        assert [e.reason for e in result.events] == [api.REASON_VERIFICATION_FAILED]
        assert len(minted) == 1, f"attempt {attempt} re-checks the held token"
    assert kube.calls == []
    assert secrets.get(("ns", "tok")) is None
