"""Issuer policy and issuer parsing: pure, table-driven."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from agenttoken.core.model import InvalidSpec
from agenttoken.core.policy import IssuerPolicy, Request, check, check_claims
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


# -- subjects and environments: claims an API may trust --

SUBJECTS = IssuerPolicy(
    allowed_subjects=("spiffe://corp/ns/{namespace}/agent/*", "svc-{name}", "agenttoken:{namespace}:*")
)


@pytest.mark.parametrize(
    ("subject", "policy", "allowed"),
    [
        (None, IssuerPolicy(), True),  # no spec.subject: the canonical one
        ("agenttoken:team-a:agent", IssuerPolicy(), True),  # the canonical one, spelt out
        ("agenttoken:team-a:other", IssuerPolicy(), False),  # no policy: the canonical one only
        ("admin", IssuerPolicy(), False),
        ("agenttoken:team-b:payments", IssuerPolicy(), False),
        ("spiffe://corp/ns/team-a/agent/x", SUBJECTS, True),  # glob with {namespace}
        ("spiffe://corp/ns/team-b/agent/x", SUBJECTS, False),  # the placeholder is this namespace
        ("svc-agent", SUBJECTS, True),  # {name}
        ("svc-other", SUBJECTS, False),
        ("agenttoken:team-a:sibling", SUBJECTS, True),  # same namespace, granted by the policy
        ("admin", IssuerPolicy(allowed_subjects=("*",)), True),
    ],
)
def test_subjects_are_bounded_by_policy(subject: str | None, policy: IssuerPolicy, allowed: bool) -> None:
    violation = check(policy, request(name="agent", subject=subject))
    assert (violation is None) is allowed, violation
    if violation is not None:
        assert violation.field == "spec.subject"
        assert "agenttoken:team-a:" in violation.message  # names what is allowed


@pytest.mark.parametrize(
    "subject",
    [
        "agenttoken:team-b:payments",
        "AgentToken:team-b:payments",
        "agenttoken:team-b",
        "agenttoken:",
        "agenttoken:team-a-x:y",
    ],
)
def test_another_namespaces_canonical_subject_is_refused_whatever_the_policy(subject: str) -> None:
    for policy in (IssuerPolicy(allowed_subjects=("*",)), IssuerPolicy(allowed_subjects=(subject,))):
        violation = check(policy, request(name="agent", subject=subject))
        assert violation is not None
        assert "names another namespace's AgentToken" in violation.message
        assert "no issuer may grant that" in violation.message


def test_placeholders_stay_literal_even_in_names_with_dots() -> None:
    policy = IssuerPolicy(allowed_subjects=("svc-{name}",))
    assert check(policy, request(name="a.b", subject="svc-a.b")) is None
    assert check(policy, request(name="a.b", subject="svc-aXb")) is not None


@pytest.mark.parametrize(
    ("environment", "allowed_environments", "allowed"),
    [
        (None, ("dev",), True),  # no env claim asked for
        ("prod", None, True),  # absent: any
        ("prod", ("dev", "staging-*"), False),
        ("staging-eu", ("dev", "staging-*"), True),
        ("dev", (), False),  # empty: none
    ],
)
def test_environments_are_bounded_by_policy(
    environment: str | None, allowed_environments: tuple[str, ...] | None, allowed: bool
) -> None:
    policy = IssuerPolicy(allowed_environments=allowed_environments)
    violation = check(policy, request(environment=environment))
    assert (violation is None) is allowed
    if violation is not None:
        assert (violation.field, violation.value) == ("spec.environment", environment)


@pytest.mark.parametrize(
    ("claims", "field"),
    [
        ({"sub": "agenttoken:team-a:agent", "aud": "https://tickets.example.com"}, None),
        ({"sub": "admin"}, "spec.subject"),
        ({"sub": "agenttoken:team-b:payments"}, "spec.subject"),
        ({"sub": 42}, "spec.subject"),  # not a string: refused, never ignored
        ({"aud": ["https://billing.example.com"]}, "spec.audience"),
        ({"aud": [7]}, "spec.audience"),
        ({"scope": "tickets:read admin"}, "spec.scopes"),
        ({"env": "prod"}, "spec.environment"),
        ({}, None),  # nothing claimed beyond the defaults
    ],
)
def test_a_returned_tokens_claims_are_checked_like_a_request(
    claims: dict[str, Any], field: str | None
) -> None:
    policy = dataclasses.replace(POLICY, allowed_environments=("dev",))
    violation = check_claims(policy, request(name="agent"), claims)
    assert (violation.field if violation else None) == field


def test_parse_issuer_subjects_and_environments() -> None:
    body = {
        "metadata": {"name": "x"},
        "spec": {"builtin": {}, "policy": {"allowedSubjects": ["svc-{name}"], "allowedEnvironments": []}},
    }
    policy = parse_issuer("ClusterTokenIssuer", body).policy
    assert (policy.allowed_subjects, policy.allowed_environments) == (("svc-{name}",), ())
    default = parse_issuer("ClusterTokenIssuer", {"metadata": {"name": "x"}, "spec": {"builtin": {}}}).policy
    assert (default.allowed_subjects, default.allowed_environments) == ((), None)
