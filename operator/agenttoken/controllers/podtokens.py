"""The built-in issuer's token endpoint: per-pod tokens for AgentTokens with `delivery: PerPod`.

Served by every replica (runtime.server), from the caches every replica keeps (issuers, namespace
labels, and its own of the PerPod AgentTokens of every shard: sharded, the controller's token
cache holds its own shards only): no list per request. One grant: parse the form; a cheap look at the
assertion (core.podtoken.precheck); the TokenReview (cached by the assertion's hash until its exp,
at most REVIEW_TTL; refusals for NEGATIVE_TTL, so a flood of bad assertions costs the apiserver
little); rate limits per pod and per ServiceAccount; the pod must not be known deleted; the
AgentToken that grants the ServiceAccount, its issuer and the issuer policy (controllers.issuer);
the pod ledger's write-ahead (controllers.podledger); then a token signed with the issuer key
whose `kubernetes.io` claim names the pod. Logs carry token ids only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from agenttoken.controllers import podmetrics
from agenttoken.controllers.context import Key
from agenttoken.controllers.issuer import Issuers
from agenttoken.controllers.podledger import PodLedger
from agenttoken.controllers.podstatus import PodTokenCounts
from agenttoken.controllers.revocation import RevocationStore
from agenttoken.core import podtoken
from agenttoken.core.bodycache import BodyCache
from agenttoken.core.conditions import Reason
from agenttoken.core.keys import SigningKey
from agenttoken.core.model import AgentTokenSpec, InvalidSpec, parse_spec
from agenttoken.core.podtoken import GrantError, PodIdentity, RateLimiter, TimedCache
from agenttoken.core.tokens import mint
from agenttoken.kube.errors import KubeError
from agenttoken.kube.podreviews import PodReviews

log = logging.getLogger(__name__)

REVIEW_TTL = 60.0  # a cached review is trusted this long at most (and never past the assertion's exp)
NEGATIVE_TTL = 10.0
# Per pod: a refresh every few minutes is normal; 5/s with bursts of 20 leaves room for restarts.
POD_RATE, POD_BURST = 5.0, 20.0
# Per ServiceAccount: a few hundred replicas refreshing at once.
SA_RATE, SA_BURST = 2000.0, 4000.0


class PodTokenService:
    def __init__(
        self,
        reviews: PodReviews,
        ledger: PodLedger,
        revocations: RevocationStore,
        issuers: Issuers,
        tokens: BodyCache,
        signing_key: Callable[[], SigningKey],
        issuer_url: str,
        counts: PodTokenCounts,
    ) -> None:
        self.reviews, self.ledger, self.revocations = reviews, ledger, revocations
        self.issuers, self.tokens, self.signing_key = issuers, tokens, signing_key
        self.issuer_url = issuer_url
        self.audience = podtoken.token_endpoint(issuer_url)
        self.counts = counts
        self._reviewed: TimedCache[PodIdentity | GrantError] = TimedCache()
        self._inflight: dict[str, asyncio.Future[PodIdentity | GrantError]] = {}
        self._per_pod = RateLimiter(POD_RATE, POD_BURST)
        self._per_sa = RateLimiter(SA_RATE, SA_BURST)
        self._grants: dict[tuple[str, str], set[str]] = {}  # (namespace, ServiceAccount) -> AgentTokens
        self._granted_by: dict[Key, tuple[str, str]] = {}
        self._specs: dict[Key, tuple[Any, AgentTokenSpec | InvalidSpec]] = {}

    # -- the AgentToken index (fed by the same watch as the controller) --

    def on_token_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        before = self._granted_by.pop(key, None)
        if before is not None:
            self._grants.get(before, set()).discard(key[1])
        spec = body.get("spec") or {}
        if event_type == "DELETED" or spec.get("delivery") != "PerPod" or not spec.get("serviceAccountName"):
            self._specs.pop(key, None)
            self.tokens.drop(key)
            return
        self.tokens.offer(key, dict(body))
        sa = (key[0], str(spec["serviceAccountName"]))
        self._granted_by[key] = sa
        self._grants.setdefault(sa, set()).add(key[1])

    def _spec(self, key: Key, body: Mapping[str, Any]) -> AgentTokenSpec:
        version = (body.get("metadata") or {}).get("resourceVersion")
        cached = self._specs.get(key)
        if cached is None or cached[0] != version:
            try:
                cached = (version, parse_spec(body.get("spec") or {}))
            except InvalidSpec as exc:
                cached = (version, exc)
            self._specs[key] = cached
        if isinstance(cached[1], InvalidSpec):
            raise GrantError("invalid_grant", f"AgentToken {key[1]} is invalid: {cached[1]}")
        return cached[1]

    # -- one grant --

    async def grant(self, form: Mapping[str, str]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            answer = await self._grant(form)
        except GrantError as exc:
            podmetrics.POD_TOKEN_FAILURES.labels(exc.error).inc()
            podmetrics.TOKEN_ENDPOINT_DURATION.labels("refused").observe(time.perf_counter() - started)
            raise
        podmetrics.TOKEN_ENDPOINT_DURATION.labels("issued").observe(time.perf_counter() - started)
        return answer

    async def _identity(self, assertion: str, now: float) -> PodIdentity:
        exp = podtoken.precheck(assertion, self.audience, now)
        digest = podtoken.assertion_hash(assertion)
        cached = self._reviewed.get(digest, now)
        if cached is not None:
            podmetrics.TOKEN_REVIEW_CACHE_HITS.inc()
            # Refresh ahead: a pod that keeps asking never waits for a review once it had one.
            left = self._reviewed.expires(digest) - now
            if left < REVIEW_TTL / 2 and exp - now > REVIEW_TTL / 2 and digest not in self._inflight:
                self._start_review(assertion, digest, exp, now)
        else:
            # One review per assertion at a time: concurrent grants of one pod share it (a burst
            # right after the cached answer ran out would otherwise each ask the apiserver).
            pending = self._inflight.get(digest) or self._start_review(assertion, digest, exp, now)
            cached = await asyncio.shield(pending)
        if isinstance(cached, GrantError):
            raise cached
        return cached

    def _start_review(
        self, assertion: str, digest: str, exp: float, now: float
    ) -> asyncio.Future[PodIdentity | GrantError]:
        pending = asyncio.ensure_future(self._review(assertion, digest, exp, now))
        self._inflight[digest] = pending

        def done(future: asyncio.Future[PodIdentity | GrantError]) -> None:
            self._inflight.pop(digest, None)
            if not future.cancelled() and future.exception() is not None:
                log.warning("TokenReview failed (%s)", type(future.exception()).__name__)

        pending.add_done_callback(done)
        return pending

    async def _review(self, assertion: str, digest: str, exp: float, now: float) -> PodIdentity | GrantError:
        try:
            status = await self.reviews.review(assertion, self.audience)
        except KubeError as exc:
            podmetrics.TOKEN_REVIEWS.labels("error").inc()
            return GrantError("temporarily_unavailable", f"TokenReview failed (HTTP {exc.status})", 503)
        answer: PodIdentity | GrantError
        try:
            answer = podtoken.pod_identity(status, self.audience)
            self._reviewed.put(digest, answer, min(exp, now + REVIEW_TTL))
        except GrantError as exc:
            answer = exc
            self._reviewed.put(digest, exc, min(exp, now + NEGATIVE_TTL))
        podmetrics.TOKEN_REVIEWS.labels("refused" if isinstance(answer, GrantError) else "ok").inc()
        return answer

    def _limit(self, who: PodIdentity, now: float) -> None:
        wait = self._per_pod.take(who.pod_uid, now) or self._per_sa.take(
            f"{who.namespace}/{who.service_account}", now
        )
        if wait is not None:
            raise GrantError("temporarily_unavailable", "too many grants; retry later", 429, retry_after=wait)

    async def _grant(self, form: Mapping[str, str]) -> dict[str, Any]:
        now = time.time()
        grant = podtoken.parse_form(form)
        who = await self._identity(grant.assertion, now)
        self._limit(who, now)
        if self.ledger.gone(who.pod_uid) or self.revocations.is_revoked(podtoken.revoked_pod_id(who.pod_uid)):
            raise GrantError("invalid_grant", "the pod was deleted")
        name = podtoken.choose(
            sorted(self._grants.get((who.namespace, who.service_account), ())), grant.agenttoken, who
        )
        key = (who.namespace, name)
        try:
            return await self._issue(key, grant, who, now)
        except GrantError as exc:
            self.counts.failed(key, exc.error)
            raise

    async def _issue(self, key: Key, grant: podtoken.Grant, who: PodIdentity, now: float) -> dict[str, Any]:
        body = self.tokens.get(key)
        if body is None:
            raise GrantError("invalid_grant", f"AgentToken {key[1]} not found")
        spec = self._spec(key, body)
        if spec.suspend or (body.get("metadata") or {}).get("deletionTimestamp"):
            raise GrantError("invalid_grant", f"AgentToken {key[1]} is suspended or being deleted")
        issuer = await self.issuers.resolve(key, spec)
        if isinstance(issuer, Reason):
            raise GrantError("invalid_grant", f"AgentToken {key[1]}: {issuer.message}")
        if issuer.type != "builtin":
            raise GrantError("invalid_grant", f"AgentToken {key[1]}: delivery PerPod needs a builtin issuer")
        scopes = podtoken.narrow_scopes(grant.scopes, spec.scopes)
        request = dataclasses.replace(
            spec.token_request(key[0], key[1], body["metadata"]["uid"]), scopes=scopes
        )
        try:
            key_now = self.signing_key()
            await self.ledger.ensure(who, now + spec.ttl.total_seconds() + 1)
        except RuntimeError as exc:  # no signing key yet, or the ledger could not be written
            raise GrantError("temporarily_unavailable", str(exc), 503) from None
        minted = mint(
            request,
            key_now,
            issuer=self.issuer_url,
            now=datetime.datetime.fromtimestamp(now, datetime.UTC),
            extra=podtoken.pod_claims(who),
        )
        self.counts.issued(key, minted.issued_at)
        podmetrics.POD_TOKENS_ISSUED.labels(*key).inc()
        podmetrics.POD_TOKENS_LAST_ISSUED.labels(*key).set(now)
        log.debug("issued per-pod token %s for AgentToken %s/%s", minted.token_id, *key)
        answer: dict[str, Any] = {
            "access_token": minted.token,
            "token_type": "Bearer",
            "expires_in": int((minted.expires_at - minted.issued_at).total_seconds()),
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        }
        if scopes:
            answer["scope"] = " ".join(scopes)
        return answer
