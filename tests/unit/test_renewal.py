"""The renewal decision chain, with an injected clock and Secrets built in memory."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from agenttoken import api
from agenttoken.core.model import AgentTokenSpec, TokenStatus, parse_spec
from agenttoken.core.renewal import Action, Snapshot, decide
from agenttoken.core.secretdata import TokenRecord, desired_secret, observe
from agenttoken.core.tokens import token_hash
from agenttoken.core.usage import IN_USE, SUSPENDED, Usage

T0 = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)
UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJhIn0.sig"


def spec(**over: Any) -> AgentTokenSpec:
    raw = {"audience": ["https://api"], "scopes": ["read"], "ttl": "1h", "secret": {"name": "tok"}} | over
    return parse_spec(raw)


def record(s: AgentTokenSpec, *, issued: dt.datetime = T0, token: str = TOKEN, **over: Any) -> TokenRecord:
    base = TokenRecord(
        token_id="jti-1",
        token_hash=token_hash(token),
        key_id="kid-1",
        revision=1,
        issued_at=issued,
        expires_at=issued + s.ttl,
        spec_hash=s.claims_hash(),
    )
    return dataclasses.replace(base, **over)


def secret_body(s: AgentTokenSpec, rec: TokenRecord, token: str = TOKEN) -> dict[str, Any]:
    return desired_secret(namespace="ns", name="agent", uid=UID, spec=s, token=token, record=rec)


def snap(
    s: AgentTokenSpec,
    body: dict[str, Any] | None,
    status: TokenStatus | None = None,
    rotate: str | None = None,
) -> Snapshot:
    return Snapshot(
        spec=s,
        status=status or TokenStatus(token_id="jti-1", revision=1),
        secret=observe(body, name="agent", uid=UID, spec=s),
        rotate_request=rotate,
        jitter_key=UID,
    )


def test_first_reconcile_mints() -> None:
    d = decide(snap(spec(), None, TokenStatus()), T0)
    assert (d.action, d.reason) == (Action.MINT, "NoToken")


def test_valid_token_waits_until_renewal_time() -> None:
    s = spec()
    d = decide(snap(s, secret_body(s, record(s))), T0 + dt.timedelta(minutes=10))
    assert d.action is Action.NONE
    assert d.wake_at is not None
    # Default: renew with a third of the lifetime left (jitter only moves it earlier, by <= 60 s).
    assert T0 + dt.timedelta(minutes=39) <= d.wake_at <= T0 + dt.timedelta(minutes=40)


def test_renewal_due_mints() -> None:
    s = spec()
    d = decide(snap(s, secret_body(s, record(s))), T0 + dt.timedelta(minutes=41))
    assert (d.action, d.reason) == (Action.MINT, "RenewalDue")


def test_expired_token_mints_with_expired_reason() -> None:
    s = spec()
    d = decide(snap(s, secret_body(s, record(s))), T0 + dt.timedelta(hours=2))
    assert (d.action, d.reason) == (Action.MINT, api.REASON_EXPIRED)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"scopes": ["read", "write"]}, "SpecChanged"),
        ({"audience": ["https://other"]}, "SpecChanged"),
        ({"ttl": "2h"}, "SpecChanged"),
        ({"environment": "prod"}, "SpecChanged"),
    ],
)
def test_spec_change_of_token_content_mints(change: dict[str, Any], reason: str) -> None:
    old = spec()
    body = secret_body(old, record(old))
    d = decide(snap(spec(**change), body), T0 + dt.timedelta(minutes=1))
    assert (d.action, d.reason) == (Action.MINT, reason)


def test_renewal_setting_change_only_reschedules() -> None:
    old = spec()
    d = decide(snap(spec(renewBefore="5m"), secret_body(old, record(old))), T0 + dt.timedelta(minutes=1))
    assert d.action is Action.NONE
    assert d.wake_at is not None
    assert d.wake_at > T0 + dt.timedelta(minutes=54)


def test_deleted_secret_mints_as_missing() -> None:
    d = decide(snap(spec(), None), T0)
    assert (d.action, d.reason) == (Action.MINT, "SecretMissing")


def test_altered_token_mints() -> None:
    s = spec()
    body = secret_body(s, record(s), token="tampered")  # record hash is of TOKEN
    d = decide(snap(s, body), T0)
    assert (d.action, d.reason) == (Action.MINT, "TokenAltered")


def test_altered_derived_key_is_repaired_without_minting() -> None:
    s = spec()
    body = secret_body(s, record(s))
    body["data"]["expires-at"] = "MjAwMC0wMS0wMQ=="
    d = decide(snap(s, body), T0)
    assert d.action is Action.REPAIR
    assert "data[expires-at]" in d.message


def test_rotate_request_is_handled_once() -> None:
    s = spec()
    d = decide(snap(s, secret_body(s, record(s)), rotate="r1"), T0)
    assert (d.action, d.reason) == (Action.MINT, api.REASON_ROTATE_REQUESTED)
    answered = record(s, rotate_request="r1")
    assert decide(snap(s, secret_body(s, answered), rotate="r1"), T0).action is Action.NONE


def test_secret_newer_than_status_is_adopted_not_reminted() -> None:
    """A crash between the Secret write and the status patch: status catches up, no new token."""
    s = spec()
    rec = record(s, token_id="jti-2", revision=2)
    d = decide(snap(s, secret_body(s, rec), TokenStatus(token_id="jti-1", revision=1)), T0)
    assert d.action is Action.ADOPT
    assert d.adopt == rec


def test_failures_back_off() -> None:
    s = spec()
    failing = TokenStatus(
        token_id="jti-1", revision=1, failed_attempts=3, last_failure_time=T0 + dt.timedelta(minutes=41)
    )
    d = decide(snap(s, secret_body(s, record(s)), failing), T0 + dt.timedelta(minutes=41, seconds=1))
    assert d.action is Action.BACKOFF
    assert d.wake_at is not None
    assert d.wake_at > T0 + dt.timedelta(minutes=41, seconds=1)


def test_suspended_does_nothing() -> None:
    s = spec(suspend=True)
    d = decide(snap(s, secret_body(s, record(s))), T0 + dt.timedelta(hours=2))
    assert (d.action, d.reason) == (Action.NONE, api.REASON_SUSPENDED)


def test_foreign_secret_is_never_overwritten() -> None:
    s = spec()
    foreign = {"metadata": {"name": "tok", "namespace": "ns"}, "data": {"password": "aHVudGVyMg=="}}
    d = decide(snap(s, foreign, TokenStatus()), T0)
    assert d.action is Action.CONFLICT
    # Remedies that work: spec.secret.name is immutable, so none says "change it".
    assert "Delete that Secret" in d.message
    assert "kubectl label secret tok app.kubernetes.io/managed-by=agent-token-operator" in d.message
    assert "choose another" not in d.message


def test_the_hand_over_the_conflict_message_names_works() -> None:
    """Labelling the foreign Secret as the message says makes it this AgentToken's to fill."""
    s = spec()
    foreign = {"metadata": {"name": "tok", "namespace": "ns"}, "data": {"password": "aHVudGVyMg=="}}
    foreign["metadata"]["labels"] = {api.LABEL_MANAGED_BY: api.OPERATOR_NAME}
    d = decide(snap(s, foreign, TokenStatus()), T0)
    assert d.action is Action.MINT


def test_a_secret_controlled_by_something_else_stays_a_conflict_even_when_labelled() -> None:
    s = spec()
    other = {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "name": "x",
        "uid": "u2",
        "controller": True,
    }
    foreign = {
        "metadata": {
            "name": "tok",
            "namespace": "ns",
            "labels": {api.LABEL_MANAGED_BY: api.OPERATOR_NAME},
            "ownerReferences": [other],
        }
    }
    assert decide(snap(s, foreign, TokenStatus()), T0).action is Action.CONFLICT


def test_observed_secret_repr_hides_the_token() -> None:
    s = spec()
    observed = observe(secret_body(s, record(s)), name="agent", uid=UID, spec=s)
    assert observed.token == TOKEN
    assert TOKEN not in repr(observed)


def test_a_token_revoked_as_unused_is_replaced_once_renewal_resumes() -> None:
    s = spec()
    body = secret_body(s, record(s))
    used_again = TokenStatus(
        token_id="jti-1", revision=1, usage=Usage(state=IN_USE, revoked_token_id="jti-1")
    )
    d = decide(snap(s, body, used_again), T0 + dt.timedelta(minutes=1))
    assert (d.action, d.reason) == (Action.MINT, api.REASON_TOKEN_REVOKED)
    # While the policy keeps renewal suspended (the controller sets spec.suspend), nothing is minted.
    still_unused = TokenStatus(
        token_id="jti-1", revision=1, usage=Usage(state=SUSPENDED, revoked_token_id="jti-1")
    )
    d = decide(snap(dataclasses.replace(s, suspend=True), body, still_unused), T0 + dt.timedelta(minutes=1))
    assert d.action is Action.NONE
