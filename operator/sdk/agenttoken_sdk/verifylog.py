"""Audit records of token verifications: one structured log line and one counter increment per
`Verifier.verify()` call, so an API can see which agent did what and alert on revoked or expired
tokens still being presented. Never the token.

What goes where, and why:

* The log line (logger `agenttoken.verify.audit`, a JSON object as the message and the same
  dict as `record.audit` for structured handlers) carries everything an investigation needs:
  result, failed check and its reason, audience, subject, AgentToken (namespace/name from the
  private claim), token id (`jti`), and the caller's address when given.
* The counter `agenttoken_verifications_total` has labels subject, namespace, name, result and
  check only. Its cardinality is bounded by the AgentTokens an issuer serves (one subject and one
  namespace/name per AgentToken) times the 13 checks plus "accepted". The token id is never a
  label: a new one per renewal would grow a series per token without bound.
* Claims come from the token only once its signature has verified. A rejection at format, alg,
  kid or signature has empty subject/namespace/name labels and no token id in the log: an
  unsigned payload is attacker-controlled, and letting it pick label values would let anyone
  create series at will.

prometheus-client is optional for the SDK: without it the log line is still written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from agenttoken_sdk.jose import CLAIM_NAMESPACE

__all__ = [
    "ACCEPTED",
    "AUDIT_LOGGER",
    "LABELS",
    "METRIC_NAME",
    "REJECTED",
    "VerificationAudit",
    "VerificationRecord",
]

# The name predates the SDK distribution; kept because log pipelines and alerts select on it.
AUDIT_LOGGER: Final = "agenttoken.verify.audit"
METRIC_NAME: Final = "agenttoken_verifications"
LABELS: Final = ("subject", "namespace", "name", "result", "check")
ACCEPTED: Final = "accepted"
REJECTED: Final = "rejected"
# A library adds no output of its own: records propagate to whatever the application configured.
logging.getLogger(AUDIT_LOGGER).addHandler(logging.NullHandler())
# Label values come from signed claims, but keep a bound on their size anyway.
_MAX_LABEL: Final = 128


@dataclass(frozen=True)
class VerificationRecord:
    result: str  # accepted | rejected
    check: str | None  # the failed check (one of verify.CHECKS); None when accepted
    reason: str | None  # the rejection's message (never contains the token)
    audience: str  # the verifier's audience
    subject: str | None = None
    namespace: str | None = None
    name: str | None = None
    token_id: str | None = None
    client_address: str | None = None

    @classmethod
    def of(
        cls,
        *,
        result: str,
        check: str | None,
        reason: str | None,
        audience: str,
        claims: Mapping[str, Any] | None,
        client_address: str | None,
    ) -> VerificationRecord:
        """`claims` only when the signature verified (see the module docstring)."""
        claims = claims or {}
        private = claims.get(CLAIM_NAMESPACE)
        private = private if isinstance(private, Mapping) else {}

        def text(value: Any) -> str | None:
            return value if isinstance(value, str) and value else None

        return cls(
            result=result,
            check=check,
            reason=reason,
            audience=audience,
            subject=text(claims.get("sub")),
            namespace=text(private.get("namespace")),
            name=text(private.get("name")),
            token_id=text(claims.get("jti")),
            client_address=client_address,
        )

    def fields(self) -> dict[str, Any]:
        return {"event": "token_verification", **{k: v for k, v in asdict(self).items() if v is not None}}

    def labels(self) -> dict[str, str]:
        return {
            "subject": (self.subject or "")[:_MAX_LABEL],
            "namespace": (self.namespace or "")[:_MAX_LABEL],
            "name": (self.name or "")[:_MAX_LABEL],
            "result": self.result,
            "check": self.check or "",
        }


# registry id -> (registry, Counter): a registry refuses a second registration of a name; holding
# the registry keeps its id from being reused.
_counters: dict[int, tuple[Any, Any]] = {}


def _counter(registry: Any) -> Any:
    try:
        from prometheus_client import REGISTRY, Counter
    except ImportError:  # the SDK works without prometheus-client; only the counter is missing
        return None
    registry = REGISTRY if registry is None else registry
    if id(registry) not in _counters:
        counter = Counter(
            METRIC_NAME,
            "Token verifications by subject, AgentToken (namespace, name), result and failed check.",
            list(LABELS),
            registry=registry,
        )
        _counters[id(registry)] = (registry, counter)
    return _counters[id(registry)][1]


class VerificationAudit:
    """Writes the audit record of each verification. `registry`: a prometheus_client
    CollectorRegistry (default: the global one); `metrics=False` writes the log line only."""

    def __init__(
        self,
        *,
        logger: logging.Logger | None = None,
        registry: Any = None,
        metrics: bool = True,
    ) -> None:
        self.logger = logger or logging.getLogger(AUDIT_LOGGER)
        self.counter = _counter(registry) if metrics else None

    def record(self, record: VerificationRecord) -> None:
        fields = record.fields()
        level = logging.INFO if record.result == ACCEPTED else logging.WARNING
        self.logger.log(level, json.dumps(fields, sort_keys=True), extra={"audit": fields})
        if self.counter is not None:
            self.counter.labels(**record.labels()).inc()
