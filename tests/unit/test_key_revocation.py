"""Purpose-separated keys and emergency key revocation: the pure ring decisions (core.keyplan) and
the KeyManager's read-modify-write of the ring Secret against a fake adapter."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from agenttoken.controllers.keys import (
    ASSERTION_RING_KEY,
    CLIENT_JWKS_KEY,
    JWKS_KEY,
    KEY_REVOCATIONS_CONFIGMAP,
    REVOKED_KIDS_KEY,
    RING_KEY,
    KeyManager,
    parse_revoked_kids,
    with_revoked_kid,
)
from agenttoken.core.keyplan import plan_rotation, revoke_key
from agenttoken.core.keys import PURPOSE_ACCESS, PURPOSE_ASSERTION, KeyPolicy, KeyRing
from agenttoken.core.model import parse_spec, parse_status
from agenttoken.core.renewal import KEY_REVOKED, Action, Snapshot, decide
from agenttoken.core.secretdata import ObservedSecret, TokenRecord, decode_data
from agenttoken.core.tokens import TokenInvalid, TokenRequest, mint, verify
from agenttoken.kube.adapter import Kube

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
POLICY = KeyPolicy(publish_ahead=timedelta(minutes=10))


def rotated(at: datetime, ring: KeyRing | None = None) -> KeyRing:
    return plan_rotation(ring or KeyRing(), POLICY, at)[0]


def test_revoking_the_signing_key_removes_it_and_a_fresh_key_signs_at_once() -> None:
    ring = rotated(T0)
    old = ring.signing_key(T0)
    assert old is not None
    now = T0 + timedelta(hours=1)
    revoked, reasons = revoke_key(ring, old.kid, POLICY, now)
    new = revoked.signing_key(now)
    assert new is not None
    assert new.kid != old.kid
    assert old.kid not in {k["kid"] for k in revoked.jwks(now)["keys"]}
    assert old.kid in revoked.revoked_kids
    assert any("revoked key" in r for r in reasons)
    # Nothing in the stored form can sign or publish the old key again, and it never comes back.
    stored = KeyRing.from_json(revoked.to_json())
    assert old.kid not in {k.kid for k in stored.keys}
    assert old.kid in stored.revoked_kids
    assert old.kid not in revoked.to_json().split('"revoked"')[0]
    later = plan_rotation(stored, POLICY, now + timedelta(days=400))[0]
    assert old.kid in later.revoked_kids
    # Idempotent.
    assert revoke_key(revoked, old.kid, POLICY, now) == (revoked, [])


def test_revoking_the_newest_key_never_brings_back_the_key_it_superseded() -> None:
    ring = rotated(T0)
    first = ring.signing_key(T0)
    due = T0 + POLICY.rotation_period
    ring = rotated(due, ring)  # a pending key, published ahead
    ring = rotated(due + POLICY.publish_ahead, ring)  # it took over
    second = ring.signing_key(due + POLICY.publish_ahead)
    assert first is not None
    assert second is not None
    assert first.kid != second.kid
    now = due + POLICY.publish_ahead + timedelta(minutes=1)
    revoked, _ = revoke_key(ring, second.kid, POLICY, now)
    fresh = revoked.signing_key(now)
    assert fresh is not None
    assert fresh.kid not in (first.kid, second.kid)


def test_a_generator_returning_a_revoked_kid_is_refused() -> None:
    ring = rotated(T0)
    old = ring.signing_key(T0)
    assert old is not None
    revoked, _ = revoke_key(
        ring,
        old.kid,
        POLICY,
        T0,
        generate=lambda alg, now: ring.keys[0].__class__(
            kid="fresh", algorithm=alg, created_at=now, activates_at=now, private_jwk=ring.keys[0].private_jwk
        ),
    )
    with pytest.raises(RuntimeError, match="revoked key ids"):
        revoke_key(
            revoked,
            "fresh",
            POLICY,
            T0,
            generate=lambda alg, now: revoked.keys[0].__class__(
                kid="fresh",
                algorithm=alg,
                created_at=now,
                activates_at=now,
                private_jwk=ring.keys[0].private_jwk,
            ),
        )


def test_a_ring_refuses_the_other_purpose_and_revoked_keys() -> None:
    access = rotated(T0)
    with pytest.raises(ValueError, match="purpose"):
        KeyRing.from_json(access.to_json(), purpose=PURPOSE_ASSERTION)
    with pytest.raises(ValueError, match="revoked key"):
        KeyRing(keys=access.keys, revoked=revoke_key(access, access.keys[0].kid, POLICY, T0)[0].revoked)


def test_revoked_kids_text_and_the_cli_append_keep_what_gitops_wrote() -> None:
    assert parse_revoked_kids("a\n# comment\nb, c  # why\n\n") == {"a", "b", "c"}
    cm = {
        "metadata": {"name": KEY_REVOCATIONS_CONFIGMAP, "resourceVersion": "7", "labels": {"x": "y"}},
        "data": {REVOKED_KIDS_KEY: "# from git\na", "other": "kept"},
    }
    body = with_revoked_kid(cm, "b", "ns")
    assert body is not None
    assert body["metadata"]["resourceVersion"] == "7"
    assert body["metadata"]["labels"] == {"x": "y"}
    assert body["data"]["other"] == "kept"
    assert parse_revoked_kids(body["data"][REVOKED_KIDS_KEY]) == {"a", "b"}
    assert with_revoked_kid(body, "b", "ns") is None


def test_a_token_signed_by_a_revoked_key_is_reminted_even_in_backoff() -> None:
    spec = parse_spec({"audience": ["https://api"], "ttl": "1h", "secret": {"name": "tok"}})
    record = TokenRecord("jti", "sha256:x", "old-kid", 1, T0, T0 + timedelta(hours=1), spec.claims_hash())
    secret = ObservedSecret(exists=True, foreign=False, token="t", record=record, token_intact=True)
    status = parse_status({"tokenId": "jti", "failedAttempts": 3, "lastFailureTime": T0.isoformat()})
    snap = Snapshot(spec, status, secret, None, "uid", revoked_keys=frozenset({"old-kid"}))
    decision = decide(snap, T0 + timedelta(seconds=1))
    assert decision.action is Action.MINT
    assert decision.reason == KEY_REVOKED
    assert (
        decide(Snapshot(spec, status, secret, None, "uid"), T0 + timedelta(seconds=1)).action is Action.NONE
    )


class Cluster:
    """The key Secret, the JWKS ConfigMap and the key-revocations ConfigMap, with resourceVersions."""

    def __init__(self) -> None:
        self.secret: dict[str, Any] | None = None
        self.version = 0
        self.configmaps: dict[str, dict[str, str]] = {}
        self.writes = 0

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return json.loads(json.dumps(self.secret)) if self.secret else None

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.secret is None
        return self._put(body)

    async def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.secret is not None
        assert body["metadata"]["resourceVersion"] == self.secret["metadata"]["resourceVersion"]
        return self._put(body)

    def _put(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.writes += 1
        self.secret = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        return self.secret

    async def apply_configmap(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.configmaps[name] = data


def manager(cluster: Cluster, now: list[datetime], *, primary: bool = True) -> KeyManager:
    return KeyManager(
        cast(Kube, cluster),
        namespace="ns",
        issuer="https://i",
        policy=POLICY,
        clock=lambda: now[0],
        may_write=lambda: primary,
    )


def test_assertion_keys_are_published_apart_and_never_verify_as_access_tokens() -> None:
    cluster, now = Cluster(), [T0]
    keys = manager(cluster, now)
    asyncio.run(keys.sync())
    access, assertion = keys.signing_key(), keys.assertion_key()
    assert access.kid != assertion.kid
    published = cluster.configmaps["agenttoken-jwks"]
    access_jwks, client_jwks = json.loads(published[JWKS_KEY]), json.loads(published[CLIENT_JWKS_KEY])
    assert [k["kid"] for k in access_jwks["keys"]] == [access.kid]
    assert [k["kid"] for k in client_jwks["keys"]] == [assertion.kid]
    stored = decode_data(cluster.secret["data"] if cluster.secret else {})
    assert (
        KeyRing.from_json(stored[ASSERTION_RING_KEY], purpose=PURPOSE_ASSERTION).keys[0].kid == assertion.kid
    )
    # An access token signed by the assertion key: refused against the access-token JWKS.
    req = TokenRequest("ns", "a", "uid", None, ("https://api",), (), timedelta(minutes=5))
    forged = mint(req, assertion, issuer="https://i", now=T0).token
    with pytest.raises(TokenInvalid):
        verify(forged, access_jwks, issuer="https://i", audience="https://api", now=T0)
    genuine = mint(req, access, issuer="https://i", now=T0).token
    verify(genuine, access_jwks, issuer="https://i", audience="https://api", now=T0)


def test_a_requested_revocation_unpublishes_at_once_and_the_primary_replaces_the_key() -> None:
    cluster, now = Cluster(), [T0]
    primary, other = manager(cluster, now), manager(cluster, now, primary=False)
    asyncio.run(primary.sync())
    asyncio.run(other.sync())
    old = primary.signing_key()
    requeued: list[frozenset[str]] = []
    other.subscribe_revoked(requeued.append)
    resigned: list[str] = []

    async def resign(key: Any) -> None:
        resigned.append(key.kid)

    primary.on_signing_key_changed(resign)
    request = {"metadata": {"name": KEY_REVOCATIONS_CONFIGMAP}, "data": {REVOKED_KIDS_KEY: old.kid}}
    # The other replica sees the request first: it stops publishing and signing with the key.
    other.observe_requests(request)
    assert old.kid not in {k["kid"] for k in other.jwks()["keys"]}
    with pytest.raises(RuntimeError, match="revoked"):
        other.signing_key()
    asyncio.run(other.sync())  # not the primary: writes nothing
    assert cluster.writes == 1
    now[0] = T0 + timedelta(minutes=1)
    primary.observe_requests(request)
    asyncio.run(primary.sync())
    new = primary.signing_key()
    assert new.kid != old.kid
    assert resigned[-1] == new.kid
    assert old.kid not in cluster.configmaps["agenttoken-jwks"][JWKS_KEY]
    asyncio.run(other.sync())
    assert other.signing_key().kid == new.kid
    assert requeued == [frozenset({old.kid})]
    # A GitOps revert (kid removed from the ConfigMap) does not bring the key back.
    primary.observe_requests({"metadata": {}, "data": {REVOKED_KIDS_KEY: ""}})
    asyncio.run(primary.sync())
    assert old.kid not in {k["kid"] for k in primary.jwks()["keys"]}
    fresh = manager(cluster, now)
    asyncio.run(fresh.sync())
    assert old.kid in fresh.revoked_kids()
    assert fresh.signing_key().kid == new.kid
    ring = KeyRing.from_json(decode_data(cluster.secret["data"] if cluster.secret else {})[RING_KEY])
    assert ring.purpose == PURPOSE_ACCESS
    assert old.kid in ring.revoked_kids
