"""Metrics of the per-pod token endpoint (`agenttoken_` prefix, base units). Per AgentToken and
per error code only: never a pod, a token or an assertion as a label value."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

POD_TOKENS_ISSUED = Counter(
    "agenttoken_pod_tokens_issued",
    "Per-pod tokens issued by the token endpoint.",
    ["namespace", "agenttoken"],
)
POD_TOKENS_LAST_ISSUED = Gauge(
    "agenttoken_pod_tokens_last_issued_timestamp_seconds",
    "When this replica last issued a per-pod token of the AgentToken.",
    ["namespace", "agenttoken"],
)
POD_TOKEN_FAILURES = Counter(
    "agenttoken_pod_token_failures",
    "Refused grants at the token endpoint, by RFC 6749 error code.",
    ["error"],
)
TOKEN_ENDPOINT_DURATION = Histogram(
    "agenttoken_token_endpoint_duration_seconds",
    "Time to answer one token endpoint request.",
    ["result"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
TOKEN_REVIEWS = Counter(
    "agenttoken_token_reviews", "TokenReviews the token endpoint asked the apiserver for.", ["result"]
)
TOKEN_REVIEW_CACHE_HITS = Counter(
    "agenttoken_token_review_cache_hits", "Grants answered from the cached TokenReview of their assertion."
)
LEDGER_ENTRIES = Gauge("agenttoken_pod_ledger_entries", "Pods recorded as holding live per-pod tokens.")
PODS_REVOKED = Counter(
    "agenttoken_pod_revocations", "Deleted pods whose per-pod tokens were put on the revocation list."
)
