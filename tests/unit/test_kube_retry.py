"""The one 409 read-modify-write loop (kube.retry) and the stores built on it."""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any, cast

import pytest

from agenttoken.controllers.keys import RING_KEY, KeyManager
from agenttoken.controllers.revocation import RevocationStore
from agenttoken.core.keys import KeyPolicy, KeyRing, generate_key, plan_rotation
from agenttoken.core.revocation import Revoked
from agenttoken.core.secretdata import decode_data, encode_data
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError
from agenttoken.kube.retry import ATTEMPTS, ConflictRetriesExhausted, retry_on_conflict

T0 = datetime.datetime(2026, 11, 29, 12, 0, tzinfo=datetime.UTC)


class Step:
    """A read-modify-write step whose first `conflicts` attempts meet a 409."""

    def __init__(self, conflicts: int, error: KubeError | None = None) -> None:
        self.conflicts = conflicts
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.calls <= self.conflicts:
            raise KubeError(409, "the object has been modified")
        return f"written on attempt {self.calls}"


def test_a_conflict_then_success_returns_the_result_of_the_attempt_that_wrote() -> None:
    step = Step(conflicts=2)
    assert asyncio.run(retry_on_conflict(step, what="thing")) == "written on attempt 3"
    assert step.calls == 3


def test_no_conflict_is_one_attempt() -> None:
    step = Step(conflicts=0)
    assert asyncio.run(retry_on_conflict(step, what="thing")) == "written on attempt 1"
    assert step.calls == 1


@pytest.mark.parametrize("attempts", [1, 3, ATTEMPTS])
def test_gives_up_after_n_conflicts_in_a_row(attempts: int) -> None:
    step = Step(conflicts=100)
    with pytest.raises(ConflictRetriesExhausted) as caught:
        asyncio.run(retry_on_conflict(step, what="revocation list", attempts=attempts))
    assert step.calls == attempts
    assert caught.value.attempts == attempts
    assert str(caught.value) == f"revocation list: gave up after {attempts} write conflicts in a row"
    last = caught.value.__cause__
    assert isinstance(last, KubeError)
    assert last.conflict


@pytest.mark.parametrize("status", [403, 404, 422, 500])
def test_other_api_errors_pass_through_at_once(status: int) -> None:
    step = Step(conflicts=0, error=KubeError(status, "no"))
    with pytest.raises(KubeError) as caught:
        asyncio.run(retry_on_conflict(step, what="thing"))
    assert caught.value.status == status
    assert step.calls == 1


def test_non_api_errors_pass_through_at_once() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad data")

    with pytest.raises(ValueError, match="bad data"):
        asyncio.run(retry_on_conflict(step, what="thing"))
    assert calls == 1


class ConfigMaps:
    """The ConfigMap calls RevocationStore makes, by name, with resourceVersion checks like the
    apiserver's; `interfere` more writes by someone else land between our read and our write."""

    def __init__(self, interfere: int = 0) -> None:
        self.bodies: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}
        self.interfere = interfere
        self.writes = 0

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        body = self.bodies.get(name)
        if body is None:
            return None
        return {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.versions[name])}}

    async def write_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if self.interfere and name in self.bodies:
            self.interfere -= 1
            self.versions[name] += 1  # another writer got there first
        expected = str(self.versions[name]) if name in self.bodies else None
        if body["metadata"].get("resourceVersion") != expected:
            raise KubeError(409, "the object has been modified")
        self.versions[name] = self.versions.get(name, 0) + 1
        self.bodies[name], self.writes = body, self.writes + 1
        return await self.get_configmap(namespace, name) or {}


SIGNING_KEY = generate_key("ES256", T0 - datetime.timedelta(days=1))


def store_on(cms: ConfigMaps) -> RevocationStore:
    return RevocationStore(
        cast(Kube, cms), "agenttoken-system", lambda: T0, issuer="https://issuer", signer=lambda: SIGNING_KEY
    )


def test_the_revocation_store_reads_again_after_a_conflict() -> None:
    cms = ConfigMaps()
    store = store_on(cms)
    asyncio.run(store.resign())  # every part exists, as the operator leaves them at startup
    cms.interfere, cms.writes = 2, 0
    entry = Revoked("jti-1", T0 + datetime.timedelta(hours=1), "ns", "a", T0, "Revoked")
    asyncio.run(store.revoke([entry]))
    assert cms.writes == 1
    assert store.is_revoked("jti-1")
    fresh = store_on(cms)
    asyncio.run(fresh.load())
    assert fresh.is_revoked("jti-1")


def test_the_revocation_store_gives_up_when_the_fight_goes_on() -> None:
    cms = ConfigMaps()
    store = store_on(cms)
    asyncio.run(store.resign())
    cms.interfere = 100
    entry = Revoked("jti-1", T0 + datetime.timedelta(hours=1), "ns", "a", T0, "Revoked")
    with pytest.raises(ConflictRetriesExhausted, match="revocation list"):
        asyncio.run(store.revoke([entry]))
    assert not store.is_revoked("jti-1")


class KeySecrets:
    """The Secret and ConfigMap calls KeyManager makes; another replica creates the ring first."""

    def __init__(self) -> None:
        self.secret: dict[str, Any] | None = None
        self.creates = 0
        self.published: dict[str, str] = {}

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secret

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.creates += 1
        if self.creates == 1:  # the other replica's create lands between our read and ours
            theirs, _ = plan_rotation(KeyRing(keys=()), KeyPolicy(), T0)
            self.secret = {
                "metadata": {"resourceVersion": "1"},
                "data": encode_data({RING_KEY: theirs.to_json()}),
            }
            raise KubeError(409, "secrets already exists")
        raise AssertionError("the ring exists now: only a replace could be right")

    async def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("their ring needs no rotation at T0")

    async def apply_configmap(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.published = data


def test_two_replicas_bootstrapping_keys_end_with_one_ring() -> None:
    kube = KeySecrets()
    keys = KeyManager(
        cast(Kube, kube), namespace="s", issuer="https://i", policy=KeyPolicy(), clock=lambda: T0
    )
    asyncio.run(keys.sync())
    assert kube.creates == 1
    assert kube.secret is not None
    stored = KeyRing.from_json(decode_data(kube.secret["data"])[RING_KEY])
    assert [k.kid for k in keys.ring.keys] == [k.kid for k in stored.keys]
    assert json.loads(kube.published["jwks.json"]) == stored.jwks(T0)
