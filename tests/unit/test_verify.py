"""Verifier: every check in order, pinned algorithms, JWKS refresh limits and revocation freshness.

Time is an injected clock and HTTP is a fake fetch that counts its calls, so cache behaviour is
asserted exactly, without sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc import jwk, jwt
from prometheus_client import CollectorRegistry, generate_latest

from agenttoken.core import revocation
from agenttoken.core.keys import SUPPORTED_ALGORITHMS, KeyRing, SigningKey, generate_key, jws_registry
from agenttoken.core.revocation import Revoked
from agenttoken.core.tokens import CLAIM_NAMESPACE, MintedToken, TokenRequest, mint
from agenttoken_sdk.verify import CHECKS, Claims, VerificationError, Verifier
from agenttoken_sdk.verifylog import VerificationAudit

ISSUER = "https://issuer.example.com"
AUDIENCE = "https://api.example.com"
JWKS_URL = f"{ISSUER}/.well-known/jwks.json"
REVOCATIONS_URL = f"{ISSUER}/revocations"
ENVIRONMENT = "prod"
T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
CLIENT = "10.1.2.3"


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class FakeFetch:
    """Serves documents by URL and records every request; a missing URL fails like a refused connection."""

    docs: dict[str, bytes] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        if url not in self.docs:
            raise ConnectionRefusedError(f"no server for {url}")
        return self.docs[url]

    def count(self, url: str) -> int:
        return self.calls.count(url)


def token_request(**overrides: Any) -> TokenRequest:
    fields: dict[str, Any] = {
        "namespace": "team-a",
        "name": "crawler",
        "uid": "0b8f6c2e-1111-2222-3333-444455556666",
        "subject": None,
        "audience": (AUDIENCE, "https://other.example.com"),
        "scopes": ("read:docs", "write:notes"),
        "ttl": timedelta(hours=1),
        "environment": ENVIRONMENT,
        "allowed_cidrs": ("10.0.0.0/8", "2001:db8::/32"),
    }
    fields.update(overrides)
    return TokenRequest(**fields)


def jwks_of(*keys: SigningKey) -> dict[str, Any]:
    return KeyRing(keys).jwks(T0)


# Signs the revocation lists of these tests (published in the World's JWKS beside the token keys).
LIST_KEY = generate_key("ES256", T0 - timedelta(days=1))


def revocation_list(*tokens: MintedToken, now: datetime = T0) -> bytes:
    """The signed document the operator serves, issued at now (valid for revocation.VALIDITY)."""
    entries = [
        Revoked(t.token_id, t.expires_at, "team-a", "crawler", revoked_at=T0, reason="Compromised")
        for t in tokens
    ]
    parts = [revocation.next_part(revocation.empty_part(i), entries, now) for i in range(revocation.PARTS)]
    return json.dumps({"lists": [revocation.sign_part(p, LIST_KEY, ISSUER) for p in parts]}).encode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(doc: dict[str, Any]) -> str:
    return b64(json.dumps(doc).encode())


def sign(header: dict[str, Any], claims: dict[str, Any], key: Any, alg: str) -> str:
    return jwt.encode(header, claims, key, algorithms=[alg], registry=jws_registry([alg]))


@pytest.fixture(scope="module")
def es256() -> SigningKey:
    return generate_key("ES256", T0 - timedelta(days=1))


@pytest.fixture(scope="module")
def rs256() -> SigningKey:
    return generate_key("RS256", T0 - timedelta(days=1))


@pytest.fixture(scope="module")
def eddsa() -> SigningKey:
    return generate_key("EdDSA", T0 - timedelta(days=1))


@dataclass
class World:
    """A verifier for AUDIENCE in ENVIRONMENT whose issuer publishes three keys, and its fake network."""

    keys: dict[str, SigningKey]
    clock: Clock = field(default_factory=Clock)
    fetch: FakeFetch = field(default_factory=FakeFetch)

    def __post_init__(self) -> None:
        self.fetch.docs[JWKS_URL] = json.dumps(jwks_of(*self.keys.values(), LIST_KEY)).encode()
        self.fetch.docs[REVOCATIONS_URL] = revocation_list()

    def verifier(self, **overrides: Any) -> Verifier:
        options: dict[str, Any] = {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks_url": JWKS_URL,
            "revocations_url": REVOCATIONS_URL,
            "environment": ENVIRONMENT,
            "clock": self.clock,
            "fetch": self.fetch,
        }
        options.update(overrides)
        return Verifier(**options)

    def mint(
        self, alg: str = "ES256", *, now: datetime = T0, issuer: str = ISSUER, **req: Any
    ) -> MintedToken:
        return mint(token_request(**req), self.keys[alg], issuer=issuer, now=now)


@pytest.fixture
def world(es256: SigningKey, rs256: SigningKey, eddsa: SigningKey) -> World:
    return World({"ES256": es256, "RS256": rs256, "EdDSA": eddsa})


# ---------------------------------------------------------------------------------------------- success


@pytest.mark.parametrize("alg", SUPPORTED_ALGORITHMS)
def test_valid_token_passes_and_returns_typed_claims(world: World, alg: str) -> None:
    minted = world.mint(alg, now=T0 - timedelta(minutes=5))

    claims = world.verifier().verify(minted.token, required_scopes=("read:docs",), client_address=CLIENT)

    assert claims == Claims(
        subject="agenttoken:team-a:crawler",
        client_id="agenttoken:team-a:crawler",
        audience=(AUDIENCE, "https://other.example.com"),
        scopes=("read:docs", "write:notes"),
        token_id=minted.token_id,
        issued_at=T0 - timedelta(minutes=5),
        expires_at=T0 + timedelta(minutes=55),
        environment=ENVIRONMENT,
        cidrs=("10.0.0.0/8", "2001:db8::/32"),
        namespace="team-a",
        name="crawler",
        uid="0b8f6c2e-1111-2222-3333-444455556666",
        raw=minted.claims,
    )
    assert claims.raw == minted.claims
    assert minted.token not in repr(claims)


def test_token_without_bindings_passes_a_verifier_without_environment(world: World) -> None:
    minted = world.mint(environment=None, allowed_cidrs=(), scopes=())

    claims = world.verifier(environment=None).verify(minted.token)

    assert (claims.environment, claims.cidrs, claims.scopes) == (None, (), ())


def test_static_jwks_is_used_without_fetching(world: World) -> None:
    verifier = world.verifier(jwks_url=None, jwks=jwks_of(world.keys["ES256"]), revocations_url=None)

    verifier.verify(world.mint().token, client_address=CLIENT)

    assert world.fetch.calls == []


def test_leeway_accepts_slightly_expired_and_slightly_early_tokens(world: World) -> None:
    verifier = world.verifier(leeway=timedelta(seconds=30))
    expired = world.mint(now=T0 - timedelta(hours=1, seconds=29))  # expired 29s ago
    early = world.mint(now=T0 + timedelta(seconds=29))  # valid in 29s

    verifier.verify(expired.token, client_address=CLIENT)
    verifier.verify(early.token, client_address=CLIENT)


def test_ipv4_mapped_ipv6_client_address_matches_ipv4_cidr(world: World) -> None:
    world.verifier().verify(world.mint().token, client_address="::ffff:10.9.9.9")
    world.verifier().verify(world.mint().token, client_address="2001:db8::1")


def test_required_scopes_may_be_a_space_delimited_string(world: World) -> None:
    world.verifier().verify(
        world.mint().token, required_scopes="write:notes read:docs", client_address=CLIENT
    )
    with pytest.raises(VerificationError, match="missing required scope"):
        world.verifier().verify(world.mint().token, required_scopes="read:docs admin", client_address=CLIENT)


# ---------------------------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class Case:
    token: str
    verifier: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=lambda: {"client_address": CLIENT})


def _unsigned(world: World) -> Case:
    claims = world.mint().claims
    header = {"alg": "none", "kid": world.keys["ES256"].kid, "typ": "at+jwt"}
    return Case(f"{b64json(header)}.{b64json(claims)}.")


def _hs256_with_public_key(world: World) -> Case:
    # Key confusion: an HMAC "signature" made with the public key (which everyone has) as the secret.
    # PyJWT and joserfc refuse a PEM as HMAC key, so the MAC is computed by hand.
    key = world.keys["RS256"]
    pem = jwk.RSAKey.import_key(key.public_jwk()).as_pem(private=False)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    signing_input = (
        f"{b64json({'alg': 'HS256', 'kid': key.kid, 'typ': 'at+jwt'})}.{b64json(world.mint().claims)}"
    )
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return Case(f"{signing_input}.{b64(mac)}")


def _alg_not_matching_key(world: World) -> Case:
    # The header names the ES256 key's kid but says RS256 (signed by the RS256 key).
    claims = world.mint().claims
    header = {"alg": "RS256", "kid": world.keys["ES256"].kid, "typ": "at+jwt"}
    return Case(sign(header, claims, world.keys["RS256"].joserfc_key, "RS256"))


def _forged_with_known_kid(world: World) -> Case:
    claims = world.mint().claims
    header = {"alg": "ES256", "kid": world.keys["ES256"].kid, "typ": "at+jwt"}
    return Case(sign(header, claims, jwk.ECKey.generate_key("P-256"), "ES256"))


def _tampered_payload(world: World) -> Case:
    header, _, signature = world.mint().token.split(".")
    claims = {**world.mint().claims, "scope": "read:docs write:notes admin"}
    return Case(f"{header}.{b64json(claims)}.{signature}")


def _with_header(world: World, **header: Any) -> Case:
    key = world.keys["ES256"]
    base = {"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}
    full = {k: v for k, v in {**base, **header}.items() if v is not None}
    return Case(sign(full, world.mint().claims, key.joserfc_key, "ES256"))


def _swap_header(world: World, **header: Any) -> Case:
    # A header joserfc would not sign; format is checked before the signature, so it need not verify.
    key = world.keys["ES256"]
    _, payload, signature = world.mint().token.split(".")
    return Case(
        f"{b64json({'alg': 'ES256', 'kid': key.kid, 'typ': 'at+jwt', **header})}.{payload}.{signature}"
    )


def _without_claim(world: World, name: str) -> Case:
    claims = {k: v for k, v in world.mint().claims.items() if k != name}
    key = world.keys["ES256"]
    return Case(sign({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, claims, key.joserfc_key, "ES256"))


CASES: list[tuple[str, Callable[[World], Case], str]] = [
    ("not a JWT", lambda w: Case("not-a-token"), "format"),
    ("empty", lambda w: Case(""), "format"),
    ("four parts", lambda w: Case(w.mint().token + ".x"), "format"),
    ("header not JSON", lambda w: Case("e30x." + w.mint().token.split(".", 1)[1]), "format"),
    ("payload is a list", lambda w: Case(f"{b64json({'alg': 'ES256'})}.{b64(b'[1]')}.c2ln"), "format"),
    ("missing jti", lambda w: _without_claim(w, "jti"), "format"),
    ("crit header", lambda w: _swap_header(w, crit=["exp"], exp=0), "format"),
    ("alg none", _unsigned, "alg"),
    ("HS256 signed with the public key", _hs256_with_public_key, "alg"),
    ("alg not in the allowed list", lambda w: Case(w.mint("EdDSA").token, {"algorithms": ["ES256"]}), "alg"),
    ("alg does not match the key", _alg_not_matching_key, "alg"),
    ("unknown kid", lambda w: _with_header(w, kid="no-such-key"), "kid"),
    ("no kid", lambda w: _with_header(w, kid=None), "kid"),
    ("signed by another key", _forged_with_known_kid, "signature"),
    ("payload changed after signing", _tampered_payload, "signature"),
    ("typ JWT", lambda w: _with_header(w, typ="JWT"), "typ"),
    ("no typ", lambda w: _with_header(w, typ=None), "typ"),
    ("other issuer", lambda w: Case(w.mint(issuer="https://evil.example.com").token), "iss"),
    ("wrong audience", lambda w: Case(w.mint().token, {"audience": "https://billing.example.com"}), "aud"),
    ("no audience", lambda w: _without_claim(w, "aud"), "aud"),
    ("expired", lambda w: Case(w.mint(now=T0 - timedelta(hours=1, seconds=31)).token), "exp"),
    ("no exp", lambda w: _without_claim(w, "exp"), "exp"),
    ("not yet valid", lambda w: Case(w.mint(now=T0 + timedelta(seconds=31)).token), "nbf"),
    (
        "missing scope",
        lambda w: Case(
            w.mint().token, verify={"required_scopes": ["read:docs", "admin"], "client_address": CLIENT}
        ),
        "scope",
    ),
    ("wrong env", lambda w: Case(w.mint(environment="staging").token), "env"),
    ("no env claim", lambda w: Case(w.mint(environment=None).token), "env"),
    ("caller outside CIDR", lambda w: Case(w.mint().token, verify={"client_address": "192.168.1.1"}), "cidr"),
    ("no client address with cidr claim", lambda w: Case(w.mint().token, verify={}), "cidr"),
    ("client address not an IP", lambda w: Case(w.mint().token, verify={"client_address": "host"}), "cidr"),
]


@pytest.mark.parametrize(("build", "check"), [(b, c) for _, b, c in CASES], ids=[n for n, _, _ in CASES])
def test_each_failure_raises_with_its_check(world: World, build: Callable[[World], Case], check: str) -> None:
    case = build(world)

    with pytest.raises(VerificationError) as caught:
        world.verifier(**case.verifier).verify(case.token, **case.verify)

    assert caught.value.check == check
    assert str(caught.value).startswith(f"token rejected: {check}: ")
    for part in case.token.split("."):
        if len(part) > 8:
            assert part not in str(caught.value)


def test_checks_run_in_the_documented_order(world: World) -> None:
    # Expired, for another audience, and missing a scope: the earliest check (aud) is reported.
    minted = world.mint(now=T0 - timedelta(days=1))
    verifier = world.verifier(audience="https://billing.example.com")

    with pytest.raises(VerificationError) as caught:
        verifier.verify(minted.token, required_scopes=["admin"])

    assert caught.value.check == "aud"
    assert CHECKS.index("aud") < CHECKS.index("exp") < CHECKS.index("scope")


def test_missing_scopes_are_named(world: World) -> None:
    with pytest.raises(VerificationError, match=r"missing required scope\(s\): admin, delete:docs$"):
        world.verifier().verify(
            world.mint().token, required_scopes=["read:docs", "admin", "delete:docs"], client_address=CLIENT
        )


@pytest.mark.parametrize("algorithms", [["none"], ["HS256"], ["ES256", "HS256"], [], "ES256"])
def test_verifier_refuses_unsafe_or_unknown_algorithm_lists(world: World, algorithms: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        world.verifier(algorithms=algorithms)


def test_verifier_needs_exactly_one_key_source(world: World) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        world.verifier(jwks_url=None)
    with pytest.raises(ValueError, match="exactly one"):
        world.verifier(jwks=jwks_of(world.keys["ES256"]))


# ---------------------------------------------------------------------------------------------- JWKS


def test_jwks_is_fetched_lazily_once_and_cached(world: World) -> None:
    verifier = world.verifier()
    assert world.fetch.count(JWKS_URL) == 0

    for alg in SUPPORTED_ALGORITHMS:
        verifier.verify(world.mint(alg).token, client_address=CLIENT)

    assert world.fetch.count(JWKS_URL) == 1


def test_unknown_kid_refreshes_the_jwks_at_most_once_per_interval(world: World) -> None:
    verifier = world.verifier(jwks_min_refresh=timedelta(seconds=30))
    verifier.verify(world.mint().token, client_address=CLIENT)  # initial fetch at T0
    new_key = generate_key("ES256", T0)
    rotated = mint(token_request(), new_key, issuer=ISSUER, now=T0)

    # Within the interval: no refresh, however many unknown kids arrive.
    for _ in range(5):
        with pytest.raises(VerificationError) as caught:
            verifier.verify(rotated.token, client_address=CLIENT)
        assert caught.value.check == "kid"
    assert world.fetch.count(JWKS_URL) == 1

    # Interval over, key still not published: exactly one refresh, then the limit holds again.
    world.clock.advance(timedelta(seconds=30))
    for _ in range(5):
        with pytest.raises(VerificationError, match="kid"):
            verifier.verify(rotated.token, client_address=CLIENT)
    assert world.fetch.count(JWKS_URL) == 2

    # The issuer publishes the key: accepted after the next interval, with one more fetch.
    world.fetch.docs[JWKS_URL] = json.dumps(jwks_of(new_key, *world.keys.values())).encode()
    world.clock.advance(timedelta(seconds=29))
    with pytest.raises(VerificationError, match="kid"):
        verifier.verify(rotated.token, client_address=CLIENT)
    world.clock.advance(timedelta(seconds=1))
    for _ in range(3):
        verifier.verify(rotated.token, client_address=CLIENT)
        verifier.verify(world.mint().token, client_address=CLIENT)  # old keys still known
    assert world.fetch.count(JWKS_URL) == 3


def test_unreachable_jwks_fails_kid_and_is_retried_only_after_the_interval(world: World) -> None:
    del world.fetch.docs[JWKS_URL]
    verifier = world.verifier(jwks_min_refresh=timedelta(seconds=10))
    token = world.mint().token

    for _ in range(3):
        with pytest.raises(VerificationError, match="fetching the JWKS failed") as caught:
            verifier.verify(token, client_address=CLIENT)
        assert caught.value.check == "kid"
    assert world.fetch.count(JWKS_URL) == 1

    world.fetch.docs[JWKS_URL] = json.dumps(jwks_of(*world.keys.values(), LIST_KEY)).encode()
    world.clock.advance(timedelta(seconds=10))
    verifier.verify(token, client_address=CLIENT)
    assert world.fetch.count(JWKS_URL) == 2


def test_jwks_entries_with_private_members_are_ignored(world: World) -> None:
    key = world.keys["ES256"]
    private = {**key.private_jwk, "kid": key.kid, "alg": "ES256", "use": "sig"}
    verifier = world.verifier(jwks_url=None, jwks={"keys": [private]})

    with pytest.raises(VerificationError) as caught:
        verifier.verify(world.mint().token, client_address=CLIENT)

    assert caught.value.check == "kid"


# ---------------------------------------------------------------------------------------------- revocation


def test_revocation_bites_once_the_cached_list_is_older_than_max_age(world: World) -> None:
    verifier = world.verifier(revocations_max_age=timedelta(milliseconds=500))
    victim, bystander = world.mint(), world.mint()
    verifier.verify(victim.token, client_address=CLIENT)
    assert world.fetch.count(REVOCATIONS_URL) == 1

    world.fetch.docs[REVOCATIONS_URL] = revocation_list(victim)
    world.clock.advance(timedelta(milliseconds=499))
    verifier.verify(victim.token, client_address=CLIENT)  # the cached list is still fresh enough
    assert world.fetch.count(REVOCATIONS_URL) == 1

    world.clock.advance(timedelta(milliseconds=1))
    with pytest.raises(VerificationError) as caught:
        verifier.verify(victim.token, client_address=CLIENT)
    assert caught.value.check == "revoked"
    assert victim.token_id in str(caught.value)
    assert world.fetch.count(REVOCATIONS_URL) == 2

    # An unrevoked token still passes, from the cache.
    verifier.verify(bystander.token, client_address=CLIENT)
    assert world.fetch.count(REVOCATIONS_URL) == 2


def test_revoked_token_fails_on_first_use(world: World) -> None:
    victim = world.mint()
    world.fetch.docs[REVOCATIONS_URL] = revocation_list(victim)

    with pytest.raises(VerificationError) as caught:
        world.verifier().verify(victim.token, client_address=CLIENT)

    assert caught.value.check == "revoked"


@pytest.mark.parametrize(
    "body",
    [None, b"not json", b"[]", b'{"error": "internal"}', b'{"revoked": {}}', b'{"revoked": []}'],
    ids=["unreachable", "not JSON", "a list", "no revoked list", "revoked not a list", "unsigned"],
)
def test_unusable_revocation_list_fails_closed(world: World, body: bytes | None) -> None:
    if body is None:
        del world.fetch.docs[REVOCATIONS_URL]
    else:
        world.fetch.docs[REVOCATIONS_URL] = body

    with pytest.raises(VerificationError, match="failing closed") as caught:
        world.verifier().verify(world.mint().token, client_address=CLIENT)

    assert caught.value.check == "revoked"


def test_failed_revocation_fetch_is_retried_once_max_age_passed(world: World) -> None:
    """Not on every call: during an outage each request would otherwise wait for a fetch."""
    verifier = world.verifier()
    body = world.fetch.docs.pop(REVOCATIONS_URL)
    with pytest.raises(VerificationError, match="revoked"):
        verifier.verify(world.mint().token, client_address=CLIENT)

    world.fetch.docs[REVOCATIONS_URL] = body
    with pytest.raises(VerificationError, match="revoked"):
        verifier.verify(world.mint().token, client_address=CLIENT)
    assert world.fetch.count(REVOCATIONS_URL) == 1
    world.clock.advance(timedelta(milliseconds=500))
    verifier.verify(world.mint().token, client_address=CLIENT)

    assert world.fetch.count(REVOCATIONS_URL) == 2


def test_an_unsigned_list_is_refused_even_when_it_revokes(world: World) -> None:
    """The unsigned format of earlier versions: anyone on the path could have written it."""
    victim = world.mint()
    world.fetch.docs[REVOCATIONS_URL] = json.dumps({"revoked": [{"jti": victim.token_id}]}).encode()

    with pytest.raises(VerificationError, match="failing closed"):
        world.verifier().verify(victim.token, client_address=CLIENT)


def test_without_revocations_url_nothing_is_fetched_for_revocation(world: World) -> None:
    world.verifier(revocations_url=None).verify(world.mint().token, client_address=CLIENT)

    assert world.fetch.count(REVOCATIONS_URL) == 0


def test_private_claim_is_exposed(world: World) -> None:
    claims = world.verifier().verify(world.mint().token, client_address=CLIENT)

    assert claims.raw[CLAIM_NAMESPACE] == {
        "namespace": claims.namespace,
        "name": claims.name,
        "uid": claims.uid,
    }


# ---------------------------------------------------------------------------------------------- audit


@dataclass
class AuditCapture:
    """A VerificationAudit on its own registry and logger, with the records it wrote."""

    registry: Any
    audit: Any
    records: list[logging.LogRecord]

    def count(self, **labels: str) -> float:
        wanted = {"subject": "", "namespace": "", "name": "", "check": "", **labels}
        value = self.registry.get_sample_value("agenttoken_verifications_total", wanted)
        return float(value or 0.0)


@pytest.fixture
def capture() -> AuditCapture:
    registry = CollectorRegistry()
    logger = logging.getLogger(f"test.audit.{id(registry)}")
    logger.propagate = False
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.addHandler(Keep())
    logger.setLevel(logging.DEBUG)
    return AuditCapture(registry, VerificationAudit(logger=logger, registry=registry), records)


def test_audit_records_accepted_and_rejected_verifications_without_the_token(
    world: World, capture: AuditCapture
) -> None:
    verifier = world.verifier(audit=capture.audit)
    good = world.mint()
    verifier.verify(good.token, client_address=CLIENT)
    with pytest.raises(VerificationError):
        verifier.verify(good.token, required_scopes=["admin"], client_address=CLIENT)
    revoked = world.mint()
    world.fetch.docs[REVOCATIONS_URL] = revocation_list(revoked)
    world.clock.advance(timedelta(seconds=1))
    with pytest.raises(VerificationError):
        verifier.verify(revoked.token, client_address=CLIENT)

    who = {"subject": "agenttoken:team-a:crawler", "namespace": "team-a", "name": "crawler"}
    assert capture.count(**who, result="accepted") == 1
    assert capture.count(**who, result="rejected", check="scope") == 1
    assert capture.count(**who, result="rejected", check="revoked") == 1
    fields = [json.loads(r.getMessage()) for r in capture.records]
    assert [(f["result"], f.get("check")) for f in fields] == [
        ("accepted", None),
        ("rejected", "scope"),
        ("rejected", "revoked"),
    ]
    assert fields[0]["token_id"] == good.token_id
    assert fields[2]["token_id"] == revoked.token_id
    assert fields[0]["client_address"] == CLIENT
    assert all(r.audit == f for r, f in zip(capture.records, fields, strict=True))  # type: ignore[attr-defined]
    assert [r.levelno for r in capture.records] == [logging.INFO, logging.WARNING, logging.WARNING]
    exposition = generate_latest(capture.registry).decode()
    for text in [*(r.getMessage() for r in capture.records), exposition]:
        assert good.token not in text
        assert revoked.token not in text
        assert good.token.split(".")[2] not in text  # not even the signature
    assert good.token_id not in exposition  # the token id is never a label


def test_audit_takes_no_labels_from_unsigned_claims(world: World, capture: AuditCapture) -> None:
    verifier = world.verifier(audit=capture.audit)
    claims = {**world.mint().claims, "sub": "attacker-chosen"}
    forged = f"{b64json({'alg': 'none', 'typ': 'at+jwt'})}.{b64json(claims)}."
    with pytest.raises(VerificationError):
        verifier.verify(forged)
    assert capture.count(result="rejected", check="alg") == 1
    fields = json.loads(capture.records[0].getMessage())
    assert "subject" not in fields
    assert "token_id" not in fields


def test_audit_can_be_turned_off(world: World) -> None:
    verifier = world.verifier(audit=False)
    verifier.verify(world.mint().token, client_address=CLIENT)


def test_stale_grace_keeps_the_last_revocation_list_until_next_update_plus_grace(world: World) -> None:
    victim, bystander = world.mint(), world.mint()
    world.fetch.docs[REVOCATIONS_URL] = revocation_list(victim)  # signed at T0, next update T0+10m
    verifier = world.verifier(revocations_stale_grace=timedelta(seconds=30))
    verifier.verify(bystander.token, client_address=CLIENT)
    body = world.fetch.docs.pop(REVOCATIONS_URL)  # every operator replica is down

    world.clock.advance(timedelta(seconds=10))
    verifier.verify(bystander.token, client_address=CLIENT)
    with pytest.raises(VerificationError, match="revoked") as caught:
        verifier.verify(victim.token, client_address=CLIENT)
    assert "failing closed" not in str(caught.value), "the last list still revokes"
    # Retried at most once per max age while unreachable, not on every call.
    assert world.fetch.count(REVOCATIONS_URL) == 2

    world.clock.now = T0 + revocation.VALIDITY + timedelta(seconds=30)  # next_update + grace: still used
    verifier.verify(bystander.token, client_address=CLIENT)
    world.clock.advance(timedelta(seconds=1))
    with pytest.raises(VerificationError, match="failing closed"):
        verifier.verify(bystander.token, client_address=CLIENT)

    world.fetch.docs[REVOCATIONS_URL] = revocation_list(victim, now=world.clock.now)  # signed again
    world.clock.advance(timedelta(seconds=1))
    verifier.verify(bystander.token, client_address=CLIENT)
    del body
