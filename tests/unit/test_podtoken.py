"""Per-pod tokens (delivery PerPod): the pure rules of the token endpoint, the ledger, the spec, the
SDK token source and the verifier's deleted-pod check."""

from __future__ import annotations

import base64
import datetime
import json
import time
from typing import Any

import pytest

from agenttoken.controllers.podledger import merged, parse
from agenttoken.controllers.podstatus import PodTokenCounts, added
from agenttoken.core import podtoken
from agenttoken.core.keys import KeyRing, generate_key
from agenttoken.core.model import InvalidSpec, parse_spec
from agenttoken.core.podtoken import GrantError, PodIdentity
from agenttoken.core.tokens import TokenRequest, mint
from agenttoken_sdk.client import TokenInfo, TokenUnavailableError
from agenttoken_sdk.podtoken import PodTokenSource
from agenttoken_sdk.verify import VerificationError, Verifier

ISSUER = "https://op.example/issuers/builtin"
ENDPOINT = podtoken.token_endpoint(ISSUER)
NOW = 1_800_000_000.0


def unsigned(claims: dict[str, Any]) -> str:
    def b64(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'RS256'})}.{b64(claims)}.c2ln"


def error_of(call: Any) -> str:
    with pytest.raises(GrantError) as caught:
        call()
    return caught.value.error


def test_form_errors_follow_rfc_6749() -> None:
    assert error_of(lambda: podtoken.parse_form({})) == "invalid_request"
    assert error_of(lambda: podtoken.parse_form({"grant_type": "password"})) == "unsupported_grant_type"
    assert error_of(lambda: podtoken.parse_form({"grant_type": podtoken.JWT_BEARER})) == "invalid_request"
    grant = podtoken.parse_form({"grant_type": podtoken.JWT_BEARER, "assertion": "a.b.c", "scope": "read"})
    assert grant.scopes == ("read",)
    assert "a.b.c" not in repr(grant)


def test_precheck_refuses_expired_wrong_audience_and_garbage() -> None:
    assert podtoken.precheck(unsigned({"aud": [ENDPOINT], "exp": NOW + 60}), ENDPOINT, NOW) == NOW + 60
    for claims in (
        {"aud": [ENDPOINT], "exp": NOW - 1},
        {"aud": ["other"], "exp": NOW + 60},
        {"aud": ENDPOINT},
    ):
        assert error_of(lambda c=claims: podtoken.precheck(unsigned(c), ENDPOINT, NOW)) == "invalid_grant"
    assert error_of(lambda: podtoken.precheck("not-a-jwt", ENDPOINT, NOW)) == "invalid_grant"


def review(**user: Any) -> dict[str, Any]:
    return {
        "authenticated": True,
        "audiences": [ENDPOINT],
        "user": {
            "username": "system:serviceaccount:team:agent",
            "extra": {podtoken.POD_NAME_EXTRA: ["agent-0"], podtoken.POD_UID_EXTRA: ["u-1"]},
        }
        | user,
    }


def test_the_review_must_name_a_pod_bound_service_account() -> None:
    assert podtoken.pod_identity(review(), ENDPOINT) == PodIdentity("team", "agent", "agent-0", "u-1")
    bad = [
        {"authenticated": False},
        review() | {"audiences": ["x"]},
        review(username="alice"),
        review(extra={}),  # a legacy (unbound) ServiceAccount token
    ]
    for status in bad:
        assert error_of(lambda s=status: podtoken.pod_identity(s, ENDPOINT)) == "invalid_grant"


def test_scopes_narrow_never_widen_and_agenttoken_choice() -> None:
    assert podtoken.narrow_scopes(None, ("a", "b")) == ("a", "b")
    assert podtoken.narrow_scopes(["b"], ("a", "b")) == ("b",)
    assert error_of(lambda: podtoken.narrow_scopes(["c"], ("a",))) == "invalid_scope"
    who = PodIdentity("team", "agent", "p", "u")
    assert podtoken.choose(["one"], None, who) == "one"
    assert error_of(lambda: podtoken.choose([], None, who)) == "invalid_grant"
    assert error_of(lambda: podtoken.choose(["a", "b"], None, who)) == "invalid_request"
    assert podtoken.choose(["a", "b"], "b", who) == "b"


def test_rate_limiter_and_cache_are_bounded() -> None:
    limiter = podtoken.RateLimiter(rate=1, burst=2, max_keys=2)
    assert limiter.take("p", 0) is None
    assert limiter.take("p", 0) is None
    assert limiter.take("p", 0) == pytest.approx(1.0)
    assert limiter.take("p", 1.0) is None  # refilled
    for key in ("q", "r"):
        limiter.take(key, 1.0)
    assert len(limiter._buckets) == 2
    cache: podtoken.TimedCache[int] = podtoken.TimedCache(max_entries=2)
    cache.put("a", 1, until=10)
    assert cache.get("a", 5) == 1
    assert cache.get("a", 10) is None
    for key in "bcd":
        cache.put(key, 2, until=10)
    assert len(cache) == 2


def test_ledger_keeps_the_latest_until_and_drops_expired_and_revoked() -> None:
    stored = {"u1": ("ns", "p1", 100), "u2": ("ns", "p2", 50), "u3": ("ns", "p3", 200)}
    out = merged(stored, {"u1": ("ns", "p1", 90), "u4": ("ns", "p4", 300)}, {"u3"}, now=60)
    assert out == {"u1": ("ns", "p1", 100), "u4": ("ns", "p4", 300)}
    configmap = {"data": {"pods.json": json.dumps({u: list(e) for u, e in out.items()})}}
    assert parse(configmap) == out
    assert parse({"data": {"pods.json": "garbage"}}) == {}


def test_pod_token_counts_add_up_across_replicas() -> None:
    counts = PodTokenCounts()
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    counts.issued(("ns", "a"), when)
    counts.failed(("ns", "a"), "invalid_scope")
    status = added({"issued": 5, "failures": 1}, counts.pending[("ns", "a")])
    assert status["issued"] == 6
    assert status["failures"] == 2
    assert status["lastIssuedAt"] == "2026-01-01T00:00:00Z"
    assert status["lastFailureReason"] == "invalid_scope"


def test_delivery_perpod_spec_rules() -> None:
    spec = parse_spec({"audience": ["a"], "delivery": "PerPod", "serviceAccountName": "agent"})
    assert spec.per_pod
    assert spec.service_account == "agent"
    assert spec.secret_name == ""
    for bad, words in [
        ({"delivery": "PerPod"}, "needs spec.serviceAccountName"),
        (
            {"delivery": "PerPod", "serviceAccountName": "x", "secret": {"name": "s"}},
            "spec.secret does not apply",
        ),
        ({"serviceAccountName": "x", "secret": {"name": "s"}}, "only applies to delivery PerPod"),
        ({"delivery": "Sometimes", "secret": {"name": "s"}}, "Secret or PerPod"),
    ]:
        with pytest.raises(InvalidSpec, match=words):
            parse_spec({"audience": ["a"]} | bad)


def test_verifier_rejects_tokens_of_a_deleted_pod() -> None:
    now = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    key = generate_key("ES256", now - datetime.timedelta(hours=1))
    request = TokenRequest("team", "agents", "uid", None, ("api",), (), datetime.timedelta(minutes=10))
    who = PodIdentity("team", "agent", "agent-0", "pod-uid-1")
    token = mint(request, key, issuer=ISSUER, now=now, extra=podtoken.pod_claims(who)).token
    from agenttoken.core import revocation

    def verifier(revoked: list[str]) -> Verifier:
        part = revocation.ListPart(0, 1, 1, int(NOW), int(NOW) + 600, {r: int(NOW) + 600 for r in revoked})
        doc = json.dumps({"lists": [revocation.sign_part(part, key, ISSUER)]}).encode()
        return Verifier(
            issuer=ISSUER, audience="api", jwks=KeyRing((key,)).jwks(now), revocations_url="x",
            fetch=lambda url: doc, clock=lambda: now, audit=False,
        )  # fmt: skip

    assert verifier([]).verify(token).raw["kubernetes.io"]["pod"]["uid"] == "pod-uid-1"
    with pytest.raises(VerificationError) as caught:
        verifier([podtoken.revoked_pod_id("pod-uid-1")]).verify(token)
    assert caught.value.check == "revoked"


def test_pod_token_source_refreshes_in_memory_before_expiry_and_rides_out_failures() -> None:
    clock = [datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)]
    answers: list[Any] = []

    def fetch(endpoint: str, **_: Any) -> TokenInfo:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return TokenInfo(answer, clock[0] + datetime.timedelta(seconds=100), clock[0], 0, (), (), answer)

    source = PodTokenSource("https://op/token", clock=lambda: clock[0], fetch=fetch)
    answers += ["t1", TokenUnavailableError("down"), "t2"]
    assert source.token() == "t1"
    clock[0] += datetime.timedelta(seconds=40)
    assert source.token() == "t1"  # not due yet (half of the lifetime)
    clock[0] += datetime.timedelta(seconds=20)
    assert source.token() == "t1"  # due, the endpoint failed: the current token is still good
    clock[0] += datetime.timedelta(seconds=3)
    assert source.token() == "t2"
    assert source.refreshes == 2


def test_status_shows_per_pod_issuance_without_tokens() -> None:
    from agenttoken.cli.status import _pod_line, summary

    obj = {
        "metadata": {"namespace": "team", "name": "agents"},
        "spec": {"delivery": "PerPod", "serviceAccountName": "agent", "audience": ["a"]},
        "status": {"podTokens": {"issued": 7, "failures": 1, "lastIssuedAt": "t1", "lastFailureAt": "t2",
                                 "lastFailureReason": "invalid_scope"}},
    }  # fmt: skip
    item = summary(obj)
    assert item["delivery"] == "PerPod"
    line = _pod_line(item["podTokens"])
    assert line == "7 pod tokens issued, last t1; 1 refused, last t2 (invalid_scope)"


class _FakeCluster:
    """The ConfigMap store and pods a ledger talks to (resourceVersion-checked like the apiserver)."""

    def __init__(self) -> None:
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], str] = {}
        self.revoked: list[str] = []

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.configmaps.get(name)

    async def write_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        current = self.configmaps.get(name)
        assert body["metadata"].get("resourceVersion") == (current or {}).get("metadata", {}).get(
            "resourceVersion"
        )
        version = str(int((current or {}).get("metadata", {}).get("resourceVersion", "0")) + 1)
        stored = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}
        self.configmaps[name] = stored
        return stored

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        uid = self.pods.get((namespace, name))
        return {"metadata": {"uid": uid}} if uid else None

    async def revoke(self, entries: Any, may_write: Any) -> None:
        self.revoked += [e.token_id for e in entries]


def test_ledger_records_before_the_token_and_revokes_pods_gone_while_no_replica_ran() -> None:
    import asyncio

    from agenttoken.controllers.podledger import PodLedger

    async def scenario() -> None:
        cluster = _FakeCluster()
        cluster.pods = {("team", "a"): "uid-a", ("team", "b"): "uid-b"}
        ledger = PodLedger(cluster, cluster, "system", cluster)  # type: ignore[arg-type]
        writer = asyncio.create_task(ledger.run_writer())
        far = time.time() + 600
        await asyncio.gather(
            ledger.ensure(PodIdentity("team", "agent", "a", "uid-a"), far),
            ledger.ensure(PodIdentity("team", "agent", "b", "uid-b"), far),
        )
        writer.cancel()
        assert set(parse(cluster.configmaps["agenttoken-pod-tokens"])) == {"uid-a", "uid-b"}
        # A restart: a fresh replica, and pod b went away meanwhile (no watch event seen).
        del cluster.pods[("team", "b")]
        fresh = PodLedger(cluster, cluster, "system", cluster)  # type: ignore[arg-type]
        await fresh.load()
        assert await fresh.sweep(lambda: False) == 0  # a standby writes nothing
        assert await fresh.sweep(lambda: True) == 1
        assert cluster.revoked == [podtoken.revoked_pod_id("uid-b")]
        assert set(parse(cluster.configmaps["agenttoken-pod-tokens"])) == {"uid-a"}
        # A watched deletion is refused at once, and revoked by the next sweep.
        fresh.on_pod_event("DELETED", {"metadata": {"uid": "uid-a"}})
        assert fresh.gone("uid-a")
        await fresh.sweep(lambda: True)
        assert cluster.revoked[-1] == podtoken.revoked_pod_id("uid-a")
        assert parse(cluster.configmaps["agenttoken-pod-tokens"]) == {}

    asyncio.run(scenario())


def test_concurrent_grants_of_one_pod_share_one_token_review() -> None:
    import asyncio

    from agenttoken.controllers.podtokens import PodTokenService
    from agenttoken.core.bodycache import BodyCache
    from agenttoken.issuers import IssuerSpec

    key = generate_key("ES256", datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1))
    reviews: list[str] = []

    class Reviews:
        async def review(self, token: str, audience: str) -> dict[str, Any]:
            reviews.append(audience)
            await asyncio.sleep(0.05)
            return review()

    class Ledger:
        def gone(self, uid: str) -> bool:
            return False

        async def ensure(self, who: PodIdentity, expires: float) -> None:
            return None

    class Revocations:
        def is_revoked(self, token_id: str) -> bool:
            return False

    class Issuers:
        async def resolve(self, key: Any, spec: Any) -> IssuerSpec:
            return IssuerSpec("ClusterTokenIssuer", "", "builtin", "builtin", {})

    body = {
        "metadata": {"namespace": "team", "name": "agents", "uid": "u", "resourceVersion": "1"},
        "spec": {"audience": ["api"], "scopes": ["read"], "ttl": "10m", "delivery": "PerPod",
                 "serviceAccountName": "agent"},
    }  # fmt: skip
    tokens = BodyCache()
    tokens.offer(("team", "agents"), body)
    service = PodTokenService(
        Reviews(), Ledger(), Revocations(), Issuers(), tokens, lambda: key, ISSUER, PodTokenCounts(),  # type: ignore[arg-type]
    )  # fmt: skip
    service.on_token_event("ADDED", body)
    form = {
        "grant_type": podtoken.JWT_BEARER,
        "assertion": unsigned({"aud": [ENDPOINT], "exp": time.time() + 600}),
    }

    async def burst() -> list[dict[str, Any]]:
        return await asyncio.gather(*(service.grant(form) for _ in range(10)))

    answers = asyncio.run(burst())
    assert len(reviews) == 1
    assert len({a["access_token"] for a in answers}) == 10
    assert all(a["scope"] == "read" and a["expires_in"] == 600 for a in answers)
