"""AgentToken spec.audience: resource URIs (RFC 8707) in canonical form, checked at admission.

The CRD's CEL rules are evaluated here by cel-python (with RE2, the apiserver's regex engine), on
the same cases as the SDK's resource_uri_problem(), so what the apiserver admits and what a
protected resource accepts as its own URI cannot drift apart. The e2e tier sends a few of the same
cases to a real apiserver (tests/e2e/test_mcp.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agenttoken_sdk.resource import RESOURCE_URI_RULES, is_resource_uri, resource_uri_problem

CRD = Path(__file__).resolve().parents[2] / "crds" / "agenttoken.dev_agenttokens.yaml"

ACCEPTED = [
    "https://tools.example.com/mcp",
    "https://tools.example.com",
    "https://tools.example.com/",
    "https://tools.example.com:8443/servers/mcp",
    "https://10.0.0.7/mcp",
    "https://[2001:db8::1]:8443/mcp",
    "https://tools.example.com/a%20b/~x",
    "http://localhost:8080/mcp",
    "http://127.0.0.1:41234/mcp",
    "http://[::1]/mcp",
    # Not http(s) URIs: opaque audiences, as before resource URIs existed.
    "a",
    "tickets-api",
    "probe",
    "spiffe://corp.example/ns/agents/sa/api",
    "urn:example:tickets",
    "api://0b8f6c2e-1111",
]
REFUSED = {
    "HTTPS://tools.example.com/mcp": "lowercase scheme",
    "Https://tools.example.com": "lowercase scheme",
    "https://Tools.Example.com/mcp": "lowercase host",
    "https://tools.example.com/mcp#frag": "query or a fragment",
    "https://tools.example.com/mcp?tenant=a": "query or a fragment",
    "https://user:secret@tools.example.com/mcp": "no user info",
    "https://": "lowercase host",
    "https:///mcp": "lowercase host",
    "https://tools.example.com/a b": "RFC 3986 path",
    "http://tools.example.com/mcp": "must use https",
    "http://tools.agents.svc:8080/mcp": "must use https",
    "http://localhost.evil.example/mcp": "must use https",
    "http://127.0.0.1.nip.io/mcp": "must use https",
}


def audience_rules() -> list[dict[str, Any]]:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules: list[dict[str, Any]] = spec["properties"]["audience"]["items"]["x-kubernetes-validations"]
    return rules


ENV = celpy.Environment()
PROGRAMS = [(ENV.program(ENV.compile(r["rule"])), r["message"]) for r in audience_rules()]


def admission_messages(audience: str) -> list[str]:
    """The messages of the CRD rules audience fails, as the apiserver would list them."""
    value = celpy.celtypes.StringType(audience)
    return [message for program, message in PROGRAMS if not program.evaluate({"self": value})]


@pytest.mark.parametrize("audience", ACCEPTED)
def test_admission_accepts_canonical_resource_uris_and_opaque_names(audience: str) -> None:
    assert admission_messages(audience) == []
    if is_resource_uri(audience):
        assert resource_uri_problem(audience) is None


@pytest.mark.parametrize(("audience", "why"), REFUSED.items())
def test_admission_refuses_non_canonical_resource_uris_with_a_clear_message(audience: str, why: str) -> None:
    messages = admission_messages(audience)
    assert any(why in m for m in messages), messages
    assert resource_uri_problem(audience) == "; ".join(messages)
    assert "secret" not in "".join(messages)  # the value itself is never echoed by our message


def test_the_crd_and_the_sdk_use_the_same_patterns_and_messages() -> None:
    rules = " ".join(r["rule"] for r in audience_rules())
    assert [m for _, _, m in RESOURCE_URI_RULES] == [r["message"] for r in audience_rules()]
    for pattern, _, _ in RESOURCE_URI_RULES:
        assert f"'{pattern.pattern}'" in rules


URIISH = st.builds(
    lambda scheme, rest: scheme + "://" + rest,
    st.sampled_from(["https", "http", "HTTPS", "hTTp"]),
    st.text(alphabet="aZ09.-:/?#@[]%~ _é", max_size=30),
)


@given(st.one_of(URIISH, st.text(max_size=30)))
@settings(max_examples=300, deadline=None)
def test_admission_and_the_sdk_agree_on_any_string(audience: str) -> None:
    messages = admission_messages(audience)
    if is_resource_uri(audience):
        assert resource_uri_problem(audience) == ("; ".join(messages) or None)
    else:
        assert messages == []
