"""spec.verify: parsing, judging answers, redaction, and what status and Ready say."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from agenttoken import api
from agenttoken.core.conditions import Reason
from agenttoken.core.connectivity import CARef, judge, parse, redact
from agenttoken.core.model import InvalidSpec, TokenStatus, parse_spec
from agenttoken.core.secretdata import TokenRecord
from agenttoken.core.status import Outcome, render
from agenttoken.core.timing import parse_duration
from agenttoken.core.tokens import token_hash

T0 = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)


def test_defaults() -> None:
    spec = parse({"url": "https://api.example.com/whoami"}, parse_duration)
    assert spec is not None
    assert (spec.method, spec.expected_status, spec.timeout) == ("GET", (200,), dt.timedelta(seconds=5))
    assert spec.ca_bundle is None
    assert spec.ca_ref is None
    assert parse(None, parse_duration) is None


def test_ca_ref_default_key() -> None:
    spec = parse(
        {"url": "https://a.example/", "caBundleRef": {"kind": "Secret", "name": "ca"}}, parse_duration
    )
    assert spec is not None
    assert spec.ca_ref == CARef("Secret", "ca", "ca.crt")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "url is required"),
        ({"url": "ftp://a.example/"}, "http:// or https://"),
        ({"url": "https://"}, "http:// or https://"),
        ({"url": "https://a.example:99999/"}, "not a valid URL"),
        ({"url": "https://a.example/", "method": "DELETE"}, "method"),
        ({"url": "https://a.example/", "expectedStatus": []}, "expectedStatus"),
        ({"url": "https://a.example/", "expectedStatus": [True]}, "expectedStatus"),
        ({"url": "https://a.example/", "expectedStatus": [600]}, "expectedStatus"),
        ({"url": "https://a.example/", "timeout": "1m"}, "at most 30s"),
        ({"url": "https://a.example/", "timeout": "soon"}, "spec.verify.timeout"),
        (
            {"url": "https://a.example/", "caBundle": "x", "caBundleRef": {"kind": "Secret", "name": "c"}},
            "exclusive",
        ),
        ({"url": "https://a.example/", "caBundleRef": {"kind": "Pod", "name": "c"}}, "caBundleRef"),
    ],
)
def test_invalid(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(raw, parse_duration)


def test_parse_spec_names_the_field() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.verify\.url"):
        parse_spec({"audience": ["a"], "ttl": "1h", "secret": {"name": "s"}, "verify": {"url": "x"}})


def test_redact_drops_credentials_query_and_fragment() -> None:
    assert (
        redact("https://user:pw@api.example.com:8443/v1/me?key=abc#frag")
        == "https://api.example.com:8443/v1/me"
    )
    assert redact("http://[::1]:8080/x?y") == "http://[::1]:8080/x"


def test_judge_names_method_url_and_status_but_nothing_else() -> None:
    spec = parse(
        {"url": "https://api.example.com/me?apikey=zzz", "expectedStatus": [200, 204]}, parse_duration
    )
    assert spec is not None
    ok = judge(spec, 204)
    assert (ok.ok, ok.status_code) == (True, 204)
    bad = judge(spec, 401)
    assert not bad.ok
    assert (
        bad.message
        == "GET https://api.example.com/me answered HTTP 401 with the new token (expected 200, 204)"
    )


# -- status ----------------------------------------------------------------------------------

TOKEN = "eyJhbGciOiJFUzI1NiJ9.e30.sig"
SPEC = parse_spec(
    {"audience": ["a"], "ttl": "1h", "secret": {"name": "s"}, "verify": {"url": "https://a.example/"}}
)
RECORD = TokenRecord("jti-1", token_hash(TOKEN), "kid", 1, T0, T0 + dt.timedelta(hours=1), SPEC.claims_hash())
FAILED = Reason(api.REASON_VERIFICATION_FAILED, "GET https://a.example/ answered HTTP 401")


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def _render(record: TokenRecord | None, outcome: Outcome, now: dt.datetime, **prev: Any) -> dict[str, Any]:
    return render(
        previous=TokenStatus(**prev),
        generation=1,
        spec=SPEC,
        record=record,
        jitter_key="u",
        outcome=outcome,
        now=now,
    )


def test_failed_verification_keeps_ready_true_while_the_old_token_is_valid_and_says_why() -> None:
    status = _render(RECORD, Outcome(failure=FAILED, failed_attempts=1, last_failure_time=T0), T0)
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "VerificationFailed")
    assert "held back" in ready["message"]
    assert "HTTP 401" in ready["message"]
    assert conditions(status)["Reconciling"]["reason"] == "VerificationFailed"


def test_failed_verification_after_expiry_is_not_ready_and_says_why() -> None:
    later = T0 + dt.timedelta(hours=2)
    ready = conditions(_render(RECORD, Outcome(failure=FAILED, failed_attempts=9), later))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "VerificationFailed")
    assert "expired" in ready["message"]


def test_failed_first_verification_is_not_ready() -> None:
    ready = conditions(_render(None, Outcome(failure=FAILED, failed_attempts=1), T0))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "VerificationFailed")


def test_verification_success_is_recorded_and_kept() -> None:
    seen = {
        "tokenId": "jti-1",
        "lastSuccessTime": "2026-11-22T12:00:00Z",
        "statusCode": 200,
        "request": "GET x",
    }
    assert _render(RECORD, Outcome(verification=seen), T0)["verification"] == seen
    assert _render(RECORD, Outcome(), T0, verification=seen)["verification"] == seen
    without = render(
        previous=TokenStatus(verification=seen),
        generation=1,
        spec=parse_spec({"audience": ["a"], "ttl": "1h", "secret": {"name": "s"}}),
        record=RECORD,
        jitter_key="u",
        outcome=Outcome(),
        now=T0,
    )
    assert without["verification"] is None, "removing spec.verify clears it"
