"""Access-token claims, minting and verification (RFC 9068), with an injected clock."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jwk, jws, jwt
from joserfc.errors import SecurityWarning

from agenttoken.core.keys import SUPPORTED_ALGORITHMS, KeyRing, SigningKey, generate_key, jws_registry
from agenttoken.core.tokens import (
    CLAIM_NAMESPACE,
    MintedToken,
    TokenInvalid,
    TokenRequest,
    build_claims,
    default_subject,
    mint,
    token_hash,
    verify,
)

ISSUER = "https://tokens.example.com"
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
T0_S = int(T0.timestamp())


def request(**overrides: Any) -> TokenRequest:
    fields: dict[str, Any] = {
        "namespace": "team-a",
        "name": "crawler",
        "uid": "0b8f6c2e-1111-2222-3333-444455556666",
        "subject": None,
        "audience": ("https://api.example.com",),
        "scopes": ("read:docs", "write:notes"),
        "ttl": timedelta(hours=1),
    }
    fields.update(overrides)
    return TokenRequest(**fields)


@pytest.fixture(scope="module", params=SUPPORTED_ALGORITHMS)
def key(request: pytest.FixtureRequest) -> SigningKey:
    return generate_key(request.param, T0 - timedelta(days=1))


@pytest.fixture(scope="module")
def es256() -> SigningKey:
    return generate_key("ES256", T0 - timedelta(days=1))


def jwks_of(*keys: SigningKey) -> dict[str, Any]:
    return KeyRing(keys).jwks(T0)


# --- claims ----------------------------------------------------------------------------------------


def test_default_subject() -> None:
    assert default_subject("team-a", "crawler") == "agenttoken:team-a:crawler"


def test_build_claims_full() -> None:
    req = request(environment="prod", allowed_cidrs=("10.0.0.0/8", "2001:db8::/32", "192.0.2.7"))
    claims = build_claims(req, issuer=ISSUER, now=T0 + timedelta(microseconds=999_999), jti="j-1")
    assert claims == {
        "iss": ISSUER,
        "sub": "agenttoken:team-a:crawler",
        "aud": ["https://api.example.com"],
        "exp": T0_S + 3600,
        "iat": T0_S,
        "nbf": T0_S,
        "jti": "j-1",
        "client_id": "agenttoken:team-a:crawler",
        "scope": "read:docs write:notes",
        "env": "prod",
        "cidr": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"],
        CLAIM_NAMESPACE: {
            "namespace": "team-a",
            "name": "crawler",
            "uid": "0b8f6c2e-1111-2222-3333-444455556666",
        },
    }


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"subject": "spiffe://cluster/ns/team-a/sa/bot"}, {"sub": "spiffe://cluster/ns/team-a/sa/bot"}
        ),
        pytest.param({"audience": ("a", "b")}, {"aud": ["a", "b"]}, id="several audiences"),
        pytest.param({"scopes": ("z", "a", "m")}, {"scope": "z a m"}, id="scope order kept"),
        pytest.param(
            {"ttl": timedelta(minutes=5, milliseconds=900)}, {"exp": T0_S + 300}, id="ttl whole seconds"
        ),
    ],
)
def test_build_claims_variants(overrides: dict[str, Any], expected: dict[str, Any]) -> None:
    claims = build_claims(request(**overrides), issuer=ISSUER, now=T0, jti="j")
    assert {k: claims[k] for k in expected} == expected
    assert claims["client_id"] == "agenttoken:team-a:crawler"  # client_id always names the AgentToken


def test_build_claims_minimal_leaves_out_optional_claims() -> None:
    claims = build_claims(request(scopes=()), issuer=ISSUER, now=T0, jti="j")
    assert "scope" not in claims
    assert claims[CLAIM_NAMESPACE] == {
        "namespace": "team-a",
        "name": "crawler",
        "uid": "0b8f6c2e-1111-2222-3333-444455556666",
    }


@given(
    now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    ttl_s=st.integers(1, 7 * 24 * 3600),
    audience=st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4).map(tuple),
)
def test_claims_times_and_audience(now: datetime, ttl_s: int, audience: tuple[str, ...]) -> None:
    claims = build_claims(
        request(ttl=timedelta(seconds=ttl_s), audience=audience), issuer=ISSUER, now=now, jti="j"
    )
    assert claims["iat"] == claims["nbf"] <= now.timestamp() < claims["iat"] + 1
    assert claims["exp"] - claims["iat"] == ttl_s
    assert claims["aud"] == list(audience)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"audience": ()}, "audience"),
        ({"audience": ("",)}, "audience"),
        ({"scopes": ("read docs",)}, "scope"),
        ({"scopes": ("",)}, "scope"),
        ({"scopes": ('a"b',)}, "scope"),
        ({"ttl": timedelta(0)}, "ttl"),
        ({"ttl": timedelta(milliseconds=500)}, "ttl"),
        ({"namespace": ""}, "namespace"),
        ({"uid": ""}, "uid"),
        ({"allowed_cidrs": ("10.0.0.1/8",)}, "CIDR"),
        ({"allowed_cidrs": ("not-a-network",)}, "CIDR"),
    ],
)
def test_token_request_validation(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        request(**overrides)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"issuer": ISSUER, "now": T0.replace(tzinfo=None), "jti": "j"}, "timezone-aware"),
        ({"issuer": "", "now": T0, "jti": "j"}, "issuer"),
        ({"issuer": ISSUER, "now": T0, "jti": ""}, "jti"),
    ],
)
def test_build_claims_rejects_bad_arguments(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        build_claims(request(), **kwargs)


# --- minting ----------------------------------------------------------------------------------------


def test_mint_header_claims_and_times(key: SigningKey) -> None:
    minted = mint(request(), key, issuer=ISSUER, now=T0, jti="fixed-id")
    header = jws.extract_compact(minted.token.encode()).headers()
    assert header == {"alg": key.algorithm, "kid": key.kid, "typ": "at+jwt"}
    assert minted.token_id == "fixed-id" == minted.claims["jti"]
    assert minted.key_id == key.kid
    assert minted.issued_at == T0
    assert minted.expires_at == T0 + timedelta(hours=1)
    assert minted.claims == build_claims(request(), issuer=ISSUER, now=T0, jti="fixed-id")
    assert verify(minted.token, jwks_of(key), issuer=ISSUER, now=T0) == minted.claims


def test_mint_default_jti_is_a_fresh_uuid(es256: SigningKey) -> None:
    ids = {mint(request(), es256, issuer=ISSUER, now=T0).token_id for _ in range(5)}
    assert len(ids) == 5
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_minted_token_repr_hides_the_token(key: SigningKey) -> None:
    minted = mint(request(), key, issuer=ISSUER, now=T0)
    for text in (repr(minted), str(minted)):
        assert minted.token not in text
        assert minted.token.split(".")[2] not in text  # not even the signature
    assert minted.token_id in repr(minted)


def test_token_hash() -> None:
    assert token_hash("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert token_hash("abc") != token_hash("abd")


def test_minted_token_hash_property(es256: SigningKey) -> None:
    minted = mint(request(), es256, issuer=ISSUER, now=T0)
    assert minted.token_hash == token_hash(minted.token)


# --- verification -----------------------------------------------------------------------------------


def test_verify_accepts_all_algorithms_and_checks_audience(key: SigningKey) -> None:
    minted = mint(request(audience=("a", "b")), key, issuer=ISSUER, now=T0)
    claims = verify(minted.token, jwks_of(key), issuer=ISSUER, now=T0 + timedelta(minutes=59), audience="b")
    assert claims["aud"] == ["a", "b"]


@pytest.mark.parametrize(
    ("at", "ok"),
    [
        (T0 - timedelta(seconds=30), True),  # nbf within leeway (clock skew)
        (T0 - timedelta(seconds=31), False),
        (T0 + timedelta(hours=1) + timedelta(seconds=29), True),  # exp within leeway
        (T0 + timedelta(hours=1) + timedelta(seconds=30), False),
    ],
)
def test_verify_time_window_with_leeway(es256: SigningKey, at: datetime, ok: bool) -> None:
    minted = mint(request(), es256, issuer=ISSUER, now=T0)
    if ok:
        verify(minted.token, jwks_of(es256), issuer=ISSUER, now=at)
    else:
        with pytest.raises(TokenInvalid):
            verify(minted.token, jwks_of(es256), issuer=ISSUER, now=at)


def _sign(header: dict[str, Any], claims: dict[str, Any], key: Any, alg: str) -> str:
    return jwt.encode(header, claims, key, algorithms=[alg])


def _tamper_payload(token: str) -> str:
    """Swap in the payload segment of an unrelated token, keeping header and signature."""
    head, _, sig = token.split(".")
    other = jwt.encode({"alg": "HS256"}, {"iss": "evil"}, jwk.OctKey.generate_key(256)).split(".")[1]
    return ".".join([head, other, sig])


def _unsigned(kid: str) -> str:
    with pytest.warns(SecurityWarning):  # joserfc (rightly) warns about "none"
        return jws.serialize_compact(
            {"alg": "none", "kid": kid, "typ": "at+jwt"}, b"{}", None, algorithms=["none"]
        )


# Each case builds a bad token from a good one (token, claims, key) and names the expected check.
Case = Callable[[str, dict[str, Any], SigningKey], tuple[str, dict[str, Any]]]
CASES: list[tuple[str, Case, str]] = [
    ("unknown kid", lambda t, c, k: (t, jwks_of(generate_key("ES256", T0))), "kid"),
    ("tampered payload", lambda t, c, k: (_tamper_payload(t), jwks_of(k)), "signature"),
    (
        "signed by another key with the same kid",
        lambda t, c, k: (
            _sign(
                {"alg": "ES256", "kid": k.kid, "typ": "at+jwt"}, c, jwk.ECKey.generate_key("P-256"), "ES256"
            ),
            jwks_of(k),
        ),
        "signature",
    ),
    (
        "typ JWT",
        lambda t, c, k: (
            _sign({"alg": "ES256", "kid": k.kid, "typ": "JWT"}, c, k.joserfc_key, "ES256"),
            jwks_of(k),
        ),
        "typ",
    ),
    (
        "no typ",
        lambda t, c, k: (
            jwt.encode(
                {"alg": "ES256", "kid": k.kid}, c, k.joserfc_key, algorithms=["ES256"], default_type=None
            ),
            jwks_of(k),
        ),
        "typ",
    ),
    ("alg none", lambda t, c, k: (_unsigned(k.kid), jwks_of(k)), "alg"),
    (
        "HS256 with a guessable secret",
        lambda t, c, k: (
            _sign(
                {"alg": "HS256", "kid": k.kid, "typ": "at+jwt"}, c, jwk.OctKey.import_key(b"k" * 32), "HS256"
            ),
            jwks_of(k),
        ),
        "alg",
    ),
    (
        "no kid",
        lambda t, c, k: (_sign({"alg": "ES256", "typ": "at+jwt"}, c, k.joserfc_key, "ES256"), jwks_of(k)),
        "kid",
    ),
    (
        "missing client_id",
        lambda t, c, k: (
            _sign(
                {"alg": "ES256", "kid": k.kid, "typ": "at+jwt"},
                {n: v for n, v in c.items() if n != "client_id"},
                k.joserfc_key,
                "ES256",
            ),
            jwks_of(k),
        ),
        "claims",
    ),
    (
        "wrong issuer",
        lambda t, c, k: (
            _sign(
                {"alg": "ES256", "kid": k.kid, "typ": "at+jwt"},
                {**c, "iss": "https://evil"},
                k.joserfc_key,
                "ES256",
            ),
            jwks_of(k),
        ),
        "iss",
    ),
    (
        "issued in the future",
        lambda t, c, k: (
            _sign(
                {"alg": "ES256", "kid": k.kid, "typ": "at+jwt"},
                {**c, "iat": c["iat"] + 3600, "nbf": c["iat"]},
                k.joserfc_key,
                "ES256",
            ),
            jwks_of(k),
        ),
        "iat",
    ),
    ("garbage", lambda t, c, k: ("not.a.jwt", jwks_of(k)), "format"),
    ("two segments", lambda t, c, k: (".".join(t.split(".")[:2]), jwks_of(k)), "format"),
    ("empty JWKS", lambda t, c, k: (t, {"keys": []}), "jwks"),
    ("JWKS not a JWK Set", lambda t, c, k: (t, {"nope": 1}), "jwks"),
]


@pytest.mark.parametrize(("label", "make", "check"), CASES, ids=[c[0] for c in CASES])
def test_verify_rejects_naming_the_check(es256: SigningKey, label: str, make: Case, check: str) -> None:
    good = mint(request(), es256, issuer=ISSUER, now=T0)
    token, jwks = make(good.token, good.claims, es256)
    with pytest.raises(TokenInvalid) as err:
        verify(token, jwks, issuer=ISSUER, now=T0)
    assert err.value.check == check, str(err.value)
    assert str(err.value).startswith(f"token invalid: {check}: ")
    # Neither the bad token nor the good one leaks into the error, its args, or its chained context.
    for secret in {token, good.token, good.token.split(".")[2]}:
        assert secret not in str(err.value)
        assert secret not in repr(err.value)
    assert err.value.__suppress_context__ or err.value.__context__ is None


@pytest.mark.parametrize(
    ("at", "audience", "check"),
    [
        (T0 + timedelta(hours=2), None, "exp"),
        (T0 - timedelta(minutes=5), None, "nbf"),
        (T0, "https://other.example.com", "aud"),
    ],
)
def test_verify_time_and_audience_checks(
    es256: SigningKey, at: datetime, audience: str | None, check: str
) -> None:
    minted = mint(request(), es256, issuer=ISSUER, now=T0)
    with pytest.raises(TokenInvalid) as err:
        verify(minted.token, jwks_of(es256), issuer=ISSUER, now=at, audience=audience)
    assert err.value.check == check
    assert minted.token not in str(err.value)


def test_verify_accepts_application_media_type(es256: SigningKey) -> None:
    claims = build_claims(request(), issuer=ISSUER, now=T0, jti="j")
    token = _sign(
        {"alg": "ES256", "kid": es256.kid, "typ": "application/AT+JWT"}, claims, es256.joserfc_key, "ES256"
    )
    assert verify(token, jwks_of(es256), issuer=ISSUER, now=T0)["jti"] == "j"


def test_verify_rejects_alg_that_does_not_match_the_key(key: SigningKey) -> None:
    # Algorithm confusion: the JWK says which algorithm it is for; a token naming its kid with another
    # algorithm (here signed by a key of that other algorithm) must not be accepted.
    other = next(a for a in SUPPORTED_ALGORITHMS if a != key.algorithm)
    claims = build_claims(request(), issuer=ISSUER, now=T0, jti="j")
    header = {"alg": other, "kid": key.kid, "typ": "at+jwt"}
    token = jwt.encode(header, claims, generate_key(other, T0).joserfc_key, registry=jws_registry([other]))
    with pytest.raises(TokenInvalid) as err:
        verify(token, jwks_of(key), issuer=ISSUER, now=T0)
    assert err.value.check == "kid"


def test_eddsa_is_restricted_to_ed25519() -> None:
    ed448 = jwk.OKPKey.generate_key("Ed448", parameters={"kid": "k448", "alg": "EdDSA", "use": "sig"})
    claims = build_claims(request(), issuer=ISSUER, now=T0, jti="j")
    with pytest.warns(SecurityWarning):  # joserfc's stock EdDSA warns; ours (used by verify) does not
        token = _sign({"alg": "EdDSA", "kid": "k448", "typ": "at+jwt"}, claims, ed448, "EdDSA")
    public = {"keys": [ed448.as_dict(private=False)]}
    with pytest.raises(TokenInvalid) as err:
        verify(token, public, issuer=ISSUER, now=T0)
    assert err.value.check == "key"


def test_verify_rejects_naive_now(es256: SigningKey) -> None:
    minted = mint(request(), es256, issuer=ISSUER, now=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(minted.token, jwks_of(es256), issuer=ISSUER, now=T0.replace(tzinfo=None))


def test_minted_token_is_frozen(es256: SigningKey) -> None:
    minted: MintedToken = mint(request(), es256, issuer=ISSUER, now=T0)
    with pytest.raises(AttributeError):
        minted.token = "x"  # type: ignore[misc]
