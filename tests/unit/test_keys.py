"""Signing keys, the key ring, and rotation with overlap, driven by an injected clock."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt as pyjwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agenttoken.core.keyplan import plan_rotation
from agenttoken.core.keys import (
    SUPPORTED_ALGORITHMS,
    KeyPolicy,
    KeyRing,
    SigningKey,
    generate_key,
)
from agenttoken.core.tokens import MintedToken, TokenRequest, mint, verify

ISSUER = "https://tokens.example.com"
AUDIENCE = "https://api.example.com"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# Members that make a JWK private (RFC 7518 sections 6.2.2, 6.3.2, 6.4; RFC 8037 section 2).
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def request(ttl: timedelta = HOUR) -> TokenRequest:
    return TokenRequest(
        namespace="team-a",
        name="crawler",
        uid="uid-1",
        subject=None,
        audience=(AUDIENCE,),
        scopes=("read",),
        ttl=ttl,
    )


def rfc7638_thumbprint(public: dict[str, Any]) -> str:
    """An independent RFC 7638 implementation: required members only, sorted, no whitespace."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    members = {name: public[name] for name in required[public["kty"]]}
    digest = hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":")).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture(scope="module", params=SUPPORTED_ALGORITHMS)
def key(request: pytest.FixtureRequest) -> SigningKey:
    return generate_key(request.param, T0)


# --- SigningKey ---------------------------------------------------------------------------------------


def test_generated_key_shape(key: SigningKey) -> None:
    public = key.public_jwk()
    expected_kty = {"ES256": "EC", "RS256": "RSA", "EdDSA": "OKP"}[key.algorithm]
    assert public["kty"] == expected_kty
    assert {"kid": key.kid, "alg": key.algorithm, "use": "sig"}.items() <= public.items()
    assert key.kid == rfc7638_thumbprint(public)
    assert not PRIVATE_MEMBERS & public.keys()
    assert key.created_at == key.activates_at == T0
    assert key.retired_at is None
    if key.algorithm == "ES256":
        assert public["crv"] == "P-256"
    if key.algorithm == "EdDSA":
        assert public["crv"] == "Ed25519"
    if key.algorithm == "RS256":
        assert len(base64.urlsafe_b64decode(public["n"] + "==")) * 8 == 2048


def test_repr_hides_private_material(key: SigningKey) -> None:
    text = repr(key) + str(key) + repr(KeyRing((key,)))
    assert "private_jwk" not in text
    for name in PRIVATE_MEMBERS & key.private_jwk.keys():
        assert key.private_jwk[name] not in text
    assert key.kid in text


@pytest.mark.parametrize("algorithm", ["HS256", "ES384", "none", "", "es256"])
def test_unsupported_algorithm(algorithm: str) -> None:
    with pytest.raises(ValueError, match="unsupported signing algorithm"):
        generate_key(algorithm, T0)


def test_naive_times_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        generate_key("ES256", T0.replace(tzinfo=None))


# --- KeyPolicy ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"algorithm": "HS256"}, "unsupported"),
        ({"rotation_period": timedelta(0)}, "rotation_period"),
        ({"publish_ahead": -MIN}, "publish_ahead"),
        ({"rotation_period": HOUR, "publish_ahead": HOUR}, "publish_ahead"),
        ({"max_token_ttl": timedelta(0)}, "max_token_ttl"),
        ({"leeway": -MIN}, "leeway"),
    ],
)
def test_key_policy_validation(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        KeyPolicy(**kwargs)


def test_key_policy_defaults() -> None:
    policy = KeyPolicy()
    assert (policy.algorithm, policy.rotation_period, policy.publish_ahead) == ("ES256", 30 * DAY, 10 * MIN)
    assert policy.retention == timedelta(hours=168, minutes=5)


# --- KeyRing queries --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_keys() -> tuple[SigningKey, SigningKey, SigningKey]:
    """old: signed from T0 to T0+10d; current: signs from T0+10d; pending: signs from T0+20d."""
    old = replace(generate_key("ES256", T0), retired_at=T0 + 10 * DAY)
    current = generate_key("EdDSA", T0 + 10 * DAY)
    pending = replace(generate_key("RS256", T0 + 20 * DAY - HOUR), activates_at=T0 + 20 * DAY)
    return old, current, pending


@pytest.mark.parametrize(
    ("at", "signer", "published"),
    [
        pytest.param(T0 - MIN, None, ["pending", "current", "old"], id="before anything signs"),
        pytest.param(T0, "old", ["pending", "current", "old"], id="old signs"),
        pytest.param(T0 + 10 * DAY, "current", ["pending", "current", "old"], id="handover"),
        pytest.param(T0 + 17 * DAY + 5 * MIN, "current", ["pending", "current", "old"], id="old retained"),
        pytest.param(T0 + 17 * DAY + 6 * MIN, "current", ["pending", "current"], id="old gone"),
        pytest.param(T0 + 20 * DAY, "pending", ["pending", "current"], id="pending takes over"),
    ],
)
def test_ring_signing_and_published(
    three_keys: tuple[SigningKey, ...], at: datetime, signer: str | None, published: list[str]
) -> None:
    names = dict(zip(("old", "current", "pending"), three_keys, strict=True))
    ring = KeyRing(three_keys)  # default retention: 168h + 5min
    found = ring.signing_key(at)
    assert found == (names[signer] if signer else None)
    assert [k.kid for k in ring.published(at)] == [names[n].kid for n in published]
    assert [k["kid"] for k in ring.jwks(at)["keys"]] == [names[n].kid for n in published]


def test_jwks_never_contains_private_members(three_keys: tuple[SigningKey, ...]) -> None:
    jwks = KeyRing(three_keys).jwks(T0 + DAY)
    assert len(jwks["keys"]) == 3
    for public in jwks["keys"]:
        assert not PRIVATE_MEMBERS & public.keys()
        assert public["use"] == "sig"
    text = json.dumps(jwks)
    for k in three_keys:
        for name in PRIVATE_MEMBERS & k.private_jwk.keys():
            assert k.private_jwk[name] not in text


def test_duplicate_kids_rejected(key: SigningKey) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        KeyRing((key, replace(key, retired_at=T0 + DAY)))


# --- storage --------------------------------------------------------------------------------------------


def test_json_round_trip(three_keys: tuple[SigningKey, ...]) -> None:
    ring = KeyRing(three_keys, retention=timedelta(hours=25))
    text = ring.to_json()
    assert KeyRing.from_json(text) == ring
    assert KeyRing.from_json(text).to_json() == text
    assert "d" in json.loads(text)["keys"][0]["jwk"]  # the stored form does keep the private key


def _mutate(text: str, edit: Any) -> str:
    doc = json.loads(text)
    edit(doc)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.update(keys={}), "'keys'"),
        (lambda d: d.pop("retentionSeconds"), "retentionSeconds"),
        (lambda d: d["keys"][0].update(kid="forged"), "thumbprint"),
        (lambda d: d["keys"][0].update(alg="RS256"), "not a private RS256 key"),
        (lambda d: d["keys"][0].update(alg="HS256"), "alg"),
        (lambda d: d["keys"][0]["jwk"].pop("d"), "not a private"),
        (lambda d: d["keys"][0]["jwk"].update(x="!!"), "not a valid JWK"),
        (lambda d: d["keys"][0].update(createdAt="2025-01-01T00:00:00"), "timezone-aware"),
        (lambda d: d["keys"][0].update(activatesAt="yesterday"), "activatesAt"),
        (lambda d: d["keys"][0].update(retiredAt=5), "retiredAt"),
        (lambda d: d["keys"].append(d["keys"][0]), "duplicate"),
    ],
)
def test_from_json_rejects_bad_rings(three_keys: tuple[SigningKey, ...], edit: Any, fragment: str) -> None:
    text = _mutate(KeyRing(three_keys).to_json(), edit)
    with pytest.raises(ValueError, match=fragment) as err:
        KeyRing.from_json(text)
    for k in three_keys:  # errors never echo key material
        assert k.private_jwk["d"] not in str(err.value)


def test_from_json_rejects_garbage_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="not valid JSON") as err:
        KeyRing.from_json('{"secret-ish": ')
    assert "secret-ish" not in str(err.value)


# --- plan_rotation ----------------------------------------------------------------------------------------

POLICY = KeyPolicy(rotation_period=30 * DAY, publish_ahead=10 * MIN)


def test_bootstrap_generates_one_key_that_signs_at_once() -> None:
    ring, reasons = plan_rotation(KeyRing(), POLICY, T0)
    assert len(ring.keys) == 1
    (only,) = ring.keys
    assert only.activates_at == T0
    assert only.algorithm == "ES256"
    assert ring.signing_key(T0) == only
    assert reasons == [f"generated key {only.kid} (ES256; no key could sign, so it signs at once)"]


def test_plan_is_idempotent_at_the_same_time() -> None:
    ring, _ = plan_rotation(KeyRing(), POLICY, T0)
    for at in (T0, T0 + 30 * DAY - 10 * MIN, T0 + 30 * DAY, T0 + 40 * DAY):
        ring, _ = plan_rotation(ring, POLICY, at)
        assert plan_rotation(ring, POLICY, at) == (ring, [])


def test_rotation_publishes_ahead_then_activates_then_removes() -> None:
    ring, _ = plan_rotation(KeyRing(), POLICY, T0)
    first = ring.keys[0]

    # Not due yet.
    assert plan_rotation(ring, POLICY, T0 + 30 * DAY - 11 * MIN) == (ring, [])

    # Due: a new key is published ahead; the old one keeps signing.
    due = T0 + 30 * DAY - 10 * MIN
    ring, reasons = plan_rotation(ring, POLICY, due)
    second = ring.keys[1]
    assert second.created_at == due
    assert second.activates_at == due + 10 * MIN
    assert ring.signing_key(due) == first
    assert ring.pending(due) == [second]
    assert [k.kid for k in ring.published(due)] == [second.kid, first.kid]
    assert reasons == [
        f"generated key {second.kid} (ES256; key {first.kid} is due for rotation; "
        f"publish ahead until {(due + 10 * MIN).isoformat(timespec='seconds')})"
    ]

    # Activation (planned late, at +1 h): the old key is retired at the new key's activation time.
    late = due + HOUR
    ring, reasons = plan_rotation(ring, POLICY, late)
    assert reasons[0] == f"activated key {second.kid}"
    assert reasons[1].startswith(f"retired key {first.kid}")
    retired = next(k for k in ring.keys if k.kid == first.kid)
    assert retired.retired_at == second.activates_at
    assert ring.signing_key(late).kid == second.kid  # type: ignore[union-attr]

    # Still published until retired_at + max_token_ttl + leeway, removed after that.
    keep_until = second.activates_at + POLICY.max_token_ttl + POLICY.leeway
    ring, reasons = plan_rotation(ring, POLICY, keep_until)
    assert first.kid in {k.kid for k in ring.published(keep_until)}
    assert reasons == []
    ring, reasons = plan_rotation(ring, POLICY, keep_until + timedelta(seconds=1))
    assert [k.kid for k in ring.keys] == [second.kid]
    assert reasons == [
        f"removed key {first.kid} (retired at {second.activates_at.isoformat(timespec='seconds')}; "
        "its tokens have expired)"
    ]


def test_algorithm_change_rotates_with_publish_ahead() -> None:
    ring, _ = plan_rotation(KeyRing(), POLICY, T0)
    policy = replace(POLICY, algorithm="EdDSA")
    ring, reasons = plan_rotation(ring, policy, T0 + DAY)
    new = ring.keys[-1]
    assert new.algorithm == "EdDSA"
    assert new.activates_at == T0 + DAY + 10 * MIN
    assert "algorithm change ES256 -> EdDSA" in reasons[0]
    assert ring.signing_key(T0 + DAY).algorithm == "ES256"  # type: ignore[union-attr]
    assert plan_rotation(ring, policy, T0 + DAY + 5 * MIN) == (ring, [])  # pending already: nothing to do
    ring, _ = plan_rotation(ring, policy, T0 + DAY + 10 * MIN)
    assert ring.signing_key(T0 + DAY + 10 * MIN) == new


def test_zero_publish_ahead_still_idempotent() -> None:
    policy = KeyPolicy(rotation_period=DAY, publish_ahead=timedelta(0))
    ring, _ = plan_rotation(KeyRing(), policy, T0)
    ring, reasons = plan_rotation(ring, policy, T0 + DAY)
    assert len(ring.keys) == 2
    assert ring.signing_key(T0 + DAY) == ring.keys[1]
    assert any(r.startswith("retired key") for r in reasons)
    assert plan_rotation(ring, policy, T0 + DAY) == (ring, [])


def test_ring_without_a_signer_gets_one_immediately() -> None:
    # Only a pending key (for instance restored from a Secret written by a misconfigured clock).
    pending = replace(generate_key("ES256", T0), activates_at=T0 + HOUR)
    ring, reasons = plan_rotation(KeyRing((pending,)), POLICY, T0)
    assert ring.signing_key(T0) is not None
    assert ring.signing_key(T0) != pending
    assert "no key could sign" in reasons[0]
    assert plan_rotation(ring, POLICY, T0) == (ring, [])
    ring, _ = plan_rotation(ring, POLICY, T0 + HOUR)
    assert ring.signing_key(T0 + HOUR) == pending


def test_retention_follows_the_policy() -> None:
    policy = KeyPolicy(max_token_ttl=HOUR, leeway=MIN)
    ring, reasons = plan_rotation(KeyRing(), policy, T0)
    assert ring.retention == HOUR + MIN
    assert reasons[-1] == "retention of retired keys set to 1h1m"


# --- walking the clock --------------------------------------------------------------------------------------

WALK = KeyPolicy(rotation_period=7 * DAY, publish_ahead=HOUR, max_token_ttl=24 * HOUR, leeway=5 * MIN)


def walk_policy(at: datetime) -> KeyPolicy:
    """ES256 for 40 days, then EdDSA, then RS256 from day 70: every algorithm signs during the walk."""
    age = at - T0
    return replace(WALK, algorithm="ES256" if age < 40 * DAY else "EdDSA" if age < 70 * DAY else "RS256")


def test_walk_100_days_in_hourly_steps() -> None:
    step = HOUR
    ring = KeyRing()
    first_published: dict[str, datetime] = {}
    signers: dict[str, SigningKey] = {}
    ever: dict[str, SigningKey] = {}
    live: list[MintedToken] = []
    minted_with: set[str] = set()
    verifications = 0

    for i in range(100 * 24 + 1):
        now = T0 + i * step
        policy = walk_policy(now)
        ring, _ = plan_rotation(ring, policy, now)
        assert plan_rotation(ring, policy, now) == (ring, [])  # idempotent at every step

        # Exactly one key may sign, and it is the one the ring picks.
        active = [k for k in ring.keys if k.is_active(now)]
        assert len(active) == 1
        signer = ring.signing_key(now)
        assert signer == active[0]

        published = ring.published(now)
        for k in published:
            first_published.setdefault(k.kid, now)
            assert first_published[k.kid] == k.created_at
        assert signer.kid in {k.kid for k in published}
        if signer.kid not in signers:
            signers[signer.kid] = signer
            if len(signers) > 1:  # all but the bootstrap key were published ahead
                assert signer.activates_at - first_published[signer.kid] >= policy.publish_ahead

        # Keys are removed once every token they signed has expired, and the ring stays small.
        ever.update({k.kid: k for k in ring.keys})
        gone = {kid for kid, k in ever.items() if k.retired_at and k.retired_at + policy.retention < now}
        assert not gone & {k.kid for k in ring.keys}
        assert len(ring.keys) <= 3

        if i % 6 == 0:  # a token every 6 hours; every other one with the longest ttl allowed
            ttl = policy.max_token_ttl if i % 12 == 0 else 90 * MIN
            live.append(mint(request(ttl), signer, issuer=ISSUER, now=now))
            minted_with.add(signer.algorithm)

        # Every live token verifies now, and at its exact expiry if that comes before the next step.
        jwks = ring.jwks(now)
        still_live = []
        for token in live:
            if token.expires_at < now:
                continue
            verify(token.token, jwks, issuer=ISSUER, now=now, audience=AUDIENCE)
            if token.expires_at < now + step:
                verify(token.token, ring.jwks(token.expires_at), issuer=ISSUER, now=token.expires_at)
            else:
                still_live.append(token)
            verifications += 1
        live = still_live

    assert minted_with == set(SUPPORTED_ALGORITHMS)
    assert len(signers) >= 100 // 7 + 2  # regular rotations plus two algorithm changes
    assert verifications > 5000
    # The early keys are long gone.
    assert not set(list(signers)[:5]) & {k.kid for k in ring.keys}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # one more time than gaps (the start), and one ttl and algorithm per time
    gaps=st.lists(st.timedeltas(min_value=timedelta(seconds=1), max_value=5 * DAY), min_size=1, max_size=29),
    ttls=st.lists(
        st.timedeltas(min_value=timedelta(seconds=1), max_value=12 * HOUR), min_size=30, max_size=30
    ),
    algorithms=st.lists(st.sampled_from(SUPPORTED_ALGORITHMS), min_size=30, max_size=30),
)
def test_walk_with_irregular_reconciles(
    gaps: list[timedelta], ttls: list[timedelta], algorithms: list[str]
) -> None:
    """Reconciles may come late or be skipped for days; the overlap guarantees must still hold."""
    base = KeyPolicy(rotation_period=3 * DAY, publish_ahead=2 * HOUR, max_token_ttl=12 * HOUR, leeway=MIN)
    ring = KeyRing()
    bootstrap: str | None = None
    tokens: list[MintedToken] = []
    times = [T0]
    for gap in gaps:
        times.append(times[-1] + gap)
    for i, now in enumerate(times):
        policy = replace(base, algorithm=algorithms[i])
        ring, _ = plan_rotation(ring, policy, now)
        assert plan_rotation(ring, policy, now) == (ring, [])
        signer = ring.signing_key(now)
        assert signer is not None
        assert sum(k.is_active(now) for k in ring.keys) == 1
        bootstrap = bootstrap or signer.kid
        tokens.append(mint(request(ttls[i]), signer, issuer=ISSUER, now=now))

        # Until the next reconcile the ring is what verifiers see; check its worst moments.
        upcoming = times[i + 1] if i + 1 < len(times) else now + 30 * DAY
        for at in {now, now + (upcoming - now) / 2, upcoming - timedelta(microseconds=1)}:
            acting = ring.signing_key(at)
            assert acting is not None
            published = {k.kid for k in ring.published(at)}
            assert acting.kid in published
            if acting.kid != bootstrap:
                assert acting.activates_at - acting.created_at >= policy.publish_ahead
            for token in tokens:
                if token.issued_at <= at <= token.expires_at:
                    assert token.key_id in published
        last = min(upcoming - timedelta(microseconds=1), tokens[-1].expires_at)
        verify(tokens[-1].token, ring.jwks(last), issuer=ISSUER, now=last)


# --- interoperability ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", SUPPORTED_ALGORITHMS)
def test_pyjwt_verifies_our_tokens_with_our_jwks(algorithm: str) -> None:
    ring, _ = plan_rotation(KeyRing(), KeyPolicy(algorithm=algorithm), T0)
    signer = ring.signing_key(T0)
    assert signer is not None
    minted = mint(request(), signer, issuer=ISSUER, now=T0)

    keyset = pyjwt.PyJWKSet.from_dict(ring.jwks(T0))
    header = pyjwt.get_unverified_header(minted.token)
    assert header == {"alg": algorithm, "kid": signer.kid, "typ": "at+jwt"}
    claims = pyjwt.decode(
        minted.token,
        keyset[header["kid"]],
        algorithms=[algorithm],
        audience=AUDIENCE,
        issuer=ISSUER,
        # PyJWT reads the wall clock, and these tokens were minted at T0: check exp by hand below.
        options={"verify_exp": False, "require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    assert claims == minted.claims
    assert claims["exp"] == int((T0 + HOUR).timestamp())


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_we_verify_tokens_signed_by_pyjwt(algorithm: str) -> None:
    ring, _ = plan_rotation(KeyRing(), KeyPolicy(algorithm=algorithm), T0)
    signer = ring.signing_key(T0)
    assert signer is not None
    claims = mint(request(), signer, issuer=ISSUER, now=T0).claims
    private = pyjwt.PyJWK({**signer.private_jwk, "alg": algorithm})
    token = pyjwt.encode(
        claims, private.key, algorithm=algorithm, headers={"kid": signer.kid, "typ": "at+jwt"}
    )
    assert verify(token, ring.jwks(T0), issuer=ISSUER, now=T0, audience=AUDIENCE) == claims
