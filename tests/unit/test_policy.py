"""Issuer policy and issuer parsing: pure, table-driven."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from agenttoken.core.model import InvalidSpec
from agenttoken.core.policy import IssuerPolicy, Request, check
from agenttoken.issuers import parse_issuer

POLICY = IssuerPolicy(
    allowed_scopes=("tickets:*", "read"),
    allowed_audiences=("https://tickets.example.com", "https://*.internal.example.com"),
    min_ttl=dt.timedelta(minutes=5),
    max_ttl=dt.timedelta(hours=2),
    namespace_selector={"agents": "allowed"},
)


def request(**over: Any) -> Request:
    base: dict[str, Any] = {
        "namespace": "team-a",
        "namespace_labels": {"agents": "allowed"},
        "scopes": ["tickets:read"],
        "audience": ["https://tickets.example.com"],
        "ttl": dt.timedelta(hours=1),
    }
    return Request(**(base | over))


@pytest.mark.parametrize(
    ("over", "field", "value"),
    [
        ({"namespace_labels": {}}, "metadata.namespace", "team-a"),
        ({"namespace_labels": {"agents": "denied"}}, "metadata.namespace", "team-a"),
        ({"scopes": ["billing:read"]}, "spec.scopes", "billing:read"),
        ({"scopes": ["read", "tickets:write", "admin"]}, "spec.scopes", "admin"),
        ({"scopes": ["Tickets:read"]}, "spec.scopes", "Tickets:read"),  # case-sensitive
        ({"audience": ["https://billing.example.com"]}, "spec.audience", "https://billing.example.com"),
        (
            {"audience": ["https://a.b.external.example.com"]},
            "spec.audience",
            "https://a.b.external.example.com",
        ),
        ({"ttl": dt.timedelta(hours=3)}, "spec.ttl", "3h"),
        ({"ttl": dt.timedelta(minutes=1)}, "spec.ttl", "1m"),
    ],
)
def test_violations_name_field_and_value(over: dict[str, Any], field: str, value: str) -> None:
    violation = check(POLICY, request(**over))
    assert violation is not None
    assert (violation.field, violation.value) == (field, value)
    assert value in violation.message


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"scopes": ["read", "tickets:comment"]},
        {"scopes": []},
        {"audience": ["https://x.internal.example.com"]},
        {"ttl": dt.timedelta(minutes=5)},
        {"ttl": dt.timedelta(hours=2)},
    ],
)
def test_requests_within_policy_pass(over: dict[str, Any]) -> None:
    assert check(POLICY, request(**over)) is None


def test_absent_lists_allow_anything_and_empty_lists_allow_nothing() -> None:
    assert check(IssuerPolicy(), request(scopes=["anything:at-all"])) is None
    violation = check(IssuerPolicy(allowed_scopes=()), request(scopes=["read"]))
    assert violation is not None
    assert "allowed: none" in violation.message


def test_parse_issuer() -> None:
    body = {
        "metadata": {"name": "minter", "namespace": "team-a"},
        "spec": {
            "webhook": {"url": "https://m/mint"},
            "policy": {
                "allowedScopes": ["a"],
                "maxTTL": "1h",
                "namespaceSelector": {"matchLabels": {"x": "y"}},
            },
        },
    }
    spec = parse_issuer("TokenIssuer", body)
    assert (spec.type, spec.namespace, spec.secret_namespace) == ("webhook", "team-a", "team-a")
    assert spec.policy.max_ttl == dt.timedelta(hours=1)
    assert spec.policy.namespace_selector is None  # only cluster issuers select namespaces
    cluster = parse_issuer("ClusterTokenIssuer", body)
    assert (cluster.namespace, cluster.secret_namespace) == ("", None)
    assert cluster.policy.namespace_selector == {"x": "y"}


@pytest.mark.parametrize(
    "spec",
    [
        {"builtin": {}, "webhook": {"url": "https://x"}},
        {},
        {"kubernetes": {}},
        {"webhook": {}},
        {"builtin": {}, "policy": {"maxTTL": "soon"}},
        {"oauth2": {"clientID": "x", "clientSecretRef": {"name": "s"}}},
        {"oauth2": {"tokenURL": "https://idp/token", "clientSecretRef": {"name": "s"}}},
    ],
)
def test_invalid_issuers(spec: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpec):
        parse_issuer("ClusterTokenIssuer", {"metadata": {"name": "x"}, "spec": spec})


@pytest.mark.parametrize(
    ("value", "pattern", "allowed"),
    [
        ("tickets:read", "tickets:*", True),
        ("tickets:", "tickets:*", True),
        ("ticketsXread", "tickets.read", False),  # `.` is literal (as in the admission policy)
        ("a", "[ab]", False),  # no character classes: brackets are literal
        ("[ab]", "[ab]", True),
        ("https://a.b.internal.example.com", "https://*.internal.example.com", True),
        ("https://x.example.com/p?q=1", "https://?.example.com/p?q=1", True),
        ("https://example.com+", "https://example.com+", True),
        ("READ", "read", False),
    ],
)
def test_globs_match_like_the_admission_policy(value: str, pattern: str, allowed: bool) -> None:
    policy = IssuerPolicy(allowed_scopes=(pattern,), allowed_audiences=(pattern,))
    assert (check(policy, request(scopes=[], audience=[value])) is None) is allowed
