"""The single renewal loop: one in-memory schedule for every AgentToken, rebuilt from status.

kopf's per-object timers and daemons cost a task and a finalizer per object (see
../shared/notes/kopf-at-scale.md); instead, watch events feed caches here and one coroutine
sleeps until the earliest due AgentToken, then reconciles through a bounded worker pool.
After a restart, the initial listing schedules every object at its recorded renewal time, so
overdue tokens are renewed first, oldest first, and tokens that are still good are not touched.

Data flows one way: event -> cache -> `reconcile` reads the caches, the pure core decides
(`renewal.decide`), the Kube adapter applies, status records.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import heapq
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agenttoken import api
from agenttoken.controllers import metrics, probe
from agenttoken.controllers.keys import KeyManager
from agenttoken.controllers.revocation import RevocationStore
from agenttoken.controllers.rollout import RolloutManager
from agenttoken.core import templates
from agenttoken.core.bodycache import BodyCache
from agenttoken.core.conditions import Reason
from agenttoken.core.conditions import summarize as summarize_conditions
from agenttoken.core.connectivity import Result as VerifyResult
from agenttoken.core.model import AgentTokenSpec, InvalidSpec, TokenStatus, parse_spec, parse_status
from agenttoken.core.policy import Request as PolicyRequest
from agenttoken.core.policy import check as check_policy
from agenttoken.core.renewal import Action, Decision, Snapshot, decide
from agenttoken.core.revocation import Revoked
from agenttoken.core.rollout import (
    InterestIndex,
    Workload,
    WorkloadRef,
    annotation_key,
    consumed_in,
    needs_restart,
    select,
    target_status,
)
from agenttoken.core.rollout import summarize as summarize_rollout
from agenttoken.core.secretdata import (
    TokenRecord,
    decode_data,
    desired_secret,
    desired_secret_metadata,
    observe,
)
from agenttoken.core.status import Outcome, differs, render
from agenttoken.core.templates import TemplateError
from agenttoken.core.times import format_time, parse_time
from agenttoken.core.timing import next_retry_time, renewal_time
from agenttoken.core.tokens import token_hash
from agenttoken.core.usage import FLAGGED, IN_USE, REVOKED, SUSPENDED, UNUSED, UsageDecision, assess
from agenttoken.core.usage import message as usage_message
from agenttoken.issuers import IssueContext, Issued, IssueError, IssuerSpec, parse_issuer
from agenttoken.issuers import builtin as builtin_issuer
from agenttoken.issuers import kubernetes as kubernetes_issuer
from agenttoken.issuers import oauth2 as oauth2_issuer
from agenttoken.issuers import webhook as webhook_issuer
from agenttoken.kube.adapter import Kube, KubeError

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
# Seconds a fresh listing of a namespace's consumers is reused by the unused-token policy.
LISTING_TTL = 2.0
Clock = Callable[[], datetime.datetime]


def _test_crash_point(name: str) -> None:
    """Dies like kill -9 here, once, when AGENTTOKEN_TEST_CRASH=<name>:<marker file> (tests only)."""
    spec = os.environ.get("AGENTTOKEN_TEST_CRASH", "")
    point, _, marker = spec.partition(":")
    if point == name and marker and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(name)
        os._exit(137)


class _VerificationFailed(Exception):
    """The new token did not pass spec.verify; the message never carries the token or a body."""


def _template_problem(exc: TemplateError) -> Reason:
    return Reason(api.REASON_INVALID_CONFIG_TEMPLATE, f"spec.secret.config.template: {exc}")


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class SecretRejected(Exception):
    """The apiserver refused the Secret the spec describes (HTTP 422): retrying cannot help."""


def _invalid_secret(exc: SecretRejected) -> Reason:
    return Reason(api.REASON_INVALID_SPEC, f"the Secret this spec describes is invalid: {exc}")


class _SecretAppeared(Exception):
    """Creating the Secret found one already there: the reconcile decides again with it."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("the Secret already exists")
        self.body = body


@dataclasses.dataclass
class ControllerOptions:
    issuer_url: str
    workers: int = 32
    # Warn when this fraction of the lifetime or less is left and renewal is still failing.
    expiry_warning_fraction: float = 0.1
    # Seconds after start before consumption is judged: the watches deliver their initial listing
    # of workloads meanwhile, so an empty cache is never read as "no consumer".
    usage_warmup: float = 30.0


class Controller:
    def __init__(
        self,
        kube: Kube,
        keys: KeyManager,
        options: ControllerOptions,
        clock: Clock = utcnow,
        rollouts: RolloutManager | None = None,
        revocations: RevocationStore | None = None,
    ) -> None:
        self.kube = kube
        self.keys = keys
        self.rollouts = rollouts
        self.revocations = revocations
        self._interest = InterestIndex()  # which AgentTokens a workload event concerns
        # Warn-once marks, one per AgentToken (dropped with it): the token id warned about, or
        # for consumers the stranded workloads warned about (a new one warns again).
        self._warned_slow: dict[Key, str] = {}
        self._warned_consumers: dict[Key, tuple[str, ...]] = {}
        self.issuers: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._by_issuer: dict[tuple[str, str, str], set[Key]] = {}
        self._issuer_of: dict[Key, tuple[str, str, str]] = {}  # reverse of _by_issuer
        # Namespace labels from a namespaces watch (cluster-wide mode); a miss falls back to a GET.
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.options = options
        self.clock = clock
        self.tokens = BodyCache()
        self.secrets = BodyCache()
        self._heap: list[tuple[float, int, Key]] = []
        self._due: dict[Key, float] = {}
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._inflight: set[Key] = set()
        self._again: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(options.workers)
        self._warned_expiry: dict[Key, str] = {}
        self._loop_task: asyncio.Task[None] | None = None
        # spec.verify: a minted token that has not passed its check yet, kept in memory only
        # (never in the Secret, status or anywhere else) so a retry re-checks the same token
        # instead of minting another. Keyed by what it was minted for; an operator restart
        # loses it and the next attempt mints once more (nothing was delivered either way).
        self._held: dict[Key, tuple[tuple[str, str | None], Issued]] = {}
        self._usage_from = clock() + datetime.timedelta(seconds=options.usage_warmup)
        self._listings: dict[str, tuple[float, dict[str, list[dict[str, Any]]]]] = {}
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._event_slots = asyncio.Semaphore(4)

    # -- feeding --

    def on_token_event(self, kind: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if kind == "DELETED":
            self.tokens.drop(key, body)
            self._held.pop(key, None)
            self._due.pop(key, None)
            self._interest.drop(*key)
            for marks in (self._warned_slow, self._warned_expiry):
                marks.pop(key, None)
            self._warned_consumers.pop(key, None)
            issuer = self._issuer_of.pop(key, None)
            if issuer is not None:
                self._by_issuer.get(issuer, set()).discard(key)
            metrics.forget(key)
            return
        if not self.tokens.offer(key, body):
            return
        metrics.observe_token(key, body)
        status = parse_status(body.get("status"))
        when = self.clock()
        # Initial listing after a restart: overdue tokens go first, the oldest first.
        if (
            status.renewal_time is not None
            and status.renewal_time < when
            and status.observed_generation == meta.get("generation")
        ):
            when = status.renewal_time
        self.schedule(key, when)

    def on_secret_event(self, kind: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        namespace = meta.get("namespace", "")
        skey = (namespace, meta.get("name", ""))
        if kind == "DELETED":
            # Also when the Secret merely left our label selector: remember the deletion's
            # resourceVersion so a late response to our own write cannot revive a stale copy.
            self.secrets.drop(skey, body)
        elif not self.secrets.offer(skey, body):
            return
        owner = (meta.get("labels") or {}).get(api.LABEL_AGENTTOKEN)
        if owner and (namespace, owner) in self.tokens.bodies:
            self.schedule((namespace, owner), self.clock())

    def schedule(self, key: Key, when: datetime.datetime) -> None:
        ts = when.timestamp()
        current = self._due.get(key)
        if current is not None and current <= ts:
            return
        self._due[key] = ts
        heapq.heappush(self._heap, (ts, next(self._seq), key))
        self._wakeup.set()

    # -- the loop --

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="agenttoken-scheduler")

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._event_tasks:
            await asyncio.wait(self._event_tasks, timeout=5)  # let queued Events out

    async def _run(self) -> None:
        while True:
            now = self.clock().timestamp()
            while self._heap and self._heap[0][0] <= now:
                ts, _, key = heapq.heappop(self._heap)
                if self._due.get(key) != ts:
                    continue  # superseded by an earlier or removed entry
                del self._due[key]
                metrics.SCHEDULE_LAG.observe(max(0.0, now - ts))
                self._dispatch(key)
            self._wakeup.clear()
            delay = (self._heap[0][0] - now) if self._heap else 3600.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, min(delay, 3600.0)))

    def _dispatch(self, key: Key) -> None:
        if key in self._inflight:
            self._again.add(key)  # reconciled again right after the current run
            return
        self._inflight.add(key)
        task = asyncio.create_task(self._guarded(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, key: Key) -> None:
        try:
            async with self._slots:
                started = time.perf_counter()
                try:
                    await self.reconcile(key)
                    metrics.RECONCILE_DURATION.labels(result="success").observe(time.perf_counter() - started)
                except Exception:
                    metrics.RECONCILE_DURATION.labels(result="error").observe(time.perf_counter() - started)
                    log.exception("reconcile of %s/%s failed; retrying in 10s", *key)
                    self.schedule(key, self.clock() + datetime.timedelta(seconds=10))
        finally:
            self._inflight.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.schedule(key, self.clock())

    # -- one AgentToken --

    async def reconcile(self, key: Key) -> None:
        body = self.tokens.get(key)
        if body is None:
            return
        namespace, name = key
        meta = body["metadata"]
        uid, generation = meta["uid"], meta.get("generation")
        previous = parse_status(body.get("status"))
        now = self.clock()
        if meta.get("deletionTimestamp"):
            await self._finalize(body)
            return
        if api.REVOKE_FINALIZER not in (meta.get("finalizers") or []):
            await self._add_finalizer(body)
        try:
            spec = parse_spec(body.get("spec") or {})
        except InvalidSpec as exc:
            await self._write_status(
                body,
                previous,
                generation,
                None,
                None,
                uid,
                Outcome(stalled=Reason(api.REASON_INVALID_SPEC, str(exc))),
            )
            return
        if spec.config is not None:
            try:
                templates.check(spec.config.template)
            except TemplateError as exc:
                await self._write_status(
                    body, previous, generation, spec, None, uid, Outcome(stalled=_template_problem(exc))
                )
                self._index_for_workloads(key, spec)
                return
        issuer_or_reason = await self._resolve_issuer(key, spec)
        if isinstance(issuer_or_reason, Reason):
            await self._write_status(
                body, previous, generation, spec, None, uid, Outcome(stalled=issuer_or_reason)
            )
            self._index_for_workloads(key, spec)
            return
        issuer = issuer_or_reason
        usage = await self._assess_usage(body, spec, previous, now)
        if usage is not None and usage.usage.suspends_renewal:
            spec = dataclasses.replace(spec, suspend=True)

        rotate = (meta.get("annotations") or {}).get(api.ANN_ROTATE)
        skey = (namespace, spec.secret_name)

        def snapshot() -> Snapshot:
            observed = observe(self.secrets.get(skey), name=name, uid=uid, spec=spec)
            return Snapshot(
                spec=spec, status=previous, secret=observed, rotate_request=rotate, jitter_key=uid
            )

        snap = snapshot()
        decision = decide(snap, now)
        # A brand-new AgentToken (never issued, no Secret seen) skips the fresh read: its create
        # answers 409 if a Secret is there after all, and then we read it and decide again
        # (_SecretAppeared). One API call less per new token; a burst of 1,000 is mostly these.
        brand_new = (
            previous.token_id is None
            and self.secrets.get(skey) is None
            and decision.action is Action.MINT
            and issuer.type != "kubernetes"  # binds to the Secret's uid: it creates the Secret first
        )
        if decision.action not in (Action.NONE, Action.BACKOFF) and not brand_new:
            # Act only on a fresh read: the cache may lag (e.g. right after a restart).
            fresh = await self.kube.get_secret(namespace, spec.secret_name)
            if fresh is None:
                self.secrets.drop(skey)
            else:
                self.secrets.replace(skey, fresh)
            snap = snapshot()
            decision = decide(snap, now)
        record = decision.adopt or (snap.secret.record if snap.secret.token_intact else None)
        if decision.action is Action.CONFLICT:
            record = None  # the token in someone else's Secret is not ours to report or roll out
        outcome = Outcome(
            failed_attempts=previous.failed_attempts,
            last_failure_time=previous.last_failure_time,
            suspended=spec.suspend,
        )
        if previous.failed_attempts:
            # Between attempts, keep reporting the last failure's own reason and cause (it names
            # what went wrong), so waiting out the backoff rewrites nothing.
            last = next(
                (
                    c
                    for c in previous.conditions
                    if c.get("type") == api.COND_RECONCILING
                    and c.get("reason")
                    in (api.REASON_RENEWAL_FAILED, api.REASON_ISSUE_FAILED, api.REASON_VERIFICATION_FAILED)
                ),
                None,
            )
            failure = (
                Reason(str(last["reason"]), str(last.get("message", "")))
                if last
                else Reason(
                    api.REASON_RENEWAL_FAILED, f"{previous.failed_attempts} failed attempt(s); retrying"
                )
            )
            outcome = dataclasses.replace(outcome, failure=failure)
        if usage is not None:
            outcome = self._usage_outcome(usage, spec, record, outcome)

        if decision.action is Action.CONFLICT:
            outcome = dataclasses.replace(outcome, stalled=Reason(decision.reason, decision.message))
        elif decision.action is Action.MINT:
            try:
                record, outcome = await self._mint(body, spec, snap, decision, outcome, issuer)
            except _SecretAppeared as appeared:
                # Decide again with it (ours to adopt, drifted, or someone else's: a conflict).
                self.secrets.replace(skey, appeared.body)
                self.schedule(key, self.clock())
                return
        elif decision.action is Action.REPAIR and record is not None and snap.secret.token:
            try:
                await self._write_secret(
                    namespace,
                    name,
                    uid,
                    spec,
                    snap.secret.token,
                    record,
                    exists=True,
                    stale=snap.secret.stale_keys,
                )
            except TemplateError as exc:
                outcome = dataclasses.replace(outcome, stalled=_template_problem(exc))
            except SecretRejected as exc:
                outcome = dataclasses.replace(outcome, stalled=_invalid_secret(exc))
            else:
                await self._event(body, False, api.REASON_SECRET_REPAIRED, decision.message)

        self._index_for_workloads(key, spec)
        extra: dict[str, Any] = {"rollout": None, "consumers": None}
        rollout_wake: datetime.datetime | None = None
        if record is not None:
            extra, outcome, rollout_wake = await self._rollout(body, spec, record, outcome)
        if usage is not None:
            extra["usage"] = usage.usage.to_status()
        await self._write_status(body, previous, generation, spec, record, uid, outcome, extra)
        await self._warn_if_expiring(body, key, spec, record, outcome)
        self._schedule_next(key, spec, record, decision, outcome, uid)
        for wake in (rollout_wake, usage.wake_at if usage else None):
            if wake is not None:
                self.schedule(key, max(wake, self.clock()))

    # -- stale and orphan tokens --

    async def _assess_usage(
        self, body: dict[str, Any], spec: AgentTokenSpec, previous: TokenStatus, now: datetime.datetime
    ) -> UsageDecision | None:
        """Where this AgentToken stands under spec.unused; takes the step that is due (see usage)."""
        if self.rollouts is None:
            return None  # no workload watches: consumption is unknown
        meta = body["metadata"]
        namespace = meta["namespace"]
        if now < self._usage_from:
            # Keep what status says (a suspension stays) until the workload cache is filled.
            if previous.usage is None:
                return None  # judged at the next reconcile after the warm-up (no extra wake-up)
            # Only a token with a step pending needs a look right after the warm-up.
            pending = previous.usage.state != IN_USE
            return UsageDecision(previous.usage, wake_at=self._usage_from if pending else None)
        consumed = any(
            w.runs_pods and w.consumes_secret(spec.secret_name) for w in self.rollouts.in_namespace(namespace)
        )
        decision = assess(spec.unused, previous.usage, consumed, now, previous.token_id)
        if decision.needs_confirmation and consumed_in(
            await self._fresh_listing(namespace), spec.secret_name
        ):
            decision = assess(spec.unused, previous.usage, True, now, previous.token_id)
        step, usage = decision.step, decision.usage
        if step is None:
            return decision
        text = usage_message(step, usage, spec.secret_name, spec.unused)
        if step == IN_USE:
            await self._event(body, False, api.REASON_IN_USE, text)
        elif step == UNUSED:
            await self._event(body, True, api.REASON_UNUSED, text)
        elif step == SUSPENDED:
            await self._event(body, True, api.REASON_UNUSED_SUSPENDED, text)
        else:
            if previous.token_id and previous.expires_at:
                await self._revoke(body, previous.token_id, previous.expires_at, "Unused", event=False)
            if not (previous.expires_at and previous.expires_at > now):
                text += " (it had already expired; nothing to add to the revocation list)"
            await self._event(body, True, api.REASON_UNUSED_REVOKED, text)
        return decision

    async def _fresh_listing(self, namespace: str) -> dict[str, list[dict[str, Any]]]:
        """Kube.list_consumers, shared for a few seconds by every AgentToken of the namespace
        whose step falls due together (e.g. many tokens marked right after the warm-up)."""
        held = self._listings.get(namespace)
        if held is not None and time.monotonic() - held[0] < LISTING_TTL:
            return held[1]
        listing = await self.kube.list_consumers(namespace)
        self._listings[namespace] = (time.monotonic(), listing)
        for ns in [n for n, (t, _) in self._listings.items() if time.monotonic() - t >= LISTING_TTL]:
            del self._listings[ns]
        return listing

    def _usage_outcome(
        self, decision: UsageDecision, spec: AgentTokenSpec, record: TokenRecord | None, outcome: Outcome
    ) -> Outcome:
        usage = decision.usage
        if usage.state not in FLAGGED:
            return outcome
        reason = {
            UNUSED: api.REASON_UNUSED,
            SUSPENDED: api.REASON_UNUSED_SUSPENDED,
            REVOKED: api.REASON_UNUSED_REVOKED,
        }[usage.state]
        text = usage_message(usage.state, usage, spec.secret_name, spec.unused)
        outcome = dataclasses.replace(outcome, unused=Reason(reason, text))
        if usage.suspends_renewal:
            outcome = dataclasses.replace(
                outcome, suspended_why=f"renewal suspended: unused since {format_time(usage.unused_since)}"
            )
        if usage.state == REVOKED and record is not None and record.token_id == usage.revoked_token_id:
            outcome = dataclasses.replace(outcome, revoked=Reason(api.REASON_TOKEN_REVOKED, text))
        return outcome

    async def _mint(
        self,
        body: dict[str, Any],
        spec: AgentTokenSpec,
        snap: Snapshot,
        decision: Decision,
        outcome: Outcome,
        issuer: IssuerSpec,
    ) -> tuple[TokenRecord | None, Outcome]:
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        now = self.clock()
        old = snap.secret.record if snap.secret.token_intact else None
        first = snap.status.token_id is None and old is None
        key = (namespace, name)
        verification: dict[str, Any] | None = None
        try:
            held_for = (spec.claims_hash(), snap.rotate_request)
            minted = self._held_token(key, held_for, now) if spec.verify else None
            if minted is None:
                minted = await self._counted(
                    issuer, self._issue(issuer, spec, snap, namespace, name, uid, now)
                )
            if spec.verify is not None:
                # Fail safe: the new token reaches the Secret (and so any workload) only once the
                # API accepted it. Until then the old token stays in place.
                self._held[key] = (held_for, minted)
                result = await self._verify(namespace, spec, minted.token)
                metrics.CONNECTIVITY_CHECKS.labels(result="success" if result.ok else "failure").inc()
                if not result.ok:
                    raise _VerificationFailed(result.message)
                verification = {
                    "tokenId": minted.token_id,
                    "lastSuccessTime": format_time(self.clock()),
                    "statusCode": result.status_code,
                    "request": spec.verify.target,
                }
            revision = max(snap.status.revision, old.revision if old else 0) + 1
            record = TokenRecord(
                token_id=minted.token_id,
                token_hash=token_hash(minted.token),
                key_id=minted.key_id,
                revision=revision,
                issued_at=minted.issued_at,
                expires_at=minted.expires_at,
                spec_hash=spec.claims_hash(),
                rotate_request=snap.rotate_request or (old.rotate_request if old else None),
                previous_token_id=old.token_id if old else None,
                previous_expires_at=old.expires_at if old else None,
            )
            await self._write_secret(
                namespace,
                name,
                uid,
                spec,
                minted.token,
                record,
                exists=snap.secret.exists,
                stale=snap.secret.stale_keys,
            )
            self._held.pop(key, None)
        except TemplateError as exc:
            self._held.pop(key, None)
            return old, dataclasses.replace(outcome, stalled=_template_problem(exc))
        except _VerificationFailed as exc:
            attempts = snap.status.failed_attempts + 1
            metrics.RENEWALS.labels(result="failure").inc()
            message = f"{decision.message}: the new token failed verification: {exc}"
            await self._event(
                body, True, api.REASON_VERIFICATION_FAILED, f"{message} (attempt {attempts}); not delivered"
            )
            return old, dataclasses.replace(
                outcome,
                failed_attempts=attempts,
                last_failure_time=now,
                failure=Reason(api.REASON_VERIFICATION_FAILED, message),
            )
        except SecretRejected as exc:
            return old, dataclasses.replace(outcome, stalled=_invalid_secret(exc))
        except (KubeError, RuntimeError, ValueError, IssueError) as exc:
            attempts = snap.status.failed_attempts + 1
            metrics.RENEWALS.labels(result="failure").inc()
            message = f"{decision.message}: issuing failed: {exc}"
            reason = api.REASON_ISSUE_FAILED if first else api.REASON_RENEWAL_FAILED
            await self._event(body, True, reason, f"{message} (attempt {attempts})")
            return old, dataclasses.replace(
                outcome,
                failed_attempts=attempts,
                last_failure_time=now,
                failure=Reason(reason, message),
            )
        metrics.RENEWALS.labels(result="success").inc()
        if first:
            reason, text = api.REASON_ISSUED, f"issued token {record.token_id} (revision {record.revision})"
        elif decision.reason in ("SecretMissing", "TokenAltered"):
            reason, text = api.REASON_SECRET_RESTORED, f"{decision.message}; issued token {record.token_id}"
        else:
            reason, text = api.REASON_RENEWED, f"{decision.message}; issued token {record.token_id}"
        await self._event(body, False, reason, f"{text}, expires {record.expires_at.isoformat()}")
        return record, dataclasses.replace(
            outcome, failed_attempts=0, last_failure_time=None, failure=None, verification=verification
        )

    def _held_token(
        self, key: Key, held_for: tuple[str, str | None], now: datetime.datetime
    ) -> Issued | None:
        """The token minted for the same spec and rotate request, if at least half its life is left."""
        held = self._held.get(key)
        if held is None or held[0] != held_for:
            return None
        issued = held[1]
        if issued.expires_at - now < (issued.expires_at - issued.issued_at) / 2:
            return None
        return issued

    async def _counted(self, issuer: IssuerSpec, minting: Awaitable[Issued]) -> Issued:
        """Await a mint, counting it per issuer and result."""
        started = time.perf_counter()
        labels = {
            "kind": issuer.kind,
            "namespace": issuer.namespace,
            "name": issuer.name,
            "type": issuer.type,
        }
        try:
            minted = await minting
        except BaseException:
            metrics.ISSUER_REQUESTS.labels(**labels, result="failure").inc()
            raise
        metrics.ISSUER_REQUESTS.labels(**labels, result="success").inc()
        metrics.ISSUER_REQUEST_DURATION.labels(type=issuer.type).observe(time.perf_counter() - started)
        return minted

    async def _verify(self, namespace: str, spec: AgentTokenSpec, token: str) -> VerifyResult:
        """spec.verify with the new token; the CA bundle inline or from a ConfigMap/Secret here."""
        verify = spec.verify
        assert verify is not None
        ca = verify.ca_bundle
        if verify.ca_ref is not None:
            ref = verify.ca_ref
            if ref.kind == "Secret":
                body = await self.kube.get_secret(namespace, ref.name)
                ca = decode_data((body or {}).get("data")).get(ref.key)
            else:
                body = await self.kube.get_configmap(namespace, ref.name)
                ca = ((body or {}).get("data") or {}).get(ref.key)
            if not ca:
                return VerifyResult(False, f"caBundleRef: {ref.kind} {ref.name} (key {ref.key!r}) not found")
        return await probe.check(verify, token, ca_bundle=ca)

    async def _write_secret(
        self,
        namespace: str,
        name: str,
        uid: str,
        spec: AgentTokenSpec,
        token: str,
        record: TokenRecord,
        *,
        exists: bool,
        stale: tuple[str, ...] = (),
    ) -> None:
        desired = desired_secret(
            namespace=namespace, name=name, uid=uid, spec=spec, token=token, record=record, stale=stale
        )
        try:
            written = await self._put_secret(namespace, uid, spec, desired, exists=exists)
        except KubeError as exc:
            # Names, keys or labels the apiserver refuses for a Secret. A 422 from an admission
            # policy names no field: that one is retried with backoff (the policy may change).
            if exc.invalid_object:
                raise SecretRejected(str(exc)) from None
            raise
        self.secrets.offer((namespace, spec.secret_name), written)
        _test_crash_point("after-secret-write")

    async def _put_secret(
        self, namespace: str, uid: str, spec: AgentTokenSpec, desired: dict[str, Any], *, exists: bool
    ) -> dict[str, Any]:
        if exists:
            written = await self.kube.patch_secret(namespace, spec.secret_name, desired)
        else:
            desired["data"] = {k: v for k, v in desired["data"].items() if v is not None}
            try:
                written = await self.kube.create_secret(namespace, desired)
            except KubeError as exc:
                if not exc.conflict:
                    raise
                # It exists after all: never overwrite what we have not looked at. The reconcile
                # decides again with it (ours to adopt, drifted, or someone else's: a conflict).
                found = await self.kube.get_secret(namespace, spec.secret_name)
                if found is None:
                    raise  # gone again; the next attempt creates it
                raise _SecretAppeared(found) from None
        return written

    async def _write_status(
        self,
        body: dict[str, Any],
        previous: Any,
        generation: int | None,
        spec: AgentTokenSpec | None,
        record: TokenRecord | None,
        uid: str,
        outcome: Outcome,
        extra: dict[str, Any] | None = None,
    ) -> None:
        status = render(
            previous=previous,
            generation=generation,
            spec=spec,
            record=record,
            jitter_key=uid,
            outcome=outcome,
            now=self.clock(),
        )
        status.update(extra or {"rollout": None, "consumers": None})
        current = body.get("status") or {}
        if not differs(current, status):
            return
        stalled_before = {
            c.get("reason") for c in current.get("conditions", []) if c.get("type") == api.COND_STALLED
        }
        if outcome.stalled and outcome.stalled.reason not in stalled_before:
            await self._event(body, True, outcome.stalled.reason, outcome.stalled.message)
        meta = body["metadata"]
        try:
            written = await self.kube.patch_agenttoken_status(meta["namespace"], meta["name"], status)
        except KubeError as exc:
            if exc.not_found:
                return  # deleted meanwhile
            raise
        key = (meta["namespace"], meta["name"])
        self.tokens.offer(key, written)
        metrics.observe_token(key, written)

    async def _warn_if_expiring(
        self,
        body: dict[str, Any],
        key: Key,
        spec: AgentTokenSpec,
        record: TokenRecord | None,
        outcome: Outcome,
    ) -> None:
        if record is None or outcome.failure is None:
            return
        now = self.clock()
        left = record.expires_at - now
        if left <= datetime.timedelta(0) or left > spec.ttl * self.options.expiry_warning_fraction:
            return
        if self._warned_expiry.get(key) == record.token_id:
            return
        self._warned_expiry[key] = record.token_id
        await self._event(
            body,
            True,
            api.REASON_EXPIRING,
            f"token {record.token_id} expires in {int(left.total_seconds())}s and renewal keeps failing",
        )

    def _schedule_next(
        self,
        key: Key,
        spec: AgentTokenSpec,
        record: TokenRecord | None,
        decision: Decision,
        outcome: Outcome,
        uid: str,
    ) -> None:
        now = self.clock()
        times: list[datetime.datetime] = []
        if outcome.failed_attempts and outcome.last_failure_time:
            times.append(
                next_retry_time(
                    outcome.last_failure_time, outcome.failed_attempts, record.expires_at if record else None
                )
            )
        elif decision.action is Action.BACKOFF and decision.wake_at:
            times.append(decision.wake_at)
        if record is not None:
            if record.expires_at > now:
                times.append(record.expires_at)  # flip Ready when it expires (suspended or failing)
            if not spec.suspend and not outcome.failed_attempts:
                snap_wake = decision.wake_at if decision.action is not Action.MINT else None
                times.append(
                    snap_wake or renewal_time(record.issued_at, record.expires_at, spec.renewal, uid)
                )
        future = [t for t in times if t > now] or ([now + datetime.timedelta(seconds=1)] if times else [])
        if future:
            self.schedule(key, min(future))

    # -- issuers --

    def on_issuer_event(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        ikey = (kind, meta.get("namespace", "") if kind == api.TOKENISSUER_KIND else "", meta.get("name", ""))
        if event_type == "DELETED":
            self.issuers.pop(ikey, None)
        else:
            self.issuers[ikey] = body
        for key in list(self._by_issuer.get(ikey, ())):
            self.schedule(key, self.clock())

    def on_namespace_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """Keep namespace labels for issuer namespace selectors; a label change re-checks the
        namespace's AgentTokens (a ClusterTokenIssuer may now select, or no longer select, them)."""
        meta = body.get("metadata", {})
        name = meta.get("name", "")
        before = self.namespace_labels.get(name)
        if event_type == "DELETED":
            self.namespace_labels.pop(name, None)
            return
        labels = dict(meta.get("labels") or {})
        self.namespace_labels[name] = labels
        if before is not None and before != labels:
            for token in self._interest.in_namespace(name):
                self.schedule((name, token), self.clock())

    async def _namespace_labels(self, namespace: str) -> dict[str, str]:
        cached = self.namespace_labels.get(namespace)
        if cached is not None:
            return cached
        ns = await self.kube.get_namespace(namespace)
        return dict(((ns or {}).get("metadata") or {}).get("labels") or {})

    async def reconcile_issuer(self, kind: str, body: dict[str, Any]) -> None:
        """Issuer status: Ready with a reason (spec valid, credentials present, keys loaded)."""
        meta = body.get("metadata", {})
        status: dict[str, Any] = {"observedGeneration": meta.get("generation")}
        try:
            issuer = parse_issuer(kind, body)
            status["type"] = issuer.type
            problem = await self._issuer_problem(issuer)
        except InvalidSpec as exc:
            problem = Reason(api.REASON_INVALID_SPEC, str(exc))
        ready = None if problem else Reason("IssuerReady", f"{status.get('type')} issuer ready")
        status["conditions"] = summarize_conditions(
            previous=(body.get("status") or {}).get("conditions") or [],
            generation=meta.get("generation"),
            now=self.clock(),
            ready=ready,
            stalled=problem,
        )
        if not differs(body.get("status"), status):
            return
        try:
            await self.kube.patch_issuer_status(kind, meta.get("namespace", ""), meta["name"], status)
        except KubeError as exc:
            if not exc.not_found:
                raise

    async def _issuer_problem(self, issuer: IssuerSpec) -> Reason | None:
        if issuer.type == "builtin" or (
            issuer.type == "oauth2" and oauth2_issuer.uses_builtin_keys(issuer.config)
        ):
            try:
                self.keys.signing_key()
            except RuntimeError as exc:
                return Reason("KeysNotReady", str(exc))
        refs = {"webhook": ("authSecretRef", "token"), "oauth2": ("clientSecretRef", "clientSecret")}
        if issuer.type in refs and issuer.config.get(refs[issuer.type][0]):
            try:
                await self._credential(issuer, issuer.config[refs[issuer.type][0]], refs[issuer.type][1])
            except IssueError as exc:
                return Reason("CredentialsNotFound", str(exc).removeprefix("credentials: "))
        return None

    async def _resolve_issuer(self, key: Key, spec: AgentTokenSpec) -> IssuerSpec | Reason:
        """The issuer this AgentToken may use, or why not (not found, not ready, policy)."""
        namespace = key[0]
        kind = spec.issuer_kind
        ikey = (kind, namespace if kind == api.TOKENISSUER_KIND else "", spec.issuer_name)
        before = self._issuer_of.get(key)
        if before != ikey:
            if before is not None:
                self._by_issuer.get(before, set()).discard(key)
            self._issuer_of[key] = ikey
        self._by_issuer.setdefault(ikey, set()).add(key)
        body = self.issuers.get(ikey)
        where = f" in namespace {namespace}" if kind == api.TOKENISSUER_KIND else ""
        if body is None:
            return Reason(api.REASON_ISSUER_NOT_FOUND, f"{kind} {spec.issuer_name!r} not found{where}")
        try:
            issuer = parse_issuer(kind, body)
        except InvalidSpec as exc:
            return Reason("IssuerNotReady", f"{kind} {spec.issuer_name!r} is not ready: {exc}")
        labels = await self._namespace_labels(namespace) if issuer.policy.namespace_selector else {}
        violation = check_policy(
            issuer.policy,
            PolicyRequest(
                namespace=namespace,
                namespace_labels=labels,
                scopes=spec.scopes,
                audience=spec.audience,
                ttl=spec.ttl,
            ),
        )
        if violation is not None:
            return Reason(api.REASON_POLICY_VIOLATION, f"{kind} {spec.issuer_name!r}: {violation.message}")
        return issuer

    async def _issue(
        self,
        issuer: IssuerSpec,
        spec: AgentTokenSpec,
        snap: Snapshot,
        namespace: str,
        name: str,
        uid: str,
        now: datetime.datetime,
    ) -> Issued:
        ctx = IssueContext(request=spec.token_request(namespace, name, uid), secret_name=spec.secret_name)
        if issuer.type == "builtin":
            return builtin_issuer.issue(
                ctx, self.keys.signing_key(), issuer_url=self.options.issuer_url, now=now
            )
        if issuer.type == "kubernetes":
            secret = self.secrets.get((namespace, spec.secret_name))
            if secret is None:
                # The token is bound to its Secret, so the Secret must exist first (metadata only).
                skeleton = desired_secret_metadata(namespace=namespace, name=name, uid=uid, spec=spec)
                secret = await self.kube.create_secret(namespace, skeleton)
                self.secrets.offer((namespace, spec.secret_name), secret)
            ctx = dataclasses.replace(ctx, secret_uid=secret["metadata"]["uid"])
            return await kubernetes_issuer.issue(self.kube, ctx, issuer.config, now=now)
        if issuer.type == "oauth2":
            creds = await self._oauth2_credentials(issuer, ctx, now)
            return await oauth2_issuer.issue(ctx, issuer.config, creds, now=now)
        bearer = await self._credential(issuer, issuer.config.get("authSecretRef"), "token")
        return await webhook_issuer.issue(ctx, issuer.config, bearer=bearer, now=now)

    async def _oauth2_credentials(
        self, issuer: IssuerSpec, ctx: IssueContext, now: datetime.datetime
    ) -> oauth2_issuer.Credentials:
        """The client's credential (secret or signing key) and, for assertion grants, a subject token."""
        config = issuer.config
        secret = key = subject = None
        if oauth2_issuer.client_auth_method(config) == "private_key_jwt":
            key = self.keys.signing_key()
        else:
            secret = await self._credential(issuer, config.get("clientSecretRef"), "clientSecret")
        if oauth2_issuer.needs_subject_token(config):
            req = ctx.request
            if oauth2_issuer.subject_source(config) == "serviceAccount":
                account = str((config.get("subjectToken") or {}).get("serviceAccountName"))
                spec = {
                    "audiences": list(oauth2_issuer.subject_audience(config)),
                    "expirationSeconds": kubernetes_issuer.MIN_EXPIRATION_SECONDS,
                }
                subject, _ = await kubernetes_issuer.request_token(self.kube, req.namespace, account, spec)
            else:
                subject = builtin_issuer.issue(
                    dataclasses.replace(ctx, request=oauth2_issuer.subject_request(req, config)),
                    self.keys.signing_key(),
                    issuer_url=self.options.issuer_url,
                    now=now,
                ).token
        return oauth2_issuer.Credentials(client_secret=secret, signing_key=key, subject_token=subject)

    async def _credential(
        self, issuer: IssuerSpec, ref: Mapping[str, Any] | None, default_key: str
    ) -> str | None:
        """A credential from a Secret (issuer's namespace, or the operator's for cluster issuers)."""
        if not ref:
            return None
        ns = issuer.secret_namespace or self.keys.namespace
        credential = await self.kube.get_secret(ns, ref["name"])
        raw = ((credential or {}).get("data") or {}).get(ref.get("key") or default_key)
        if not raw:
            raise IssueError(
                f"credentials: Secret {ns}/{ref['name']} (key {ref.get('key') or default_key!r}) not found"
            )
        return decode_data({"v": raw})["v"]

    # -- rollouts and revocation --

    def _index_for_workloads(self, key: Key, spec: AgentTokenSpec) -> None:
        self._interest.put(key[0], key[1], spec.secret_name, spec.rollout)

    def on_workload_change(self, ref: WorkloadRef, workload: Workload | None) -> None:
        """A workload changed: look again at the AgentTokens that target or feed it."""
        now = self.clock()
        for name in self._interest.concerned(ref, workload):
            self.schedule((ref.namespace, name), now)

    async def _rollout(
        self, body: dict[str, Any], spec: AgentTokenSpec, record: TokenRecord, outcome: Outcome
    ) -> tuple[dict[str, Any], Outcome, datetime.datetime | None]:
        """Restart targets for the token in the Secret, report progress, revoke the previous token."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        now = self.clock()
        previous = (body.get("status") or {}).get("rollout") or {}
        workloads = self.rollouts.in_namespace(namespace) if self.rollouts else []
        key = annotation_key(name)
        consumers = [
            {
                "kind": w.ref.kind,
                "name": w.ref.name,
                "via": sorted(
                    {c.via + ("+subPath" if c.sub_path else "") for c in w.consumes_secret(spec.secret_name)}
                ),
                "needsRestart": any(c.needs_restart for c in w.consumes_secret(spec.secret_name)),
            }
            for w in sorted(workloads, key=lambda w: (w.ref.kind, w.ref.name))
            if w.consumes_secret(spec.secret_name)
        ]
        restart = spec.rollout.strategy == "Restart"
        selected = select(spec.rollout, spec.secret_name, workloads) if restart else []
        restarted = {(w.ref.kind, w.ref.name) for w in selected}
        for c in consumers:
            c["restartedOnRenewal"] = (c["kind"], c["name"]) in restarted
        entries: list[dict[str, Any]] = []
        if restart:
            old_entries = {(t.get("kind"), t.get("name")): t for t in previous.get("targets") or []}
            for w in selected:
                if needs_restart(w, key, record.token_id) and self.rollouts:
                    self.rollouts.request(w.ref, key, record.token_id)
                entries.append(
                    target_status(w, record.token_id, key, old_entries.get((w.ref.kind, w.ref.name)), now)
                )
        state, message = summarize_rollout(entries)
        wake: datetime.datetime | None = None
        if state == "RollingOut":
            outcome = dataclasses.replace(outcome, reconciling=Reason(api.REASON_ROLLING_OUT, message))
            if record.previous_expires_at and now >= record.previous_expires_at:
                if self._warned_slow.get((namespace, name)) != record.token_id:
                    self._warned_slow[namespace, name] = record.token_id
                    await self._event(
                        body,
                        True,
                        api.REASON_ROLLOUT_TOO_SLOW,
                        f"the previous token expired before the rollout finished ({message}); "
                        "renewBefore is too short for these workloads",
                    )
                outcome = dataclasses.replace(
                    outcome,
                    reconciling=Reason(
                        api.REASON_ROLLOUT_TOO_SLOW, f"{message}; the previous token already expired"
                    ),
                )
            elif record.previous_expires_at:
                wake = record.previous_expires_at
        elif state in ("Failed", "Paused"):
            reason = api.REASON_ROLLOUT_FAILED if state == "Failed" else api.REASON_ROLLOUT_PAUSED
            outcome = dataclasses.replace(outcome, stalled=Reason(reason, message))
        if state != previous.get("state") and previous.get("tokenId") == record.token_id and entries:
            if state == "Complete":
                await self._event(body, False, api.REASON_ROLLOUT_COMPLETE, message)
            elif state == "Failed":
                await self._event(body, True, api.REASON_ROLLOUT_FAILED, message)

        stranded = tuple(
            f"{c['kind']}/{c['name']}" for c in consumers if c["needsRestart"] and not c["restartedOnRenewal"]
        )
        if stranded and self._warned_consumers.get((namespace, name)) != stranded:
            self._warned_consumers[namespace, name] = stranded
            why = (
                "spec.rollout.strategy is None"
                if not restart
                else "they are not rollout targets (add them to spec.rollout.targets or set autoDiscover)"
            )
            await self._event(
                body,
                True,
                api.REASON_CONSUMER_NEEDS_RESTART,
                "consumers read the token through env vars or subPath mounts and will not see renewals "
                f"without a restart, but {why}: " + ", ".join(stranded),
            )

        revoked_id = previous.get("revokedTokenId")
        revoke_at: datetime.datetime | None = None
        if record.previous_token_id and record.previous_expires_at and state == "Complete":
            finished = [parse_time(e.get("completedAt")) for e in entries]
            base = max([t for t in finished if t] + [record.issued_at])
            revoke_at = base + spec.rollout.grace
            if revoke_at >= record.previous_expires_at:
                # The previous token expires before the grace ends: nothing to revoke, and no wake-up
                # or status write for it (short-TTL tokens renew often; each write counts).
                revoke_at = None
            elif revoked_id != record.previous_token_id:
                if now >= revoke_at:
                    await self._revoke(body, record.previous_token_id, record.previous_expires_at, "Rotated")
                    revoked_id = record.previous_token_id
                else:
                    wake = min(wake or revoke_at, revoke_at)
        extra = {
            "rollout": {
                "strategy": spec.rollout.strategy,
                "tokenId": record.token_id,
                "state": state,
                "message": message,
                "targets": entries,
                "previousTokenId": record.previous_token_id,
                "revokeAt": format_time(revoke_at)
                if revoke_at and revoked_id != record.previous_token_id
                else None,
                "revokedTokenId": revoked_id,
            },
            "consumers": consumers,
        }
        return extra, outcome, wake

    async def _revoke(
        self,
        body: dict[str, Any],
        token_id: str,
        expires_at: datetime.datetime,
        reason: str,
        *,
        event: bool = True,
    ) -> None:
        meta = body["metadata"]
        if expires_at <= self.clock() or self.revocations is None:
            return  # already useless; the list only needs live tokens
        entry = Revoked(token_id, expires_at, meta["namespace"], meta["name"], self.clock(), reason)
        await self.revocations.revoke([entry])
        metrics.REVOCATIONS.labels(reason=reason).inc()
        if event:
            await self._event(body, False, api.REASON_TOKEN_REVOKED, f"token {token_id} revoked ({reason})")

    async def _add_finalizer(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        finalizers = [*(meta.get("finalizers") or []), api.REVOKE_FINALIZER]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        try:
            written = await self.kube.patch_agenttoken(meta["namespace"], meta["name"], patch)
        except KubeError as exc:
            if exc.conflict or exc.not_found:
                return  # a newer version is on its way to us
            raise
        self.tokens.offer((meta["namespace"], meta["name"]), written)
        body["metadata"] = written["metadata"]

    async def _finalize(self, body: dict[str, Any]) -> None:
        """Deleting an AgentToken revokes its current token, then lets the deletion proceed."""
        meta = body["metadata"]
        if api.REVOKE_FINALIZER not in (meta.get("finalizers") or []):
            return
        status = parse_status(body.get("status"))
        rollout = (body.get("status") or {}).get("rollout") or {}
        if status.token_id and status.expires_at:
            await self._revoke(body, status.token_id, status.expires_at, "Deleted")
        if rollout.get("previousTokenId") and rollout.get("previousTokenId") != rollout.get("revokedTokenId"):
            pass  # the previous token expired or is on the list only if its rollout finished; nothing to add
        finalizers = [f for f in meta.get("finalizers") or [] if f != api.REVOKE_FINALIZER]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        try:
            await self.kube.patch_agenttoken(meta["namespace"], meta["name"], patch)
        except KubeError as exc:
            if not (exc.conflict or exc.not_found):
                raise
            if exc.conflict:
                self.schedule((meta["namespace"], meta["name"]), self.clock() + datetime.timedelta(seconds=1))

    async def _event(self, body: dict[str, Any], warning: bool, reason: str, message: str) -> None:
        """Posts an Event in the background, a few at a time: Events are best-effort, so a
        reconcile never waits for one (in a burst of new AgentTokens the Secret and the status
        come first; the Events follow)."""
        meta = body["metadata"]
        involved = {
            "apiVersion": api.API_VERSION,
            "kind": api.AGENTTOKEN_KIND,
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
        task = asyncio.create_task(self._post_event(involved, warning, reason, message))
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    async def _post_event(self, involved: dict[str, Any], warning: bool, reason: str, message: str) -> None:
        async with self._event_slots:
            try:
                await self.kube.emit_event(involved, warning=warning, reason=reason, message=message)
            except KubeError as exc:
                log.warning(
                    "could not post event %s for %s/%s: %s",
                    reason,
                    involved["namespace"],
                    involved["name"],
                    exc,
                )
