"""The Verifier's claim checks (typ ... cidr) as a chain: each failure on its own, order, laziness.

The chain is pure: a token, a Policy and an injected `now`, so every row is plain data and no
key, clock or network is involved. tests/unit/test_verify.py covers the same checks end to end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from agenttoken_sdk._verification.checks import CLAIM_CHECKS, Check, Policy, first_failure
from agenttoken_sdk._verification.model import Failure
from agenttoken_sdk._verification.token import ParsedToken
from agenttoken_sdk.jose import CLAIM_NAMESPACE
from agenttoken_sdk.verify import CHECKS

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC).timestamp()
LEEWAY = 30.0
JTI = "7f3c9a"
HEADER: dict[str, Any] = {"alg": "ES256", "kid": "k1", "typ": "at+jwt"}
CLAIMS: dict[str, Any] = {
    "iss": "https://issuer.example.com",
    "sub": "agenttoken:team-a:crawler",
    "client_id": "agenttoken:team-a:crawler",
    "aud": ["https://api.example.com", "https://other.example.com"],
    "scope": "read:docs write:notes",
    "jti": JTI,
    "iat": NOW - 300,
    "nbf": NOW - 300,
    "exp": NOW + 3300,
    "env": "prod",
    "cidr": ["10.0.0.0/8", "2001:db8::/32"],
    CLAIM_NAMESPACE: {"namespace": "team-a", "name": "crawler", "uid": "u-1"},
}
POLICY = Policy(
    issuer="https://issuer.example.com",
    audience="https://api.example.com",
    leeway=LEEWAY,
    environment="prod",
    required_scopes=("read:docs",),
    client_address="10.1.2.3",
    revoked_ids=lambda: frozenset({"other-token"}),
)


DROP = object()  # a header member or claim the row removes


@dataclass(frozen=True)
class Row:
    """One input: the valid token and policy above with some header, claims or policy changed."""

    header: dict[str, Any] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    now: float = NOW

    def token(self) -> ParsedToken:
        def changed(base: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
            merged = {**base, **edits}
            return {k: v for k, v in merged.items() if v is not DROP}

        return ParsedToken("h.p.s", changed(HEADER, self.header), changed(CLAIMS, self.claims))

    def run(self, check: Check) -> str | None:
        return check(self.token(), POLICY._replace(**self.policy), self.now)


FAILURES: list[tuple[str, Row, str, str]] = [
    ("typ JWT", Row(header={"typ": "JWT"}), "typ", "header typ must be 'at+jwt'"),
    ("no typ", Row(header={"typ": DROP}), "typ", "header typ must be 'at+jwt'"),
    ("other issuer", Row(claims={"iss": "https://evil.example.com"}), "iss", "issuer is not"),
    ("no issuer", Row(claims={"iss": DROP}), "iss", "issuer is not"),
    ("aud a number", Row(claims={"aud": 5}), "aud", "claim 'aud' must be a string or a list of strings"),
    ("aud list of numbers", Row(claims={"aud": [1]}), "aud", "must be a string or a list of strings"),
    ("aud empty list", Row(claims={"aud": []}), "aud", "must be a string or a list of strings"),
    ("other audience", Row(claims={"aud": "https://billing.example.com"}), "aud", "not meant for audience"),
    ("exp not a number", Row(claims={"exp": "soon"}), "exp", "claim 'exp' must be a number"),
    ("exp a bool", Row(claims={"exp": True}), "exp", "claim 'exp' must be a number"),
    ("expired, leeway used up", Row(now=NOW + 3300 + LEEWAY), "exp", "token expired at 2026-11-22T12:55:00"),
    ("nbf not a number", Row(claims={"nbf": "later"}), "nbf", "claim 'nbf' must be a number"),
    ("nbf beyond leeway", Row(claims={"nbf": NOW + LEEWAY + 1}), "nbf", "(nbf)"),
    ("iat beyond leeway", Row(claims={"iat": NOW + LEEWAY + 1, "nbf": DROP}), "nbf", "(iat)"),
    (
        "missing scopes named once each",
        Row(policy={"required_scopes": ("admin", "read:docs", "admin", "delete:docs")}),
        "scope",
        "missing required scope(s): admin, delete:docs",
    ),
    ("no scope claim", Row(claims={"scope": DROP}), "scope", "missing required scope(s): read:docs"),
    (
        "revoked",
        Row(policy={"revoked_ids": lambda: frozenset({JTI})}),
        "revoked",
        f"token {JTI!r} has been revoked",
    ),
    (
        "revocation list unavailable",
        Row(policy={"revoked_ids": lambda: None}),
        "revoked",
        "the revocation list is unavailable; failing closed",
    ),
    ("other env", Row(claims={"env": "staging"}), "env", "token is for environment 'staging', not 'prod'"),
    ("no env claim", Row(claims={"env": DROP}), "env", "token is not bound to environment 'prod'"),
    (
        "no client address",
        Row(policy={"client_address": None}),
        "cidr",
        "token is bound to networks but the client address is unknown",
    ),
    (
        "client address not an IP",
        Row(policy={"client_address": "host"}),
        "cidr",
        "client address 'host' is not an IP",
    ),
    ("caller outside", Row(policy={"client_address": "192.168.1.1"}), "cidr", "outside the token's networks"),
]


@pytest.mark.parametrize(
    ("row", "check", "reason"), [(r, c, m) for _, r, c, m in FAILURES], ids=[n for n, *_ in FAILURES]
)
def test_each_check_fails_on_its_own(row: Row, check: str, reason: str) -> None:
    failed = {name: message for name, fn in CLAIM_CHECKS if (message := row.run(fn)) is not None}

    assert list(failed) == [check]
    assert reason in failed[check]
    assert first_failure(row.token(), POLICY._replace(**row.policy), row.now) == Failure(check, failed[check])


PASSES: list[tuple[str, Row]] = [
    ("the valid token", Row()),
    ("typ with media type prefix, any case", Row(header={"typ": "Application/AT+JWT"})),
    ("aud a string", Row(claims={"aud": "https://api.example.com"})),
    ("expiry within the leeway", Row(now=NOW + 3300 + LEEWAY - 1)),
    ("nbf within the leeway", Row(claims={"nbf": NOW + LEEWAY})),
    ("no nbf claim", Row(claims={"nbf": DROP})),
    ("required scopes all held", Row(policy={"required_scopes": ("write:notes", "read:docs")})),
    ("no revocation list configured", Row(policy={"revoked_ids": None})),
    ("no environment required", Row(claims={"env": "staging"}, policy={"environment": None})),
    ("no cidr claim, no client address", Row(claims={"cidr": DROP}, policy={"client_address": None})),
    ("IPv4-mapped IPv6 caller", Row(policy={"client_address": "::ffff:10.9.9.9"})),
    ("IPv6 caller", Row(policy={"client_address": "2001:db8::1"})),
]


@pytest.mark.parametrize("row", [r for _, r in PASSES], ids=[n for n, _ in PASSES])
def test_inputs_every_check_accepts(row: Row) -> None:
    assert first_failure(row.token(), POLICY._replace(**row.policy), row.now) is None


def test_chain_is_the_tail_of_checks_after_the_signature() -> None:
    assert tuple(name for name, _ in CLAIM_CHECKS) == CHECKS[CHECKS.index("signature") + 1 :]


def test_chain_stops_at_the_first_failure() -> None:
    ran: list[str] = []

    def recorder(name: str, reason: str | None) -> Check:
        def check(token: ParsedToken, policy: Policy, now: float) -> str | None:
            ran.append(name)
            return reason

        return check

    chain = (("a", recorder("a", None)), ("b", recorder("b", "first")), ("c", recorder("c", "second")))

    assert first_failure(Row().token(), POLICY, NOW, chain) == Failure("b", "first")
    assert ran == ["a", "b"]


def test_revocation_list_is_looked_up_only_when_the_chain_gets_there() -> None:
    lookups: list[None] = []

    def revoked_ids() -> frozenset[str]:
        lookups.append(None)
        return frozenset()

    policy = POLICY._replace(revoked_ids=revoked_ids)
    expired = Row(claims={"exp": NOW - LEEWAY}).token()

    assert first_failure(expired, policy, NOW) == Failure("exp", "token expired at 2026-11-22T11:59:30+00:00")
    assert lookups == []
    assert first_failure(Row().token(), policy, NOW) is None
    assert lookups == [None]
