"""`agenttoken audit`'s findings: each one planted on an otherwise clean AgentToken."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from agenttoken.core.audit import ReviewPolicy, Row, broad_scope, counts, failing, review

NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
POLICY = ReviewPolicy()


def obj(**changes: Any) -> dict[str, Any]:
    """A clean AgentToken: narrow scopes, 1h TTL, a consumer, rotated, valid."""
    body: dict[str, Any] = {
        "metadata": {"namespace": "team-a", "name": "crawler", "creationTimestamp": "2026-11-01T00:00:00Z"},
        "spec": {
            "audience": ["https://api"],
            "scopes": ["tickets:read"],
            "ttl": "1h",
            "secret": {"name": "s"},
        },
        "status": {
            "revision": 7,
            "issuedAt": "2026-11-22T11:30:00Z",
            "expiresAt": "2026-11-22T12:30:00Z",
            "consumers": [
                {"kind": "Deployment", "name": "crawler", "via": ["volume"], "needsRestart": False}
            ],
            "usage": {"state": "InUse"},
        },
    }
    for path, value in changes.items():
        section, key = path.split("__")
        body[section][key] = value
    return body


def ids(row: Row) -> list[tuple[str, str]]:
    return [(f.id, f.severity) for f in row.findings]


def test_a_clean_agenttoken_has_no_findings() -> None:
    row = review(obj(), POLICY, NOW)
    assert ids(row) == []
    assert row.days_since_last_use == 0
    assert row.consumers == ("Deployment/crawler",)
    assert row.issuer == "ClusterTokenIssuer/builtin"
    assert row.last_rotation == "2026-11-22T11:30:00Z"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"spec__scopes": ["tickets:*"]}, [("BroadScope", "high")]),
        ({"spec__scopes": ["*"]}, [("BroadScope", "high")]),
        ({"spec__scopes": ["tickets:admin", "tickets:read"]}, [("BroadScope", "high")]),
        ({"spec__scopes": ["Root"]}, [("BroadScope", "high")]),
        ({"spec__ttl": "72h"}, [("LongTTL", "medium")]),
        ({"status__expiresAt": "2026-11-22T11:59:59Z"}, [("Expired", "high")]),
        ({"status__revision": 1}, [("NeverRotated", "low")]),
        ({"status__consumers": [], "status__usage": {"state": "Idle"}}, [("NoConsumers", "low")]),
        (
            {
                "status__consumers": [],
                "status__usage": {"state": "Suspended", "unusedSince": "2026-11-01T00:00:00Z"},
            },
            [("Unused", "medium")],
        ),
    ],
)
def test_each_planted_finding_is_reported(changes: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert ids(review(obj(**changes), POLICY, NOW)) == expected


def test_findings_are_ordered_by_severity_and_gate_at_the_chosen_level() -> None:
    row = review(obj(spec__scopes=["*"], spec__ttl="48h", status__revision=1), POLICY, NOW)
    assert ids(row) == [("BroadScope", "high"), ("LongTTL", "medium"), ("NeverRotated", "low")]
    assert counts([row]) == {"low": 1, "medium": 1, "high": 1}
    assert [f.id for f in failing([row], "high")] == ["BroadScope"]
    assert len(failing([row], "low")) == 3
    assert failing([row], None) == []
    clean = review(obj(), POLICY, NOW)
    assert failing([clean], "low") == []


def test_thresholds_and_admin_words_are_configurable() -> None:
    policy = ReviewPolicy(admin_words=("write",), max_ttl=datetime.timedelta(minutes=30))
    row = review(obj(spec__scopes=["tickets:write", "tickets:admin"]), policy, NOW)
    assert ids(row) == [("BroadScope", "high"), ("LongTTL", "medium")]
    assert "tickets:write" in row.findings[0].message
    young = obj(status__revision=1)
    young["metadata"]["creationTimestamp"] = "2026-11-22T11:00:00Z"
    assert ids(review(young, POLICY, NOW)) == []


def test_days_since_last_use_comes_from_the_recorded_usage() -> None:
    row = review(
        obj(status__consumers=[], status__usage={"state": "Idle", "lastConsumedAt": "2026-11-19T11:00:00Z"}),
        POLICY,
        NOW,
    )
    assert row.days_since_last_use == 3
    unknown = review(obj(status__consumers=[], status__usage=None), POLICY, NOW)
    assert unknown.days_since_last_use is None


def test_broad_scope_matches_whole_words_only() -> None:
    assert broad_scope("admin", ("admin",)) == "admin-like (admin)"
    assert broad_scope("badminton:read", ("admin",)) is None
    assert broad_scope("a.b/c-admin_x", ("admin",)) == "admin-like (admin)"
