"""Status and conditions: derived in one place, kstatus semantics, never token material."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from agenttoken import api
from agenttoken.core.conditions import Reason, summarize
from agenttoken.core.model import InvalidSpec, TokenStatus, parse_spec, parse_status
from agenttoken.core.secretdata import TokenRecord, desired_secret, managed_data
from agenttoken.core.status import Outcome, differs, render
from agenttoken.core.tokens import token_hash

T0 = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzZWNyZXQiOiJ5ZXMifQ.c2lnbmF0dXJl"
SPEC = parse_spec({"audience": ["https://api"], "scopes": ["a"], "ttl": "1h", "secret": {"name": "s"}})
RECORD = TokenRecord(
    token_id="jti-9",
    token_hash=token_hash(TOKEN),
    key_id="kid",
    revision=4,
    issued_at=T0,
    expires_at=T0 + dt.timedelta(hours=1),
    spec_hash=SPEC.claims_hash(),
)


def types(conds: list[dict[str, object]]) -> dict[object, object]:
    return {c["type"]: c["status"] for c in conds}


def test_ready_only_when_healthy() -> None:
    conds = summarize(previous=[], generation=3, now=T0, ready=Reason("TokenReady", "ok"))
    assert types(conds) == {"Ready": "True"}
    assert conds[0]["observedGeneration"] == 3


def test_stalled_overrides_ready() -> None:
    conds = summarize(
        previous=[],
        generation=1,
        now=T0,
        ready=Reason("TokenReady", "ok"),
        stalled=Reason("SecretConflict", "x"),
    )
    assert types(conds) == {"Ready": "False", "Stalled": "True"}
    assert conds[0]["reason"] == "SecretConflict"


def test_reconciling_is_abnormal_true() -> None:
    conds = summarize(
        previous=[],
        generation=1,
        now=T0,
        ready=None,
        not_ready=Reason("Progressing", "x"),
        reconciling=Reason("R", "m"),
    )
    assert types(conds) == {"Ready": "False", "Reconciling": "True"}


def test_transition_time_moves_only_on_flip() -> None:
    first = summarize(previous=[], generation=1, now=T0, ready=Reason("TokenReady", "a"))
    later = T0 + dt.timedelta(minutes=5)
    same = summarize(previous=first, generation=2, now=later, ready=Reason("TokenReady", "b"))
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    flipped = summarize(
        previous=first, generation=2, now=later, ready=None, not_ready=Reason("TokenExpired", "c")
    )
    assert flipped[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]


def test_render_reports_the_record_and_never_the_token() -> None:
    out = render(
        previous=TokenStatus(),
        generation=2,
        spec=SPEC,
        record=RECORD,
        jitter_key="uid",
        outcome=Outcome(),
        now=T0,
    )
    assert out["tokenId"] == "jti-9"
    assert out["revision"] == 4
    assert out["expiresAt"] == "2026-11-22T13:00:00Z"
    assert out["renewalTime"] is not None
    assert TOKEN not in json.dumps(out)
    assert types(out["conditions"]) == {"Ready": "True"}


def test_render_expired_is_not_ready() -> None:
    out = render(
        previous=TokenStatus(),
        generation=1,
        spec=SPEC,
        record=RECORD,
        jitter_key="uid",
        outcome=Outcome(),
        now=T0 + dt.timedelta(hours=2),
    )
    ready = out["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", api.REASON_EXPIRED)


def test_render_failure_keeps_ready_while_valid_and_reconciles() -> None:
    outcome = Outcome(
        failure=Reason(api.REASON_RENEWAL_FAILED, "boom"), failed_attempts=2, last_failure_time=T0
    )
    out = render(
        previous=TokenStatus(),
        generation=1,
        spec=SPEC,
        record=RECORD,
        jitter_key="u",
        outcome=outcome,
        now=T0,
    )
    assert types(out["conditions"]) == {"Ready": "True", "Reconciling": "True"}
    assert out["failedAttempts"] == 2


@pytest.mark.parametrize(("record", "ready"), [(RECORD, "True"), (None, "False")])
def test_suspended_says_so_and_has_no_renewal_time(record: TokenRecord | None, ready: str) -> None:
    # Also when created suspended, before any token: Progressing would keep kstatus waiting forever.
    out = render(
        previous=TokenStatus(),
        generation=1,
        spec=SPEC,
        record=record,
        jitter_key="u",
        outcome=Outcome(suspended=True),
        now=T0,
    )
    assert out["renewalTime"] is None
    assert types(out["conditions"]) == {"Ready": ready}
    assert out["conditions"][0]["reason"] == api.REASON_SUSPENDED


def test_status_round_trip() -> None:
    out = render(
        previous=TokenStatus(),
        generation=7,
        spec=SPEC,
        record=RECORD,
        jitter_key="u",
        outcome=Outcome(),
        now=T0,
    )
    parsed = parse_status(out)
    assert (parsed.token_id, parsed.revision, parsed.observed_generation) == ("jti-9", 4, 7)
    assert not differs(
        out,
        render(
            previous=parsed, generation=7, spec=SPEC, record=RECORD, jitter_key="u", outcome=Outcome(), now=T0
        ),
    )


def test_secret_annotations_round_trip_without_the_token() -> None:
    body = desired_secret(namespace="ns", name="n", uid="u", spec=SPEC, token=TOKEN, record=RECORD)
    ann = body["metadata"]["annotations"]
    assert TokenRecord.from_annotations(ann) == RECORD
    assert TOKEN not in json.dumps(body["metadata"])
    bundle = json.loads(managed_data(TOKEN, RECORD, SPEC)["token.json"])
    assert bundle["token"] == TOKEN
    assert bundle["tokenId"] == "jti-9"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"audience": [], "ttl": "1h", "secret": {"name": "s"}}, "spec.audience"),
        ({"audience": ["a"], "ttl": "10s", "secret": {"name": "s"}}, "spec.ttl must be between"),
        (
            {"audience": ["a"], "ttl": "1h", "renewBefore": "2h", "secret": {"name": "s"}},
            "shorter than spec.ttl",
        ),
        ({"audience": ["a"], "ttl": "1h", "secret": {}}, "spec.secret.name"),
        ({"audience": ["a"], "ttl": "1h", "scopes": ["a b"], "secret": {"name": "s"}}, "scope"),
        (
            {"audience": ["a"], "ttl": "1h", "allowedCIDRs": ["10.0.0.1/8"], "secret": {"name": "s"}},
            "host bits",
        ),
    ],
)
def test_parse_spec_names_the_field(spec: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse_spec(spec)


def test_differs_follows_merge_patch_semantics() -> None:
    """A status the apiserver returned (nulls dropped, also nested) equals what we would write:
    no second, no-op status write after every renewal."""
    desired = {"rollout": {"state": "Complete", "revokeAt": None}, "lastFailureTime": None, "revision": 2}
    stored = {"rollout": {"state": "Complete"}, "revision": 2}
    assert not differs(stored, desired)
    assert differs(stored, {**desired, "revision": 3})
    assert differs(stored, {"rollout": {"state": "RollingOut", "revokeAt": None}})


def test_unused_policy_steps_show_in_conditions() -> None:
    def conds(outcome: Outcome) -> dict[object, object]:
        out = render(
            previous=TokenStatus(),
            generation=1,
            spec=SPEC,
            record=RECORD,
            jitter_key="u",
            outcome=outcome,
            now=T0,
        )
        return {c["type"]: (c["status"], c["reason"]) for c in out["conditions"]}

    marked = Reason(api.REASON_UNUSED, "no consumer")
    assert conds(Outcome(unused=marked)) == {
        "Ready": ("True", "TokenReady"),
        "Unused": ("True", "TokenUnused"),
    }
    suspended = Outcome(
        unused=Reason(api.REASON_UNUSED_SUSPENDED, "x"), suspended=True, suspended_why="unused"
    )
    assert conds(suspended)["Ready"] == ("True", "Suspended")
    revoked = Outcome(
        unused=Reason(api.REASON_UNUSED_REVOKED, "x"),
        suspended=True,
        revoked=Reason(api.REASON_TOKEN_REVOKED, "revoked as unused"),
    )
    assert conds(revoked) == {"Ready": ("False", "TokenRevoked"), "Unused": ("True", "UnusedRevoked")}
