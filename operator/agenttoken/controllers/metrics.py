"""Prometheus metrics, one `agenttoken_` prefix, base units.

Per-object gauges are computed at scrape time from what the controller last saw (like
cert-manager), so a deleted AgentToken's series disappear with it instead of going stale.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agenttoken.core.times import parse_time

Key = tuple[str, str]

RENEWALS = Counter("agenttoken_renewals", "Token issuances by result (success, failure).", ["result"])
RECONCILE_DURATION = Histogram(
    "agenttoken_reconcile_duration_seconds",
    "Time to reconcile one AgentToken.",
    ["result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SCHEDULE_LAG = Histogram(
    "agenttoken_schedule_lag_seconds",
    "How late the scheduler picked up a due AgentToken (actual minus scheduled).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)

RESTARTS = Counter("agenttoken_restarts", "Workload restarts triggered for new tokens.", ["kind"])
ROLLOUT_DURATION = Histogram(
    "agenttoken_rollout_duration_seconds",
    "Time from a restart patch until the workload's rollout finished.",
    ["kind", "result"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
ISSUER_REQUESTS = Counter(
    "agenttoken_issuer_requests",
    "Token requests to issuers by issuer kind, name, type and result (success, failure).",
    ["kind", "namespace", "name", "type", "result"],
)
ISSUER_REQUEST_DURATION = Histogram(
    "agenttoken_issuer_request_duration_seconds",
    "Time an issuer took to mint one token.",
    ["type"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Not agenttoken_verifications: that name is the SDK verifier's audit counter (verifylog).
CONNECTIVITY_CHECKS = Counter(
    "agenttoken_connectivity_checks",
    "spec.verify checks of new tokens by result (success, failure).",
    ["result"],
)
# Leader election (controllers.leadership); the gauges are read from the Leases' state at scrape time.
LEADER = Gauge("agenttoken_leader", "1 while this replica holds shard 0 (runs the cluster-wide singletons).")
SHARDS_HELD = Gauge("agenttoken_shards_held", "Shard Leases this replica holds (fenced: renewed in time).")
# Sharded, a replica keeps no Secret (token) of a shard it does not hold: this shows it.
SECRETS_CACHED = Gauge("agenttoken_secrets_cached", "Managed Secrets held in this replica's watch cache.")
# ...nor the body of an AgentToken of such a shard (controllers.takeover): only its name.
TOKENS_CACHED = Gauge("agenttoken_tokens_cached", "AgentToken bodies held in this replica's cache.")
SHARD_LIST_FAILURES = Counter(
    "agenttoken_shard_list_failures",
    "LISTs of a gained shard's AgentTokens that failed (each is retried with backoff).",
)
LEASE_TRANSITIONS = Counter(
    "agenttoken_lease_transitions", "Shard Leases this replica acquired or lost, by shard.", ["shard"]
)
REVOCATIONS = Counter("agenttoken_revocations", "Token ids put on the revocation list.", ["reason"])
# The signed revocation list's size against its bound (docs/sdk.md, "Limits"): alerts fire before
# a part fills up, and on every refusal.
REVOCATION_LIST_ENTRIES = Gauge(
    "agenttoken_revocation_list_entries",
    "Live token ids on each part of the signed revocation list.",
    ["part"],
)
REVOCATION_LIST_BYTES = Gauge(
    "agenttoken_revocation_list_bytes", "Size of each signed revocation list part as stored.", ["part"]
)
REVOCATION_LIST_LIMIT_BYTES = Gauge(
    "agenttoken_revocation_list_limit_bytes", "Largest signed part the operator writes; past it, it refuses."
)
REVOCATION_LIST_NEXT_UPDATE = Gauge(
    "agenttoken_revocation_list_next_update_timestamp_seconds",
    "When each signed part stops being current (verifiers add their grace).",
    ["part"],
)
REVOCATION_LIST_REFUSED = Counter(
    "agenttoken_revocation_list_refused",
    "Revocations refused because a part of the signed list is at its size bound.",
)


def observe_revocation_part(part: int, entries: int, size: int, next_update: int) -> None:
    REVOCATION_LIST_ENTRIES.labels(part=str(part)).set(entries)
    REVOCATION_LIST_BYTES.labels(part=str(part)).set(size)
    REVOCATION_LIST_NEXT_UPDATE.labels(part=str(part)).set(next_update)


# (namespace, name) -> (expires, renews, ready, usage state, unused since) as last seen; only
# timestamps and status words.
_tokens: dict[Key, tuple[float | None, float | None, str, str | None, float | None]] = {}
# Usage states the unused-token policy flags (usage.FLAGGED; metrics stays free of core imports).
_FLAGGED = ("Unused", "Suspended", "Revoked")


def observe_token(key: Key, body: Mapping[str, Any]) -> None:
    status = body.get("status") or {}
    expires, renews = parse_time(status.get("expiresAt")), parse_time(status.get("renewalTime"))
    ready = next(
        (c.get("status", "Unknown") for c in status.get("conditions", []) if c.get("type") == "Ready"),
        "Unknown",
    )
    usage = status.get("usage") or {}
    unused_since = parse_time(usage.get("unusedSince"))
    _tokens[key] = (
        expires.timestamp() if expires else None,
        renews.timestamp() if renews else None,
        str(ready),
        usage.get("state"),
        unused_since.timestamp() if unused_since else None,
    )


def forget(key: Key) -> None:
    _tokens.pop(key, None)


class _TokenCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["namespace", "name"]
        expiry = GaugeMetricFamily(
            "agenttoken_token_expiration_timestamp_seconds",
            "When the current token expires (Unix time).",
            labels=labels,
        )
        renewal = GaugeMetricFamily(
            "agenttoken_token_renewal_timestamp_seconds",
            "When the next renewal is planned (Unix time).",
            labels=labels,
        )
        ready = GaugeMetricFamily(
            "agenttoken_token_ready_status",
            "Ready condition of the AgentToken.",
            labels=[*labels, "condition"],
        )
        unused = GaugeMetricFamily(
            "agenttoken_token_unused",
            "1 while no workload has consumed the AgentToken's Secret for spec.unused.markAfter, "
            "by policy step (Unused, Suspended, Revoked).",
            labels=[*labels, "state"],
        )
        unused_since = GaugeMetricFamily(
            "agenttoken_token_unused_since_timestamp_seconds",
            "Since when no workload has consumed the AgentToken's Secret (Unix time).",
            labels=labels,
        )
        for (namespace, name), (exp, ren, status, state, since) in list(_tokens.items()):
            if state is not None:
                for value in _FLAGGED:
                    unused.add_metric([namespace, name, value], 1.0 if state == value else 0.0)
            if since is not None:
                unused_since.add_metric([namespace, name], since)
            if exp is not None:
                expiry.add_metric([namespace, name], exp)
            if ren is not None:
                renewal.add_metric([namespace, name], ren)
            for value in ("True", "False", "Unknown"):
                ready.add_metric([namespace, name, value], 1.0 if status == value else 0.0)
        yield from (expiry, renewal, ready, unused, unused_since)


class _CountCollector(Collector):
    """Its own collector, so `?name[]=agenttoken_tokens` skips the per-object series."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        count = GaugeMetricFamily("agenttoken_tokens", "AgentTokens known to the operator.")
        count.add_metric([], float(len(_tokens)))
        yield count


REGISTRY.register(_TokenCollector())
REGISTRY.register(_CountCollector())
