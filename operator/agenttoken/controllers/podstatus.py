"""Status of PerPod AgentTokens: the reconcile pass (no Secret, no renewal, no rollout: Ready says
where pods get their tokens) and `status.podTokens` (issued, failures, last times).

Every replica's token endpoint counts its grants in memory; a flush loop adds them to
`status.podTokens` every FLUSH seconds with a read-modify-write (resourceVersion, 409 -> read
again), so two replicas never overwrite each other's counts. A replica killed before a flush
loses its unflushed counts: the numbers are a lower bound (documented), never a token list.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agenttoken import api
from agenttoken.controllers.context import Key, Pass
from agenttoken.controllers.leadership import Leadership
from agenttoken.core import podtoken
from agenttoken.core.bodycache import BodyCache
from agenttoken.core.conditions import Reason, summarize
from agenttoken.core.times import format_time
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError
from agenttoken.kube.podreviews import PodReviews
from agenttoken.kube.retry import retry_on_conflict

log = logging.getLogger(__name__)

FLUSH = 10.0


@dataclass
class _Delta:
    issued: int = 0
    failures: int = 0
    last_issued: datetime.datetime | None = None
    last_failure: datetime.datetime | None = None
    last_reason: str | None = None


@dataclass
class PodTokenCounts:
    pending: dict[Key, _Delta] = field(default_factory=dict)

    def issued(self, key: Key, when: datetime.datetime) -> None:
        d = self.pending.setdefault(key, _Delta())
        d.issued += 1
        d.last_issued = when

    def failed(self, key: Key, error: str) -> None:
        d = self.pending.setdefault(key, _Delta())
        d.failures += 1
        d.last_failure, d.last_reason = datetime.datetime.now(datetime.UTC), error


def added(current: Mapping[str, Any] | None, d: _Delta) -> dict[str, Any]:
    """status.podTokens with a replica's unflushed counts added (pure)."""
    cur = dict(current or {})
    out: dict[str, Any] = {
        "issued": int(cur.get("issued") or 0) + d.issued,
        "failures": int(cur.get("failures") or 0) + d.failures,
    }
    for name, value in (("lastIssuedAt", d.last_issued), ("lastFailureAt", d.last_failure)):
        out[name] = format_time(value) if value is not None else cur.get(name)
    out["lastFailureReason"] = d.last_reason or cur.get("lastFailureReason")
    return {k: v for k, v in out.items() if v is not None}


async def flush(kube: Kube, reviews: PodReviews, counts: PodTokenCounts) -> None:
    pending, counts.pending = counts.pending, {}
    for (namespace, name), delta in pending.items():

        async def step(namespace: str = namespace, name: str = name, delta: _Delta = delta) -> None:
            body = await kube.get_agenttoken(namespace, name)
            if body is None:
                return
            status = {"podTokens": added((body.get("status") or {}).get("podTokens"), delta)}
            await reviews.patch_status_if(namespace, name, body["metadata"]["resourceVersion"], status)

        try:
            await retry_on_conflict(step, what=f"AgentToken {namespace}/{name} podTokens")
        except (KubeError, RuntimeError) as exc:
            log.warning("podTokens of %s/%s not written (%s)", namespace, name, type(exc).__name__)


async def run_flusher(kube: Kube, reviews: PodReviews, counts: PodTokenCounts) -> None:
    while True:
        await asyncio.sleep(FLUSH)
        try:
            await flush(kube, reviews, counts)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("podTokens flush failed (%s)", type(exc).__name__)


def perpod_ready(p: Pass, issuer_url: str) -> tuple[Reason | None, Reason | None]:
    """Ready True (with its reason) or False (with its reason) of a PerPod AgentToken."""
    if p.issuer.type != "builtin":
        return None, Reason(api.REASON_INVALID_SPEC, "delivery PerPod needs an issuer of type builtin")
    if p.spec.suspend:
        return None, Reason(api.REASON_SUSPENDED, "no per-pod tokens are issued while suspended")
    endpoint = podtoken.token_endpoint(issuer_url)
    return Reason(
        "PerPodReady", f"pods of ServiceAccount {p.spec.service_account} get tokens at {endpoint}"
    ), None


class _Options(Protocol):
    issuer_url: str


async def reconcile(
    kube: Kube, tokens: BodyCache, p: Pass, options: _Options, leadership: Leadership
) -> None:
    """The whole pass of a PerPod AgentToken: its conditions, written when they change."""
    ready, not_ready = perpod_ready(p, options.issuer_url)
    meta = p.body["metadata"]
    generation = meta.get("generation")
    stalled = not_ready if not_ready is not None and not_ready.reason == api.REASON_INVALID_SPEC else None
    conditions = summarize(
        previous=p.previous.conditions, generation=generation, now=p.now,
        ready=ready, not_ready=not_ready, stalled=stalled,
    )  # fmt: skip
    current = p.body.get("status") or {}
    if current.get("conditions") == conditions and current.get("observedGeneration") == generation:
        return
    if not leadership.owns(p.namespace):
        return
    try:
        written = await kube.patch_agenttoken_status(
            p.namespace, p.name, {"observedGeneration": generation, "conditions": conditions}
        )
    except KubeError as exc:
        if exc.not_found:
            return
        raise
    tokens.offer(p.key, written)
